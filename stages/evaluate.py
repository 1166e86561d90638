"""Evaluate a checkpoint on prompt sets: greedy and sampled decoding, graded by the reward system
(docs/eval.md).

The same pieces as RL and offline grading, so an eval number means what a training reward means:
prompts are encoded by the one renderer (`encode_prompt_record`), rolled out by the recipe's
engine (`rollout.engine`: vllm or hf, forced answering as configured) and scored by the reward
system (`GroupRoller` + `Scorer`). Each rank evaluates slots rank, rank + world, ... of every set;
per-prompt outcomes are all-gathered and every rank computes the same metrics.

Per prompt set, overall and per domain, for each decoding (greedy: temperature 0, one response;
sampled: `rollout.temperature`, `samples` responses): accuracy (share of responses with reward >=
`pass_threshold`), unbiased pass@k for every k of `ks` that is <= the responses per prompt, mean
reward, format compliance, response length (mean, p95; tokens, forced-answer tokens included),
truncation and forced-answer rates. Prompts that cannot be used (bad record, missing or broken
image, over `data.max_prompt_tokens`) are counted per reason and left out of every rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from data_pipelines.chat import ChatRenderer
from data_pipelines.hub_card import card_splits
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.prompt_columns import PromptLayout
from data_pipelines.prompts import PromptRecord, encode_records
from data_pipelines.records import HUB_SHARD_FILE, is_pattern, pattern_stem
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from stages.rl.groups import GroupResult, GroupRoller
from stages.rl.metrics import p95
from stages.rl.pass_at_k import mean_pass_at_k
from trainer.checkpoint import resolve_hf_dir
from trainer.manifest import write_text_atomic
from stages.rl.prompt_sets import letter_of_unseen_options, load_gradable_prompts
from stages.rl.rewards import RewardConfig
from stages.rl.rewards.types import GRADING_ERRORS
from stages.rl.rollout import RolloutConfig, build_rollout_engine
from stages.rl.rollout.base import completion_text, request_seed
from stages.rl.scorer import Scorer
from trainer.distributed import DistInfo
from trainer.logging import log
from trainer.model import ModelConfig

# skip reasons a wrong media column gives (MMMU's image_1 .. image_7 unread: image_count_mismatch)
MEDIA_SKIPS = {"missing_image", "missing_video", "remote_image", "undecodable_image", "bad_video",
               "image_count_mismatch"}

Metrics = dict[str, Any]
# What load_prompt_records reads (or a directory, a glob of files)
PROMPT_FILE_SUFFIXES = (".jsonl", ".parquet", ".json", ".tsv")


# A wrong data.domain makes one message per distinct gold answer ("gold '5' is not a letter"): keep
# the commonest, and count the rest in one line.
MAX_GRADING_ERRORS = 20


def _most_common(counts: Counter, keep: int) -> dict[str, int]:
    top = dict(counts.most_common(keep))
    if len(counts) > keep:
        top["(other messages)"] = sum(counts.values()) - sum(top.values())
    return top


@dataclass
class EvalDataConfig(PromptLayout):
    """Prompt sets, and (PromptLayout) where their fields are: columns, domain, mc_to_blank."""

    paths: list[str] = field(default_factory=list)  # prompt sets: .jsonl, .parquet, .json, .tsv, save_to_disk dirs
    # Sets with settings of their own, after `paths`: {path, name?, image_root?, max_prompts?, and any
    # layout setting above: domain, columns, options_in_prompt, ...}; what a set leaves out is data.<key>
    sets: list[dict[str, Any]] = field(default_factory=list)
    image_root: Optional[str] = None  # relative image paths resolve here; default: the folder of each record's file
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 4096  # longer prompts (images expanded) are skipped and counted
    max_prompts: Optional[int] = None  # per set: only the first N usable records (quick looks); None: all
    # VLMEvalKit's circular evaluation (MMBench, CCBench): the set holds each question with its options
    # rotated, the copies at index + k * 1,000,000; a question counts only if every copy is right
    circular: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_prompt_tokens < 1:
            raise ValueError(f"data.max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"data.max_prompts must be >= 1 or null, got {self.max_prompts}")


@dataclass
class EvalRunConfig:
    """launch/eval.py's config (recipes/eval.yaml). `rollout.group_size` is not used: `samples` is n."""

    model: ModelConfig = field(default_factory=ModelConfig)  # model.init: the checkpoint under evaluation
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # engine, sampled temperature / top-p, lengths
    rewards: RewardConfig = field(default_factory=RewardConfig)
    greedy: bool = True  # temperature 0, one response per prompt
    samples: int = 8  # n responses per prompt at rollout.temperature; 0: no sampled decoding
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])  # pass@k of the sampled responses
    pass_threshold: float = 1.0  # a response is correct when its reward reaches this
    chunk_prompts: int = 256  # prompts per rollout call on a rank (bounds memory: encoded images, responses)
    save_responses: bool = False  # also write responses.jsonl: every response's text and reward, per decoding

    def __post_init__(self) -> None:
        if not self.model.init:
            raise ValueError("model.init is empty: give the checkpoint to evaluate (a run dir, step_N, or HF dir)")
        paths = [s.path for s in prompt_sets(self.data)]  # checks data.sets' keys
        if not paths:
            raise ValueError("data.paths is empty: give one or more prompt sets, e.g. data.paths=[a.jsonl,b.parquet]")
        missing = [p for p in paths if not Path(p).exists() and not is_pattern(p)]
        if missing:
            raise ValueError(f"data.paths / data.sets: not found: {missing}")
        unknown = [p for p in paths if Path(p).is_file() and Path(p).suffix not in PROMPT_FILE_SUFFIXES]
        if unknown:
            raise ValueError(f"data.paths: {unknown} are not {PROMPT_FILE_SUFFIXES} files or save_to_disk directories")
        if self.samples < 0 or not (self.greedy or self.samples):
            raise ValueError(f"need greedy=true or samples >= 1 (got greedy={self.greedy}, samples={self.samples})")
        if self.samples and self.rollout.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 for sampled decoding (samples > 0); "
                             "greedy=true already evaluates temperature 0")
        if any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must be distinct integers >= 1, got {self.ks}")
        if self.samples and self.ks and max(self.ks) > self.samples:
            raise ValueError(f"ks={self.ks}: pass@{max(self.ks)} needs samples >= {max(self.ks)}, got {self.samples}")
        if not math.isfinite(self.pass_threshold):
            raise ValueError(f"pass_threshold must be finite, got {self.pass_threshold}")
        if self.chunk_prompts < 1:
            raise ValueError(f"chunk_prompts must be >= 1, got {self.chunk_prompts}")
        longest = self.data.max_prompt_tokens + self.rollout.max_new_tokens + self.rollout.forced_answer_tokens + 2
        if self.rollout.engine == "vllm" and self.rollout.max_model_len < longest:
            raise ValueError(f"rollout.max_model_len={self.rollout.max_model_len} < longest sample {longest} "
                             "(data.max_prompt_tokens + rollout.max_new_tokens + forced answer + 2)")


@dataclass(frozen=True)
class Decoding:
    name: str  # greedy | sampled
    n: int  # responses per prompt
    temperature: float  # 0: greedy
    ks: tuple[int, ...]  # pass@k reported (k <= n)


def decodings(cfg: EvalRunConfig) -> list[Decoding]:
    out = [Decoding("greedy", 1, 0.0, (1,))] if cfg.greedy else []
    if cfg.samples:
        out.append(Decoding("sampled", cfg.samples, cfg.rollout.temperature, tuple(sorted(cfg.ks))))
    return out


# ---- per-prompt outcomes and the metrics over them (pure) -------------------------------------
CIRCULAR_STRIDE = 1_000_000  # VLMEvalKit: a rotated copy of question i has index i + k * stride


def circular_question(record_id: str) -> int:
    """The question a row of a circular set is a copy of (its index modulo the stride)."""
    if not re.fullmatch(r"\d+", record_id):
        raise ValueError(f"circular evaluation needs the integer ids VLMEvalKit writes (index; rotated copies at "
                         f"index + k * {CIRCULAR_STRIDE:,}); got id {record_id[:60]!r}")
    return int(record_id) % CIRCULAR_STRIDE


def circular_copies(records: list[PromptRecord]) -> Counter:
    """Rows each question of a circular set should have: CircularEval shifts a question's N options
    N times, so a copy skipped at load (a bad image) leaves its question one row short of its options
    and counted in `incomplete_questions`; without options, the rows read."""
    copies = Counter(circular_question(r.id) for r in records)
    for r in records:
        q = circular_question(r.id)
        options = r.info.get("options")
        copies[q] = max(copies[q], len(options) if isinstance(options, (list, dict)) else 0)
    return copies


@dataclass
class PromptOutcome:
    """One prompt's graded responses: all the metrics need, small enough to all-gather."""

    slot: int  # index in the set's usable records
    id: str
    domain: str
    rewards: list[float]
    format_ok: list[bool]
    lengths: list[int]  # response tokens
    truncated: list[bool]  # the final generation hit its cap
    forced: list[bool]  # `</think><answer>` was inserted at max_new_tokens
    texts: list[str] = field(default_factory=list)  # the responses, only with save_responses (all-gathered)
    # reasons of rewards the verifier could not give (bad ground truth, its own error)
    grading_errors: list[str] = field(default_factory=list)


def outcome_of(group: GroupResult, record: PromptRecord, texts: list[str] | None = None) -> PromptOutcome:
    c = group.completions
    return PromptOutcome(group.slot, record.id, record.domain, list(group.rewards), list(group.format_ok),
                         [len(x) for x in c], [x.truncated for x in c], [x.forced for x in c], texts or [],
                         [r for r in group.reasons if r.startswith(GRADING_ERRORS)])


def circular_metrics(outcomes: list[PromptOutcome], pass_threshold: float, copies: Counter) -> Metrics:
    """Questions (copies grouped by circular_question) and the share right in every copy. With n
    responses per copy the product of the copies' accuracies is the unbiased estimate of the chance
    that one response drawn per copy is right in all of them; greedy, it is all copies right.
    `copies`: rows per question (circular_copies); a question some of whose copies were skipped, at
    load or at encoding (skips are left out of the rates), is counted in `incomplete_questions`."""
    accuracies: dict[int, list[float]] = defaultdict(list)
    for o in outcomes:
        accuracies[circular_question(o.id)].append(sum(r >= pass_threshold for r in o.rewards) / len(o.rewards))
    return {"questions": len(accuracies),
            "circular_accuracy": sum(map(math.prod, accuracies.values())) / len(accuracies) if accuracies else None,
            "incomplete_questions": sum(len(a) < copies[q] for q, a in accuracies.items())}


def decoding_metrics(outcomes: list[PromptOutcome], ks: tuple[int, ...], pass_threshold: float,
                     copies: Counter | None = None) -> Metrics:
    """The numbers of one decoding over some prompts; rates are None without responses."""
    responses = sum(len(o.rewards) for o in outcomes)

    def rate(values) -> float | None:
        return sum(values) / responses if responses else None

    lengths = [n for o in outcomes for n in o.lengths]
    out: Metrics = {
        "prompts": len(outcomes), "responses": responses,
        "accuracy": rate(r >= pass_threshold for o in outcomes for r in o.rewards),
        "reward_mean": rate(r for o in outcomes for r in o.rewards),
        "format_ok_rate": rate(ok for o in outcomes for ok in o.format_ok),
        "response_length_mean": rate(lengths),
        "response_length_p95": p95(lengths) if lengths else None,
        "truncation_rate": rate(t for o in outcomes for t in o.truncated),
        "forced_answer_rate": rate(f for o in outcomes for f in o.forced),
    }
    counts = [(len(o.rewards), sum(r >= pass_threshold for r in o.rewards)) for o in outcomes]
    out.update({f"pass@{k}": mean_pass_at_k(counts, k) for k in ks})
    if copies is not None:  # a circular set: its rows per question
        out.update(circular_metrics(outcomes, pass_threshold, copies))
    return out


def grouped_metrics(outcomes: list[PromptOutcome], ks: tuple[int, ...], pass_threshold: float,
                    copies: Counter | None = None) -> Metrics:
    """{"all": metrics, "domains": {domain: metrics}} (domains sorted)."""
    by_domain: dict[str, list[PromptOutcome]] = defaultdict(list)
    for o in outcomes:
        by_domain[o.domain].append(o)
    return {"all": decoding_metrics(outcomes, ks, pass_threshold, copies),
            "domains": {d: decoding_metrics(by_domain[d], ks, pass_threshold, copies) for d in sorted(by_domain)}}


def first_questions(records: list[PromptRecord], limit: int | None) -> list[PromptRecord]:
    """The rows of a circular set's first `limit` questions, every copy kept (all when None)."""
    questions = [circular_question(r.id) for r in records]  # ids that name no question raise here
    keep = set(list(dict.fromkeys(questions))[:limit])
    return [r for r, q in zip(records, questions) if q in keep]


def set_names(paths: list[str]) -> list[tuple[str, str]]:
    """(name, path) per prompt set: the file's stem or the directory's name (a split of a saved
    DatasetDict, a hub parquet shard `<split>-00000-of-00001`, a glob `<split>-*.parquet` or a file
    beside a hub card: `<dataset folder>_<split>`, the folder above a hub `data/`), made unique with
    _2, _3, ..."""
    seen: Counter = Counter()
    out = []
    for path in paths:
        p = Path(path)
        base = p.stem if p.is_file() else p.name
        shard = HUB_SHARD_FILE.match(p.name) if p.is_file() else None
        split = shard.group(1) if shard else pattern_stem(p.name) if is_pattern(p) else None
        if split is None and p.is_file() and card_splits(p.parent)[1]:  # a hub card's file: MathVerse/testmini.parquet
            split = p.stem
        if (p.parent / "dataset_dict.json").is_file() or split is not None:
            folder = p.parent
            while is_pattern(folder):  # MMMU/*/validation-*.parquet: MMMU
                folder = folder.parent
            folder = Path(os.path.abspath(folder))  # `.` inside a hub data/ names its dataset too
            folder = folder.parent if folder.name == "data" else folder
            base = "_".join(filter(None, (folder.name, p.name if split is None else split)))
        seen[base] += 1
        out.append((base if seen[base] == 1 else f"{base}_{seen[base]}", path))
    return out


@dataclass(frozen=True)
class PromptSet:
    """One prompt set of a run, with the layout and media root its records are read with."""

    name: str
    path: str
    layout: PromptLayout
    image_root: Optional[str]
    max_prompts: Optional[int]
    circular: bool = False


LAYOUT_KEYS = tuple(f.name for f in dataclasses.fields(PromptLayout))
SET_KEYS = ("path", "name", "image_root", "max_prompts", "circular", *LAYOUT_KEYS)


def prompt_sets(data: EvalDataConfig) -> list[PromptSet]:
    """data.paths (each read with data's settings), then data.sets (each with its own over data's):
    MVBench's tasks each keep their videos under another folder; one run may hold MMBench (multiple
    choice) and OCRBench (accepted answers)."""
    entries = [{"path": p} for p in data.paths] + [dict(s) for s in data.sets]
    for entry in entries:
        unknown = sorted(set(entry) - set(SET_KEYS))
        limit, name = entry.get("max_prompts"), entry.get("name")
        bad_name = name is not None and not (isinstance(name, str) and name)
        bad_limit = limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1)
        if (unknown or not isinstance(entry.get("path"), str) or bad_name or bad_limit
                or not isinstance(entry.get("circular", False), bool)):
            raise ValueError(f"data.sets: each set is {{path, and any of {', '.join(SET_KEYS[1:])}}} "
                             f"(name a text, max_prompts >= 1, circular true or false); got {entry} "
                             f"(unknown: {unknown})")
    names = set_names([e["path"] for e in entries])
    out = []
    for entry, (auto_name, path) in zip(entries, names):
        overrides = {k: entry[k] for k in LAYOUT_KEYS if k in entry and k != "columns"}
        try:
            columns = dataclasses.replace(data.columns, **entry.get("columns", {}))
        except TypeError as err:  # a field PromptColumns does not have
            raise ValueError(f"data.sets: {path}: columns {entry['columns']}: {err}") from err
        layout = PromptLayout(**{**{k: getattr(data, k) for k in LAYOUT_KEYS}, **overrides, "columns": columns})
        out.append(PromptSet(entry.get("name") or auto_name, path, layout, entry.get("image_root", data.image_root),
                             entry.get("max_prompts", data.max_prompts), entry.get("circular", data.circular)))
    if len({s.name for s in out}) < len(out):
        raise ValueError(f"data.sets: two sets share a name: {[s.name for s in out]}")
    return out


def load_set(prompt_set: PromptSet, rewards: RewardConfig) -> tuple[list[PromptRecord], Counter]:
    """A set's records (data.max_prompts of them; of a circular set, its first max_prompts questions
    with every copy) and skip counts. Before the engine starts: ids of a circular set that name no
    question stop the run here."""
    if not prompt_set.circular:
        return load_gradable_prompts(prompt_set.path, prompt_set.layout, rewards, prompt_set.max_prompts)
    records, skipped = load_gradable_prompts(prompt_set.path, prompt_set.layout, rewards)
    try:
        return first_questions(records, prompt_set.max_prompts), skipped
    except ValueError as err:
        raise ValueError(f"{prompt_set.name} ({prompt_set.path}): {err}") from None


# ---- running ------------------------------------------------------------------------------------
def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, rank order, on every rank (no process group needed in a world of one)."""
    if info.world_size == 1:
        return [obj]
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, obj)
    return everyone


class SetEvaluator:
    """One engine, renderer and scorer on this rank, reused for every prompt set."""

    def __init__(self, cfg: EvalRunConfig, info: DistInfo, hf_dir: Path):
        self.cfg, self.info = cfg, info
        tokenizer = load_tokenizer(hf_dir)
        special = SpecialTokens.from_tokenizer(tokenizer)
        self.renderer = ChatRenderer(tokenizer, VisionProcessor(cfg.processor))
        self.tokenizer, self.special = tokenizer, special
        self.responses: list[dict[str, Any]] = []  # save_responses: every set's responses, in slot order
        engine = build_rollout_engine(cfg.rollout, hf_dir, special, cfg.model, info, cfg.rollout.seed)
        self.roller = GroupRoller(engine, Scorer(cfg.rewards), cfg.rollout, tokenizer, special)
        self.decodings = decodings(cfg)

    def __call__(self, set_index: int, prompt_set: PromptSet, loaded: tuple[list[PromptRecord], Counter]) -> Metrics:
        """Metrics of one prompt set (identical on every rank); `loaded`: its records (at most
        data.max_prompts) and skip counts."""
        started = time.perf_counter()
        records, load_skipped = loaded
        name, path = prompt_set.name, prompt_set.path
        everyone = gather(self._run_share(set_index, name, records, prompt_set.image_root), self.info)
        failed = {slot: reason for _, fails in everyone for slot, reason in fails}
        evaluated = [r for slot, r in enumerate(records) if slot not in failed]
        # records: every row read (bad ones included); evaluated: those rolled out and scored, with
        # the images and videos they carried (a column ponder did not read shows up here as 0).
        out: Metrics = {"path": str(Path(path).resolve()), "records": len(records) + sum(load_skipped.values()),
                        "evaluated": len(evaluated), "images": sum(len(r.images) for r in evaluated),
                        "videos": sum(len(r.videos) for r in evaluated),
                        "skipped": dict(sorted((Counter(load_skipped) + Counter(failed.values())).items())),
                        "options_not_shown": sum(map(letter_of_unseen_options, evaluated))}
        grading_errors: Counter = Counter()
        copies = circular_copies(records) if prompt_set.circular else None
        for d in self.decodings:
            outcomes = sorted((o for outs, _ in everyone for o in outs[d.name]), key=lambda o: o.slot)
            out[d.name] = grouped_metrics(outcomes, d.ks, self.cfg.pass_threshold, copies)
            grading_errors.update(e[:120] for o in outcomes for e in o.grading_errors)
            self.responses += [{"set": name, "id": o.id, "domain": o.domain, "decoding": d.name, "sample": i,
                                "response": text, "reward": o.rewards[i], "format_ok": o.format_ok[i]}
                               for o in outcomes for i, text in enumerate(o.texts)]
        out["grading_errors"] = _most_common(grading_errors, MAX_GRADING_ERRORS)
        out["time_s"] = time.perf_counter() - started
        return out

    def _run_share(self, set_index: int, name: str, records: list[PromptRecord], image_root: str | None
                   ) -> tuple[dict[str, list[PromptOutcome]], list[tuple[int, str]]]:
        """This rank's slots (rank, rank + world, ...) encoded, rolled out and scored a chunk at a time:
        (outcomes by decoding, failed (slot, reason)). Seeds depend on (set, slot) only."""
        cfg, info = self.cfg, self.info
        seeds = [request_seed(cfg.rollout.seed, set_index, slot) for slot in range(len(records))]
        mine = list(range(info.rank, len(records), info.world_size))
        local: dict[str, list[PromptOutcome]] = {d.name: [] for d in self.decodings}
        failed: list[tuple[int, str]] = []
        # Every rank makes as many rollout calls as the rank with the largest share (an engine spanning
        # ranks, tensor parallel, needs all of them in each call).
        most = -(-len(records) // info.world_size)
        for start in range(0, most, cfg.chunk_prompts):
            prompts, bad = encode_records(records, mine[start : start + cfg.chunk_prompts], self.renderer, image_root,
                                          cfg.data.system_prompt, cfg.data.max_prompt_tokens,
                                          self.roller.engine.takes_videos)
            failed += bad
            for d in self.decodings:
                groups, _, _ = self.roller(prompts, records, seeds, d.n, d.temperature)
                local[d.name] += [outcome_of(g, records[g.slot], self._texts(g)) for g in groups]
            log.info("%s: %d / %d prompts on rank %d", name, min(start + cfg.chunk_prompts, len(mine)), len(mine),
                     info.rank)
        return local, failed

    def _texts(self, group: GroupResult) -> list[str] | None:
        if not self.cfg.save_responses:
            return None
        return [completion_text(c.token_ids, self.tokenizer, self.special) for c in group.completions]

    def close(self) -> None:
        self.roller.close()


def evaluate(cfg: EvalRunConfig, info: DistInfo, responses_path: Path | None = None) -> Metrics:
    """Every prompt set evaluated; the returned dict (what eval.json holds) is the same on every rank.
    With cfg.save_responses, `responses_path` (if given) gets one JSON line per response."""
    hf_dir = resolve_hf_dir(cfg.model.init)
    started = time.perf_counter()
    sets_to_run = prompt_sets(cfg.data)
    log.info("evaluating %s on %d prompt set(s), %d rank(s)", hf_dir, len(sets_to_run), info.world_size)
    loaded = [load_set(s, cfg.rewards) for s in sets_to_run]
    evaluator = SetEvaluator(cfg, info, hf_dir)
    try:
        sets = {s.name: evaluator(i, s, loaded[i]) for i, s in enumerate(sets_to_run)}
        if responses_path is not None and cfg.save_responses:
            responses_path.write_text("".join(json.dumps(r) + "\n" for r in evaluator.responses))
    finally:
        evaluator.close()
    return {
        "checkpoint": str(hf_dir.resolve()), "model_init": cfg.model.init, "engine": evaluator.roller.engine.name,
        "world_size": info.world_size, "pass_threshold": cfg.pass_threshold,
        "decodings": {d.name: {"n": d.n, "temperature": d.temperature, "top_p": cfg.rollout.top_p if d.temperature
                               else None, "ks": list(d.ks), "max_new_tokens": cfg.rollout.max_new_tokens}
                      for d in decodings(cfg)},
        "sets": sets, "time_s": time.perf_counter() - started, "settings": dataclasses.asdict(cfg),
    }


# ---- reports ------------------------------------------------------------------------------------
RATE_COLUMNS = (("accuracy", "accuracy"), ("reward_mean", "reward"), ("format_ok_rate", "format ok"))
TAIL_COLUMNS = (("response_length_mean", "len mean"), ("response_length_p95", "len p95"),
                ("truncation_rate", "truncated"))


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def decoding_table(results: Metrics, decoding: str) -> list[str]:
    """Markdown rows (header included) of one decoding: a row per set, then one per domain."""
    ks = results["decodings"][decoding]["ks"]
    circular = any("circular_accuracy" in r[decoding]["all"] for r in results["sets"].values())
    columns = [*RATE_COLUMNS[:1], *[("circular_accuracy", "circular acc")] * circular,
               *[(f"pass@{k}", f"pass@{k}") for k in ks], *RATE_COLUMNS[1:], *TAIL_COLUMNS]
    lines = ["| set | domain | prompts | " + " | ".join(title for _, title in columns) + " |",
             "|---|---|" + "---:|" * (len(columns) + 1)]
    for name, result in results["sets"].items():
        rows = [("all", result[decoding]["all"]), *result[decoding]["domains"].items()]
        for domain, m in rows:
            cells = [_cell(m.get(key), 1 if key.startswith("response_length") else 3) for key, _ in columns]
            lines.append(f"| {name} | {domain} | {m['prompts']} | " + " | ".join(cells) + " |")
    return lines


def markdown_report(results: Metrics) -> str:
    """eval.md: one table per decoding, then the skipped prompts per set."""
    setting = (f"engine `{results['engine']}`, {results['world_size']} rank(s), "
               f"correct at reward >= {results['pass_threshold']}")
    lines = [f"# Evaluation of `{results['checkpoint']}`", "", setting, ""]
    for name, d in results["decodings"].items():
        how = "temperature 0" if not d["temperature"] else f"temperature {d['temperature']}, top-p {d['top_p']}"
        lines += [f"## {name} ({how}, {d['n']} response(s) per prompt, up to {d['max_new_tokens']} new tokens)", "",
                  *decoding_table(results, name), ""]
    lines += ["## Prompts evaluated and skipped", ""]
    for name, result in results["sets"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in result["skipped"].items()) or "none"
        lines.append(f"- {name}: {result['evaluated']} of {result['records']} records evaluated "
                     f"({result['images']} images, {result['videos']} videos); skipped: {reasons}")
        if result.get("options_not_shown"):
            lines.append(f"  - **options not shown**: {result['options_not_shown']} prompts are graded against an option "
                         "letter their question never lists; data.options_in_prompt=true lists them")
        first = result[next(iter(results["decodings"]))]["all"]
        if first.get("questions"):
            incomplete = (f" ({first['incomplete_questions']} with a rotation skipped: scored on the rest)"
                          if first["incomplete_questions"] else "")
            lines.append(f"  - circular: {result['evaluated']} rows are {first['questions']} questions with their "
                         f"options rotated{incomplete}; circular acc counts a question right only if every rotation is")
        if result["grading_errors"]:
            errors = "; ".join(f"{k} ({v} responses)" for k, v in list(result["grading_errors"].items())[:5])
            lines.append(f"  - **not gradable** (scored 0 whatever the response): {errors}")
    return "\n".join(lines) + "\n"


def nothing_evaluated(results: Metrics) -> str | None:
    """The error of a run in which some set had no prompt evaluated (its table would be empty)."""
    empty = {name: r["skipped"] for name, r in results["sets"].items() if not r["evaluated"]}
    if not empty:
        return None
    hint = (" Images and videos are read relative to data.image_root (default: the folder of each record's file); "
            "data.columns.images / data.columns.videos name their columns, data.image_path / data.video_path "
            "build a path from a row's columns (Video-MME: data.video_path='data/{videoID}.mp4')."
            if any(MEDIA_SKIPS & set(s) for s in empty.values()) else "")
    return "ponder eval: no prompt evaluated in " + "; ".join(f"{n} (skipped: {s})" for n, s in empty.items()) + "." + hint


def write_report(results: Metrics, run_dir: Path) -> str:
    """eval.md (the tables) and eval.json (every number) in the run directory, each whole or not at
    all, eval.json last: its presence means the run's report is written. Returns the markdown."""
    report = markdown_report(results)
    write_text_atomic(run_dir / "eval.md", report)
    write_text_atomic(run_dir / "eval.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    return report
