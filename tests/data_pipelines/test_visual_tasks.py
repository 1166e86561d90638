"""The visual verifiable task family (data_pipelines/visual_tasks.py): one seed-determined family
of drawn scenes for pretraining docs, SFT chat records and RL prompt records."""

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.answer_format import format_violation
from data_pipelines.chat import ChatRenderer
from data_pipelines.interleaved import InterleavedDocuments
from data_pipelines.processor import VisionProcessor
from data_pipelines.prompts import encode_prompt_record, load_prompt_records
from data_pipelines.shards import read_index, write_shards
from data_pipelines.synthetic import COLOURS
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer
from data_pipelines.visual_tasks import (
    DOMAINS, LEVEL_TIERS, LEVELS, Canvas, FamilyConfig, correct_response, main, make_task,
    per_mille, task_response, write_family,
)
from stages.rl.rewards import RewardConfig, RewardItem, score_batch

REWARDS = RewardConfig(num_workers=0)  # the visual domains are mapped by default
IMAGE_TOKENS = 16  # a 112x112 canvas: 4x4 merged patches


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """12 records of every stage (3 per task) at every level."""
    return write_family(tmp_path_factory.mktemp("family"), FamilyConfig(12, seed=0))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _blobs(img: Image.Image) -> list[tuple[str, tuple[int, int, int, int], float]]:
    """(colour name, pixel box [x0, y0, x1, y1), fill ratio) of every 8-connected blob of an exact
    shape colour: what the image really shows, independent of the generator's bookkeeping."""
    pixels = np.asarray(img.convert("RGB"))
    blobs = []
    for name, rgb in COLOURS.items():
        mask = (pixels == rgb).all(-1)
        seen = np.zeros_like(mask)
        for start in zip(*np.nonzero(mask)):
            if seen[start]:
                continue
            seen[start], stack, members = True, [start], []
            while stack:
                y, x = stack.pop()
                members.append((y, x))
                for ny in range(max(0, y - 1), min(mask.shape[0], y + 2)):
                    for nx in range(max(0, x - 1), min(mask.shape[1], x + 2)):
                        if mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            ys, xs = zip(*members)
            box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
            blobs.append((name, box, len(members) / ((box[2] - box[0]) * (box[3] - box[1]))))
    return blobs


def _wrong(domain: str, answer, options: list[str] | None) -> str:
    """A plausible wrong answer in the right form."""
    if domain == "visual_count":
        return str(int(answer) + 1)
    if domain == "visual_majority":
        return next(c for c in options if c != answer)
    if domain == "visual_ocr":
        return answer[:-1] + str((int(answer[-1]) + 1) % 10)
    x1, y1, x2, y2 = answer[0]
    shift = 500 if x1 < 500 else -500  # the next-but-one column: IoU 0
    return json.dumps([[x1 + shift, y1, min(999, x2 + shift), y2]])


# ---- determinism and splits --------------------------------------------------------------------
def test_same_seed_same_bytes_and_records_do_not_depend_on_run_size(tmp_path):
    a = write_family(tmp_path / "a", FamilyConfig(8, seed=5))
    write_family(tmp_path / "b", FamilyConfig(8, seed=5))
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and len(_files(tmp_path / "a")) > 3 * 8
    other = write_family(tmp_path / "c", FamilyConfig(8, seed=6))
    for stage in a:
        assert a[stage].read_bytes() != other[stage].read_bytes()
    # One stage alone (through the CLI) is the same as that stage of --stage all, and a smaller
    # run is a prefix of a larger one.
    assert main(["--out", str(tmp_path / "d"), "--num", "5", "--seed", "5", "--stage", "rl"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["rl"]
    small, large = _lines(tmp_path / "d" / "rl" / "train.jsonl"), _lines(a["rl"])
    assert small == large[:5]
    for rec in small:
        path = rec["images"][0]
        assert (tmp_path / "d" / "rl" / path).read_bytes() == (a["rl"].parent / path).read_bytes()


def test_held_out_sets_have_disjoint_ids_and_images(tmp_path):
    train = write_family(tmp_path, FamilyConfig(16, seed=0))
    held = write_family(tmp_path, FamilyConfig(16, seed=1, split="eval"))
    for stage in train:
        assert train[stage].parent == held[stage].parent  # one image root per stage for both files
        ids = [r["id"] for r in _lines(train[stage])], [r["id"] for r in _lines(held[stage])]
        assert len(set(ids[0])) == 16 and not set(ids[0]) & set(ids[1])
        images = sorted((train[stage].parent / "images").iterdir())
        assert len({p.read_bytes() for p in images}) == len(images)  # no image shared by the two splits


# ---- RL ----------------------------------------------------------------------------------------
def test_rl_records_parse_and_their_ground_truths_grade(family, tok):
    records, skipped = load_prompt_records(family["rl"])
    assert not skipped and len(records) == 12
    assert {r.domain for r in records} == set(DOMAINS)
    assert all(r.difficulty == LEVEL_TIERS[r.info["level"]] for r in records)
    renderer = ChatRenderer(tok, VisionProcessor())
    items = []
    for r in records:
        prompt = encode_prompt_record(r, renderer, family["rl"].parent, max_tokens=64)  # fits today's tiny recipe
        assert [v.grid_thw.tolist() for v in prompt.visuals] == [[1, 8, 8]]
        options = r.info.get("options")
        for statement in ("{}", "It is {}."):
            response = correct_response(r.domain, r.answer, statement=statement)
            items.append(RewardItem(r.domain, response, r.answer, r.info))
        wrong = _wrong(r.domain, r.answer, options)
        items.append(RewardItem(r.domain, f"<think>x</think><answer><|begin_of_box|>{wrong}<|end_of_box|></answer>",
                                r.answer, r.info))
    results = score_batch(items, REWARDS, num_workers=0)
    for r, (right, sentence, wrong) in zip(records, zip(*[iter(results)] * 3)):
        assert (right.reward, right.reason, sentence.reward) == (1.0, "correct", 1.0), (r.id, right)
        assert wrong.format_ok and wrong.reward < 1.0, (r.id, wrong)
        if r.domain != "visual_ocr":  # OCR gives partial credit by edit distance
            assert wrong.reward == 0.0


def test_the_domains_are_graded_by_default(family):
    """Distinct domain names (per-domain metrics), graded by the default reward config: no recipe
    mapping needed (it was, and a missing one crashed at the first score)."""
    records, _ = load_prompt_records(family["rl"])
    by_domain = {r.domain: r for r in records}
    assert set(by_domain) == set(DOMAINS)
    items = [RewardItem(d, correct_response(d, r.answer), r.answer, r.info) for d, r in by_domain.items()]
    assert [result.reward for result in score_batch(items, RewardConfig(num_workers=0), num_workers=0)] == [1.0] * len(items)


# ---- SFT ---------------------------------------------------------------------------------------
def test_sft_records_are_well_formed_and_render_with_the_image_expanded(family, tok):
    renderer = ChatRenderer(tok, VisionProcessor())
    special = SpecialTokens.from_tokenizer(tok)
    records = _lines(family["sft"])
    assert {r["domain"] for r in records} == set(DOMAINS)
    for rec in records:
        response = rec["messages"][-1]["content"]
        assert format_violation(response) is None
        doc = renderer.document(rec, root=family["sft"].parent)
        assert len(doc) < 200  # the sft_tiny row is 1,024 tokens
        assert int((doc.input_ids == special.image).sum()) == IMAGE_TOKENS == int(doc.mm_token_type_ids.sum())
        assert [v.grid_thw.tolist() for v in doc.images] == [[1, 8, 8]]
        targets = tok.decode(doc.input_ids[doc.loss_mask].tolist())
        assert targets == response + "<|endoftext|>"


def test_every_sft_response_scores_full_reward_at_every_level():
    """The taught reasoning (longest at level 5) passes the gate and trips no penalty."""
    cfg = FamilyConfig(8, seed=2, levels=(1, 5))
    tasks = [make_task(cfg, "sft", i) for i in range(8)]
    results = score_batch([RewardItem(t.domain, task_response(t), t.answer, t.info) for t in tasks], REWARDS, 0)
    assert [(r.reward, r.penalties) for r in results] == [(1.0, ())] * 8


# ---- pretraining -------------------------------------------------------------------------------
def test_pretraining_docs_go_through_the_shard_writer_and_reader(family, tok, tmp_path):
    docs = _lines(family["pretrain"])
    stats = write_shards(family["pretrain"], family["pretrain"].parent, tmp_path, samples_per_shard=5)
    assert stats.written == 12 and not stats.skipped and read_index(tmp_path)["total_samples"] == 12
    reader = InterleavedDocuments(tok, VisionProcessor())
    samples = list(wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False))
    special = SpecialTokens.from_tokenizer(tok)
    for raw, sample in zip(docs, samples):
        images = [s for s in raw["segments"] if "image" in s]
        assert 1 <= len(images) <= 3 and len(raw["segments"]) == 2 * len(images)
        doc = reader(sample)
        assert len(doc.images) == len(images)
        assert int((doc.input_ids == special.image).sum()) == IMAGE_TOKENS * len(images)
        text = tok.decode(doc.input_ids[doc.loss_mask].tolist())
        assert all(s["text"] in text for s in raw["segments"] if "text" in s)


def test_pretraining_captions_say_what_the_tasks_ask():
    """Every caption states its task's answer: pretraining teaches what SFT and RL then ask."""
    cfg = FamilyConfig(8, seed=4)
    for i in range(8):
        task = make_task(cfg, "pretrain", i)
        shown = json.dumps(task.answer, separators=(",", ":")) if task.domain == "visual_ground" else task.answer
        assert str(shown) in task.caption


# ---- ground truth against the pixels, and the difficulty knob -----------------------------------
def test_ground_truths_match_the_pixels():
    cfg, canvas = FamilyConfig(24, seed=9), Canvas()
    for i in range(24):
        task = make_task(cfg, "rl", i)
        if task.domain == "visual_ocr":
            assert task.answer.isdigit() and len(task.answer) == LEVELS[task.level].digits
            continue
        blobs = _blobs(task.image)
        if task.domain == "visual_count":
            assert sum(c == task.question.split()[2] for c, _, _ in blobs) == int(task.answer)
        elif task.domain == "visual_majority":
            counts = {c: sum(b[0] == c for b in blobs) for c in COLOURS}
            assert max(counts, key=counts.get) == task.answer
            top, second = sorted(counts.values())[-1:-3:-1]
            assert top > second  # no tie
        else:
            circles = [box for _, box, fill in blobs if 0.68 < fill < 0.9]  # squares fill 1, triangles ~.5
            assert [per_mille(box, canvas) for box in circles] == task.answer


def test_difficulty_knob_adds_shapes_colours_and_digits():
    shapes, colours, digits = [], [], []
    for level in LEVELS:
        cfg = FamilyConfig(24, seed=1, levels=(level,))
        tasks = [make_task(cfg, "rl", i) for i in range(24)]
        scenes = [_blobs(t.image) for t in tasks if t.domain != "visual_ocr"]
        shapes.append(statistics.mean(len(s) for s in scenes))
        colours.append(statistics.mean(len({c for c, _, _ in s}) for s in scenes))
        digits.append(statistics.mean(len(t.answer) for t in tasks if t.domain == "visual_ocr"))
        assert all(t.level == level for t in tasks)
    assert shapes == sorted(shapes) and shapes[-1] > 4 * shapes[0]
    assert colours == sorted(colours) and colours[-1] > 2 * colours[0]
    assert digits == [2, 3, 4, 5, 6]


def test_cli_levels_tasks_and_labels(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--num", "6", "--stage", "rl", "--difficulty", "2,4-5",
            "--tasks", "visual_ocr,visual_count", "--no-difficulty-label"]
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "rl" / "train.jsonl")]
    records = _lines(tmp_path / "rl" / "train.jsonl")
    assert {r["level"] for r in records} <= {2, 4, 5} and not any("difficulty" in r for r in records)
    assert [r["domain"] for r in records] == ["visual_ocr", "visual_count"] * 3
    for bad in (["--difficulty", "6"], ["--tasks", "visual_colour"], ["--difficulty", "x"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), "--num", "1", *bad])


def test_count_and_majority_reason_with_the_tally_of_the_pixels():
    """The taught reasoning states how many shapes of each colour the image holds (palette order)."""
    cfg = FamilyConfig(16, seed=3, domains=("visual_count", "visual_majority"))
    for i in range(16):
        task = make_task(cfg, "sft", i)
        counts = {c: sum(b[0] == c for b in _blobs(task.image)) for c in COLOURS}
        named = [f"{n} {c}" for c, n in counts.items() if n]
        said = task.reasoning.removeprefix("I see ").removesuffix(" shapes.").removesuffix(" shape.")
        assert said.replace(" and ", ", ").split(", ") == named
        assert task.reasoning in task.caption  # pretraining captions open with the same tally


def test_other_image_control_set_moves_images_within_a_domain(tmp_path):
    argv = ["--out", str(tmp_path), "--num", "9", "--stage", "rl", "--split", "eval", "--seed", "2",
            "--tasks", "visual_count,visual_majority,visual_ocr", "--other-image-control"]
    assert main(argv) == 0
    real, control = _lines(tmp_path / "rl" / "eval.jsonl"), _lines(tmp_path / "rl" / "eval_other_image.jsonl")
    assert len(control) == len(real) and len({r["id"] for r in real + control}) == 2 * len(real)
    for a, b in zip(real, control):
        assert {k: v for k, v in a.items() if k not in ("id", "images")} == \
            {k: v for k, v in b.items() if k not in ("id", "images")}
        assert b["images"] != a["images"] and (tmp_path / "rl" / b["images"][0]).exists()
    for domain in ("visual_count", "visual_majority", "visual_ocr"):  # each domain's images, rotated by one
        mine = [i for i, r in enumerate(real) if r["domain"] == domain]
        assert [control[i]["images"] for i in mine] == [real[j]["images"] for j in mine[1:] + mine[:1]]
