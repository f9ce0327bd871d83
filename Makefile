# storyreel: `make demo` renders the demo story, `make test` runs the tests.
# Both install what they need into .venv first (pinned: pyproject.toml + constraints.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
DEMO_TARGET := stories/demo/final.mp4

.PHONY: demo test lint bench rulegraph install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(SNAKEMAKE) $(DEMO_TARGET) stories/demo/preview.png
	@echo "demo video: $(CURDIR)/$(DEMO_TARGET) (lip-sync sheet: stories/demo/preview.png)"

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(SNAKEMAKE) --lint

bench: $(STAMP)
	$(BIN)/python bench/audio.py
	$(BIN)/python bench/video.py

# The rule graph as a picture for the README.
rulegraph: $(STAMP)
	$(SNAKEMAKE) $(DEMO_TARGET) --rulegraph dot | $(BIN)/graphviz-pure -Tsvg -o docs/rulegraph.svg
	@echo "wrote docs/rulegraph.svg"

clean:
	rm -rf stories .snakemake
