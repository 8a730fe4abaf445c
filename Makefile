# berth: the two commands a new user needs are `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup image run stop test lint unit bench clean

setup:
	scripts/setup-host.sh

image: setup
	scripts/build-echo-image.sh
	scripts/build-model-server-image.sh
	scripts/build-grpc-image.sh

run: image
	scripts/run-demo.sh

stop:
	@if [ -f .berth/berthd.pid ] && kill -0 $$(cat .berth/berthd.pid) 2>/dev/null; then \
	  pid=$$(cat .berth/berthd.pid); kill -TERM $$pid && echo "stop: sent SIGTERM to berthd $$pid"; \
	  for i in $$(seq 1 600); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	  if kill -0 $$pid 2>/dev/null; then echo "stop: berthd $$pid still running after 60s" >&2; exit 1; fi; \
	  rm -f .berth/berthd.pid; echo "stop: berthd stopped (replicas keep running; endpoints are down until berthd runs again)"; \
	else echo "stop: no berthd running from .berth"; fi

lint: setup
	$(VENV)/ruff check config daemon proxy tests
	$(VENV)/ruff format --check config daemon proxy tests
	$(VENV)/mypy

test: image lint
	$(VENV)/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/pytest tests/unit $(PYTEST_ARGS)

bench: image
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null && \
	  command -v caddy >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light haproxy caddy >/dev/null; }
	bench/peers.sh
	bench/tls.sh
	bench/health.sh
	$(VENV)/python bench/autoscale.py
	$(VENV)/python bench/idle.py --period 10s
	$(VENV)/python bench/coldstart.py
	$(VENV)/python bench/streams.py
	$(VENV)/python bench/restarts.py

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
