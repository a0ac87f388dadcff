# glyphgen: every target installs what it needs on first use (a .venv in this folder).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# A CPU build of torch where no NVIDIA GPU is present (small and quick); the default CUDA build otherwise.
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")

PIPELINE ?= pipelines/tiny.yaml
GLYPHGEN := $(BIN)/glyphgen

.PHONY: install test lint shards fonts clean pipeline pretrain-synthetic finetune-real superres bench export sample \
	quality-gpu quality-cpu learn-cpu spell-cpu

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check glyphgen tests bench
	$(BIN)/ruff format --check glyphgen tests bench

# The default shards: synthetic text images and the embedded real-photo demo set, at 64 px
# (each built once; delete the folder or run glyphgen make-shards --overwrite to rebuild).
shards: $(STAMP)
	test -f data_shards/synthetic-64/manifest.json || $(GLYPHGEN) make-shards synthetic --config configs/shards/synthetic64.yaml $(ARGS)
	test -f data_shards/demo-real-64/manifest.json || $(GLYPHGEN) make-shards demo-real --config configs/shards/demo_real64.yaml $(ARGS)

# Training: the whole chain, or one stage of it (its warm-start source must have finished).
# ARGS are stage-config overrides, e.g. ARGS="trainer.devices=8 data.batch_size=64".
pipeline: $(STAMP)
	$(GLYPHGEN) pipeline $(PIPELINE) $(ARGS)

pretrain-synthetic finetune-real superres: $(STAMP)
	$(GLYPHGEN) pipeline $(PIPELINE) --stage $@ $(ARGS)

# Inference: export a stage's final EMA weights as a bundle, then sample from it.
# make export CKPT=runs/tiny/superres/checkpoints/final.ckpt OUT=runs/tiny/bundles/superres
CKPT ?= runs/tiny/finetune-real/checkpoints/final.ckpt
OUT  ?= runs/tiny/bundles/base
TEXT ?= hello\nworld
export: $(STAMP)
	$(GLYPHGEN) export $(CKPT) --out $(OUT) $(ARGS)

sample: $(STAMP)
	$(GLYPHGEN) sample "$(TEXT)" --base $(OUT) --out runs/samples/sample.png $(ARGS)

# The quality run (README "Quality run"): train on a wall-clock budget, export, evaluate on the
# held-out prompt sets, write runs/NAME/quality.md. quality-gpu fits 25 minutes on one H100;
# quality-cpu rehearses it with the tiny model. Weave vs GLIDE at equal wall clock:
#   make quality-gpu && make quality-gpu NAME=quality-glide ARGS="model.text_attention=glide"
quality-gpu: $(STAMP)
	$(GLYPHGEN) quality --pipeline pipelines/quality-gpu.yaml --budget $(or $(BUDGET),18m) $(if $(NAME),--name $(NAME)) $(ARGS)

quality-cpu: $(STAMP)
	$(GLYPHGEN) quality --pipeline pipelines/quality-cpu.yaml --budget $(or $(BUDGET),2m) $(if $(NAME),--name $(NAME)) \
		--max-prompts 8 --n 1 --steps ddim25 --batch-size 8 --device cpu $(ARGS)

# Does the text conditioning learn? The micro model on 12 short words for 15 CPU minutes, scored by
# OCR on 12 samples of each (BENCHMARKS.md "Learning check"; 4 each until 2026-12-01, too few to
# rank recipes by). GLIDE: make learn-cpu NAME=learn-cpu-glide ARGS="model.text_attention=glide"
learn-cpu: $(STAMP)
	$(GLYPHGEN) quality --pipeline pipelines/learn-cpu.yaml --budget $(or $(BUDGET),15m) $(if $(NAME),--name $(NAME)) \
		--prompts configs/prompts/learn-words.txt --n 12 --steps ddim25 --batch-size 40 --device cpu $(ARGS)

# Can it spell? Random 2-4 letter strings for 60 CPU minutes, scored on held-out strings.
spell-cpu: $(STAMP)
	$(GLYPHGEN) quality --pipeline pipelines/spell-cpu.yaml --budget $(or $(BUDGET),60m) $(if $(NAME),--name $(NAME)) \
		--prompts configs/prompts/spell-strings.txt --n 2 --steps ddim25 --batch-size 40 --device cpu $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(DEVICE),--device $(DEVICE)) $(BENCH_ARGS)

fonts: $(STAMP)
	$(BIN)/glyphgen fonts

clean:
	rm -rf $(VENV) .pytest_cache
