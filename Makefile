# catsdogs: `make train` runs the whole chain (preprocess -> train -> evaluate -> export); `make test` runs the tests.
# Every target installs what it needs into .venv first. `make help` lists targets and variables.
-include .env

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3## interpreter used to create .venv (3.10 or newer)
WORKDIR ?= work## root of everything a run writes (local path or gs://)
IMAGES ?= $(WORKDIR)/raw/PetImages## folder, glob or gs:// path to preprocess; the default is downloaded by `make data`
DATASET ?= $(WORKDIR)/data## TFRecords, metadata.json and rejected-*.jsonl
MODEL_DIR ?= $(WORKDIR)/model## checkpoints, logs, metrics.json, report.png of one training run
EXPORT_DIR ?= $(MODEL_DIR)/export## export root: <version>/ per model and `latest`, which training is gated against and moves
EPOCHS ?=## training epochs (empty: the trainer's default, 60: a cap the time budget ends before)
TIME_BUDGET ?= 60## minutes of training after which `make train` stops, evaluates and exports (empty: no limit)
ARCH ?=## model architecture: empty for the default, or seed_cnn, or a keras.applications name
BASELINE_DIR ?= $(WORKDIR)/seed_cnn## where `make baseline` trains the seed_cnn baseline
BASELINE_EPOCHS ?= 20## seed_cnn epochs for `make baseline`: what fits TIME_BUDGET on 2 CPU cores at 180x180 (~3 min each)
MODEL ?= $(EXPORT_DIR)## export to score with: a version directory or a root whose `latest` names one
ALLOWED_MODEL_PREFIX ?=## when set, `make score` refuses a model (or a `latest` target) outside this prefix
VERSION ?=## the version `make rollback` points `latest` at (see `make versions`)
SCORE_IMAGES ?= $(IMAGES)## folder, glob or gs:// path that `make score` scores
SCORES ?= $(WORKDIR)/scores## where scoring runs write <run_id>/predictions-*.jsonl and errors-*.jsonl
RUNNER ?= DirectRunner## Beam runner for preprocess and score (DirectRunner, DataflowRunner, DaskRunner)
OVERWRITE ?=## set to 1 to let `make preprocess` replace an existing dataset
PREPROCESS_ARGS ?=## extra flags for catsdogs-preprocess (see: .venv/bin/catsdogs-preprocess --help)
TRAIN_ARGS ?=## extra flags for catsdogs-train
SCORE_ARGS ?=## extra flags for catsdogs-score
IMAGE_REPO ?= us-docker.pkg.dev/catsdogs-demo/catsdogs## registry path for `make image` (images catsdogs-cpu, catsdogs-gpu, catsdogs-dataflow)
IMAGE_PUSH ?=## set to 1 to let `make image` also push the images
K8S_OUT ?= build/k8s## where `make k8s-render` writes one rendered manifest per overlay
BENCH_ARGS ?=## flags for benchmarks/bench.py, e.g. --quick or --sections preprocess
ACCEL ?=## TensorFlow build `make setup` installs: cpu or gpu (empty: gpu when `nvidia-smi -L` lists a GPU)
TENSORBOARD_PORT ?= 6006## port `make tensorboard` serves on
TEST_WORKERS ?= 2## processes `make test` spreads the tests over (pytest-xdist; 0: all in one process, in order)

# Prints the pins of setup.py's OVERRIDES, read without running setuptools (the Dockerfile's `pins` stage does the same).
export OVERRIDE_PINS := import ast; t = ast.parse(open("setup.py").read()); v = {n.targets[0].id: ast.literal_eval(n.value) \
  for n in t.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") in ("PINS", "OVERRIDES")}; \
  print(" ".join(v["PINS"][name] for name in sorted(v["OVERRIDES"])))

ifeq ($(strip $(ACCEL)),)
override ACCEL := $(shell timeout 10 nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo gpu || echo cpu)
endif
ifneq ($(ACCEL),$(filter cpu gpu,$(firstword $(ACCEL))))
$(error ACCEL must be cpu or gpu (got '$(ACCEL)'); leave it empty to choose by `nvidia-smi -L`)
endif
VENV := .venv
BIN := $(VENV)/bin
# The stamp's name records the TensorFlow build in .venv, so changing ACCEL re-runs the installation.
STAMP := $(VENV)/.installed-$(ACCEL)
OTHER_ACCEL := $(filter-out $(ACCEL),cpu gpu)
TF_PACKAGE_cpu := tensorflow-cpu# the distribution each extra of setup.py installs
TF_PACKAGE_gpu := tensorflow
DATA_URL := https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip
DEFAULT_IMAGES := $(WORKDIR)/raw/PetImages
HELP_VARS := $(shell grep -hE '^[A-Z0-9_]+ \?=.*## ' $(MAKEFILE_LIST) | cut -d' ' -f1)

.PHONY: help setup test mutations lint data preprocess train train-only baseline score versions rollback tensorboard \
  bench clean image k8s-render k8s-validate hadolint

help: ## show this help
	@echo "Usage: make <target> [VARIABLE=value ...]"
	@echo
	@echo "Targets:"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):.*## (.*)/  \1|\2/' | column -t -s'|'
	@echo
	@echo "Variables (current value in brackets):"
	@grep -hE '^[A-Z0-9_]+ \?=.*## ' $(MAKEFILE_LIST) | sed -E 's/^([A-Z0-9_]+) \?=.*## (.*)/\1|\2/' | \
	  env $(foreach v,$(HELP_VARS),'$(v)=$($(v))') bash -c \
	  'while IFS="|" read -r name text; do printf "  %-20s %s [%s]\n" "$$name" "$$text" "$${!name-}"; done'

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the $(ACCEL) build of TensorFlow (ACCEL=$(ACCEL))"
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# Both builds install the same `tensorflow` package directory: the other one must go first, or removing it
	@# later would delete this one's files. Leaving the GPU build also drops the CUDA wheels it brought.
	if [ -e $(VENV)/.installed-$(OTHER_ACCEL) ] || $(BIN)/python -m pip show $(TF_PACKAGE_$(OTHER_ACCEL)) >/dev/null 2>&1; then \
	  $(BIN)/python -m pip uninstall --quiet --yes $(TF_PACKAGE_$(OTHER_ACCEL)) \
	    $(if $(filter cpu,$(ACCEL)),$$($(BIN)/python -m pip list --format=freeze | grep -E '^nvidia-' | cut -d= -f1)); \
	fi
	$(BIN)/python -m pip install --quiet -e '.[$(ACCEL),test,bench]'
	@# setup.py's OVERRIDES: pins another package's cap refuses (setup.py says why), installed over it
	$(BIN)/python -m pip install --quiet --no-deps $$($(BIN)/python -c "$$OVERRIDE_PINS")
	@rm -f $(VENV)/.installed $(VENV)/.installed-$(OTHER_ACCEL)
	@touch $@

setup: $(STAMP) ## create .venv and install the project, TensorFlow's ACCEL build (fast when nothing changed)

test: setup ## run the test suite (unit, pipeline, training and end-to-end tests)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

mutations: setup ## remove each protection in turn and check its reliability test fails (tests/reliability/mutations.py, ~20 min)
	$(BIN)/python -m tests.reliability.mutations

lint: setup hadolint ## ruff over the code, hadolint over the Dockerfile
	$(BIN)/ruff check .

data: setup ## download the default Kaggle Cats and Dogs archive when IMAGES is the default and missing
	@if [ "$(IMAGES)" != "$(DEFAULT_IMAGES)" ] || [ -d "$(DEFAULT_IMAGES)" ]; then exit 0; fi; \
	mkdir -p $(WORKDIR)/raw; \
	echo "Downloading the Kaggle Cats and Dogs archive (787 MB) to $(WORKDIR)/raw ..."; \
	if ! curl -fL --connect-timeout 15 --retry 2 -o $(WORKDIR)/raw/kagglecatsanddogs.zip.part "$(DATA_URL)"; then \
	  rm -f $(WORKDIR)/raw/kagglecatsanddogs.zip.part; \
	  echo "error: could not download $(DATA_URL)." >&2; \
	  echo "       Without network access, point the job at images you have: make train IMAGES=<folder or gs:// path>" >&2; \
	  exit 1; \
	fi; \
	mv $(WORKDIR)/raw/kagglecatsanddogs.zip.part $(WORKDIR)/raw/kagglecatsanddogs.zip; \
	cd $(WORKDIR)/raw && $(CURDIR)/$(BIN)/python -m zipfile -e kagglecatsanddogs.zip . && rm kagglecatsanddogs.zip

preprocess: data ## image folders -> validated, deduplicated, split TFRecords in DATASET
	$(BIN)/catsdogs-preprocess --input '$(IMAGES)' --output_dir '$(DATASET)' --runner $(RUNNER) \
	  --skip_if_current $(if $(OVERWRITE),--overwrite) $(PREPROCESS_ARGS)

train: preprocess train-only ## the main job: preprocess, train, evaluate, then publish the model if the gate blesses it

train-only: setup ## train, evaluate, gate and publish from an existing DATASET (exit 4: not blessed, latest unchanged)
	$(BIN)/catsdogs-train --data_dir '$(DATASET)' --model_dir '$(MODEL_DIR)' --export_dir '$(EXPORT_DIR)' \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(ARCH),--model $(ARCH)) \
	  $(if $(TIME_BUDGET),--time_budget_minutes $(TIME_BUDGET)) $(TRAIN_ARGS)

baseline: setup ## train the seed_cnn recipe under the same TIME_BUDGET into BASELINE_DIR, compare with MODEL_DIR
	$(BIN)/catsdogs-train --data_dir '$(DATASET)' --model_dir '$(BASELINE_DIR)' --model seed_cnn \
	  --epochs $(BASELINE_EPOCHS) --batch_size 32 --learning_rate 0.001 --warmup_epochs 0 \
	  $(if $(TIME_BUDGET),--time_budget_minutes $(TIME_BUDGET))
	$(BIN)/python -m trainer.compare '$(MODEL_DIR)' '$(BASELINE_DIR)'

score: setup ## score SCORE_IMAGES with MODEL into SCORES/<run_id>/
	$(BIN)/catsdogs-score --model '$(MODEL)' --input '$(SCORE_IMAGES)' --output_dir '$(SCORES)' \
	  $(if $(ALLOWED_MODEL_PREFIX),--allowed_model_prefix '$(ALLOWED_MODEL_PREFIX)') --runner $(RUNNER) $(SCORE_ARGS)

versions: setup ## list the model versions in EXPORT_DIR: accuracy, promotion decision, which one is latest
	$(BIN)/python -m trainer.rollback list --export_dir '$(EXPORT_DIR)'

rollback: setup ## point EXPORT_DIR/latest at VERSION after verifying its files (make rollback VERSION=<version>)
	@test -n "$(VERSION)" || { echo "error: set VERSION=<version> (make versions lists them)" >&2; exit 2; }
	$(BIN)/python -m trainer.rollback to --export_dir '$(EXPORT_DIR)' --version '$(VERSION)'

tensorboard: setup ## serve MODEL_DIR/logs (training curves, local or gs://) on http://localhost:TENSORBOARD_PORT
	$(BIN)/tensorboard --logdir '$(MODEL_DIR)/logs' --port $(TENSORBOARD_PORT)

bench: setup ## run the benchmarks on ../shared/data and write benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

clean: ## remove .venv, caches and WORKDIR when it is local
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@case "$(WORKDIR)" in gs://*) echo "WORKDIR is on GCS: not removed";; *) rm -rf "$(WORKDIR)";; esac

# Deployment (docs/DEPLOY.md). Images are tagged with the commit, never :latest; the manifests are rendered
# with that tag and validated offline against the Kubernetes schemas of K8S_VERSION, then by checkov.
IMAGE_TAG := $(shell git rev-parse --short HEAD 2>/dev/null)
K8S_VERSION := 1.32.0
K8S_OVERLAYS := $(notdir $(wildcard k8s/overlays/*))
CHECKOV := .venv-checkov/bin/checkov

image: ## build the images IMAGE_REPO/catsdogs-{cpu,gpu,dataflow}:<git commit> (IMAGE_PUSH=1 pushes)
	@test -n "$(IMAGE_TAG)" || { echo "error: not a git checkout: images are tagged by commit" >&2; exit 1; }
	@if [ -n "$$(git status --porcelain -- Dockerfile .dockerignore setup.py pyproject.toml beam_pipelines trainer)" ]; then \
	  echo "error: uncommitted changes in files the image contains; commit them so tag $(IMAGE_TAG) names the code" >&2; \
	  exit 1; fi
	for target in cpu gpu dataflow; do \
	  docker build --target $$target --build-arg CATSDOGS_CODE_VERSION=$$(git rev-parse --short=12 HEAD) \
	    -t $(IMAGE_REPO)/catsdogs-$$target:$(IMAGE_TAG) . ; \
	  if [ -n "$(IMAGE_PUSH)" ]; then docker push $(IMAGE_REPO)/catsdogs-$$target:$(IMAGE_TAG); fi; \
	done

hadolint: setup ## lint the Dockerfile
	$(BIN)/hadolint Dockerfile

k8s-render: ## render each k8s overlay, images pinned to IMAGE_REPO:<git commit>, into K8S_OUT/<overlay>.yaml
	@test -n "$(IMAGE_TAG)" || { echo "error: not a git checkout: images are tagged by commit" >&2; exit 1; }
	@mkdir -p $(K8S_OUT) && rm -f $(K8S_OUT)/*.yaml
	@for overlay in $(K8S_OVERLAYS); do \
	  dir=$(K8S_OUT)/kustomize/$$overlay; mkdir -p $$dir; \
	  { echo "apiVersion: kustomize.config.k8s.io/v1beta1"; echo "kind: Kustomization"; \
	    echo "resources: [$$(realpath --relative-to=$$dir k8s/overlays/$$overlay)]"; echo "images:"; \
	    for name in catsdogs-cpu catsdogs-gpu catsdogs-dataflow; do \
	      echo "  - {name: $$name, newName: $(IMAGE_REPO)/$$name, newTag: \"$(IMAGE_TAG)\"}"; done; \
	  } > $$dir/kustomization.yaml; \
	  kubectl kustomize $$dir > $(K8S_OUT)/$$overlay.yaml; \
	  echo "$(K8S_OUT)/$$overlay.yaml"; \
	done

k8s-validate: setup k8s-render $(CHECKOV) ## validate the rendered manifests offline (Kubernetes K8S_VERSION schemas) and with checkov
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(K8S_OUT)/*.yaml
	$(CHECKOV) --quiet --compact --skip-download --framework kubernetes $(foreach o,$(K8S_OVERLAYS),-f $(K8S_OUT)/$(o).yaml)

$(CHECKOV): # its own virtualenv: checkov's pins clash with the project's
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet checkov==3.3.30
