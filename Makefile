# valet — the two commands a newcomer needs are `make run` and `make test`.
GO      ?= go
BIN     := bin/valet
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
FUZZTIME ?= 10s
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

VAULT_VERSION := v1.13.0
VAULT_BIN     := deploy/vault/bin/vault

# etcd for make run-ha: the server module valet's tests embed, at the
# version go.mod requires (v3.7.3, Apache-2.0).
ETCD_VERSION = $(shell $(GO) list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
ETCD_BIN     := deploy/etcd/bin/etcd

.PHONY: all build run run-vault run-cloud run-ha test deps unit race fuzz lint tidy-check bench soak vault etcd helm-test clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/valet

## run: start `valet dev` on 127.0.0.1:8750 (data under ./valet-dev-data/)
run: build
	./$(BIN) dev

## run-vault: `valet dev` beside a dev Vault and a throwaway PostgreSQL, for
## the demo-vault and demo-db roles
run-vault: build vault
	./deploy/dev-vault.sh

## run-cloud: `valet dev` beside the local stand-ins for cloud services
## (cmd/valet-cloudtest: AWS STS and IAM, GitHub, Google IAM Credentials), for the
## aws-demo, gh-demo and gcp-demo roles
run-cloud: build
	$(GO) build -o bin/valet-cloudtest ./cmd/valet-cloudtest
	./deploy/dev-cloud.sh

## run-ha: a local 3-member etcd cluster and two valet replicas on it,
## sharing one data directory (./valet-ha-data/), behind one address
## (127.0.0.1:8750, a round-robin proxy that health-checks /readyz)
run-ha: build etcd
	./deploy/dev-ha.sh

## test: vet, the whole suite with the race detector, then each fuzz target
## briefly. The suite needs a C compiler for the race detector, a real Vault
## (built by `make vault`), PostgreSQL and Chromium (Debian's gcc, postgresql
## and chromium packages; installed here when running as root without them).
test: deps lint race fuzz helm-test

## deps: what the test suite needs besides Go
deps: vault
	@if ! command -v gcc >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing gcc and libc6-dev (go test -race needs cgo)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; \
	  else \
	    echo "gcc is missing (go test -race needs cgo): sudo apt-get install -y gcc libc6-dev"; exit 1; \
	  fi; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "$$VALET_PG_BIN" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing PostgreSQL (Debian package postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "PostgreSQL is missing: sudo apt-get install -y postgresql (or set VALET_PG_BIN)"; exit 1; \
	  fi; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Chromium (Debian package chromium) for the console's browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "Chromium is missing: sudo apt-get install -y chromium"; exit 1; \
	  fi; \
	fi

## unit: the suite without the race detector (faster)
unit:
	$(GO) test -count=1 ./...

race:
	$(GO) test -race -count=1 -timeout 20m ./...

## fuzz: run every fuzz target for FUZZTIME (default 10s) each
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $$pkg; \
	  done; \
	done

## lint: gofmt, go vet, staticcheck, and the dependency rule of
## docs/ARCHITECTURE.md (no package imports one of a higher layer)
lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) test -count=1 -run '^TestPackageLayers$$' ./cmd/valet

tidy-check:
	@cp go.mod /tmp/valet-go.mod.bak; cp go.sum /tmp/valet-go.sum.bak
	@$(GO) mod tidy
	@if ! git diff --quiet -- go.mod go.sum; then \
	  echo "go.mod/go.sum are not tidy:"; git --no-pager diff -- go.mod go.sum; \
	  cp /tmp/valet-go.mod.bak go.mod; cp /tmp/valet-go.sum.bak go.sum; exit 1; fi

## bench: the performance report (see README, Performance); BENCH_FLAGS adds
## flags of cmd/valet-bench, e.g. BENCH_FLAGS="-profile prof -repeat 5"
bench: build etcd
	$(GO) run ./cmd/valet-bench -valet $(BIN) $(BENCH_FLAGS)

## soak: 10 minutes at 500 mints/s with releases and renewals (not CI); prints
## 5xx, RSS, Go heap, goroutines, database and archive size and the expiry
## backlog each minute (see README, Performance)
soak: build
	$(GO) run ./cmd/valet-bench -valet $(BIN) -soak 10m -soak-rate 500

## vault: build the Vault test server (MPL-2.0 v1.13.0) from the Go module
## proxy into deploy/vault/bin/vault; rebuilt only when the version changes
vault: $(VAULT_BIN)

$(VAULT_BIN): deploy/vault/go.mod Makefile
	@if [ -x $@ ] && [ "$$(cat $@.version 2>/dev/null)" = "$(VAULT_VERSION)" ]; then touch $@; exit 0; fi; \
	set -e; cd deploy/vault; \
	go get github.com/hashicorp/vault@$(VAULT_VERSION); \
	go build -trimpath -o bin/vault github.com/hashicorp/vault; \
	echo $(VAULT_VERSION) > bin/vault.version; \
	GODEBUG=x509negativeserial=1 ./bin/vault version

## helm-test: render deploy/helm/valet with Helm's own engine, check both
## shapes (single bbolt, replicas on etcd) against the Kubernetes API types
## and valet's config loader, and compare deploy/kubernetes/*.yaml with
## the rendering (HELM_TEST_FLAGS=-update rewrites them). Its own module,
## deploy/helm/go.mod, keeps Helm out of valet's go.mod.
helm-test: build
	cd deploy/helm && VALET_BIN=$(abspath $(BIN)) $(GO) test -count=1 ./... $(HELM_TEST_FLAGS)

## etcd: build the etcd server (go.etcd.io/etcd/server/v3 at go.mod's
## version) into deploy/etcd/bin/etcd; rebuilt only when the version changes
etcd:
	@if [ -x $(ETCD_BIN) ] && [ "$$(cat $(ETCD_BIN).version 2>/dev/null)" = "$(ETCD_VERSION)" ]; then exit 0; fi; \
	set -e; mkdir -p $(dir $(ETCD_BIN)); \
	$(GO) build -trimpath -o $(ETCD_BIN) go.etcd.io/etcd/server/v3; \
	echo $(ETCD_VERSION) > $(ETCD_BIN).version; \
	./$(ETCD_BIN) --version | head -1

clean:
	rm -rf bin
