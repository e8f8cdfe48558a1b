# Two commands do all set-up on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install sample-data browser emulator demo test test-fast check-dag clean

# Annoy first, compiled with portable flags (native/install_annoy.sh says why); the
# project's install then finds the pinned version in place.
$(STAMP): setup.py native/install_annoy.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	sh native/install_annoy.sh $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# check-dag: the nightly Airflow DAG loaded and rendered by a real Airflow 3.3, in its own
# virtualenv (pinned in dataflow_templates/schedule/checks/requirements.txt; installed with
# uv in 20-50 s, where pip took 3 min 17 s to resolve). The google provider needs
# Python 3.11+: AIRFLOW_PYTHON is the first of these that has it. A second run costs only
# the check (11-16 s). The venv ignores itself in git, as Python 3.13's venv does.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_PYTHON ?= $(firstword $(foreach p,$(PYTHON) python3.11 python3.12 python3.13,\
	$(shell $(p) -c 'import sys; print("$(p)" if sys.version_info >= (3, 11) else "")' 2>/dev/null)))
SCHEDULE_CHECKS := dataflow_templates/schedule/checks
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

$(AIRFLOW_STAMP): $(SCHEDULE_CHECKS)/requirements.txt
	@[ -n "$(AIRFLOW_PYTHON)" ] || { echo "check-dag needs Python 3.11+ (set AIRFLOW_PYTHON)"; exit 1; }
	rm -rf $(AIRFLOW_VENV)
	$(AIRFLOW_PYTHON) -m venv $(AIRFLOW_VENV)
	echo '*' > $(AIRFLOW_VENV)/.gitignore
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet uv==0.13.9
	$(AIRFLOW_VENV)/bin/uv pip install --quiet --python $(AIRFLOW_VENV)/bin/python \
		-r $(SCHEDULE_CHECKS)/requirements.txt
	touch $(AIRFLOW_STAMP)

check-dag: $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/python $(SCHEDULE_CHECKS)/check_dag.py

# Debian packages, installed when missing and this machine can (root with apt-get):
# real labelled product images (Fashion-MNIST) for the demo and benchmarks, Chromium to
# render report.html in the tests, and QEMU's user-mode emulator, which runs a shard build
# on an emulated CPU of another kind (tests/test_native.py). Without them the demo uses
# other real photos and those tests are skipped.
APT_INSTALL = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	(apt-get install -y -q $(1) >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	 apt-get install -y -q $(1) >/dev/null 2>&1)) || echo "note: could not install $(1)"; fi

sample-data:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(call APT_INSTALL,dataset-fashion-mnist); }

browser:
	@command -v chromium >/dev/null || { $(call APT_INSTALL,chromium); }

emulator:
	@command -v qemu-x86_64 >/dev/null || { $(call APT_INSTALL,qemu-user); }

demo: install sample-data
	rm -rf out
	$(PY) -m pipelines.demo --output out --limit 2000

test: install sample-data browser emulator check-dag
	$(PY) -m pytest

# The unit tier only (no model, build, cluster or emulator): pytest.ini lists the tiers;
# pick any with e.g. .venv/bin/python -m pytest -m "unit or gcs".
test-fast: install
	$(PY) -m pytest -m unit

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) out
