import io
import json
import re
import statistics
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.synthetic import (
    COLOURS, make_corrupt_corpus, make_interleaved_corpus, make_length_mix, make_vqa_records,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _components(img: Image.Image, colour: tuple[int, int, int]) -> int:
    """Number of 8-connected blobs of exactly `colour` (PIL draws shapes without anti-aliasing)."""
    mask = (np.asarray(img.convert("RGB")) == colour).all(-1)
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny in range(max(0, y - 1), min(mask.shape[0], y + 2)):
                for nx in range(max(0, x - 1), min(mask.shape[1], x + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


def test_interleaved_corpus_is_deterministic_and_varied(tmp_path):
    a = make_interleaved_corpus(tmp_path / "a", num_docs=12, seed=7)
    b = make_interleaved_corpus(tmp_path / "b", num_docs=12, seed=7)
    c = make_interleaved_corpus(tmp_path / "c", num_docs=12, seed=8)
    assert _files(a.parent) == _files(b.parent)
    assert a.read_bytes() != c.read_bytes()

    docs = [json.loads(line) for line in a.read_text().splitlines()]
    assert [d["id"] for d in docs] == [f"doc-{i:06d}" for i in range(12)]
    images = [seg["image"] for d in docs for seg in d["segments"] if "image" in seg]
    assert any(all("text" in s for s in d["segments"]) for d in docs)  # text-only documents
    assert len(images) > 8 and {p.rsplit(".", 1)[1] for p in images} == {"jpg", "png"}
    sizes = [Image.open(a.parent / p).size for p in images]
    assert all(56 <= side <= 448 for size in sizes for side in size)
    assert len({round(w / h, 1) for w, h in sizes}) >= 3


def test_shape_captions_match_the_pixels(tmp_path):
    corpus = make_interleaved_corpus(tmp_path, num_docs=40, seed=1, images_per_doc=(3, 3), text_words=(4, 8))
    checked = 0
    for line in corpus.read_text().splitlines():
        segs = json.loads(line)["segments"]
        for seg, nxt in zip(segs, segs[1:]):
            m = re.match(r"There (?:is|are) (\d+) (\w+) (\w+?)s?\.", nxt.get("text", ""))
            if "image" in seg and m and seg["image"].endswith(".png"):
                img = Image.open(tmp_path / seg["image"])
                assert _components(img, COLOURS[m.group(2)]) == int(m.group(1)), (seg, m.group(0))
                checked += 1
    assert checked >= 5


def test_length_mix_is_long_tailed():
    docs = make_length_mix(20000, seed=0)
    assert docs == make_length_mix(20000, seed=0) and docs != make_length_mix(20000, seed=1)
    text = [d.text_tokens for d in docs]
    assert 270 <= statistics.median(text) <= 330
    assert 0.002 < sum(t > 8192 for t in text) / len(text) < 0.015
    assert max(text) <= 32768 and min(text) >= 1
    counts = [len(d.image_tokens) for d in docs]
    assert set(counts) == {0, 1, 2, 3, 4}
    tokens = [t for d in docs for t in d.image_tokens]
    assert min(tokens) >= 64 and max(tokens) <= 1024
    assert docs[0].total == docs[0].text_tokens + sum(docs[0].image_tokens)


def test_vqa_records(tmp_path):
    path = make_vqa_records(tmp_path / "a", n=30, seed=5)
    assert path.read_bytes() == make_vqa_records(tmp_path / "b", n=30, seed=5).read_bytes()
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert path.read_bytes() != make_vqa_records(tmp_path / "c", n=30, seed=6).read_bytes()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["domain"] for r in records} == {"colour", "counting", "arithmetic"}
    for r in records:
        img = Image.open(path.parent / r["images"][0])
        if r["domain"] == "colour":
            kind = re.fullmatch(r"What colour is the (\w+)\?", r["question"]).group(1)
            assert kind in ("square", "circle", "triangle")
            assert _components(img, COLOURS[r["answer"]]) == 1
        elif r["domain"] == "counting":
            assert re.fullmatch(r"How many \w+s are there\?", r["question"])
            assert 1 <= int(r["answer"]) <= 6
        else:
            assert int(r["answer"]) >= 0


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    return make_corrupt_corpus(tmp_path_factory.mktemp("corrupt"), seed=0, seq_len=64)


def _tolerant_samples(shard_dir: Path) -> dict[str, dict]:
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    with pytest.warns(UserWarning, match="unexpected end of data"):
        samples = list(wds.WebDataset(urls, shardshuffle=False, handler=wds.warn_and_continue))
    return {s["__key__"]: s for s in samples}


def test_corrupt_corpus_contains_each_defect(corrupt):
    shard_dir, bad = corrupt
    assert set(bad.values()) == {"truncated_json", "invalid_json", "missing_member", "truncated_image",
                                 "aspect_ratio", "too_long", "truncated_tar"}
    samples = _tolerant_samples(shard_dir)
    good = sorted(k for k in samples if k.startswith("good-"))
    assert good == [f"good-{i:03d}" for i in range(7)]
    assert set(samples) == set(good) | set(bad)
    by_reason = {reason: samples[key] for key, reason in bad.items()}

    for key in good:  # the good ones are fully valid
        record = json.loads(samples[key]["json"])
        for seg in record["segments"]:
            if "image" in seg:
                img = Image.open(io.BytesIO(samples[key][seg["image"]]))
                img.load()
                assert img.size == (seg["width"], seg["height"])

    for reason in ("truncated_json", "invalid_json"):
        with pytest.raises(ValueError):
            json.loads(by_reason[reason]["json"])
    assert by_reason["truncated_json"]["json"].startswith(b'{"id": "bad-truncated')

    record = json.loads(by_reason["missing_member"]["json"])
    assert record["segments"][1]["image"] == "img000.jpg" and "img000.jpg" not in by_reason["missing_member"]

    sample = by_reason["truncated_image"]
    seg = json.loads(sample["json"])["segments"][1]
    img = Image.open(io.BytesIO(sample[seg["image"]]))
    assert img.size == (seg["width"], seg["height"]) == (240, 180)  # the header still looks fine
    with pytest.raises(OSError):
        img.load()

    seg = json.loads(by_reason["aspect_ratio"]["json"])["segments"][1]
    w, h = Image.open(io.BytesIO(by_reason["aspect_ratio"][seg["image"]])).size
    assert (w, h) == (seg["width"], seg["height"]) and w / h == 300

    from data_pipelines.tokenizer import build_tiny_tokenizer
    text = json.loads(by_reason["too_long"]["json"])["segments"][0]["text"]
    assert len(build_tiny_tokenizer().encode(text, add_special_tokens=False)) > 64

    assert "json" not in by_reason["truncated_tar"]  # the cut member never arrives


def test_corrupt_corpus_truncated_tar_and_determinism(corrupt, tmp_path):
    shard_dir, bad = corrupt
    last = sorted(shard_dir.glob("*.tar"))[-1]
    assert last.stat().st_size % 512 != 0
    with pytest.raises(tarfile.ReadError):
        with tarfile.open(last) as tar:
            tar.getmembers()
    index = json.loads((shard_dir / "index.json").read_text())
    assert index["total_samples"] == 14  # the writer's counts, which the reader must not trust
    again, bad_again = make_corrupt_corpus(tmp_path, seed=0, seq_len=64)
    assert bad_again == bad
    assert _files(again) == _files(shard_dir)
