# otactl — see README.md. Every target works on a fresh machine with Go installed.
GO      ?= go
BIN     := bin/otactl
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/otactl/otactl/pkg/cli.Version=$(VERSION)

.PHONY: all build test test-short bench demo lint fuzz powercut man clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/otactl

# The whole suite under the race detector. When mosquitto is installed (and
# OTACTL_TEST_MOSQUITTO is not already set) a private mosquitto is started on
# loopback for the real-broker tests; without it those tests skip, saying so.
test:
	scripts/with-mosquitto.sh $(GO) test -race -count=1 ./...

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

man: build
	$(BIN) gen-man --dir man

clean:
	rm -rf bin man
