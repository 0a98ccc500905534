#!/usr/bin/env bash
# make dist: release archives of knockgate for every client and server
# target, .deb/.rpm/.apk packages of the Linux server targets (nfpm, run as
# a tool), and SHA256SUMS of them all, in $DIST (default dist/).
#
#   CLIENTS    client-only targets, OS/ARCH (default: Windows, macOS, the BSDs)
#   LINUX      Linux targets, ARCH or arm/vN (default: every one Go supports)
#   SERVERS    Linux targets that get packages (default: amd64 arm64 arm/v7 riscv64 386)
#   PACKAGERS  default: deb rpm apk
#   NFPM       the nfpm module to run (default github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0)
#
# `make deb` is this with one .deb (linux/amd64) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
DIST=${DIST:-dist}
NFPM=${NFPM:-github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0}
CLIENTS=${CLIENTS-windows/amd64 windows/arm64 darwin/arm64 darwin/amd64 freebsd/amd64 freebsd/arm64 openbsd/amd64 openbsd/arm64}
LINUX=${LINUX-amd64 arm64 arm/v7 arm/v6 riscv64 386 loong64 mips mipsle mips64 mips64le ppc64 ppc64le s390x}
SERVERS=${SERVERS-amd64 arm64 arm/v7 riscv64 386}
PACKAGERS=${PACKAGERS-deb rpm apk}

# The version the binary prints, when it was committed (a clock earlier than
# that is wrong: the client says so), and a package version, which must
# start with a digit: the tag's (v1.2.3 -> 1.2.3, 3 commits on: 1.2.3+3.gHASH),
# or 0.0~gitDATETIME.HASH before the first tag (the commit's UTC time to the
# second, so that two snapshots of one day upgrade in the order they were
# committed).
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
COMMIT_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
BUILT_AT=$(date -u -d "@$COMMIT_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
if tag=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	PKG_VERSION=$(echo "${tag#v}" | sed 's/-\([0-9]*\)-g/+\1.g/')
else
	PKG_VERSION=0.0~git$(date -u -d "@$COMMIT_EPOCH" +%Y%m%d%H%M%S).$(git rev-parse --short HEAD 2>/dev/null || echo 0)
fi
LDFLAGS="-s -w -X main.version=$VERSION -X main.builtAt=$BUILT_AT"

rm -rf "$DIST"
mkdir -p "$DIST/stage"
export SOURCE_DATE_EPOCH=$COMMIT_EPOCH

# build OS ARCH[/vN] DIR: the binary, static, without paths of this machine.
build() {
	local os=$1 arch=${2%%/*} goarm= exe=
	[[ $2 == arm/v* ]] && goarm=${2#arm/v}
	[[ $os == windows ]] && exe=.exe
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOARM=$goarm \
		$GO build -trimpath -ldflags "$LDFLAGS" -o "$3/knockgate$exe" ./cmd/knockgate
}

# archive NAME: DIST/stage/NAME as a tar.gz (zip for Windows).
archive() {
	local ext=tar.gz
	[[ $1 == *_windows_* ]] && ext=zip
	$GO run ./packaging/archive "$DIST/$1.$ext" "$DIST/stage/$1" "$COMMIT_EPOCH"
}

# docs DIR [linux]: what comes with the binary; the gate's files on Linux.
docs() {
	cp README.md "$1/"
	if [[ $1 != *_windows_* ]]; then
		mkdir -p "$1/man" "$1/completion"
		cp doc/man/* "$1/man/"
		cp doc/completion/* "$1/completion/"
	fi
	if [[ ${2:-} == linux ]]; then
		sed 's|@BINDIR@|/usr/bin|g' service/knockgate.service >"$1/knockgate.service"
		cp service/knockgate.toml "$1/knockgate.toml.example"
		cp contrib/grafana/knockgate.json "$1/grafana-dashboard.json"
	fi
}

name() { echo "knockgate_${VERSION}_$1_$(echo "$2" | tr -d /)"; }

for t in $CLIENTS; do
	n=$(name "${t%/*}" "${t#*/}")
	mkdir -p "$DIST/stage/$n"
	build "${t%/*}" "${t#*/}" "$DIST/stage/$n"
	docs "$DIST/stage/$n"
	archive "$n"
done

for a in $LINUX; do
	n=$(name linux "$a")
	mkdir -p "$DIST/stage/$n"
	build linux "$a" "$DIST/stage/$n"
	docs "$DIST/stage/$n" linux
	archive "$n"
done

# The packages: nfpm reads packaging/nfpm.yaml with STAGE holding what
# comes from this build (the binary, the unit for /usr/bin, man pages
# gzipped as Debian wants them, copyright, changelog).
if [[ -n $SERVERS && -n $PACKAGERS ]]; then
	GOBIN=$(realpath "$DIST/stage") $GO install "$NFPM"
	nfpm=$DIST/stage/nfpm
fi
for a in $SERVERS; do
	[[ -z $PACKAGERS ]] && break
	stage=$DIST/stage/pkg_$(echo "$a" | tr -d /)
	mkdir -p "$stage/man"
	stagebin=$DIST/stage/$(name linux "$a")
	if [[ -x $stagebin/knockgate ]]; then
		cp "$stagebin/knockgate" "$stage/"
	else
		build linux "$a" "$stage"
	fi
	sed 's|@BINDIR@|/usr/bin|g' service/knockgate.service >"$stage/knockgate.service"
	for m in doc/man/*; do gzip -9n <"$m" >"$stage/man/$(basename "$m").gz"; done
	sed "s/@YEAR@/$(date -u -d "@$COMMIT_EPOCH" +%Y)/" packaging/copyright >"$stage/copyright"
	{
		printf 'knockgate (%s-1) unstable; urgency=medium\n\n' "$PKG_VERSION"
		printf '  * Built from commit %s.\n\n' "$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
		printf ' -- knockgate developers <knockgate@users.noreply.github.com>  %s\n' "$(date -u -R -d "@$COMMIT_EPOCH")"
	} | gzip -9n >"$stage/changelog.gz"
	nfpm_arch=${a%%/*}
	[[ $a == arm/v7 ]] && nfpm_arch=arm7
	for p in $PACKAGERS; do
		v=$PKG_VERSION
		if [[ $p == apk ]]; then
			# Alpine's versions allow neither ~ nor + (nor a hash):
			# 0.0_git20261207143022, 1.2.3_p3.
			v=$(echo "$v" | sed -e 's/~git\([0-9]*\)\..*/_git\1/' -e 's/+\([0-9]*\)\.g.*/_p\1/')
		fi
		STAGE=$stage NFPM_ARCH=$nfpm_arch PKG_VERSION=$v \
			"$nfpm" package --config packaging/nfpm.yaml --packager "$p" --target "$DIST/" >/dev/null
	done
done

rm -rf "$DIST/stage"
(cd "$DIST" && sha256sum -- * >SHA256SUMS)
ls "$DIST"
