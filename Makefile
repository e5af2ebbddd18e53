# anatldm — every target sets itself up: a fresh clone needs nothing but python3 and make.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel that lies on disk here; GPU users: make install TORCH_SPEC="torch==2.6.0" (or any CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FORCE ?=
HALF ?= 1
CLAIM ?= v2
FRACTIONS ?= 1
EXTRA_ARMS ?= 0
ABLATION ?= v2
JOBS ?= 1
VARIANTS ?=
SEEDS ?=
SAMPLES ?=
TAG ?=
COMBINED ?=
DRY_RUN ?=
DEADLINE_S ?=
PARTS ?=

.PHONY: install test quickstart claim ablation bench augment-bench device-check lint previews clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

quickstart: $(STAMP)
	FORCE=$(FORCE) PATH="$(abspath $(BIN)):$$PATH" bash scripts/quickstart.sh

claim: $(STAMP)
	FORCE=$(FORCE) CLAIM=$(CLAIM) FRACTIONS=$(FRACTIONS) HALF=$(HALF) EXTRA_ARMS=$(EXTRA_ARMS) PATH="$(abspath $(BIN)):$$PATH" bash scripts/claim.sh

# the ablation v2 at claim size (scripts/ablation_v2.sh; JOBS=2 fits two at a time); ABLATION=v1: the first one
# (scripts/ablation.sh). Empty VARIANTS, SEEDS, SAMPLES: each script's defaults.
ablation: $(STAMP)
	VARIANTS="$(VARIANTS)" SEEDS="$(SEEDS)" SAMPLES="$(SAMPLES)" TAG="$(TAG)" COMBINED="$(COMBINED)" JOBS="$(JOBS)" \
	  FORCE=$(FORCE) PATH="$(abspath $(BIN)):$$PATH" bash scripts/$(if $(filter v1,$(ABLATION)),ablation.sh,ablation_v2.sh)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# does synthetic data help a segmenter? needs the quickstart models (make quickstart); about 11 min on 2 CPU cores;
# CLOSED=1: the closed-world low-data benchmark (scripts/augment_closed.sh trains its own models first)
CLOSED ?= 0
augment-bench: $(STAMP)
ifeq ($(CLOSED),1)
	FORCE=$(FORCE) PATH="$(abspath $(BIN)):$$PATH" bash scripts/augment_closed.sh
else
	$(BIN)/python benchmarks/augment_bench.py
endif

# the prepared GPU run (docs/device.md): one GPU, <= 9 min, runs/device/<time>/ then docs/results/device/;
# DRY_RUN=1: the same parts on a CPU at tiny sizes (what tests/test_device_check.py runs);
# DEADLINE_S=150 PARTS=bench,smoke: a short first try
device-check: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python scripts/device_check.py $(if $(filter 1,$(DRY_RUN)),--dry-run) \
	  $(if $(DEADLINE_S),--deadline-s $(DEADLINE_S)) $(if $(PARTS),--parts $(PARTS))

lint: $(STAMP)
	$(BIN)/ruff check anatldm tests benchmarks scripts

previews: $(STAMP)
	$(BIN)/python scripts/make_phantom_previews.py --out docs/images

clean:
	rm -rf $(VENV) .pytest_cache runs .cache
