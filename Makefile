# Main job:  make all MIRROR=../shared/data      (environment, data, offline model, notebooks, course site)
# Tests:     make test MIRROR=../shared/data
# MIRROR may also come from the environment variable CLIPOOD_MIRROR.
PYTHON  ?= python3
PROFILE ?= teaching
POCKET  ?= small
# pytest-xdist workers for `make test` (auto: one per core; 0 runs the tests in this process)
TEST_WORKERS ?= auto
MIRROR  ?= $(CLIPOOD_MIRROR)
VENV    := .venv
PY      := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export CLIPOOD_MIRROR := $(MIRROR)

.PHONY: all env data model notebooks test lint bench clean-build wordnet html browser

all: notebooks html

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

test: env wordnet browser
	$(PY) -m helpers.data import $(if $(MIRROR),--mirror $(MIRROR),)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

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

# The course site: the executed notebooks of build/$(PROFILE)/ as static pages in build/site/ (no Jupyter needed).
# Renders what is there; `make notebooks` executes them first.
html: env
	$(PY) -m helpers.site --profile $(PROFILE)

# Headless Chromium + chromedriver for tests/test_site.py (skipped without them). Installs Debian's packages where
# apt-get and root are available; elsewhere only says how.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "browser: apt-get install chromium chromium-driver failed; tests/test_site.py skips its browser checks"; \
	else echo "browser: no apt-get/root here; install Chromium and chromedriver as /usr/bin/chromium and" \
	  "/usr/bin/chromedriver (Debian: 'sudo apt-get install chromium chromium-driver') for tests/test_site.py"; fi

clean-build:
	rm -rf build
