"""launch/eval.py: the pass@k estimator, the metrics, the config checks, the checkpoint resolver,
and end-to-end runs (2 ranks and 1 rank on gloo) of a warm-started tiny Glm4v on two prompt sets
(a JSONL and a parquet with an image prompt and a prompt whose image is missing)."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_pipelines.prompts import PromptRecord
from data_pipelines.synthetic import make_rl_task_records
from stages.evaluate import (
    EvalDataConfig,
    EvalRunConfig,
    PromptOutcome,
    circular_question,
    decoding_metrics,
    first_questions,
    grouped_metrics,
    set_names,
)
from stages.evaluate import prompt_sets as sets_of  # `prompt_sets` is a fixture below
from stages.rl.pass_at_k import mean_pass_at_k, pass_at_k
from trainer.checkpoint import resolve_hf_dir
from tests.rl.helpers import (
    TASK_VERIFIERS,
    save_policy,
    task_data,
    tiny_policy,
    warm_start,
)
from tests.trainer.launching import check, launch
from trainer.distributed import DistInfo
from trainer.model import ModelConfig

SAMPLES, KS = 4, (1, 2, 4)


# ---- pass@k ----------------------------------------------------------------------------------
def test_pass_at_k_hand_computed_cases():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-12)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9, abs=1e-12)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 5, 1) == 1.0  # n - c < k: every subset passes
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert mean_pass_at_k([(5, 2), (5, 0)], 2) == pytest.approx(0.35, abs=1e-12)
    assert mean_pass_at_k([], 1) is None


def test_pass_at_k_equals_the_average_over_all_k_subsets():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        c, k = rng.randint(0, n), rng.randint(1, n)
        samples = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(samples, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_the_binomials_overflow():
    n, c, k = 2000, 7, 500  # C(2000, 500) is ~1e486: not a float
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---- metrics ---------------------------------------------------------------------------------
def _outcome(slot, domain, rewards, lengths, truncated=None, format_ok=None):
    n = len(rewards)
    return PromptOutcome(slot, f"p{slot}", domain, rewards, format_ok or [True] * n, lengths,
                         truncated or [False] * n, [False] * n)


def test_metrics_per_domain_by_hand():
    outcomes = [
        _outcome(0, "math", [1.0, 0.0, 0.0, 1.0], [10, 20, 30, 40], truncated=[False, False, False, True]),
        _outcome(1, "math", [0.0, 0.0, 0.0, 0.0], [5, 5, 5, 5], format_ok=[False, True, True, True]),
        _outcome(2, "ocr", [0.5, 1.0, 1.0, 1.0], [100, 100, 100, 200]),
    ]
    got = grouped_metrics(outcomes, (1, 2, 4), pass_threshold=1.0)
    math_ = got["domains"]["math"]
    assert math_["prompts"] == 2 and math_["responses"] == 8
    assert math_["accuracy"] == pytest.approx(2 / 8)
    assert math_["pass@1"] == pytest.approx((0.5 + 0) / 2)
    assert math_["pass@2"] == pytest.approx(((1 - 1 / 6) + 0) / 2)  # n=4, c=2: 1 - C(2,2)/C(4,2)
    assert math_["pass@4"] == pytest.approx(0.5)
    assert math_["reward_mean"] == pytest.approx(2 / 8) and math_["format_ok_rate"] == pytest.approx(7 / 8)
    assert math_["response_length_mean"] == pytest.approx(120 / 8) and math_["response_length_p95"] == 40.0
    assert math_["truncation_rate"] == pytest.approx(1 / 8)
    ocr = got["domains"]["ocr"]
    assert ocr["accuracy"] == pytest.approx(0.75) and ocr["reward_mean"] == pytest.approx(3.5 / 4)
    assert ocr["pass@2"] == 1.0  # n - c = 1 < 2
    everything = got["all"]
    assert everything["prompts"] == 3 and everything["accuracy"] == pytest.approx(5 / 12)
    assert everything["pass@4"] == pytest.approx(2 / 3)
    assert everything["response_length_p95"] == 200.0  # 95th of 12 lengths: the 12th
    assert decoding_metrics([], (1,), 1.0)["accuracy"] is None


def test_circular_accuracy_by_hand():
    # VLMEvalKit's copies of question 7 at 1000007 and 2000007; question 8 has one copy
    outcomes = [_outcome(0, "mc", [1.0, 1.0, 0.0, 1.0], [1] * 4), _outcome(1, "mc", [1.0, 0.0, 0.0, 0.0], [1] * 4),
                _outcome(2, "mc", [1.0] * 4, [1] * 4), _outcome(3, "mc", [0.0, 1.0, 1.0, 1.0], [1] * 4)]
    for o, rid in zip(outcomes, ("7", "1000007", "2000007", "8")):
        o.id = rid
    got = decoding_metrics(outcomes, (1,), 1.0, copies=Counter({7: 3, 8: 1}))
    # question 7: one sample per copy all right with chance 3/4 * 1/4 * 1; question 8: 3/4
    assert got["questions"] == 2 and got["circular_accuracy"] == pytest.approx((3 / 16 + 3 / 4) / 2)
    assert got["incomplete_questions"] == 0
    greedy = [_outcome(i, "mc", [r], [1]) for i, r in enumerate((1.0, 0.0, 1.0))]
    for o, rid in zip(greedy, ("5", "1000005", "6")):
        o.id = rid
    got = decoding_metrics(greedy, (1,), 1.0, copies=Counter({5: 2, 6: 2}))  # a copy of 6 was skipped
    assert got["circular_accuracy"] == 0.5 and got["incomplete_questions"] == 1  # all copies right, or not
    assert "circular_accuracy" not in decoding_metrics(outcomes, (1,), 1.0)
    assert circular_question("3000012") == 12
    with pytest.raises(ValueError, match="integer ids"):
        circular_question("mmbench-12")
    rows = [PromptRecord(i, "mc", [], "A") for i in ("1", "2", "1000001", "3", "1000002", "2000001")]
    assert [r.id for r in first_questions(rows, 2)] == ["1", "2", "1000001", "1000002", "2000001"]
    assert len(first_questions(rows, None)) == 6


def test_set_names_are_stems_made_unique(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "videomme").mkdir()
    (tmp_path / "MathVista" / "data").mkdir(parents=True)
    for p in ("a/eval.jsonl", "b/eval.jsonl", "c.parquet", "videomme/test-00000-of-00001.parquet",
              "MathVista/data/testmini-00000-of-00001-725687bf7a18d64b.parquet"):  # an older upload's hash
        (tmp_path / p).write_text("")
    (tmp_path / "MathVerse").mkdir()  # split by its card (README.md's configs), not by file names
    (tmp_path / "MathVerse" / "testmini.parquet").write_text("")
    (tmp_path / "MathVerse" / "README.md").write_text(
        "---\nconfigs:\n- config_name: testmini\n  data_files:\n  - split: testmini\n    path: testmini.parquet\n---\n")
    (tmp_path / "geometry3k" / "test").mkdir(parents=True)  # a split of a saved DatasetDict
    (tmp_path / "geometry3k" / "dataset_dict.json").write_text('{"splits": ["test"]}')
    paths = [str(tmp_path / p) for p in ("a/eval.jsonl", "b/eval.jsonl", "c.parquet", "a", "geometry3k/test",
                                         "videomme/test-00000-of-00001.parquet",  # a hub parquet shard
                                         "MathVista/data/testmini-*.parquet", "MMMU/*/validation-*.parquet",
                                         "MathVista/data/testmini-00000-of-00001-725687bf7a18d64b.parquet",
                                         "MathVerse/testmini.parquet")]
    assert [n for n, _ in set_names(paths)] == ["eval", "eval_2", "c", "a", "geometry3k_test", "videomme_test",
                                                "MathVista_testmini", "MMMU_validation", "MathVista_testmini_2",
                                                "MathVerse_testmini"]


def test_sets_with_settings_of_their_own(tmp_path):
    for p in ("mmbench.tsv", "ocrbench.tsv"):
        (tmp_path / p).write_text("")
    data = EvalDataConfig(paths=[str(tmp_path / "mmbench.tsv")], domain="multiple_choice", options_in_prompt=True,
                          image_root="/images",
                          sets=[{"path": str(tmp_path / "ocrbench.tsv"), "name": "ocr", "domain": "ocr",
                                 "accepted_answers": True, "columns": {"id": "index"}, "max_prompts": 5}])
    mmbench, ocr = sets_of(data)
    assert (mmbench.name, mmbench.layout.domain, mmbench.layout.options_in_prompt, mmbench.layout.accepted_answers,
            mmbench.image_root, mmbench.max_prompts) == ("mmbench", "multiple_choice", True, False, "/images", None)
    assert (ocr.name, ocr.layout.domain, ocr.layout.options_in_prompt, ocr.layout.accepted_answers,
            ocr.layout.columns.id, ocr.image_root, ocr.max_prompts) == ("ocr", "ocr", True, True, "index", "/images", 5)
    assert data.columns.id is None  # data's own columns unchanged
    with pytest.raises(ValueError, match=r"unknown: \['domian'\]"):
        sets_of(EvalDataConfig(sets=[{"path": "x.tsv", "domian": "ocr"}]))
    with pytest.raises(ValueError, match="columns"):
        sets_of(EvalDataConfig(sets=[{"path": "x.tsv", "columns": {"answr": "a"}}]))
    with pytest.raises(ValueError, match="max_prompts >= 1"):
        sets_of(EvalDataConfig(sets=[{"path": "x.tsv", "max_prompts": 0}]))
    circular = sets_of(EvalDataConfig(paths=["a.tsv"], circular=True, sets=[{"path": "b.tsv", "circular": False}]))
    assert [s.circular for s in circular] == [True, False]
    with pytest.raises(ValueError, match="circular true or false"):
        sets_of(EvalDataConfig(sets=[{"path": "x.tsv", "circular": "yes"}]))
    with pytest.raises(ValueError, match="share a name"):
        sets_of(EvalDataConfig(sets=[{"path": "a.tsv", "name": "s"}, {"path": "b.tsv", "name": "s"}]))


# ---- config and checkpoint resolution ------------------------------------------------------------
def _config(tmp_path, **kw):
    data = tmp_path / "p.jsonl"
    data.write_text("")
    fields = {"model": ModelConfig(init="x"), "data": EvalDataConfig(paths=[str(data)]), **kw}
    return EvalRunConfig(**fields)


@pytest.mark.parametrize("change,key", [
    ({"ks": [1, 16], "samples": 8}, "ks"),
    ({"ks": [0]}, "ks"),
    ({"samples": 0, "greedy": False}, "greedy"),
    ({"chunk_prompts": 0}, "chunk_prompts"),
    ({"model": ModelConfig()}, "model.init"),
    ({"data": EvalDataConfig(paths=[])}, "data.paths"),
    ({"data": EvalDataConfig(paths=["/nonexistent/x.jsonl"])}, "data.paths"),
    ({"data": EvalDataConfig(paths=[__file__])}, "data.paths"),  # a .py file is no prompt set
])
def test_bad_values_stop_with_the_recipe_key(tmp_path, change, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _config(tmp_path, **change)


def test_sampling_at_temperature_zero_and_a_short_vllm_context_are_refused(tmp_path):
    from stages.rl.rollout import RolloutConfig

    with pytest.raises(ValueError, match=r"rollout\.temperature"):
        _config(tmp_path, rollout=RolloutConfig(engine="hf", temperature=0.0))
    with pytest.raises(ValueError, match=r"rollout\.max_model_len"):
        _config(tmp_path, rollout=RolloutConfig(engine="vllm", max_new_tokens=64, max_model_len=100),
                data=EvalDataConfig(paths=[str(tmp_path / "p.jsonl")], max_prompt_tokens=64))
    assert _config(tmp_path, samples=0, ks=[]).samples == 0  # greedy only


def _checkpoint(step_dir: Path, complete: bool = True) -> Path:
    (step_dir / "hf").mkdir(parents=True)
    (step_dir / "hf" / "config.json").write_text("{}")
    if complete:
        (step_dir / "COMPLETE").write_text("")
    return step_dir / "hf"


def test_one_resolver_takes_a_run_dir_a_step_dir_or_an_hf_dir(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "step_2")
    newest = _checkpoint(run / "checkpoints" / "step_4")
    _checkpoint(run / "checkpoints" / "step_6", complete=False)  # killed mid-save: never used
    assert resolve_hf_dir(run) == newest
    assert resolve_hf_dir(run / "checkpoints" / "step_2") == run / "checkpoints" / "step_2" / "hf"
    assert resolve_hf_dir(newest) == newest
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_hf_dir(empty)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_hf_dir(tmp_path)


def test_a_domain_without_a_verifier_stops_before_the_engine_starts(tmp_path, monkeypatch):
    """Seen as a new user would: a set whose domain names no verifier ran every generation, then
    crashed at the first score. Now it stops at load, naming the domains and their record counts;
    ponder's own visual domains need no mapping, and rewards.default_verifier grades the rest."""
    import stages.evaluate as evaluate_module
    from stages.rl.rewards import RewardConfig, RewardConfigError, check_domains

    data = tmp_path / "set.jsonl"
    rows = [{"id": f"c{i}", "domain": "chartqa", "question": "Which bar is tallest?", "answer": "B"} for i in range(2)]
    rows.append({"id": "v0", "domain": "visual_count", "question": "How many red shapes?", "answer": "1"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hf = _checkpoint(tmp_path / "run" / "checkpoints" / "step_1")
    cfg = EvalRunConfig(model=ModelConfig(init=str(hf)), data=EvalDataConfig(paths=[str(data)]))

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was built before the domains were checked")

    monkeypatch.setattr(evaluate_module, "SetEvaluator", no_engine)
    with pytest.raises(RewardConfigError, match=r"'chartqa' \(2 records\).*rewards.default_verifier") as refused:
        evaluate_module.evaluate(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert "visual_count" not in str(refused.value)
    # grading and RL stop the same way
    from stages.rl.config import PromptDataConfig
    from stages.rl.grading import GradeConfig, grade

    monkeypatch.setattr("stages.rl.grading.build_rollout_engine", no_engine)
    with pytest.raises(RewardConfigError, match=r"'chartqa' \(2 records\)"):
        grade(GradeConfig(model=ModelConfig(init=str(hf)), data=PromptDataConfig(path=str(data))),
              DistInfo(0, 1, 0, torch.device("cpu")))
    from stages.rl.config import RLConfig
    from stages.rl.runner import run as run_rl

    monkeypatch.setattr("stages.rl.runner.load_policy", no_engine)
    with pytest.raises(RewardConfigError, match=r"'chartqa' \(2 records\)"):  # before the policy loads
        run_rl(RLConfig(model=ModelConfig(init=str(hf)), data=PromptDataConfig(path=str(data))), tmp_path / "rl",
               DistInfo(0, 1, 0, torch.device("cpu")))
    check_domains(["chartqa", "visual_count"], RewardConfig(default_verifier="multiple_choice"))
    check_domains(["chartqa"], RewardConfig(domain_verifiers={"chartqa": "chart"}))


def test_a_set_of_rows_without_a_domain_stops_with_the_fix(tmp_path):
    """Public sets often have no domain column: every row was skipped as "malformed" and the report
    was an empty table. Now the skip says why, and a set left empty stops at load with the fix."""
    from data_pipelines.prompts import load_prompt_records
    from stages.evaluate import evaluate

    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(3)))
    hf = _checkpoint(tmp_path / "run" / "checkpoints" / "step_1")
    with pytest.raises(ValueError, match=r"no usable record; skipped: \{'missing_domain': 3\} \(set data.domain"):
        evaluate(EvalRunConfig(model=ModelConfig(init=str(hf)), data=EvalDataConfig(paths=[str(data)])),
                 DistInfo(0, 1, 0, torch.device("cpu")))
    records, skipped = load_prompt_records(data, EvalDataConfig(paths=[str(data)], domain="math"))
    assert [r.domain for r in records] == ["math"] * 3 and not skipped


# ---- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_run(tmp_path_factory) -> Path:
    """A run directory whose latest complete checkpoint is a briefly warm-started tiny Glm4v."""
    root = tmp_path_factory.mktemp("eval")
    train, _ = task_data(root / "data", n_train=96, n_eval=8)
    model, tok = tiny_policy(text_only=False)
    warm_start(model, tok, train, steps=60)
    step = root / "run" / "checkpoints" / "step_3"
    save_policy(model, tok, step / "hf")
    (step / "COMPLETE").write_text("")
    (step.parent / "latest").write_text("step_3")
    return root / "run"


@pytest.fixture(scope="module")
def prompt_sets(tmp_path_factory) -> list[Path]:
    """tasks.jsonl: 10 text prompts. vision.parquet: 6 text prompts, one with an image, one whose
    image file does not exist, one without an answer (a bad record)."""
    root = tmp_path_factory.mktemp("sets")
    tasks = make_rl_task_records(root / "tasks.jsonl", 10, seed=3)
    rows = [json.loads(x) for x in make_rl_task_records(root / "more.jsonl", 6, seed=4).read_text().splitlines()]
    Image.new("RGB", (56, 56), (200, 30, 30)).save(root / "red.png")
    extra = [{"id": "img-1", "domain": "max", "question": "Largest number: 2 8", "answer": "8", "images": ["red.png"]},
             {"id": "img-gone", "domain": "min", "question": "Smallest number: 4 6", "answer": "4",
              "images": ["gone.png"]},
             {"id": "no-answer", "domain": "max", "question": "Largest number: 1 2", "answer": None, "images": []}]
    import datasets

    rows = [{"id": r["id"], "domain": r["domain"], "question": r["question"], "answer": r["answer"], "images": []}
            for r in rows] + extra
    datasets.Dataset.from_list(rows).to_parquet(str(root / "vision.parquet"))
    return [tasks, root / "vision.parquet"]


def _eval(init: Path, sets: list[Path], run: Path, nproc: int, *extra: str,
          data: str | None = None) -> dict:
    """eval.json's numbers, plus the lines of responses.jsonl (under "_responses") when written.
    `data`: the sets as given on the command line (default: data.paths=[both])."""
    overrides = ["recipe=eval_tiny", f"model.init={init}", data or f"data.paths=[{sets[0]},{sets[1]}]",
                 f"samples={SAMPLES}", f"ks=[{','.join(map(str, KS))}]", "rollout.max_new_tokens=16",
                 f"hydra.run.dir={run}", *TASK_VERIFIERS, *extra]
    proc = check(launch("eval.py", overrides, nproc=nproc, timeout=300))
    report = (run / "eval.md").read_text()
    assert "| vision | min |" in report and "pass@4" in report and "missing_image 1" in report
    assert report in proc.stdout  # rank 0 prints the table
    results = json.loads((run / "eval.json").read_text())
    if (run / "responses.jsonl").exists():
        results["_responses"] = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    return results


@pytest.fixture(scope="module")
def two_ranks(policy_run, prompt_sets, tmp_path_factory) -> dict:
    # model.init as a checkpoint step directory
    return _eval(policy_run / "checkpoints" / "step_3", prompt_sets, tmp_path_factory.mktemp("e2") / "run", 2,
                 "save_responses=true")


@pytest.fixture(scope="module")
def one_rank(policy_run, prompt_sets, tmp_path_factory) -> dict:
    # model.init as the run directory: its latest complete checkpoint; the sets as data.sets, each
    # with its settings (the same as data's here: the numbers must be those of data.paths)
    tasks, vision = prompt_sets
    return _eval(policy_run, prompt_sets, tmp_path_factory.mktemp("e1") / "run", 1,
                 data=f"data.sets=[{{path: {tasks}}}, {{path: {vision}, image_root: {vision.parent}, max_prompts: 100}}]")


def test_two_ranks_report_every_set_domain_and_k(two_ranks, policy_run):
    results = two_ranks
    assert results["world_size"] == 2 and results["engine"] == "hf"
    assert results["checkpoint"] == str((policy_run / "checkpoints" / "step_3" / "hf").resolve())
    assert results["decodings"]["sampled"] == {"n": SAMPLES, "temperature": 1.0, "top_p": 1.0, "ks": list(KS),
                                               "max_new_tokens": 16}
    assert set(results["sets"]) == {"tasks", "vision"}
    assert results["sets"]["tasks"]["evaluated"] == 10 and results["sets"]["vision"]["evaluated"] == 7
    for result in results["sets"].values():
        assert set(result["sampled"]["domains"]) == set(result["greedy"]["domains"]) == {"max", "min"}
        for name, n, ks in (("greedy", 1, (1,)), ("sampled", SAMPLES, KS)):
            rows = [result[name]["all"], *result[name]["domains"].values()]
            assert sum(m["prompts"] for m in rows[1:]) == rows[0]["prompts"] == result["evaluated"]
            for m in rows:
                assert m["responses"] == n * m["prompts"]
                passes = [m[f"pass@{k}"] for k in ks]
                assert all(0.0 <= p <= 1.0 for p in passes) and passes == sorted(passes)  # pass@k grows with k
                assert m["pass@1"] == pytest.approx(m["accuracy"], abs=1e-12)
                assert 0.0 <= m["format_ok_rate"] <= 1.0 and 0 < m["response_length_mean"] <= 16 + 8 + 2
    sampled = results["sets"]["tasks"]["sampled"]["all"]
    assert 0.0 < sampled["pass@4"] and sampled["pass@1"] < 1.0  # the warm start is right on some, not all
    assert results["settings"]["samples"] == SAMPLES and results["settings"]["ks"] == list(KS)


def test_saved_responses_are_every_graded_response_of_every_rank(two_ranks, one_rank):
    lines = two_ranks["_responses"]
    assert "_responses" not in one_rank  # only written when asked for
    for name, result in two_ranks["sets"].items():
        for decoding, n in (("greedy", 1), ("sampled", SAMPLES)):
            mine = [r for r in lines if r["set"] == name and r["decoding"] == decoding]
            assert len(mine) == n * result["evaluated"] and {r["sample"] for r in mine} == set(range(n))
            assert sum(r["reward"] for r in mine) / len(mine) == pytest.approx(result[decoding]["all"]["reward_mean"])
            assert all(isinstance(r["response"], str) and r["response"] for r in mine)


def test_two_ranks_give_the_one_rank_greedy_numbers(two_ranks, one_rank):
    assert one_rank["world_size"] == 1 and one_rank["checkpoint"] == two_ranks["checkpoint"]  # run dir -> latest
    for name in ("tasks", "vision"):
        one, two = one_rank["sets"][name], two_ranks["sets"][name]
        assert one["greedy"] == two["greedy"]
        assert one["skipped"] == two["skipped"] and one["evaluated"] == two["evaluated"]
        assert one["sampled"]["all"]["prompts"] == two["sampled"]["all"]["prompts"]


def test_a_missing_image_is_skipped_and_counted(two_ranks):
    vision = two_ranks["sets"]["vision"]
    assert vision["records"] == 9  # 6 text + 1 image + 1 missing image + 1 without an answer
    assert vision["skipped"] == {"missing_answer": 1, "missing_image": 1}
    assert vision["evaluated"] == 7 and vision["greedy"]["all"]["prompts"] == 7  # the image prompt ran
    assert (vision["images"], vision["videos"]) == (1, 0)  # the one evaluated image prompt's image
    assert two_ranks["sets"]["tasks"]["skipped"] == {}
    assert vision["grading_errors"] == two_ranks["sets"]["tasks"]["grading_errors"] == {}


def test_ungradable_answers_and_empty_sets_are_reported():
    """A verifier that cannot read a set's ground truth (a wrong data.domain) scores 0 whatever the
    response: eval.md says so. A set with nothing evaluated stops the run, saying why."""
    from stages.evaluate import markdown_report, nothing_evaluated

    def result(evaluated, skipped, errors):
        keys = ("accuracy", "pass@1", "reward_mean", "format_ok_rate", "response_length_mean", "response_length_p95",
                "truncation_rate")
        empty = {"all": {"prompts": evaluated, **dict.fromkeys(keys)}, "domains": {}}
        return {"records": 6, "evaluated": evaluated, "images": evaluated, "videos": 0, "skipped": skipped,
                "grading_errors": errors, "greedy": empty}

    results = {"checkpoint": "c", "engine": "hf", "world_size": 1, "pass_threshold": 1.0,
               "decodings": {"greedy": {"n": 1, "temperature": 0.0, "top_p": None, "ks": [1], "max_new_tokens": 8}},
               "sets": {"mathvision": result(6, {}, {"bad_ground_truth:multiple-choice gold '5' is not a letter": 3}),
                        "paths": result(0, {"missing_image": 6}, {})}}
    report = markdown_report(results)
    assert "- mathvision: 6 of 6 records evaluated (6 images, 0 videos); skipped: none" in report
    assert "**not gradable** (scored 0 whatever the response): bad_ground_truth:multiple-choice gold '5'" in report
    message = nothing_evaluated(results)
    assert message.startswith("ponder eval: no prompt evaluated in paths (skipped: {'missing_image': 6}).")
    assert "data.columns.images" in message and "mathvision" not in message
    results["sets"].pop("paths")
    assert nothing_evaluated(results) is None


def test_grading_errors_keep_the_commonest_messages():
    """A wrong data.domain gives one message per distinct gold answer: eval.json keeps the 20
    commonest and counts the rest in one entry, eval.md shows five."""
    from collections import Counter

    from stages.evaluate import MAX_GRADING_ERRORS, _most_common

    counts = Counter({f"bad_ground_truth:gold '{i}' is not a letter": 100 - i for i in range(30)})
    kept = _most_common(counts, MAX_GRADING_ERRORS)
    assert len(kept) == MAX_GRADING_ERRORS + 1 and list(kept)[0] == "bad_ground_truth:gold '0' is not a letter"
    assert kept["(other messages)"] == sum(100 - i for i in range(20, 30)) and sum(kept.values()) == sum(counts.values())
    assert _most_common(Counter(a=2), MAX_GRADING_ERRORS) == {"a": 2}


def test_a_folder_of_several_splits_stops_with_one_line(policy_run, tmp_path):
    """A new user's `data.paths=[MathVerse]` (two splits by its card, docs/data.md): one `ponder:`
    line naming the file to point at, not a traceback per rank."""
    from tests.data_pipelines.test_records import MATHVERSE_CARD

    (tmp_path / "MathVerse").mkdir()
    (tmp_path / "MathVerse" / "README.md").write_text(MATHVERSE_CARD)
    import datasets

    for name in ("testmini", "testmini_text_only"):
        datasets.Dataset.from_list([{"id": name, "domain": "max", "question": "Largest: 2 8", "answer": "8"}]
                                   ).to_parquet(str(tmp_path / "MathVerse" / f"{name}.parquet"))
    proc = launch("eval.py", ["recipe=eval_tiny", f"model.init={policy_run}", f"data.paths=[{tmp_path / 'MathVerse'}]",
                              f"hydra.run.dir={tmp_path / 'run'}", *TASK_VERIFIERS], timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "ponder: " in proc.stderr and "holds the splits testmini, testmini_text_only; point at one, e.g. " \
        f"'{tmp_path / 'MathVerse' / 'testmini.parquet'}'" in proc.stderr
    # in a sweep every job still runs (an exit in the first would end it), then the sweep fails
    sweep = tmp_path / "sweep"
    proc = launch("eval.py", ["-m", "recipe=eval_tiny", f"model.init={policy_run},{policy_run / 'checkpoints' / 'step_3'}",
                              f"data.paths=[{tmp_path / 'MathVerse'}]", f"hydra.sweep.dir={sweep}", *TASK_VERIFIERS],
                  timeout=300)
    assert proc.returncode != 0 and sorted(p.parent.name for p in sweep.glob("*/config.yaml")) == ["0", "1"]


def test_a_multirun_evaluates_every_checkpoint_then_fails_for_an_empty_set(policy_run, tmp_path):
    """`-m model.init=a,b` (docs/eval.md): a set with nothing evaluated fails the run, but only
    after every checkpoint's report is written (a SystemExit in the first job ended the sweep)."""
    gone = tmp_path / "gone.jsonl"
    gone.write_text(json.dumps({"id": "g", "domain": "max", "question": "Largest: 2 8", "answer": "8",
                                "images": ["gone.png"]}) + "\n")
    sweep = tmp_path / "sweep"
    proc = launch("eval.py", ["-m", "recipe=eval_tiny", f"model.init={policy_run},{policy_run / 'checkpoints' / 'step_3'}",
                              f"data.paths=[{gone}]", "samples=1", "ks=[1]", "rollout.max_new_tokens=4",
                              f"hydra.sweep.dir={sweep}", *TASK_VERIFIERS], timeout=300)
    assert proc.returncode != 0
    assert sorted(p.parent.name for p in sweep.glob("*/eval.json")) == ["0", "1"]
    assert proc.stderr.count("no prompt evaluated in gone") >= 2
