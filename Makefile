# Two entry points on a fresh Debian 12 machine (as root): `make demo` and `make test`.
APT_PACKAGES := build-essential python3 libnetfilter-queue-dev libmnl-dev libxdp-dev libbpf-dev \
                iptables iproute2 ethtool iperf netsniff-ng procps systemd clang clang-format bird2 curl \
                etcd-server etcd-client prometheus
# node-gyp builds against the headers installed with Node (no download: only npm and Debian are reachable).
NODE_GYP := node_modules/.bin/node-gyp
NODEDIR ?= $(shell npm config get nodedir 2>/dev/null | grep -v '^undefined$$' || echo /usr)
VITEST := node_modules/.bin/vitest

.PHONY: all deps build addon ts lint test unit integration bench soak demo clean

all: build

# Install only what is missing, so a developer's re-run does not hit the network. bird2's package
# starts a BIRD in the root namespace, etcd-server an etcd, prometheus a Prometheus: stop and
# disable them (the lab and the tests run their own in namespaces).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	case "$$missing" in *bird2*) systemctl disable --now bird 2>/dev/null || \
	  { service bird stop; update-rc.d bird disable; } >/dev/null 2>&1 || true;; esac; \
	case "$$missing" in *etcd-server*) systemctl disable --now etcd 2>/dev/null || \
	  { service etcd stop; update-rc.d etcd disable; } >/dev/null 2>&1 || true;; esac; \
	case "$$missing" in *prometheus*) systemctl disable --now prometheus 2>/dev/null || \
	  { service prometheus stop; update-rc.d prometheus disable; } >/dev/null 2>&1 || true;; esac

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund

addon: node_modules/.package-lock.json
	$(NODE_GYP) rebuild --silent --nodedir=$(NODEDIR)

ts: node_modules/.package-lock.json
	node_modules/.bin/tsc -p tsconfig.json

build: deps addon ts

# Biome lints and formats the TypeScript (biome.json; `biome check --write .` fixes most of it),
# clang-format the C++ addons and the BPF C (.clang-format), and no source line is over 140
# characters (bench output quoted in docs/ and the conformance vectors are data, kept as they are).
LINE_CHECKED = $(shell git ls-files '*.ts' '*.mjs' '*.cc' '*.h' '*.c' Makefile binding.gyp package.json 'bin/*' 'contrib/*' 2>/dev/null)
lint: deps node_modules/.package-lock.json
	node_modules/.bin/biome check .
	clang-format --dry-run --Werror native/*.cc native/*.h native/bpf/*.c native/bpf/*.h
	@awk 'length > 140 { print FILENAME ":" FNR ": " length " characters (at most 140)"; bad = 1 } END { exit bad }' $(LINE_CHECKED)

unit: build
	$(VITEST) run --project unit

# Integration tests share the machine's kernel: run one file at a time.
integration: build
	flock /tmp/tslb-kernel.lock $(VITEST) run --project integration

# Tests are type-checked first (vitest only strips types). Both projects always run, so that a
# unit failure does not hide the kernel tests' results; each writes a JSON report, and
# scripts/test-summary.mjs prints both, the skipped tests by name and the closing line
# 'N passed, N failed, N skipped', and fails if either project failed. The kernel tests hold
# the lock `make bench` and other kernel test runs on this machine take.
test: build
	node_modules/.bin/tsc -p tsconfig.test.json
	@rm -f build/vitest-unit.json build/vitest-integration.json
	-$(VITEST) run --project unit --reporter=default --reporter=json --outputFile.json=build/vitest-unit.json
	-flock /tmp/tslb-kernel.lock $(VITEST) run --project integration --reporter=default --reporter=json \
	  --outputFile.json=build/vitest-integration.json
	@node scripts/test-summary.mjs unit integration

# The bench owns the machine: on a shared one, run it under the same lock as the kernel tests.
# udp-flood is the sendmmsg generator (one of the candidates the bench measures).
# REF_NFQLB=/path/to/nfqlb (a build of the reference C nfqlb) adds its rows to the nfqlb tables.
bench: build
	cc -O2 -Wall -Wextra -o build/udp-flood src/bench/udp-flood.c
	REF_NFQLB="$(REF_NFQLB)" node dist/src/bench/index.js

# nfqlb lb under steady traffic with a target toggled every 3 s, for SOAK_SECONDS (default 600):
# fails if the lb's memory grows. Not part of `make test`.
soak: build
	node dist/src/bench/soak.js

# The lab's main job: 100 connections to 10 servers through nfqlb, servers 1 and 2 scaled in and
# out again, over IPv4 and IPv6; prints the loss table and the plots' paths, removes the lab.
demo: build
	node bin/lblab test --nvm=10 --scale="1 2" --family=4,6 --view nfqueue_scale

clean:
	rm -rf build dist
