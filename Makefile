# otactl — see README.md. Every target works on a fresh machine with Go installed.
GO      ?= go
BIN     := bin/otactl
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/otactl/otactl/pkg/cli.Version=$(VERSION)

.PHONY: all build test test-short bench demo lint fuzz powercut man completions install uninstall release clean

# make install: where things go (PREFIX=$$HOME/.local needs no root; DESTDIR
# stages an install for a package).
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

# Man pages dated by the last commit, not by the day they were made.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
export SOURCE_DATE_EPOCH

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/otactl

# The whole suite under the race detector. When mosquitto is installed (and
# OTACTL_TEST_MOSQUITTO is not already set) a private mosquitto is started on
# loopback for the real-broker tests; without it those tests skip, saying so.
# cmd/otactl runs the real binary against real emulators (fault matrix, docs
# that run, fleets): about 4 minutes on 2 idle cores under -race, so the
# per-package limit is above go test's default 10 minutes.
test:
	scripts/with-mosquitto.sh $(GO) test -race -count=1 -timeout=20m ./...

test-short:
	$(GO) test -short ./...

# Benchmarks stay out of CI. Like `make test`, under a private mosquitto when
# it is installed, for the benchmarks through a real broker
# (docs/benchmarks.md). One package at a time (-p 1: a benchmark that times
# whole processes must not share the CPU with another one), each benchmark
# once (-benchtime=1x: most time whole rollouts or pushes; compare runs with
# benchstat, or repeat one with -count). Under 10 minutes on 2 cores; the
# figures of issue 8 are repeated at the end, each next to its goal.
bench:
	@out=$$(mktemp); \
	{ scripts/with-mosquitto.sh $(GO) test -p 1 -run='^$$' -bench=. -benchtime=1x -benchmem -timeout=20m ./...; echo $$? > $$out.rc; } 2>&1 | tee $$out; \
	rc=$$(cat $$out.rc); \
	echo; echo "== issue 8 figures (docs/benchmarks.md):"; grep '^issue 8 figure' $$out || echo "(none: mosquitto missing?)"; \
	rm -f $$out $$out.rc; exit $$rc

# Long fuzzing, one target after the other (CI runs only the seed corpora,
# as part of `make test`). FUZZFLAGS=-parallel=1 keeps it to one core.
FUZZTIME ?= 2m
FUZZFLAGS ?=
FUZZ = $(GO) test -run='^$$' -fuzztime=$(FUZZTIME) -timeout=0 $(FUZZFLAGS)
fuzz:
	$(FUZZ) -fuzz='^FuzzParse$$' ./pkg/rpc/frame
	$(FUZZ) -fuzz='^FuzzDecoder$$' ./pkg/transport/serial
	$(FUZZ) -fuzz='^FuzzReader$$' ./pkg/ota/bundle
	$(FUZZ) -fuzz='^FuzzManifest$$' ./pkg/ota/bundle
	$(FUZZ) -fuzz='^FuzzRewriteSignatures$$' ./pkg/ota/bundle
	$(FUZZ) -fuzz='^FuzzParsePort$$' ./pkg/transport

# The whole power-cut matrix (docs/reliability.md): every flash write of
# every flow, cut and torn. `make test` runs a subset of it.
powercut:
	OTACTL_POWERCUT=all $(GO) test -race -count=1 -run='^TestPowerCutMatrix$$' -v ./pkg/device/emulator

demo: build
	scripts/demo.sh

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Where `make man` and `make completions` write (and `make install` takes
# them from).
MANOUT  ?= man
COMPOUT ?= completions

man: build
	rm -rf $(MANOUT)
	$(BIN) gen-man --dir $(MANOUT)

completions: build
	mkdir -p $(COMPOUT)
	$(BIN) completion bash >$(COMPOUT)/otactl.bash
	$(BIN) completion zsh >$(COMPOUT)/_otactl
	$(BIN) completion fish >$(COMPOUT)/otactl.fish

# The binary, its man pages and the bash, zsh and fish completions.
install: build man completions
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/otactl
	install -m 0644 $(MANOUT)/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(COMPOUT)/otactl.bash $(DESTDIR)$(BASHCOMPDIR)/otactl
	install -m 0644 $(COMPOUT)/_otactl $(DESTDIR)$(ZSHCOMPDIR)/_otactl
	install -m 0644 $(COMPOUT)/otactl.fish $(DESTDIR)$(FISHCOMPDIR)/otactl.fish

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/otactl $(DESTDIR)$(MANDIR)/man1/otactl.1 $(DESTDIR)$(MANDIR)/man1/otactl-*.1
	rm -f $(DESTDIR)$(BASHCOMPDIR)/otactl $(DESTDIR)$(ZSHCOMPDIR)/_otactl $(DESTDIR)$(FISHCOMPDIR)/otactl.fish

# Static binaries (no cgo) for every release platform, the version stamped,
# in dist/ with SHA256SUMS (check with: cd dist && sha256sum -c SHA256SUMS).
PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64
release:
	rm -rf dist
	mkdir -p dist
	set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ "$$os" = windows ] && ext=.exe; \
		echo "dist/otactl-$(VERSION)-$$os-$$arch$$ext"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" \
			-o "dist/otactl-$(VERSION)-$$os-$$arch$$ext" ./cmd/otactl; \
	done
	cd dist && if command -v sha256sum >/dev/null; then sha256sum otactl-*; else shasum -a 256 otactl-*; fi >SHA256SUMS
	@host=dist/otactl-$(VERSION)-$$($(GO) env GOOS)-$$($(GO) env GOARCH); \
	if [ -x "$$host" ]; then v=$$("$$host" version) && echo "$$v" && \
		case "$$v" in "otactl version $(VERSION) "*) ;; *) echo "$$host: not stamped $(VERSION)" >&2; exit 1;; esac; fi

clean:
	rm -rf bin man completions dist
