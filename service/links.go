package service

import (
	"context"
	"errors"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkChange is an interface that appeared (or changed) or went away.
type linkChange struct {
	name    string
	ifindex int
	gone    bool
}

// watchLinks reports every interface of this network namespace as it
// appears, changes or goes away, until ctx ends. It subscribes to the
// kernel's link notifications and lists the interfaces that exist (so
// nothing that happened before the subscription is missed); after any
// netlink error it subscribes and lists again, as cilium's devices
// controller does. No polling.
func watchLinks(ctx context.Context, out chan<- linkChange, onError func(error)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		updates := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		failed := make(chan error, 1)
		err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
			ListExisting: true,
			ErrorCallback: func(err error) {
				select {
				case failed <- err:
				default:
				}
			},
		})
		if err != nil {
			onError(err)
			close(done)
		} else {
			err = relay(ctx, updates, failed, out)
			close(done)
			for range updates {
				// Drain until the subscription's reader has gone.
			}
			if err != nil {
				onError(err)
			} else {
				backoff = 100 * time.Millisecond
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// relay passes updates on until ctx ends (nil) or the subscription fails.
func relay(ctx context.Context, updates <-chan netlink.LinkUpdate, failed <-chan error, out chan<- linkChange) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return err
		case u, ok := <-updates:
			if !ok {
				return errClosed
			}
			attrs := u.Link.Attrs()
			c := linkChange{name: attrs.Name, ifindex: attrs.Index, gone: u.Header.Type == unix.RTM_DELLINK}
			select {
			case out <- c:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

var errClosed = errors.New("link subscription closed")
