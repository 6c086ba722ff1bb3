# Main job:  make all MIRROR=../shared/data      (environment, data, offline model, notebooks)
# Tests:     make test MIRROR=../shared/data
# MIRROR may also come from the environment variable CLIPOOD_MIRROR.
PYTHON  ?= python3
PROFILE ?= teaching
MIRROR  ?= $(CLIPOOD_MIRROR)
VENV    := .venv
PY      := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export CLIPOOD_MIRROR := $(MIRROR)

.PHONY: all env data model notebooks test lint bench clean-build

all: notebooks

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name clip-ood --display-name "Python (clip-ood)"
	touch $@

data: env
	$(PY) -m helpers.data import $(if $(MIRROR),--mirror $(MIRROR),)

model: data
	$(PY) -m helpers.models.pocket --profile $(PROFILE)

notebooks: model
	$(PY) -m helpers.run --profile $(PROFILE)

test: env
	$(PY) -m helpers.data import $(if $(MIRROR),--mirror $(MIRROR),)
	$(PY) -m pytest -q

lint: env
	$(PY) -m ruff check helpers tests benchmarks

bench: model
	$(PY) benchmarks/extraction_throughput.py

clean-build:
	rm -rf build
