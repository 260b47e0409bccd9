# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use (pinned torch/torchvision/timm via constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test browser lint bench bench-methods bench-saliency bench-refinement bench-seg bench-bed clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[crf,sam,dev]"
	touch $@

demo: install
	$(BIN)/wsss demo

test: install
	$(BIN)/python -m pytest -q

browser:                # chromium for the report's browser test (Debian/Ubuntu, as root)
	apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install          # speed benchmarks, a few minutes
	for f in benchmarks/metrics_throughput.py benchmarks/pseudo_throughput.py benchmarks/cam_speed.py; do \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done

bench-methods: install  # every CAM method × 3 seeds on the demo data: hours on a CPU, resumable
	$(BIN)/python benchmarks/cam_methods.py --out runs/cam_methods

bench-saliency: install  # every saliency source x CAM methods, on the cells of bench-methods (seed 0)
	$(BIN)/python benchmarks/saliency_sources.py --cells runs/cam_methods --methods cam puzzle p-oc eps

bench-refinement: install  # threshold -> CRF -> random walk -> SEPL, on the cells of bench-methods (seed 0)
	$(BIN)/python benchmarks/refinement.py --cells runs/cam_methods --methods cam puzzle

bench-seg: install  # stage 4: DeepLab on cam/puzzle pseudo labels x ce/size-weighted/size-balanced x 3 seeds + GT
	$(BIN)/python benchmarks/seg_losses.py labels --cells runs/cam_methods --out runs/seg_losses
	$(BIN)/python benchmarks/seg_losses.py train --out runs/seg_losses --cells runs/cam_methods --jobs 2

bench-bed: install  # seed 000's Table 1 (5 methods x 5 saliency sources x 3 seeds) on the CAMs of bench-methods
	$(BIN)/wsss bed benchmarks/bed_table1.yaml --jobs 2
	$(BIN)/wsss report runs/bed_table1

clean:
	rm -rf runs .pytest_cache
