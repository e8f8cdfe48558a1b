# Two commands do all set-up on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install sample-data browser demo test clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages, installed when missing and this machine can (root with apt-get):
# real labelled product images (Fashion-MNIST) for the demo and benchmarks, and Chromium to
# render report.html in the tests. Without them the demo uses other real photos and the
# browser test is skipped.
APT_INSTALL = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	(apt-get install -y -q $(1) >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	 apt-get install -y -q $(1) >/dev/null 2>&1)) || echo "note: could not install $(1)"; fi

sample-data:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(call APT_INSTALL,dataset-fashion-mnist); }

browser:
	@command -v chromium >/dev/null || { $(call APT_INSTALL,chromium); }

demo: install sample-data
	rm -rf out
	$(PY) -m pipelines.demo --output out --limit 1000

test: install sample-data browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out
