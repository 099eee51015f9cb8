# Two entry points: `make test` and `make demo`. Both create .venv when missing
# and install the package with what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages: speech synthesisers and voices (tests, `glm4voice data speak`), sox, real text (fortunes).
SYSTEM_PACKAGES := espeak-ng sox libsndfile1 flite festival festvox-us-slt-hts festvox-kallpc16k fortunes fortunes-zh
# What they put on disk: a command, or a path for the voice and data packages.
SYSTEM_CHECKS := espeak-ng sox flite festival text2wave /usr/share/festival/voices/us/cmu_us_slt_arctic_hts \
	/usr/share/festival/voices/english/kal_diphone /usr/share/games/fortunes/fortunes /usr/share/games/fortunes/tang300

.PHONY: test demo tiny lint system-deps browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build of this exact version is what the project targets.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,serve,eval,data,lhotse,train]'
	touch $(STAMP)

# The synthesisers and sox make the speech used by tests and the tiny recipe; fortunes are the real text.
system-deps:
	@missing=""; for t in $(SYSTEM_CHECKS); do \
	  case $$t in /*) test -e $$t ;; *) command -v $$t >/dev/null 2>&1 ;; esac || missing="$$missing $$t"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Install them with:"; \
	    echo "  sudo apt-get install -y $(SYSTEM_PACKAGES)"; \
	    exit 1; \
	  fi; \
	fi

# The page's browser tests use Debian's chromium: installed when apt can, skipped (with the reason) when not.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium with apt-get (the web page's tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	      echo "chromium could not be installed: the page's browser tests will be skipped"; \
	  else echo "no chromium: the page's browser tests will be skipped (sudo apt-get install chromium)"; fi; }

test: system-deps browser $(STAMP)
	$(PY) -m ruff check glm4voice tests benchmarks
	$(PY) -m pytest -q

demo: system-deps $(STAMP)
	$(PY) -m glm4voice.demo

# The tiny recipe, full size (hours on 2 cores, two stages side by side where they can; stop and rerun to
# continue): runs/tiny/bundle/bundle.
tiny: system-deps $(STAMP)
	$(PY) -m glm4voice recipe tiny --out runs/tiny --jobs 2

lint: $(STAMP)
	$(PY) -m ruff check glm4voice tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
