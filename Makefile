# Two entry points: `make test` and `make demo`. Both create .venv when missing
# and install the package with what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := espeak-ng sox

.PHONY: test demo lint system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build of this exact version is what the project targets.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,serve,eval,data]'
	touch $(STAMP)

# espeak-ng and sox make the speech used by tests and the tiny recipe.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox libsndfile1 >/dev/null; \
	  else \
	    echo "missing:$$missing. Install them with:"; \
	    echo "  sudo apt-get install -y espeak-ng sox libsndfile1"; \
	    exit 1; \
	  fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m ruff check glm4voice tests benchmarks
	$(PY) -m pytest -q

demo: $(STAMP) system-deps
	$(PY) -m glm4voice.demo

lint: $(STAMP)
	$(PY) -m ruff check glm4voice tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
