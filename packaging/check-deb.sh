#!/usr/bin/env bash
# make check-deb: what the .deb does when dpkg installs it, in a scratch root
# (dpkg --root: nothing of this machine's is touched): the files the issue
# lists are where they belong, the binary and the example config work
# together, and an upgrade keeps a config file the operator changed
# (a conffile) while replacing the rest.
#
#   check-deb.sh DEB
set -euo pipefail
deb=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
fail() { echo "check-deb: $*" >&2; exit 1; }

mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status"
# The scratch root has no procps: the package's one dependency (the unit's
# ExecReload runs /bin/kill), checked here and forced below.
[[ $(command dpkg-deb -f "$deb" Depends) == procps ]] ||
	fail "the package depends on '$(command dpkg-deb -f "$deb" Depends)', want procps (for the unit's /bin/kill)"
# The maintainer script runs outside a chroot (the scratch root has no
# shell); it honours DPKG_ROOT, so the user it makes is the scratch root's.
# dpkg's warning about the dependency goes to a file, shown if dpkg fails.
dpkg() {
	command dpkg --root="$root" --force-script-chrootless --force-depends "$@" 2>"$work/dpkg.err" ||
		fail "dpkg $*: $(cat "$work/dpkg.err")"
}
dpkg -i "$deb" >/dev/null

for f in usr/bin/knockgate lib/systemd/system/knockgate.service etc/knockgate/knockgate.toml \
	usr/share/man/man8/knockgate.8.gz usr/share/man/man1/knockgate-knock.1.gz usr/share/man/man1/knockgate-keygen.1.gz \
	usr/share/bash-completion/completions/knockgate usr/share/zsh/vendor-completions/_knockgate \
	usr/share/fish/vendor_completions.d/knockgate.fish usr/share/knockgate/grafana-dashboard.json \
	usr/share/doc/knockgate/copyright usr/lib/sysusers.d/knockgate.conf; do
	[[ -f $root/$f ]] || fail "the package installs no /$f"
done
[[ -d $root/var/lib/knockgate ]] || fail "the package makes no /var/lib/knockgate"
# The hooks' user (hook_user's default) is made, as a system user that
# cannot log in.
grep -q '^knockgate:[^:]*:[0-9]*:[0-9]*:[^:]*:[^:]*:/usr/sbin/nologin$' "$root/etc/passwd" 2>/dev/null ||
	fail "the package made no system user knockgate: $(cat "$root/etc/passwd" 2>&1)"
uid=$(awk -F: '$1 == "knockgate" {print $3}' "$root/etc/passwd")
(( uid < 1000 )) || fail "the user knockgate has uid $uid, not a system user's"
[[ $(stat -c %a "$root/var/lib/knockgate") == 700 ]] ||
	fail "/var/lib/knockgate is mode $(stat -c %a "$root/var/lib/knockgate"), want 700 (the fleet's store is root's)"
grep -qx /etc/knockgate/knockgate.toml "$root/var/lib/dpkg/info/knockgate.conffiles" ||
	fail "/etc/knockgate/knockgate.toml is not a conffile: an upgrade would overwrite it"

# The unit runs the binary where the package put it, on the config it put.
grep -qx 'ExecStart=/usr/bin/knockgate run --config /etc/knockgate/knockgate.toml' "$root/lib/systemd/system/knockgate.service" ||
	fail "the unit does not run /usr/bin/knockgate on /etc/knockgate/knockgate.toml"
# The binary is this machine's (amd64, as make deb builds it), so it runs:
# it checks the example config and its man page renders without a warning.
"$root/usr/bin/knockgate" version >/dev/null || fail "the installed binary does not run"
"$root/usr/bin/knockgate" run --check --config "$root/etc/knockgate/knockgate.toml" >/dev/null ||
	fail "the installed binary refuses the installed example config"
if command -v man >/dev/null; then
	warn=$(MANWIDTH=80 man --warnings -l "$root/usr/share/man/man8/knockgate.8.gz" 2>&1 >/dev/null)
	[[ -z $warn ]] || fail "man warns on knockgate.8: $warn"
fi

# The upgrade: the operator's edit of the config stays, the binary is the
# new one. The next version is this package with its version raised.
echo '# edited by the operator' >>"$root/etc/knockgate/knockgate.toml"
mkdir "$work/next"
command dpkg-deb -R "$deb" "$work/next/pkg"
version=$(command dpkg-deb -f "$deb" Version)
sed -i "s/^Version: .*/Version: ${version}+next/" "$work/next/pkg/DEBIAN/control"
echo '# next' >>"$work/next/pkg/usr/share/knockgate/grafana-dashboard.json"
command dpkg-deb --root-owner-group -Znone -b "$work/next/pkg" "$work/next/next.deb" >/dev/null
dpkg -i "$work/next/next.deb" >/dev/null </dev/null
[[ $(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Version}' knockgate) == "${version}+next" ]] ||
	fail "the upgrade did not install"
tail -n1 "$root/usr/share/knockgate/grafana-dashboard.json" | grep -qx '# next' || fail "the upgrade did not replace the package's files"
tail -n1 "$root/etc/knockgate/knockgate.toml" | grep -qx '# edited by the operator' ||
	fail "the upgrade overwrote the operator's /etc/knockgate/knockgate.toml"

# Removal keeps the config (a conffile), purge removes it.
dpkg -r knockgate >/dev/null
[[ ! -e $root/usr/bin/knockgate && -f $root/etc/knockgate/knockgate.toml ]] || fail "remove: the binary stays or the config went"
dpkg -P knockgate >/dev/null
[[ ! -e $root/etc/knockgate/knockgate.toml ]] || fail "purge left /etc/knockgate/knockgate.toml"
echo "check-deb: $(basename "$deb"): installs, upgrades keeping the operator's config, removes and purges"
