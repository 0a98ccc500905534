package fleet

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerConfig is an embedded NATS server, one per host of the fleet,
// clustered with the others' over routes.
type ServerConfig struct {
	Name     string   // this server's (the host's) name, unique in the fleet
	Listen   string   // host:port the cluster routes listen on
	Peers    []string // host:port of the other servers' routes (this host's own may be listed too)
	StoreDir string   // JetStream's store
	// Route authentication: every server has the same user and password
	// (the password from a root-only file).
	RouteUser, RoutePassword string
	// TLS for routes: this server's certificate and key, and the CA that
	// signed every server's (mutual TLS: routes from servers without one
	// are refused). All empty: routes in the clear (tests on loopback).
	TLSCert, TLSKey, TLSCA string
}

// Server is an embedded NATS server with JetStream on.
type Server struct{ *server.Server }

// StartServer starts the embedded server: JetStream with its store in StoreDir, cluster routes
// to Peers, and no signal handlers of its own (knockgate keeps its
// signals).
func StartServer(c ServerConfig) (*Server, error) {
	host, portText, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return nil, fmt.Errorf("fleet listen %q: %w", c.Listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("fleet listen %q: bad port", c.Listen)
	}
	if err := os.MkdirAll(c.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("fleet store: %w", err)
	}
	opts := &server.Options{
		ServerName: c.Name,
		// The client port only on loopback, and only because the server
		// starts its routes once it listens for clients; knockgate itself
		// talks to the server in process.
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  c.StoreDir,
		NoSigs:    true,
		// A peer cut off is noticed in seconds, not the default minutes:
		// its streams' leaders move and the rest of the fleet goes on.
		PingInterval: time.Second,
		MaxPingsOut:  3,
		NoLog:        os.Getenv("KG_NATS_LOG") == "",
		Cluster: server.ClusterOpts{
			Name:     "knockgate",
			Host:     host,
			Port:     port,
			Username: c.RouteUser,
			Password: c.RoutePassword,
			// Routes are made again within a second of a partition's end.
			ConnectRetries: -1,
		},
	}
	scheme := "nats-route"
	if c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: c.TLSCert, KeyFile: c.TLSKey, CaFile: c.TLSCA, Verify: true})
		if err != nil {
			return nil, fmt.Errorf("fleet TLS: %w", err)
		}
		if tc.RootCAs == nil {
			tc.RootCAs = tc.ClientCAs // routes dial too: the same CA vouches for the servers
		}
		opts.Cluster.TLSConfig = tc
		opts.Cluster.TLSTimeout = 2
	}
	var routes []*url.URL
	for _, p := range c.Peers {
		if p == c.Listen {
			continue
		}
		u := &url.URL{Scheme: scheme, Host: p}
		if c.RouteUser != "" {
			u.User = url.UserPassword(c.RouteUser, c.RoutePassword)
		}
		routes = append(routes, u)
	}
	opts.Routes = routes
	if len(routes) == 0 {
		// A fleet of one (or a first host on its own): JetStream alone, no
		// cluster to form.
		opts.Cluster = server.ClusterOpts{}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("fleet server: %w", err)
	}
	if os.Getenv("KG_NATS_LOG") != "" {
		ns.ConfigureLogger()
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("fleet server %s did not start", c.Name)
	}
	return &Server{ns}, nil
}

// Peers counts the other servers this one has routes to (a route pool
// makes several connections to each).
func (s *Server) Peers() int {
	rz, err := s.Routez(&server.RoutezOptions{})
	if err != nil {
		return 0
	}
	seen := map[string]bool{}
	for _, r := range rz.Routes {
		seen[r.RemoteID] = true
	}
	return len(seen)
}

// Connect is an in-process client of the embedded server.
func (s *Server) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(s.Server), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("fleet: connect to the embedded server: %w", err)
	}
	return nc, nil
}

// Close shuts the server down.
func (s *Server) Close() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Dial connects to an existing NATS cluster (url may list several,
// comma-separated); creds is a .creds file or "".
func Dial(urls, creds, name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1)}
	if creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(strings.TrimSpace(urls), opts...)
	if err != nil {
		return nil, fmt.Errorf("fleet: connect to %s: %w", urls, err)
	}
	return nc, nil
}
