package spa

import (
	"fmt"
	"slices"
)

// Windows has no mode bits: Go reports 0666 for every writable file there,
// so the Unix check would refuse every key file. A key file's owner-only
// check on Windows reads its ACL instead, by OpenSSH for Windows's rule for
// private keys (contrib/win32/win32compat/w32-sshfileperm.c): the file
// belongs to you, SYSTEM or Administrators, and no entry of its DACL lets
// anyone else read or change it. The rule is here, in portable code, so
// that it is tested everywhere; access_windows.go feeds it the file's
// security descriptor.

// Well-known SIDs.
const (
	sidSystem         = "S-1-5-18"
	sidAdministrators = "S-1-5-32-544"
)

// Access mask bits that let a trustee read the key or change the file.
const (
	fileReadData   = 0x1
	fileWriteData  = 0x2
	fileAppendData = 0x4
	writeDAC       = 0x40000
	writeOwner     = 0x80000
	genericAll     = 0x10000000
	genericWrite   = 0x40000000
	genericRead    = 0x80000000

	keyAccess = fileReadData | fileWriteData | fileAppendData | writeDAC | writeOwner | genericAll | genericWrite | genericRead
)

// aclEntry is one access-control entry of a file's DACL.
type aclEntry struct {
	Allow       bool // an access-allowed entry (denials only take away)
	InheritOnly bool // applies to children, not to the file
	SID         string
	Mask        uint32
}

// fileACL is what the check needs of a file's security descriptor.
type fileACL struct {
	Owner string
	// NullDACL: the file has no DACL at all, which lets everyone in.
	NullDACL bool
	Entries  []aclEntry
}

// checkACL applies the rule to a file at path, read by the user me; name
// turns a SID into an account name for the message ("" when unknown).
func checkACL(path string, a fileACL, me string, access Access, name func(sid string) string) error {
	trusted := []string{sidSystem, sidAdministrators}
	if access == OwnerOnly {
		trusted = append(trusted, me)
	}
	who := func(sid string) string {
		if n := name(sid); n != "" {
			return fmt.Sprintf("%s (%s)", n, sid)
		}
		return sid
	}
	fix := fmt.Sprintf(`icacls "%s" /inheritance:r /grant:r "%s:F"`, path, name(me))
	if access == RootOnly {
		fix = fmt.Sprintf(`icacls "%s" /setowner Administrators /inheritance:r /grant:r Administrators:F SYSTEM:F`, path)
	}
	if !slices.Contains(trusted, a.Owner) {
		if access == RootOnly {
			return fmt.Errorf("key file %s belongs to %s, not to Administrators or SYSTEM: that user can read its keys; %s", path, who(a.Owner), fix)
		}
		return fmt.Errorf("key file %s is not yours: it belongs to %s, so its owner can read or change your key; "+
			"copy it to a file of your own, then %s", path, who(a.Owner), fix)
	}
	if a.NullDACL {
		return fmt.Errorf("key file %s has no access list (everyone may read it): its keys would open the gate to anyone; %s", path, fix)
	}
	for _, e := range a.Entries {
		if !e.Allow || e.InheritOnly || e.Mask&keyAccess == 0 || slices.Contains(trusted, e.SID) {
			continue
		}
		return fmt.Errorf("key file %s lets %s read or change it (its access list, often inherited from the folder): "+
			"its keys would open the gate to them; %s", path, who(e.SID), fix)
	}
	return nil
}
