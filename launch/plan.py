"""`python -m launch.plan recipe=pretrain_9b nodes=8 gpus_per_node=8 gpu_memory_gib=80 [key=value ...]`

Plans a run's GPU memory per rank before renting the cluster: composes the same recipe the stage's
launcher would (recipes/pretrain.yaml, sft.yaml or rl.yaml, picked by the recipe's name), builds
the model on the meta device and prints ZeRO-3 states, buffers, activations, the loss's logits,
vLLM (RL) and a verdict with the knobs that help most. Nothing is allocated, no process group.

Arguments whose key is a `PlanOptions` field (`nodes=8`, `sequence_parallel=4`, `loss=chunked`)
configure the planner; every other `key=value` is a recipe override, exactly as on the stage's
command line (`trainer.activation_checkpointing=false`, `data.packing.seq_len=32768`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from trainer.memory_plan import (
    GIB,
    Cluster,
    MemoryPlan,
    RolloutSettings,
    TrainSettings,
    Verdict,
    attention_paths,
    plan,
    verdict,
)
from trainer.model import ModelConfig
from trainer.model_shape import ModelShape, model_shape

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class Stage:
    name: str
    primary: str  # recipes/<primary>.yaml
    schema: str  # its ConfigStore name
    config: str  # "module:Class" of the stage's dataclass config


STAGES = {
    "pretrain": Stage("pretrain", "pretrain", "pretrain_schema", "stages.pretrain:PretrainConfig"),
    "sft": Stage("sft", "sft", "sft_schema", "stages.sft:SFTConfig"),
    "rl": Stage("rl", "rl", "rl_schema", "stages.rl.config:RLConfig"),
}
# Recipe name prefix -> stage (grade_* recipes do not train).
PREFIXES = {"pretrain": "pretrain", "sft": "sft", "rlcs": "rl", "rl": "rl"}


@dataclass
class PlanOptions:
    """The planner's own settings (not part of any recipe)."""

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gib: float = 80.0
    sequence_parallel: int = 0  # ranks sharing one row (divides activations and logits); 0: the recipe's trainer.sequence_parallel_size
    image_fraction: float = 0.25  # share of a row's tokens that are image tokens (assumed)
    reserve_gib: float = 2.0  # CUDA context, NCCL, allocator fragmentation (assumed)
    rollout_tensor_parallel: int = 1  # vLLM tensor parallel size (ponder runs 1 today)
    rollout_sleep: bool = False  # vLLM sleep mode during training (planned)
    device: str = "gpu"  # the target: trainer.precision=auto -> bf16 on gpu, fp32 on cpu; attention path
    stage: Optional[str] = None  # pretrain | sft | rl; default: from the recipe's name
    markdown: bool = False  # one markdown table row instead of the full report


def split_args(argv: list[str]) -> tuple[PlanOptions, list[str]]:
    """Planner options (keys of PlanOptions) and recipe overrides (everything else)."""
    names = {f.name for f in dataclasses.fields(PlanOptions)}
    mine, overrides = [], []
    for arg in argv:
        (mine if arg.split("=", 1)[0] in names else overrides).append(arg)
    options = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlanOptions), OmegaConf.from_dotlist(mine)))
    if options.device not in ("gpu", "cpu"):
        raise ValueError(f"device must be gpu or cpu, got {options.device!r}")
    return options, overrides


def stage_of(overrides: list[str], explicit: str | None) -> Stage:
    if explicit:
        if explicit not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)}, got {explicit!r}")
        return STAGES[explicit]
    recipe = next((a.split("=", 1)[1] for a in overrides if a.startswith("recipe=")), None)
    if recipe is None:
        known = sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml"))
        raise ValueError(f"give a recipe: recipe=<name> (one of {known})")
    prefix = recipe.split("_", 1)[0]
    if prefix not in PREFIXES:
        raise ValueError(f"cannot tell the stage of recipe {recipe!r} from its name "
                         f"(prefixes {sorted(PREFIXES)}); pass stage=pretrain|sft|rl")
    return STAGES[PREFIXES[prefix]]


def _import(path: str) -> type:
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def compose_recipe(stage: Stage, overrides: list[str]) -> DictConfig:
    """The recipe as the stage's launcher composes it (same primary config, same schema)."""
    ConfigStore.instance().store(name=stage.schema, node=_import(stage.config))
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        raw = compose(config_name=stage.primary, overrides=overrides, return_hydra_config=True)
    choices = raw.hydra.runtime.choices
    with open_dict(raw):
        del raw["hydra"]
    if raw.model.get("preset") is None and choices.get("model"):
        raw.model.preset = choices["model"]  # the preset group's name, as load_preset records it
    return raw


def typed_sections(raw: DictConfig) -> tuple[dict[str, Any], list[str]]:
    """The recipe's sections as their dataclasses (their own validation runs), and what a launch
    would still need that planning does not (e.g. `model.tokenizer=???`, `data.train`)."""
    raw = raw.copy()
    notes = []
    for key in sorted(OmegaConf.missing_keys(raw)):
        notes.append(f"{key} is not set")
        OmegaConf.update(raw, key, "<unset>", force_add=True)
    if "model" in raw and raw.model.get("tokenizer", "tiny") is None and not raw.model.get("init"):
        notes.append("model.tokenizer is not set (or model.init carrying one)")  # the shapes do not need it
        raw.model.tokenizer = "<unset>"
    try:
        OmegaConf.to_object(raw)  # the whole stage config: cross-field checks
    except (ValueError, TypeError) as exc:
        notes.append(str(exc))
    sections = {name: OmegaConf.to_object(raw[name]) for name in ("model", "trainer", "data", "rollout", "batch")
                if name in raw}
    return sections, notes


def settings(stage: Stage, sections: dict[str, Any], options: PlanOptions
             ) -> tuple[TrainSettings, RolloutSettings | None, str]:
    """Planner inputs from the recipe, and a phrase saying where the row length came from."""
    trainer = sections["trainer"]
    if trainer.zero_stage != 3:
        raise ValueError(f"the planner models ZeRO-3 only (trainer.zero_stage={trainer.zero_stage})")
    precision = trainer.precision
    if precision == "auto":  # trainer/zero.py resolved_precision: bf16 with CUDA, fp32 without
        precision = "bf16" if options.device == "gpu" else "fp32"
    common = dict(precision=precision, activation_checkpointing=trainer.activation_checkpointing,
                  loss_chunk_tokens=trainer.loss_chunk_tokens, image_fraction=options.image_fraction,
                  sequence_parallel=options.sequence_parallel or getattr(trainer, "sequence_parallel_size", 1),
                  device=options.device,
                  reserve_gib=options.reserve_gib)
    if stage.name != "rl":
        data = sections["data"]
        train = TrainSettings(micro_rows=data.batch_rows, row_tokens=data.packing.seq_len, **common)
        return train, None, "data.batch_rows x data.packing.seq_len"
    batch, rollout, data = sections["batch"], sections["rollout"], sections["data"]
    train = TrainSettings(micro_rows=1, row_tokens=batch.micro_tokens, **common)
    if rollout.engine != "vllm":
        return train, None, "batch.micro_tokens: one packed row per micro-step"
    vllm = RolloutSettings(
        prompts_per_step=batch.prompts_per_step, group_size=rollout.group_size,
        max_prompt_tokens=data.max_prompt_tokens, max_new_tokens=rollout.max_new_tokens,
        forced_answer_tokens=rollout.forced_answer_tokens if rollout.forced_answer else 0,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        tensor_parallel=options.rollout_tensor_parallel, sleep=options.rollout_sleep,
    )
    return train, vllm, "batch.micro_tokens: one packed row per micro-step"


def batch_line(stage: Stage, trainer: Any, train: TrainSettings, cluster: Cluster) -> str:
    """How a step's rows split over the data-parallel ranks (pretrain / SFT; RL sizes its own)."""
    if stage.name == "rl":
        return ""
    data_parallel = cluster.world // train.sequence_parallel
    try:
        steps = trainer.accumulation(train.micro_rows, data_parallel)
    except ValueError as exc:
        return f"batch    cannot split on {data_parallel} data-parallel ranks: {exc}"
    except AttributeError:  # a TrainerConfig without global_batch / accumulation()
        return ""
    return (f"batch    {train.micro_rows * data_parallel * steps:,} rows per step = {train.micro_rows} x "
            f"{data_parallel} data-parallel ranks x {steps} accumulation")


# ---------------------------------------------------------------------------------------------
# Report


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def billions(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _line(label: str, value: int | None, indent: int = 2) -> str:
    text = " " * indent + label
    return f"{text:<76}{gib(value):>8}" if value is not None else text


def report(recipe: str, stage: Stage, model: ModelConfig, shape: ModelShape, result: MemoryPlan,
           decision: Verdict, source: str, batch: str, launch_notes: list[str]) -> str:
    c, t, s, b, a, lg, v = (result.cluster, result.train, result.states, result.buffers, result.activations,
                            result.logits, result.vllm)
    p_name = t.precision
    paths = attention_paths(shape, t)
    counts = shape.counts
    notes: list[str] = []
    tokens = t.micro_rows * t.tokens_per_rank
    out = [
        f"ponder plan: {recipe} (stage {stage.name})",
        f"model    {model.preset or model.init}: {billions(counts['total'])} parameters "
        f"(vision {billions(counts['vision'])}, merger {billions(counts['merger'])}, "
        f"language {billions(counts['language'])}); "
        f"trainable {billions(shape.trainable_params)}",
        f"cluster  {c.nodes} nodes x {c.gpus_per_node} GPUs = {c.world} ranks x {c.gpu_memory_gib:g} GiB; ZeRO-3 over "
        f"{c.world} ranks",
        f"run      {p_name} on {t.device}, attention {shape.attn_implementation} (text: {paths.text}, vision: "
        f"{paths.vision}), activation checkpointing {'on' if t.activation_checkpointing else 'off'}, "
        f"sequence parallel {t.sequence_parallel}, trainer.loss_chunk_tokens={t.loss_chunk_tokens}",
        f"micro    {t.micro_rows} x {t.row_tokens:,} tokens ({source}) -> {tokens:,} tokens per rank",
        f"images   {t.image_fraction:.0%} of the tokens (assumed: image_fraction={t.image_fraction:g}) -> "
        f"{a.patches:,} vision patches",
        *([batch] if batch else []),
        "",
        f"{'per rank':<76}{'GiB':>8}",
        _line(f"model states (ZeRO-3, {s.total * c.world / max(shape.trainable_params, 1):.0f} B per trainable "
              f"parameter / {c.world})", s.total, 0),
        _line(f"parameter shards ({p_name}, all parameters)", s.params),
        _line(f"gradient shards ({p_name}, trainable)", s.grads),
        _line("fp32 master weights", s.master),
        _line("Adam m + v (fp32)", s.adam),
        _line("ZeRO-3 buffers", b.resident, 0),
        _line(f"reduce bucket (5e8 elements, {p_name})", b.reduce_bucket),
        _line(f"gathered: largest module + its gradient ({shape.largest_module[0].split('.')[-1]}, "
              f"{billions(shape.largest_module[1])}), prefetch", b.gathered),
        _line("persistent small parameters (<= 1e5 elements, full size)", b.persistent),
        _line(f"activations ({t.micro_rows} x {t.tokens_per_rank:,} tokens, checkpointing "
              f"{'on' if t.activation_checkpointing else 'off'})", a.peak, 0),
        _line("saved for backward" + (" (incl. sdpa mask)" if a.mask else ""), a.saved),
        _line("backward: " + ("one layer re-run + " if t.activation_checkpointing else "") + "gradients",
              a.backward_working),
        _line(f"loss logits (vocab {shape.vocab:,}, fp32, " + (
            f"{t.loss_chunk_tokens:,}-position chunks)" if lg.chunk_tokens < t.micro_rows * t.tokens_per_rank
            else "whole row)"), lg.peak, 0),
        _line("held from forward into backward (4 B x tokens x vocab)", lg.held),
        _line(f"peak in the loss backward (12 B x {lg.chunk_tokens:,} tokens x vocab)", lg.peak),
        _line(f"  whole row (trainer.loss_chunk_tokens=0) would peak at {gib(lg.whole_row_peak)} GiB", None),
    ]
    if v is not None:
        r = result.rollout
        out += [
            _line(f"vLLM (rollout.gpu_memory_utilization={r.gpu_memory_utilization:g}, tensor parallel "
                  f"{r.tensor_parallel})", v.reserved, 0),
            _line(f"weights (bf16{', / tp' if r.tensor_parallel > 1 else ', full copy'})", v.weights),
            _line(f"KV cache: {v.sequences // r.group_size} prompts x {r.group_size} samples x "
                  f"{r.sequence_tokens:,} tokens ({shape.kv_bytes_per_token_bf16 // 1024} KiB/token)", v.kv_needed),
            _line("KV room in the reservation", v.kv_room),
            _line(f"held during training: {'none (sleep mode)' if v.sleep else 'all of it (no sleep mode)'}",
                  v.during_training),
            _line("sleep mode (level 1) would free: weights offloaded + KV cache discarded", v.sleep_frees),
        ]
        if v.kv_room < r.sequence_tokens * shape.kv_bytes_per_token_bf16 // r.tensor_parallel:
            notes.append("vLLM cannot fit one full-length sequence in its reservation: raise "
                         "rollout.gpu_memory_utilization or tensor parallel")
        elif v.kv_room < v.kv_needed:
            notes.append(f"vLLM's KV room holds {v.kv_room * 100 // max(v.kv_needed, 1)}% of the step's sequences "
                         "at full length: it runs them in waves (slower, not out of memory)")
    out += [
        _line("runtime reserve (reserve_gib: CUDA context, NCCL, fragmentation)", result.reserve, 0),
        _line("optimizer step: one sub-group's gradient flattened to fp32", b.step_transient, 0),
        "",
        "peak per rank by phase",
    ]
    ph = result.phases
    phases = [("loss backward (activations + logits)", ph.loss_backward),
              ("layer backward (activations + re-run + gradients)", ph.layer_backward),
              ("optimizer step", ph.optimizer_step)]
    if ph.rollout is not None:
        phases.append(("rollout (vLLM awake)", ph.rollout))
    for label, value in phases:
        out.append(_line(label + ("   <- peak" if value == result.peak else ""), value))
    headroom = decision.headroom
    if decision.fits:
        tight = " - tight, under 5% left" if headroom < 0.05 * result.capacity else ""
        out.append(f"verdict: FITS in {c.gpu_memory_gib:g} GiB per GPU (peak {gib(result.peak)} GiB, headroom "
                   f"{gib(headroom)} GiB{tight})")
    else:
        out.append(f"verdict: DOES NOT FIT in {c.gpu_memory_gib:g} GiB per GPU (peak {gib(result.peak)} GiB, "
                   f"short by {gib(-headroom)} GiB)")
    if decision.knobs:
        out.append("knobs that lower the peak, most help first:")
        for i, k in enumerate(decision.knobs, 1):
            fits = "fits" if k.result.fits else "still does not fit"
            note = f"; {k.note}" if k.note else ""
            out.append(f"  {i}. {k.name:<42} saves {gib(k.saves):>6} GiB -> peak {gib(k.result.peak):>6} GiB "
                       f"({fits}{note})")
    for note in notes:
        out.append(f"note: {note}")
    for note in launch_notes:
        out.append(f"note for the launch (not needed to plan): {note}")
    return "\n".join(out)


MARKDOWN_HEADER = (
    "| plan | ranks x GiB | ZeRO-3 states | ZeRO-3 buffers | activations saved | layer re-run + grads "
    "| loss backward (logits) | vLLM in training | peak / GPU | verdict |\n|---|---|---|---|---|---|---|---|---|---|")
CLUSTER_KEYS = ("nodes", "gpus_per_node", "gpu_memory_gib", "markdown")


def peak_phase(result: MemoryPlan) -> str:
    ph = result.phases
    named = [("loss backward", ph.loss_backward), ("layer backward", ph.layer_backward),
             ("optimizer step", ph.optimizer_step), ("rollout", ph.rollout)]
    return next(name for name, value in named if value == result.peak)


def markdown_row(label: str, result: MemoryPlan, decision: Verdict) -> str:
    """One table row, GiB per rank. Peak = states + buffers + activations saved + the larger of
    (layer re-run + grads, loss backward) + vLLM + the runtime reserve (or the optimizer step /
    rollout phase, when larger)."""
    v, c = result.vllm, result.cluster
    verdict_text = "fits" if decision.fits else f"short {gib(-decision.headroom)}"
    if not decision.fits and decision.knobs:
        verdict_text += f"; best knob `{decision.knobs[0].name}`: {gib(decision.knobs[0].result.peak)}"
    return (f"| `{label}` | {c.world} x {c.gpu_memory_gib:g} | {gib(result.states.total)} | "
            f"{gib(result.buffers.resident)} | {gib(result.activations.saved)} | "
            f"{gib(result.activations.backward_working)} | {gib(result.logits.peak)} | "
            f"{gib(v.during_training) if v else '-'} | {gib(result.peak)} ({peak_phase(result)}) | {verdict_text} |")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("planner options (defaults):",
              ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(PlanOptions)))
        return 0
    try:
        options, overrides = split_args(argv)
        stage = stage_of(overrides, options.stage)
        raw = compose_recipe(stage, overrides)
        sections, notes = typed_sections(raw)
        train, rollout, source = settings(stage, sections, options)
        trainer = sections["trainer"]
        shape = model_shape(sections["model"], trainer.freeze_vision, trainer.freeze_language)
        cluster = Cluster(options.nodes, options.gpus_per_node, options.gpu_memory_gib)
        batch = batch_line(stage, trainer, train, cluster)
        result = plan(shape, cluster, train, rollout)
        decision = verdict(shape, result)
    except Exception as exc:  # every failure is a usage error here: say it in one line
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"ponder plan: {type(exc).__name__}: {message}", file=sys.stderr)
        return 2
    recipe = " ".join(a for a in argv if a.split("=", 1)[0] != "markdown")
    if options.markdown:
        print(MARKDOWN_HEADER)
        print(markdown_row(" ".join(a for a in argv if a.split("=", 1)[0] not in CLUSTER_KEYS), result, decision))
    else:
        print(report(recipe, stage, sections["model"], shape, result, decision, source, batch, notes))
    return 0


if __name__ == "__main__":
    import os

    import torch

    if not torch.cuda.is_available():  # say so up front: DeepSpeed (imported by the stages) warns otherwise
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.exit(main(sys.argv[1:]))
