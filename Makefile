# The front door: `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Every other package at the exact version the tests ran on (constraints.txt, refreshed by `make lock`);
# `make install UNPINNED=1` resolves the newest versions the lower bounds in pyproject.toml allow instead.
CONSTRAINTS ?= constraints.txt
UNPINNED ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# CPU smoke run by default; on a GPU: make bench-speed SPEED_ARGS="--device cuda"
SPEED_ARGS ?= --tiny --threads 1

.PHONY: install lock demo test test-all docs bench bench-demo bench-goals bench-world bench-synth bench-digits bench-baselines bench-tune-baselines bench-speed bench-guidance-cost bench-cost lint format clean

install: $(STAMP)

# Re-runs only when the package metadata or the pins change; a second `make install` does nothing.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]" $(if $(UNPINNED),,-c $(CONSTRAINTS))
	touch $(STAMP)

# Pin what the venv holds now (after `make install UNPINNED=1` and a green `make test`): every package but
# this one, pip and torch (and its CUDA wheels), which TORCH_SPEC chooses per machine.
lock: install
	{ echo "# The tested dependency set: make install uses it, make lock writes it (pip list of .venv)."; \
	  $(BIN)/python -m pip list --format=freeze --exclude-editable --disable-pip-version-check \
	    | grep -viE '^(pip|torch|triton|nvidia-[a-z0-9-]+)=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

demo: install
	$(BIN)/diffdfkd demo

# The fast tests (pyproject's addopts leave out `slow` and `gpu`); `make test-all` adds the slow ones
# (SIGKILLed subprocesses, DDP under torchrun, headless Chromium, the quick demo), as CI runs them.
test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m "not gpu"

# Benchmarks write under benchmarks/results/ and are summarised in BENCHMARKS.md.
bench: bench-world bench-synth bench-digits bench-baselines bench-speed bench-guidance-cost bench-cost bench-demo bench-goals

# Both digits worlds (the broad one with its two KD rows) and the emoji world (its KD rows); each KD row
# reads the PRIVATE test split once. The emoji world's PUBLIC arrays come from `diffdfkd world build-data`.
bench-world: install
	$(BIN)/python benchmarks/world_bench.py --world digits --kd
	$(BIN)/python benchmarks/world_bench.py --world digits-mnist
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/emoji_world_bench.py

bench-synth: install
	$(BIN)/python benchmarks/synth_bench.py --threads 1 --images-per-class 10

bench-digits: install
	$(BIN)/python benchmarks/digits_bench.py --seeds 3 --out benchmarks/results/digits

# Issue 14's comparison (benchmarks/baselines_digits.py, one torch thread, resumable per (row, seed)): every
# row at 1,000 images in `digits` (3 seeds; Fast with and without its adversarial term), the levers, the
# generator adapted to the teacher in both worlds, the budget curve, DiffDFKD in `digits-mnist` (DeepInversion,
# Fast and kd_real never read the generator: goals.py borrows them across worlds).
# About 10 h on a 2-core CPU; `make bench-goals` then writes the goal block.
bench-baselines: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world digits --seeds 3
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world digits --seeds 3 --only diffdfkd_raw_step,diffdfkd_look_prompt
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world digits-mnist --seeds 3 --only diffdfkd,diffdfkd_no_adv,diffdfkd_paper
	for w in digits digits-mnist; do \
	  test -f benchmarks/results/baselines/$$w-100/adapted_generator/adapt_info.json || \
	    OMP_NUM_THREADS=1 $(BIN)/python benchmarks/adapt_generator.py --world $$w --json benchmarks/results/tuning/adapt-$$w-150.json \
	      --save benchmarks/results/baselines/$$w-100/adapted_generator || exit 1; \
	  OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world $$w --seeds 3 --only diffdfkd_adapted || exit 1; \
	done
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world digits --images-per-class 200 --seeds 3 --only diffdfkd,fast
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world digits --images-per-class 500 --seeds 3 --only diffdfkd,fast,kd_real
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_digits.py --world digits --images-per-class 500 --seeds 1 --only diffdfkd_no_adv

# How the baselines' settings were chosen (synthetic-data signals only).
bench-tune-baselines: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/tune_baselines.py deepinversion --per-class 4
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/tune_baselines.py fast --per-class 20
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/tune_baselines.py cmi --per-class 20

# The cost of each guidance option and its student (quality-cost front), in both digits worlds.
GUIDANCE_COST_ARGS ?= --seeds 3
bench-guidance-cost: install
	$(BIN)/python benchmarks/guidance_cost.py --world digits $(GUIDANCE_COST_ARGS)
	$(BIN)/python benchmarks/guidance_cost.py --world digits-mnist $(GUIDANCE_COST_ARGS)

# FLOPs per synthetic image of each bench row (counts, not timings; minutes per world on one thread).
bench-cost: install
	for w in emoji digits digits-mnist; do OMP_NUM_THREADS=1 $(BIN)/python benchmarks/row_flops.py --world $$w || exit 1; done

# The demo's figure (wall time and student, from scratch) and issue 14's goal block from the committed benches.
bench-demo: install
	$(BIN)/python benchmarks/demo_bench.py

bench-goals: install
	$(BIN)/python benchmarks/goals.py

bench-speed: install
	$(BIN)/python benchmarks/synth_throughput.py $(SPEED_ARGS)

# The config reference, generated from the schema (a test fails when docs/config.md is out of date).
docs: install
	$(BIN)/python -m diffdfkd.config.reference docs/config.md

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
