package spa

import (
	"fmt"
	"io/fs"
	"os"
	"unsafe"

	"golang.org/x/sys/windows"
)

// checkOwnerOnly reads the key file's owner and DACL and applies checkACL.
func checkOwnerOnly(f *os.File, _ fs.FileInfo, path string, access Access) error {
	sd, err := windows.GetSecurityInfo(windows.Handle(f.Fd()), windows.SE_FILE_OBJECT,
		windows.OWNER_SECURITY_INFORMATION|windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		return fmt.Errorf("key file %s: read its access list: %w", path, err)
	}
	owner, _, err := sd.Owner()
	if err != nil {
		return fmt.Errorf("key file %s: read its owner: %w", path, err)
	}
	user, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		return fmt.Errorf("key file %s: who am I: %w", path, err)
	}
	a := fileACL{Owner: owner.String()}
	dacl, _, err := sd.DACL()
	switch {
	case err == windows.ERROR_OBJECT_NOT_FOUND:
		a.NullDACL = true
	case err != nil:
		return fmt.Errorf("key file %s: read its access list: %w", path, err)
	case dacl == nil:
		a.NullDACL = true
	default:
		for i := range uint32(dacl.AceCount) {
			var ace *windows.ACCESS_ALLOWED_ACE
			if err := windows.GetAce(dacl, i, &ace); err != nil {
				return fmt.Errorf("key file %s: read its access list: %w", path, err)
			}
			sid := (*windows.SID)(unsafe.Pointer(&ace.SidStart))
			a.Entries = append(a.Entries, aclEntry{
				Allow:       ace.Header.AceType == windows.ACCESS_ALLOWED_ACE_TYPE,
				InheritOnly: ace.Header.AceFlags&windows.INHERIT_ONLY_ACE != 0,
				SID:         sid.String(),
				Mask:        uint32(ace.Mask),
			})
		}
	}
	return checkACL(path, a, user.User.Sid.String(), access, accountName)
}

// accountName is DOMAIN\name of a SID, or "".
func accountName(s string) string {
	sid, err := windows.StringToSid(s)
	if err != nil {
		return ""
	}
	account, domain, _, err := sid.LookupAccount("")
	if err != nil {
		return ""
	}
	if domain == "" {
		return account
	}
	return domain + `\` + account
}
