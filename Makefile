# sdsim: `make demo` runs the default scenario, `make test` runs every check. Each sets up .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_DEMO := $(VENV)/.demo-installed
STAMP_TEST := $(VENV)/.test-installed

.PHONY: demo test lint typecheck unit nbtest nbfull docfigures bench clean notebooks browser calibration fuzz mutation soak prefix-validation

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_DEMO): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[explore]'
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(STAMP_DEMO)

demo: $(STAMP_DEMO)
	$(BIN)/sdsim run scenarios/default.yaml --out out/default

lint: $(STAMP_TEST)
	$(BIN)/ruff check sdsim tests benchmarks notebooks
	$(BIN)/mypy sdsim

# Headless Chromium and its WebDriver for the explorer's browser test (Debian packages; where
# apt-get cannot install them the test says why it skips, except under CI where it fails).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	      chromium chromium-driver >/dev/null; } \
	  || echo "note: could not install chromium; the browser test will skip (or fail under CI)"; \
	fi

unit: $(STAMP_TEST) browser
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not realtime"
	# wall-clock tests need a quiet machine: run them alone
	$(BIN)/python -m pytest -q -p no:xdist -m realtime

# Execute every teaching notebook (small-size switch on); fails on any cell error and on any figure
# with an unlabelled axis or a line missing from its legend (tests/notebook_figures.py checks each
# figure at plt.show()). `make nbfull` does the same at full size (a few minutes).
NB_RUN = PYTHONPATH=$(CURDIR) MPLBACKEND=module://tests.notebook_figures \
	$(BIN)/python -m pytest -q --nbmake --nbmake-timeout=900 -n 2 -p no:cacheprovider notebooks/*.ipynb
nbtest: $(STAMP_TEST)
	SDSIM_NOTEBOOK_SMALL=1 $(NB_RUN)

nbfull: $(STAMP_TEST)
	SDSIM_NOTEBOOK_SMALL=0 $(NB_RUN) --durations=0

# Regenerate the committed .ipynb files from their jupytext py:percent sources (no outputs).
notebooks: $(STAMP_TEST)
	$(BIN)/jupytext --to ipynb notebooks/[0-9]*.py

test: lint unit nbtest

# The figures the README and notes/planning.md quote from the capacity plan's minutes of
# simulation, recomputed and compared (tests/test_docs.py; the rest of that file runs in `make
# test`). `python -m tests.test_docs --fix --long` rewrites stale ones in place.
docfigures: $(STAMP_TEST)
	SDSIM_DOCFIGURES=1 $(BIN)/python -m pytest -q -p no:xdist -m docfigures tests/test_docs.py

# The fuzz suite at depth: 25x the examples `make test` runs, random rather than fixed
# (tests/test_fuzz.py; SDSIM_FUZZ_SCALE=N sets another multiple).
fuzz: $(STAMP_TEST)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests/test_fuzz.py

# `sdsim serve` on loopback for ~5 minutes at 80% of the predicted saturation, 20% of clients
# hanging up mid-stream: flat memory, steady latency, every abandoned request let go
# (benchmarks/soak.py; SOAK_SECONDS, SOAK_LOAD, SOAK_DISCONNECT, SOAK_TIME_SCALE set another run).
soak: $(STAMP_TEST)
	nice -n 10 $(BIN)/python benchmarks/soak.py

# The analytic model against steady-state simulation on the prefix-caching scenarios (hit rate
# predicted, caching off, hit rate given; 20, 40, 60, 80% of saturation; 3 seeds x 20,000
# requests per point, ~20 minutes on 2 cores; figures in notes/analytic.md).
prefix-validation: $(STAMP_TEST)
	nice -n 10 $(BIN)/python benchmarks/prefix_validation.py

# Mutation testing (mutmut) of the files and tests named in pyproject's [tool.mutmut]; restrict
# with e.g. MUTANTS='sdsim.acceptance*'. The score is in mutants/mutmut-cicd-stats.json.
MUTANTS ?=
mutation: $(STAMP_TEST)
	$(BIN)/python -m pip install -q -e '.[mutation]'
	rm -rf mutants
	$(BIN)/mutmut run $(foreach m,$(MUTANTS),'$(m)') > /dev/null
	$(BIN)/mutmut export-cicd-stats
	$(BIN)/python -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
	n = s['killed'] + s['survived'] + s['no_tests'] + s['timeout'] + s['suspicious']; \
	print(f\"mutation score: {s['killed'] + s['timeout']}/{n} killed ({(s['killed'] + s['timeout']) / max(n, 1):.1%}); {s}\")"
	$(BIN)/mutmut results

bench: $(STAMP_DEMO)
	$(BIN)/python benchmarks/run.py

# Refit the shipped calibration (sdsim/data/calibration/shipped.yaml) from its data: Vidur's kernel
# profiles in ../shared and the public measurements in the package (notes/costs.md).
CAL_TERMS := step_s,per_seq_s,spec_step_s.eagle,spec_step_s.eagle3,draft_pass_s.eagle,draft_pass_s.eagle3
calibration: $(STAMP_DEMO)
	$(BIN)/sdsim calibrate ../shared/data/vidur sdsim/data/calibration \
	  --base sdsim/data/calibration/priors.yaml --terms $(CAL_TERMS) \
	  --description "the shipped calibration: vLLM V1 host costs fitted to public measurements, kernel terms to Vidur's profiles" \
	  --out sdsim/data/calibration/shipped.yaml

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
