package fleet

import (
	"net/netip"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// benchGrant grants a on nd's map until exp as a knock does under run: the
// program writes the map, and run's event reader tells the member of the
// open event (Publish). (bench.sh gives an earlier revision, whose member
// had no Publish, a benchGrant that only writes the map.)
func benchGrant(nd *node, a netip.Addr, exp time.Time) {
	nd.local.grant(a, exp)
	nd.fl.Publish(Grant{a, policy.DefaultService}, exp)
}
