GO      ?= go
GOFLAGS_BUILD = -trimpath -ldflags='-s -w'

.PHONY: all build kernel test
all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/flick ./cmd/flick
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/flickd ./cmd/flickd
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/flick-init ./cmd/flick-init

# The guest kernel, built once per (config fragment, patches, source) and
# cached under $XDG_CACHE_HOME/flick/kernel.
kernel:
	scripts/build-kernel.sh

test: build kernel
	FLICK_KERNEL="$$(scripts/build-kernel.sh)" FLICK_INIT="$(CURDIR)/bin/flick-init" $(GO) test ./...
