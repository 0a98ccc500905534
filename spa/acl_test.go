package spa

import (
	"strings"
	"testing"
)

// The Windows rule, on the access lists Windows gives key files in the
// usual places.
func TestCheckACL(t *testing.T) {
	const me, other = "S-1-5-21-1-2-3-1001", "S-1-5-21-1-2-3-1002"
	const users, everyone, authenticated = "S-1-5-32-545", "S-1-1-0", "S-1-5-11"
	names := map[string]string{me: `LAPTOP\alice`, users: `BUILTIN\Users`, other: `LAPTOP\bob`}
	name := func(sid string) string { return names[sid] }
	full := uint32(0x1f01ff)
	readExec := uint32(0x1200a9)
	allow := func(sid string, mask uint32) aclEntry { return aclEntry{Allow: true, SID: sid, Mask: mask} }
	profile := []aclEntry{allow(sidSystem, full), allow(sidAdministrators, full), allow(me, full)}
	for _, c := range []struct {
		name   string
		acl    fileACL
		access Access
		want   string // in the error; "" for none
	}{
		{"in the profile", fileACL{Owner: me, Entries: profile}, OwnerOnly, ""},
		{"owned by Administrators", fileACL{Owner: sidAdministrators, Entries: profile}, OwnerOnly, ""},
		{"a denial for others", fileACL{Owner: me, Entries: append(profile, aclEntry{SID: users, Mask: full})}, OwnerOnly, ""},
		{"inherit-only for others", fileACL{Owner: me, Entries: append(profile, aclEntry{Allow: true, InheritOnly: true, SID: users, Mask: full})}, OwnerOnly, ""},
		{"others may only synchronize", fileACL{Owner: me, Entries: append(profile, allow(everyone, 0x100000))}, OwnerOnly, ""},
		{"under C:\\ (Users may read)", fileACL{Owner: me, Entries: append(profile, allow(users, readExec))}, OwnerOnly,
			`lets BUILTIN\Users (S-1-5-32-545) read or change it`},
		{"authenticated users may change", fileACL{Owner: me, Entries: append(profile, allow(authenticated, genericWrite))}, OwnerOnly,
			"lets S-1-5-11 read or change it"},
		{"everyone", fileACL{Owner: me, Entries: []aclEntry{allow(everyone, genericRead)}}, OwnerOnly, "lets S-1-1-0"},
		{"no DACL", fileACL{Owner: me, NullDACL: true}, OwnerOnly, "has no access list"},
		{"someone else's", fileACL{Owner: other, Entries: profile}, OwnerOnly, `is not yours: it belongs to LAPTOP\bob (S-1-5-21-1-2-3-1002)`},
		{"the gate's, by Administrators", fileACL{Owner: sidAdministrators, Entries: profile[:2]}, RootOnly, ""},
		{"the gate's, by a user", fileACL{Owner: me, Entries: profile[:2]}, RootOnly, "not to Administrators or SYSTEM"},
		{"the gate's, a user may read", fileACL{Owner: sidSystem, Entries: profile}, RootOnly, `lets LAPTOP\alice`},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := checkACL(`C:\keys\laptop.key`, c.acl, me, c.access, name)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want one saying %q", err, c.want)
			case c.want != "" && !strings.Contains(err.Error(), `icacls "C:\keys\laptop.key" `):
				t.Errorf("error %v does not say how to fix it with icacls", err)
			}
		})
	}
}
