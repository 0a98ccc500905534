#!/bin/sh
# Makes the system user knockgate's hooks run as (hook_user's default, see
# README: hooks), from the package's sysusers.d file where systemd-sysusers
# is at hand, else with useradd or busybox's adduser. DPKG_ROOT is set when
# dpkg installs into another root without a chroot: the user is made there.
set -e
root=${DPKG_ROOT:-}
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers ${root:+--root="$root"} knockgate.conf
elif command -v useradd >/dev/null 2>&1; then
	# 9: the user exists already (an upgrade, or one the operator made).
	useradd ${root:+--root "$root"} --system --no-create-home --home-dir / --shell /sbin/nologin knockgate || [ $? -eq 9 ]
elif ! id -u knockgate >/dev/null 2>&1; then
	# Alpine: busybox's adduser (-S a system user, -D no password, -H no home).
	adduser -S -D -H -h / -s /sbin/nologin knockgate
fi
