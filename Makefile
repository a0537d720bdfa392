# gatehouse — build, test and set-up. Run as root for the privileged tests:
#   make test        installs what is missing (make deps), then every test
#   make demo        (see README) the demo topology in network namespaces
#   make demo-connector  the same for a site with no inbound port (gateway + connector)
#   make demo-ha     three nodes behind a BGP ECMP router: one killed, one drained, clients go on

GO        ?= go
BIN       := bin/gatehouse
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
# Debian packages the build and the tests need (each named by what uses it).
# The BPF build needs clang and llvm (llvm-strip) only: its headers are
# vendored in bpf/include.
DEB_PACKAGES := \
	clang llvm \
	nftables iproute2 bpftool \
	minisign openssl curl ca-certificates s3270 tinyproxy chromium \
	prometheus strace systemd util-linux mount keepalived bird2 \
	lintian help2man
# Test timeout for the whole suite; CI allows 90 minutes, we aim for 15.
TEST_TIMEOUT ?= 20m

CONFIG ?= /etc/gatehouse/gatehouse.yaml

.PHONY: all build run demo demo-connector demo-ha install deb deps bench bench-go test test-unit generate generate-check lint bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/gatehouse

# run is the main job: set up, build, and run the daemon on $(CONFIG).
run: deps build
	$(BIN) check -c $(CONFIG)
	exec $(BIN) run -c $(CONFIG)

# demo builds gatehouse and runs the demo topology in network namespaces (as
# root); Ctrl-C removes everything it created. DEMO_FLAGS=--check runs every
# step once and exits (0 only if every step passed).
demo: deps build
	@[ "$$(id -u)" = 0 ] || { echo "make demo: needs root: sudo make demo"; exit 1; }
	$(GO) run ./test/demo --gatehouse $(BIN) $(DEMO_FLAGS)

# demo-connector is the demo of a site with no inbound port: the gateway on
# the cloud side, a firewall that lets nothing new in, the connector inside
# dialling out. DEMO_FLAGS as for demo.
demo-connector: deps build
	@[ "$$(id -u)" = 0 ] || { echo "make demo-connector: needs root: sudo make demo-connector"; exit 1; }
	$(GO) run ./test/demo --connector --gatehouse $(BIN) $(DEMO_FLAGS)

# demo-ha is the demo of a fleet: three gatehouse nodes announce one service
# address over BGP to a BIRD router that spreads clients over them (ECMP);
# one node is killed, another drained, while a client keeps requesting.
# DEMO_FLAGS as for demo.
demo-ha: deps build
	@[ "$$(id -u)" = 0 ] || { echo "make demo-ha: needs root: sudo make demo-ha"; exit 1; }
	$(GO) run ./test/demo --ha --gatehouse $(BIN) $(DEMO_FLAGS)

# install puts the binary, the systemd unit and (only if none exists) the
# example configuration in place. PREFIX and DESTDIR as usual.
PREFIX  ?= /usr/local
DESTDIR ?=
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/gatehouse
	install -D -m 0644 deploy/gatehouse.service $(DESTDIR)/etc/systemd/system/gatehouse.service
	install -d -m 0750 $(DESTDIR)/etc/gatehouse
	[ -e $(DESTDIR)/etc/gatehouse/gatehouse.yaml ] || install -m 0600 deploy/gatehouse.yaml $(DESTDIR)/etc/gatehouse/gatehouse.yaml
	install -d -m 0700 $(DESTDIR)/var/lib/gatehouse
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; edit /etc/gatehouse/gatehouse.yaml, check it with: gatehouse check, then: systemctl enable --now gatehouse"

# deb builds the Debian package bin/gatehouse_<version>_<arch>.deb with nfpm
# (fetched through the Go module proxy at the pinned version); the version
# comes from git describe. deploy/deb/README.md says what it installs.
deb:
	OUT=bin GO=$(GO) deploy/deb/build.sh

# deps is idempotent: it installs only what is missing and says so.
deps:
	@command -v $(GO) >/dev/null 2>&1 || { echo "make deps: Go is not installed (need Go 1.26: https://go.dev/dl)"; exit 1; }
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install:$$missing"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "make deps: Debian packages present"; fi
	@# The proxy workers' user, as the package's postinst creates it.
	@if getent passwd gatehouse >/dev/null; then echo "make deps: system user gatehouse present"; \
	elif [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to create the system user gatehouse (the proxy workers' user)"; exit 1; \
	elif command -v adduser >/dev/null 2>&1; then \
		adduser --system --group --quiet --no-create-home --home /var/lib/gatehouse --gecos "gatehouse proxy workers" gatehouse && echo "make deps: created the system user gatehouse"; \
	else \
		useradd --system --user-group --no-create-home --home-dir /var/lib/gatehouse --comment "gatehouse proxy workers" --shell /usr/sbin/nologin gatehouse && echo "make deps: created the system user gatehouse"; \
	fi
	@$(GO) mod download
	@echo "make deps: Go modules present"

# test runs every test; as root the privileged ones (namespaces, XDP,
# nftables) run too. GATEHOUSE_REQUIRE_PRIV=1 turns their skips into failures.
test: deps generate-check lint
	@[ "$$(id -u)" = 0 ] || echo "make test: not root: privileged tests will SKIP (run as root for the full suite)"
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# test-unit runs what needs neither root nor the kernel.
test-unit:
	$(GO) test -count=1 -short ./...

generate: deps
	$(GO) generate ./bpf/...

# generate-check fails when the committed generated files differ from what
# the pinned toolchain produces.
generate-check: generate
	@git diff --exit-code --stat -- bpf/ || { echo "generated BPF files differ from the committed ones: run make generate and commit"; exit 1; }

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Debian packages only the benchmarks need: the peers gatehouse is measured against.
BENCH_PACKAGES := haproxy nginx libnginx-mod-stream stunnel4 iptables strace linux-perf ethtool

# bench (root): bench/run.sh measures gatehouse beside XDP/nftables/iptables,
# HAProxy, nginx and stunnel in one run (about 8 minutes, 20 at most), bounded
# and on loopback or its own namespaces only, and rewrites bench/RESULTS.md.
bench: deps
	@[ "$$(id -u)" = 0 ] || { echo "make bench: run as root (namespaces, XDP, nftables)"; exit 1; }
	@missing=""; for p in $(BENCH_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then echo "make bench: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	bench/run.sh

# bench-go: every Go benchmark on its own.
bench-go: deps
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

clean:
	rm -rf bin
	$(GO) clean -testcache
