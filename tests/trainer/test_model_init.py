"""No silent wrong model: the real-vocabulary presets need a tokenizer, and every stage reads
model.init in the same three forms (a run dir, checkpoints/step_N, an HF dir)."""

from __future__ import annotations

import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from data_pipelines.tokenizer import load_tokenizer
from stages.evaluate import EvalRunConfig
from stages.pretrain import PretrainConfig
from stages.rl.config import RLConfig
from stages.rl.grading import GradeConfig
from stages.rl.policy import load_policy
from stages.sft import SFTConfig
from trainer.checkpoint import resolve_hf_dir, resolve_model_init
from trainer.model import PRESET_DIR, ModelConfig, build_model, load_preset, save_hf_checkpoint

RECIPES = str(PRESET_DIR.parent)
# primary config, its schema, the overrides a launch needs besides the model
STAGES = {
    "pretrain": ("pretrain_schema", PretrainConfig, ["recipe=pretrain_tiny"]),
    "sft": ("sft_schema", SFTConfig, ["recipe=sft_tiny", "data.train=/d/train.jsonl"]),
    "rl": ("rl_schema", RLConfig, ["recipe=rlcs_tiny", "data.path=/d/p.jsonl"]),
    "grade": ("grade_schema", GradeConfig, ["recipe=grade_tiny", "data.path=/d/p.jsonl"]),
    "eval": ("eval_schema", EvalRunConfig, ["recipe=eval_tiny", f"data.paths=[{RECIPES}]"]),
}


def typed(stage: str, overrides: list[str]):
    """The stage's config exactly as its launcher types it (launch.common.start)."""
    schema, cls, base = STAGES[stage]
    ConfigStore.instance().store(name=schema, node=cls)
    with initialize_config_dir(config_dir=RECIPES, version_base="1.3"):
        raw = compose(config_name=stage, overrides=[*base, *overrides])
    return OmegaConf.to_object(raw)


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
@pytest.mark.parametrize("preset", ["glm41v_1b", "glm41v_9b"])
def test_real_vocabulary_presets_need_a_tokenizer_at_config_time(stage, preset):
    with pytest.raises(ValueError, match=r"model\.tokenizer is required.*151,552"):
        typed(stage, [f"model={preset}"])
    assert typed(stage, [f"model={preset}", "model.tokenizer=/tok"]).model.tokenizer == "/tok"
    cfg = typed(stage, [f"model={preset}", "model.init=/runs/x"])  # the init's own tokenizer, read at start
    assert cfg.model.tokenizer is None and cfg.model.init == "/runs/x"


@pytest.mark.parametrize("stage", ["rl", "grade", "eval"])
def test_stages_reading_the_tokenizer_from_init_accept_the_real_presets(stage):
    assert typed(stage, ["model=glm41v_9b", "model.init=/runs/x"]).model.tokenizer is None


def test_tiny_preset_keeps_the_tiny_tokenizer():
    assert typed("pretrain", []).model.tokenizer == "tiny"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A ponder run's layout holding two complete checkpoints and a half-written one."""
    root = tmp_path_factory.mktemp("init") / "run"
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"), tokenizer)
    for step in (2, 4):
        save_hf_checkpoint(model, tokenizer, root / "checkpoints" / f"step_{step}" / "hf")
        (root / "checkpoints" / f"step_{step}" / "COMPLETE").write_text("ok\n")
    shutil.copytree(root / "checkpoints" / "step_4", root / "checkpoints" / "step_6.tmp")
    (root / "checkpoints" / "latest").write_text("step_4")
    return root


def test_every_init_form_names_the_same_weights_and_tokenizer(run_dir, tokenizer):
    hf = run_dir / "checkpoints" / "step_4" / "hf"
    for form in (run_dir, run_dir / "checkpoints" / "step_4", hf):
        assert resolve_hf_dir(form) == hf
        cfg = resolve_model_init(ModelConfig(init=str(form), tokenizer=None))
        assert (cfg.init, cfg.tokenizer) == (str(hf), str(hf))
        assert len(load_tokenizer(cfg.tokenizer)) == len(tokenizer)
    # no init leaves the config as it was (pretraining from scratch); a tokenizer directory given by
    # name wins over the checkpoint's, the built-in `tiny` does not (test_released_layout.py)
    assert resolve_model_init(load_preset("tiny")) == load_preset("tiny")
    assert resolve_model_init(ModelConfig(init=str(run_dir), tokenizer="tiny")).tokenizer == str(hf)
    elsewhere = str(run_dir / "checkpoints" / "step_2" / "hf")
    assert resolve_model_init(ModelConfig(init=str(run_dir), tokenizer=elsewhere)).tokenizer == elsewhere


def test_rl_policy_loads_from_every_init_form(run_dir):
    weights = [load_policy(form).state_dict()["lm_head.weight"]
               for form in (run_dir, run_dir / "checkpoints" / "step_2", run_dir / "checkpoints" / "step_4" / "hf")]
    assert all(torch.equal(weights[0], w) for w in weights[1:])


def test_init_without_tokenizer_files_names_the_key(run_dir, tmp_path):
    bare = tmp_path / "hf"
    shutil.copytree(run_dir / "checkpoints" / "step_4" / "hf", bare)
    for name in bare.glob("tokenizer*"):
        name.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.tokenizer is unset and model\.init=.*carries no tokenizer"):
        resolve_model_init(ModelConfig(init=str(bare), tokenizer=None))
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_hf_dir(tmp_path / "empty_run")
