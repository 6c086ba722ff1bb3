# Main job:  make all MIRROR=../shared/data      (environment, data, offline model, notebooks)
# Tests:     make test MIRROR=../shared/data
# MIRROR may also come from the environment variable CLIPOOD_MIRROR.
PYTHON  ?= python3
PROFILE ?= teaching
POCKET  ?= small
MIRROR  ?= $(CLIPOOD_MIRROR)
VENV    := .venv
PY      := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export CLIPOOD_MIRROR := $(MIRROR)

.PHONY: all env data model notebooks test lint bench clean-build wordnet

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
	for c in $(POCKET); do $(PY) -m helpers.models.pocket --config $$c || exit 1; done

notebooks: model wordnet
	$(PY) -m helpers.run --profile $(PROFILE)

test: env wordnet
	$(PY) -m helpers.data import $(if $(MIRROR),--mirror $(MIRROR),)
	$(PY) -m pytest -q

lint: env
	$(PY) -m ruff check helpers tests benchmarks

bench: model
	$(PY) benchmarks/extraction_throughput.py

# NegLabel's candidate words (helpers/words.py): WordNet from nltk's corpus or Debian's wordnet-base files.
# Installs wordnet-base where apt-get and root are available; elsewhere only says how to get WordNet.
wordnet:
	@if [ -f "$${WNSEARCHDIR:-/usr/share/wordnet}/index.noun" ]; then :; \
	elif $(PY) -c "import nltk; nltk.data.find('corpora/wordnet')" >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1; } || \
	  echo "wordnet: apt-get install wordnet-base failed; NegLabel (notebook 02) needs WordNet, see helpers/words.py"; \
	else echo "wordnet: no WordNet and no apt-get/root here; for NegLabel (notebook 02) run" \
	  "'$(PY) -m nltk.downloader wordnet' or pass a word list (helpers/words.py)"; fi

clean-build:
	rm -rf build
