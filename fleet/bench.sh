#!/usr/bin/env bash
# make bench-fleet: BenchmarkFleet (bench_test.go) of an earlier revision
# (BASE) and of this tree, in turn in the same session, ROUNDS rounds
# alternating which goes first; prints each figure's median and range for
# both. The base runs this tree's benchmark with a benchGrant that only
# writes the map (its member had no Publish): each tree's members as its
# run's were.
set -euo pipefail
base=${1:?usage: bench.sh REV [ROUNDS]}
rounds=${2:-3}
top=$(git rev-parse --show-toplevel)
cd "$top"
rev=$(git rev-parse --short "$base")
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add --detach "$tmp/base" "$rev" >/dev/null 2>&1
cp fleet/bench_test.go "$tmp/base/fleet/bench_test.go"
cat >"$tmp/base/fleet/bench_grant_test.go" <<'GO'
package fleet

import (
	"net/netip"
	"time"
)

// benchGrant: the base's member learns of a grant from its map only.
func benchGrant(nd *node, a netip.Addr, exp time.Time) { nd.local.grant(a, exp) }
GO

bench() { # dir out
	(cd "$1" && go test -run '^$' -bench Fleet -benchtime 1x -count 1 ./fleet/) |
		awk '/^BenchmarkFleet/ { for (i = 3; i < NF; i++) if ($(i+1) ~ /[a-z]/) print $(i+1), $i }' >>"$2"
}
for r in $(seq "$rounds"); do
	echo "round $r/$rounds (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
	if [ $((r % 2)) = 1 ]; then
		bench "$tmp/base" "$tmp/base.txt"; bench "$top" "$tmp/head.txt"
	else
		bench "$top" "$tmp/head.txt"; bench "$tmp/base" "$tmp/base.txt"
	fi
done

summary() { # file -> "name median min max n"
	sort -k1,1 -k2,2g "$1" | awk '
		function flush() { if (n) { m = (n % 2) ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2; printf "%s %.4g %.4g %.4g %d\n", cur, m, v[1], v[n], n } }
		$1 != cur { flush(); cur = $1; n = 0 }
		{ v[++n] = $2 }
		END { flush() }'
}
summary "$tmp/base.txt" >"$tmp/base.sum"
summary "$tmp/head.txt" >"$tmp/head.sum"
printf '%-22s %30s %30s\n' "fleet of 3 (median, range)" "before: $rev" "after: this tree"
join -a1 -a2 -e - -o 0,1.2,1.3,1.4,1.5,2.2,2.3,2.4,2.5 "$tmp/base.sum" "$tmp/head.sum" |
	awk '{ b = ($2 == "-") ? "-" : sprintf("%s (%s-%s, n=%d)", $2, $3, $4, $5);
		h = ($6 == "-") ? "-" : sprintf("%s (%s-%s, n=%d)", $6, $7, $8, $9);
		printf "%-22s %30s %30s\n", $1, b, h }'
