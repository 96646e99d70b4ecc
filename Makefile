# zp — see README.md. `make run` and `make test` work on a fresh Debian 12
# machine with Go installed: they install what they need themselves.
GO      ?= go
BIN     := bin
FUZZTIME ?= 10s

.PHONY: all build libzp deps run test vet unit e2e fuzz bench bench-scale bench-broadcast clean fleet-up fleet-down

all: build

# zp and zpc are static (pure-Go user and DNS lookups: no dynamic loader, a
# millisecond less per command); zpd keeps cgo so that NSS (LDAP, sssd)
# accounts resolve. bench/README.md has the figures.
CLIENT_TAGS := osusergo,netgo
build:
	$(GO) build -tags $(CLIENT_TAGS) -o $(BIN)/ ./cmd/zp ./cmd/zpc
	$(GO) build -o $(BIN)/ ./cmd/zpd

# libzp, the C library (include/zp.h): lib/libzp.so and lib/libzp.a.
LIB := lib
libzp:
	$(GO) build -buildmode=c-shared -o $(LIB)/libzp.so ./libzp
	$(GO) build -buildmode=c-archive -o $(LIB)/libzp.a ./libzp
	@rm -f $(LIB)/libzp.h # cgo's; include/zp.h is the documented header
	cp $(LIB)/libzp.so python/zp/libzp.so # bundled by pip install ./python

# System packages the tests use (libzmq for interop, iproute2 for network
# namespaces, sshd/rsync for benchmarks); installed only when missing.
deps:
	@bash scripts/deps.sh

# Build, start zpd on loopback with fresh keys, run a few zp commands, stop.
run: build
	@bash scripts/demo.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# Both fail when a test leaves a process behind (scripts/no-leftovers.sh).
unit:
	@bash scripts/no-leftovers.sh $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: build
	@bash scripts/no-leftovers.sh $(GO) test -count=1 -timeout 30m ./e2e/...

# Every fuzz target for FUZZTIME each, on top of the checked-in corpus.
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

test: deps vet unit e2e fuzz

# Also writes the tables as JSON under bench/results/ (named by time and commit).
bench: build
	@RESULTS_DIR=$${RESULTS_DIR:-bench/results} bash bench/bench.sh

# 1× and BENCH_SCALE× (10) the work: 5,000 and 50,000 files, 1 and 10 GiB piped (bench/README.md).
bench-scale: build
	@GROUPS_TO_RUN=rows_scale RESULTS_DIR=$${RESULTS_DIR:-bench/results} bash bench/bench.sh

# Issue 14: one file to 1, 10 and 50 agents, zpc --fleet vs parallel scp and rsync (root).
bench-broadcast: build
	@RESULTS_DIR=$${RESULTS_DIR:-bench/results} bash bench/broadcast.sh

# The compose fleet (docker-compose.yml): a hub, three agents, Prometheus and a
# client, images built FROM scratch (needs a running Docker engine).
fleet-up:
	@bash scripts/fleet-up.sh

fleet-down:
	docker-compose down -v --remove-orphans

clean:
	rm -rf $(BIN) $(LIB)
