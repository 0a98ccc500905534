#!/usr/bin/env bash
# make bench-compare BASE=REV: the per-path benchmark (bpf/bench_test.go) of
# another revision and of this tree, run in turn in the same session (ROUNDS
# rounds, alternating which goes first), each path beside its own XDP_DROP
# floor. Prints, per path, the median and range of ns above the floor for
# both, and the difference of the medians. Root.
set -euo pipefail
base=${1:?usage: compare.sh REV [ROUNDS]}
rounds=${2:-3}
# BENCH picks benchmarks (a go test -bench pattern).
pattern=${BENCH:-Knockgate|Stranger}
top=$(git rev-parse --show-toplevel)
cd "$top"
rev=$(git rev-parse --short "$base")
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add --detach "$tmp/base" "$rev" >/dev/null 2>&1
# OVERLAY: a directory of files copied over the base tree (a benchmark the
# base revision lacks, written against its API).
[ -n "${OVERLAY:-}" ] && cp -r "$OVERLAY"/. "$tmp/base"/

# A benchmark that fails (a soundness check of its own, say the knock path's
# count of advances, on a machine other work keeps busy) is shown and run
# once more; a second failure ends the comparison.
bench() { # dir out
	local raw="$tmp/raw.txt"
	for try in 1 2; do
		if (cd "$1" && go test -run '^$' -bench "$pattern" -benchtime 5x -count 2 ./bpf/) >"$raw" 2>&1; then
			awk '/^Benchmark/ { name=$1; sub(/^Benchmark(Knockgate)?\/?/, "", name); sub(/-[0-9]+$/, "", name);
				for (i = 2; i < NF; i++) if ($(i+1) == "ns-above-floor") print name, $i }' "$raw" >>"$2"
			return 0
		fi
		echo "benchmarks of $1 failed (try $try of 2):" >&2
		grep -v -E '^Benchmark.*ns/pkt' "$raw" | tail -20 >&2
	done
	return 1
}
for r in $(seq "$rounds"); do
	echo "round $r/$rounds" >&2
	if [ $((r % 2)) = 1 ]; then
		bench "$tmp/base" "$tmp/base.txt"; bench "$top" "$tmp/head.txt"
	else
		bench "$top" "$tmp/head.txt"; bench "$tmp/base" "$tmp/base.txt"
	fi
done

summary() { # file -> "name median min max n"
	sort -k1,1 -k2,2g "$1" | awk '
		function flush() { if (n) { m = (n % 2) ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2; printf "%s %.1f %.1f %.1f %d\n", cur, m, v[1], v[n], n } }
		$1 != cur { flush(); cur = $1; n = 0 }
		{ v[++n] = $2 }
		END { flush() }'
}
summary "$tmp/base.txt" >"$tmp/base.sum"
summary "$tmp/head.txt" >"$tmp/head.sum"
printf '%-30s %26s %26s %10s\n' "ns above XDP_DROP floor" "base $rev" "this tree" "change"
join -a1 -a2 -e - -o 0,1.2,1.3,1.4,1.5,2.2,2.3,2.4,2.5 "$tmp/base.sum" "$tmp/head.sum" |
	awk '{ b = ($2 == "-") ? "-" : sprintf("%.1f (%.1f-%.1f, n=%d)", $2, $3, $4, $5);
		h = ($6 == "-") ? "-" : sprintf("%.1f (%.1f-%.1f, n=%d)", $6, $7, $8, $9);
		d = ($2 == "-" || $6 == "-") ? "" : sprintf("%+.1f", $6 - $2);
		printf "%-30s %26s %26s %10s\n", $1, b, h, d }'
