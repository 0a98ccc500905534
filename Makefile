# knockgate. The generated bpf2go files are committed, so `make build` needs
# only Go; `make generate` (clang, llvm, libbpf-dev) rebuilds them.
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BPF2GO_CC ?= clang
BPF2GO_STRIP ?= llvm-strip
BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror
export BPF2GO_CC BPF2GO_STRIP BPF2GO_CFLAGS

GENERATED := bpf test/bench

# make install: the binary, the systemd unit and the example config.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
CONFDIR ?= /etc/knockgate

.PHONY: all build generate check-generated deps test fuzz bench bench-compare bench-peers bench-smoke bench-fleet install clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o knockgate ./cmd/knockgate

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

# A fleet of three embedded NATS servers on 127.0.0.1: grant propagation
# latency p50/p99, grants a second of a burst of 10 000, CPU and heap per
# server at rest; of FLEET_BASE (default: the fleet before grants were
# published on events) and of this tree, in turn, FLEET_ROUNDS rounds:
# before/after figures from one session. About 40 s a round here.
FLEET_BASE ?= b63c966
FLEET_ROUNDS ?= 3
bench-fleet:
	./fleet/bench.sh $(FLEET_BASE) $(FLEET_ROUNDS)

# A seconds-long run of the same, for CI: it must keep building and working.
bench-smoke: deps
	$(GO) run ./test/bench/cmd/bench-peers --smoke --out $${TMPDIR:-/tmp}/bench-smoke.png

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

clean:
	rm -f knockgate
