# storyreel: `make demo` renders the demo story, `make test` runs the tests.
# Both install what they need into .venv first (pinned: pyproject.toml + constraints.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
DEMO_TARGET := stories/demo/final.mp4

.PHONY: demo test lint bench rulegraph install clean gke-profile gke-plan app watch

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(wildcard plugins/*/pyproject.toml plugins/*/*/*.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/pip install --quiet -c constraints.txt ./plugins/snakemake-executor-plugin-storyreel
	touch $@

demo: $(STAMP)
	$(SNAKEMAKE) --cores all $(DEMO_TARGET) stories/demo/preview.png
	@echo "demo video: $(CURDIR)/$(DEMO_TARGET) (lip-sync sheet: stories/demo/preview.png)"

# The web app's browser test drives Debian's Chromium (no pip route ships a browser that runs
# offline). Installed once, with sudo when not root.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

# torch for the tests of the GPU backends, kept out of `make demo`'s install.
ML_STAMP := $(VENV)/.installed-ml
$(ML_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[ml]"
	touch $@

test: $(STAMP) $(ML_STAMP) $(CHROMIUM)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(SNAKEMAKE) --lint

bench: $(STAMP)
	$(BIN)/python bench/audio.py
	$(BIN)/python bench/video.py

# The rule graph as a picture for the README.
rulegraph: $(STAMP)
	$(SNAKEMAKE) $(DEMO_TARGET) --rulegraph dot | $(BIN)/graphviz-pure -Tsvg -o docs/rulegraph.svg
	@echo "wrote docs/rulegraph.svg"

# The newsroom app on http://127.0.0.1:8000 next to the watcher in local mode (watcher.yaml):
# editors publish, the watcher renders. On the first run the browser is asked for the first
# editor's account (http://127.0.0.1:8000/setup); more: .venv/bin/python -m webapp adduser NAME
app: $(STAMP)
	$(BIN)/python -m webapp --watcher-config watcher.yaml serve --with-watcher

# The watcher alone: stories dropped in inbox/ (or `storyreel-watcher submit story.json`).
watch: $(STAMP)
	$(BIN)/storyreel-watcher watch --config watcher.yaml

clean:
	rm -rf stories published queue inbox .snakemake

# `snakemake --profile gke` looks the name up in the working directory and in
# ~/.config/snakemake, never in profiles/: link the repository's profile there.
PROFILE_HOME := $(HOME)/.config/snakemake
gke-profile:
	mkdir -p $(PROFILE_HOME)
	ln -sfn $(CURDIR)/profiles/gke $(PROFILE_HOME)/gke
	@echo "$(PROFILE_HOME)/gke -> $(CURDIR)/profiles/gke: snakemake --profile gke works now"

# Rule -> pod -> image -> resources on GKE, read from the workflow alone (no cluster, no
# credentials). Lay your own config over it with GKE_CONFIG=mine.yaml.
GKE_CONFIG ?=
gke-plan: $(STAMP)
	$(BIN)/python deploy/gke/plan.py $(if $(GKE_CONFIG),--configfile $(GKE_CONFIG))

# Container images for GKE, one per image family (containers/<family>.Dockerfile, one per
# envs/<family>.yaml), each built on the base image and pushed as
# $(REGISTRY)/storyreel-<family>:$(VERSION). Needs a container engine, so it is not part of
# `make test`.  Example:  make images REGISTRY=<host>/<project>/<repository>
CONTAINER_TOOL ?= docker
REGISTRY ?=
# A dirty tree gets the tag of its last commit: set VERSION explicitly for such builds.
VERSION ?= $(shell git rev-parse --short HEAD 2>/dev/null)
# GKE's nodes are x86-64 and the pinned wheels are checked there; also when building on arm64.
PLATFORM ?= linux/amd64
IMAGE_FAMILIES := $(sort $(basename $(notdir $(wildcard envs/*.yaml))))
IMAGE_REF = $(REGISTRY)/storyreel-$(1):$(VERSION)

.PHONY: images image-base $(addprefix image-,$(IMAGE_FAMILIES))

images: $(addprefix image-,$(IMAGE_FAMILIES))

# Pushed before any family is built, so builders that resolve FROM in the registry find it.
image-base:
	$(if $(REGISTRY),,$(error REGISTRY is not set: make images REGISTRY=<host>/<project>/<repository>))
	$(if $(VERSION),,$(error VERSION is empty (not a git checkout?): make images VERSION=<tag>))
	$(CONTAINER_TOOL) build --platform $(PLATFORM) -f containers/base.Dockerfile \
		-t $(call IMAGE_REF,base) .
	$(CONTAINER_TOOL) push $(call IMAGE_REF,base)

$(addprefix image-,$(IMAGE_FAMILIES)): image-%: image-base
	$(CONTAINER_TOOL) build --platform $(PLATFORM) -f containers/$*.Dockerfile \
		--build-arg BASE_IMAGE=$(call IMAGE_REF,base) -t $(call IMAGE_REF,$*) .
	$(CONTAINER_TOOL) push $(call IMAGE_REF,$*)
