# knockgate. The generated bpf2go files are committed, so `make build` needs
# only Go; `make generate` (clang, llvm, libbpf-dev) rebuilds them.
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# When the source was committed: the client refuses to stamp an SPA packet
# with a clock earlier than that.
BUILT_AT ?= $(shell date -u -d @$$(git log -1 --format=%ct 2>/dev/null || date +%s) +%Y-%m-%dT%H:%M:%SZ)
BPF2GO_CC ?= clang
BPF2GO_STRIP ?= llvm-strip
# <asm/types.h>, which the kernel's UAPI headers include, sits in the host's
# multiarch directory (Debian: /usr/include/x86_64-linux-gnu,
# /usr/include/aarch64-linux-gnu, ...): ask the compiler which it is.
MULTIARCH ?= $(shell $(BPF2GO_CC) -print-multiarch 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo $$(uname -m)-linux-gnu)
BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror -I/usr/include/$(MULTIARCH)
export BPF2GO_CC BPF2GO_STRIP BPF2GO_CFLAGS

GENERATED := bpf test/bench

# make install: the binary, the systemd unit and the example config.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
CONFDIR ?= /etc/knockgate

.PHONY: all build generate check-generated deps test fuzz bench bench-compare bench-peers bench-scale bench-smoke bench-fleet install clean \
	dist deb cross vet-clients test-qemu lintian check-deb

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION) -X main.builtAt=$(BUILT_AT)" -o knockgate ./cmd/knockgate

generate:
	$(GO) generate ./bpf/... ./test/bench/...

# The generated objects must be what the sources compile to: regenerate and
# compare with what was there (committed or not).
check-generated:
	@sum=$$(cat $$(find $(GENERATED) -name '*_bpfe[lb].*' | sort) | sha256sum); \
	$(MAKE) --no-print-directory generate >/dev/null || exit 1; \
	[ "$$sum" = "$$(cat $$(find $(GENERATED) -name '*_bpfe[lb].*' | sort) | sha256sum)" ] || \
		{ echo "generated bpf2go files were stale: make generate rebuilt them; commit the result" >&2; exit 1; }

deps:
	@./.ci/deps

# Everything, as root: unit tests, BPF_PROG_TEST_RUN tests and the
# veth/namespace end-to-end tests (which build and run the real binary).
test: deps check-generated
	$(GO) vet ./...
	$(GO) test -count=1 ./...

# Native Go fuzzing, FUZZTIME per target (default 1m): the datapath against
# its reference model (random scenarios through both; root), then every
# parser of user input. make fuzz FUZZ=FuzzDatapath FUZZTIME=1h for one.
FUZZTIME ?= 1m
FUZZ ?= test/model:FuzzDatapath policy:FuzzParsePorts policy:FuzzParseDuration policy:FuzzParseCIDR \
	config:FuzzConfigFile spa:FuzzParseKeys spa:FuzzParsePacket
fuzz:
	@for t in $(FUZZ); do \
		case $$t in *:*) pkg=$${t%%:*}; name=$${t#*:};; *) pkg=test/model; name=$$t;; esac; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg/ || exit 1; \
	done

# Per-packet cost of each path of the XDP program beside a bare XDP_DROP
# program, through BPF_PROG_TEST_RUN.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 5x -count 3 ./bpf/

# The same per-path benchmark of another revision (BASE, default the last
# commit) and of this tree, alternating in one run: before/after figures
# (BENCH=PATTERN to pick benchmarks).
BASE ?= HEAD
ROUNDS ?= 3
bench-compare:
	./test/bench/compare.sh $(BASE) $(ROUNDS)

# Issue 3: knockgate against an nftables knock gate, an iptables `recent` gate
# and two floors, under floods over veth; prints a table and writes
# bench-peers.png. About 14 minutes (BENCH_PEERS_FLAGS=--rounds=3: 9). Root.
bench-peers: deps
	$(GO) run ./test/bench/cmd/bench-peers $(BENCH_PEERS_FLAGS)

# Floods from one source and from 10^6 (spoofed strangers; granted sources
# over 16 services, 10^6 grants in the map), per packet above an XDP_DROP
# gate, with bench-peers' topology and generator; prints the ratios and
# issue 17's three bounds, met or not (reported, never enforced). 12-22
# minutes on a 2-CPU VM, 9-18 of them making the 10^6 grants. Root.
bench-scale: deps
	$(GO) run ./test/bench/cmd/bench-scale $(BENCH_SCALE_FLAGS)

# A fleet of three embedded NATS servers on 127.0.0.1: grant propagation
# latency p50/p99, grants a second of a burst of 10 000, CPU and heap per
# server at rest; of FLEET_BASE (default: the fleet before grants were
# published on events) and of this tree, in turn, FLEET_ROUNDS rounds:
# before/after figures from one session. About 40 s a round here.
FLEET_BASE ?= b63c966
FLEET_ROUNDS ?= 3
bench-fleet:
	./fleet/bench.sh $(FLEET_BASE) $(FLEET_ROUNDS)

# Seconds-long runs of bench-peers and bench-scale, for CI: they must keep
# building and working.
bench-smoke: deps
	$(GO) run ./test/bench/cmd/bench-peers --smoke --out $${TMPDIR:-/tmp}/bench-smoke.png
	$(GO) run ./test/bench/cmd/bench-scale --smoke

# The config file is never overwritten: an existing one stays, and the
# example goes beside it as knockgate.toml.example.
install: build
	install -D -m 0755 knockgate $(DESTDIR)$(BINDIR)/knockgate
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|g' service/knockgate.service > $(DESTDIR)$(UNITDIR)/knockgate.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/knockgate.service
	install -d -m 0755 $(DESTDIR)$(CONFDIR)
	if [ -e $(DESTDIR)$(CONFDIR)/knockgate.toml ]; then \
		install -m 0644 service/knockgate.toml $(DESTDIR)$(CONFDIR)/knockgate.toml.example; \
	else \
		install -m 0644 service/knockgate.toml $(DESTDIR)$(CONFDIR)/knockgate.toml; \
	fi

# Release archives for every client and server target, SHA-256 sums, and
# .deb, .rpm and .apk packages of the Linux server targets (nfpm, run as a
# tool), in dist/ (packaging/dist.sh says what can be narrowed).
dist:
	VERSION=$(VERSION) ./packaging/dist.sh

# The linux/amd64 .deb alone, and what lintian says of it (no error allowed).
deb:
	VERSION=$(VERSION) CLIENTS= LINUX= SERVERS=amd64 PACKAGERS=deb ./packaging/dist.sh
lintian: deb
	lintian --fail-on error dist/*.deb
# And what it does when installed: dpkg in a scratch root (this machine's
# packages untouched) installs, upgrades keeping an edited config, removes
# and purges it (packaging/check-deb.sh).
check-deb: lintian
	./packaging/check-deb.sh dist/*_amd64.deb

# The client targets and the server targets (packaging/dist.sh's lists):
# every one builds; the client's packages pass go vet on the client systems.
# (The server targets build the whole tree; the other Linux ones the binary.)
CLIENT_TARGETS := windows/amd64 windows/arm64 darwin/arm64 darwin/amd64 freebsd/amd64 freebsd/arm64 openbsd/amd64 openbsd/arm64
SERVER_ARCHES := amd64 arm64 arm riscv64 386
OTHER_LINUX_ARCHES := loong64 mips mipsle mips64 mips64le ppc64 ppc64le s390x
cross:
	@for t in $(CLIENT_TARGETS); do \
		echo "build $$t"; GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) build -o /dev/null ./cmd/knockgate || exit 1; \
	done
	@for a in $(SERVER_ARCHES); do \
		echo "build linux/$$a ./..."; GOOS=linux GOARCH=$$a GOARM=7 $(GO) build -o /dev/null ./... || exit 1; \
	done
	@for a in $(OTHER_LINUX_ARCHES) arm; do \
		echo "build linux/$$a"; GOOS=linux GOARCH=$$a GOARM=6 $(GO) build -o /dev/null ./cmd/knockgate || exit 1; \
	done
# The client elsewhere is portable code: nothing of cilium/ebpf, netlink or
# x/sys/unix (nor the fleet's NATS) may be among its imports.
CLIENT_FORBIDDEN := github.com/cilium/ebpf|github.com/vishvananda/netlink|golang.org/x/sys/unix|github.com/nats-io
vet-clients:
	@for t in $(CLIENT_TARGETS); do \
		echo "vet $$t"; GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./cmd/knockgate ./spa ./policy || exit 1; \
		bad=$$(GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) list -deps ./cmd/knockgate | grep -E '^($(CLIENT_FORBIDDEN))(/|$$)'); \
		[ -z "$$bad" ] || { echo "the client for $$t imports $$bad" >&2; exit 1; }; \
	done
	@echo "vet linux -tags knockgate_portable"; $(GO) vet -tags knockgate_portable ./cmd/knockgate

# The client's tests (and the BPF-free layout check) of linux/arm (ARMv7)
# and linux/arm64 builds, under qemu-user. BPF itself is not emulated: the
# tests that load a program are skipped by name here. The layout check of
# linux/386 (32-bit, uint64 aligned to 4, like arm) runs natively on amd64.
QEMU_SKIP := TestGateLifecycle
test-qemu:
	GOARCH=arm GOARM=7 $(GO) test -exec qemu-arm -count=1 -timeout 5m -skip '$(QEMU_SKIP)' ./policy/ ./spa/ ./config/ ./cmd/knockgate/
	GOARCH=arm GOARM=7 $(GO) test -exec qemu-arm -count=1 -timeout 5m -run 'TestSharedStructLayout' ./bpf/
	GOARCH=arm64 $(GO) test -exec qemu-aarch64 -count=1 -timeout 5m -skip '$(QEMU_SKIP)' ./policy/ ./spa/ ./config/ ./cmd/knockgate/
	GOARCH=arm64 $(GO) test -exec qemu-aarch64 -count=1 -timeout 5m -run 'TestSharedStructLayout' ./bpf/
	if [ "$$($(GO) env GOHOSTARCH)" = amd64 ]; then GOARCH=386 $(GO) test -count=1 -run 'TestSharedStructLayout' ./bpf/; fi

clean:
	rm -rf knockgate dist
