# otactl — see README.md. Every target works on a fresh machine with Go installed.
GO      ?= go
BIN     := bin/otactl
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/otactl/otactl/pkg/cli.Version=$(VERSION)

.PHONY: all build test test-short bench demo lint fuzz man clean

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

# Benchmarks stay out of CI. Compare runs with benchstat.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Long fuzzing (CI runs only the seed corpora, as part of `make test`).
FUZZTIME ?= 2m
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./pkg/rpc/frame
	$(GO) test -run='^$$' -fuzz='^FuzzDecoder$$' -fuzztime=$(FUZZTIME) ./pkg/transport/serial
	$(GO) test -run='^$$' -fuzz='^FuzzReader$$' -fuzztime=$(FUZZTIME) ./pkg/ota/bundle

demo: build
	scripts/demo.sh

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

man: build
	$(BIN) gen-man --dir man

clean:
	rm -rf bin man
