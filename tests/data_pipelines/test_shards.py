import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.shards import SCHEMA_VERSION, read_index, sample_key, write_shards
from data_pipelines.synthetic import make_interleaved_corpus

REPO = Path(__file__).resolve().parents[2]


def _read_samples(out: Path) -> list[dict]:
    urls = [str(out / s["name"]) for s in read_index(out)["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_interleaved_corpus(tmp_path_factory.mktemp("corpus"), num_docs=8, seed=3, text_words=(20, 60))


def test_round_trip_through_webdataset(corpus, tmp_path):
    docs = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert any(len(d["segments"]) == 1 for d in docs) and any(len(d["segments"]) > 2 for d in docs)
    stats = write_shards(corpus, corpus.parent, tmp_path, samples_per_shard=3)

    assert stats.written == 8 and not stats.skipped
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["schema_version"] == SCHEMA_VERSION
    assert index["total_samples"] == 8
    assert [(s["name"], s["samples"]) for s in index["shards"]] == [
        ("shard-000000.tar", 3), ("shard-000001.tar", 3), ("shard-000002.tar", 2)]
    n_images = sum("image" in seg for d in docs for seg in d["segments"])
    assert stats.images == n_images > 0

    samples = _read_samples(tmp_path)
    assert [s["__key__"] for s in samples] == [d["id"] for d in docs]  # ids are already safe keys
    for doc, sample in zip(docs, samples):
        record = json.loads(sample["json"])
        assert record["id"] == doc["id"]
        assert len(record["segments"]) == len(doc["segments"])
        image_no = 0
        for src, seg in zip(doc["segments"], record["segments"]):
            if "text" in src:
                assert seg == {"text": src["text"]}
                continue
            original = (corpus.parent / src["image"]).read_bytes()
            ext = src["image"].rsplit(".", 1)[1]
            assert seg["image"] == f"img{image_no:03d}.{ext}"
            assert sample[seg["image"]] == original  # original bytes, no re-encode
            assert (seg["width"], seg["height"]) == Image.open(io.BytesIO(original)).size
            image_no += 1
        assert set(sample) == {"__key__", "__url__", "__local_path__", "json"} | {
            s["image"] for s in record["segments"] if "image" in s}


def test_same_input_gives_identical_shards(corpus, tmp_path):
    write_shards(corpus, corpus.parent, tmp_path / "a", samples_per_shard=3)
    write_shards(corpus, corpus.parent, tmp_path / "b", samples_per_shard=3)
    for name in ("shard-000000.tar", "shard-000002.tar", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _png(path: Path, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)


def test_bad_input_is_counted_and_skipped(tmp_path):
    root = tmp_path / "root"
    _png(root / "ok.png")
    _png(tmp_path / "outside.png")
    (root / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines = [
        json.dumps({"id": "good.1", "segments": [{"text": "hi"}, {"image": "ok.png"}]}).encode(),
        b"{not json",
        b'{"id": "utf8", "segments": [{"text": "caf\xc3\x28"}]}',  # invalid UTF-8
        json.dumps({"id": "empty", "segments": []}).encode(),
        json.dumps({"id": "nosegs"}).encode(),
        json.dumps({"segments": [{"text": "no id"}]}).encode(),
        json.dumps({"id": "both", "segments": [{"text": "a", "image": "ok.png"}]}).encode(),
        json.dumps({"id": "num", "segments": [{"text": 3}]}).encode(),
        json.dumps({"id": "missing", "segments": [{"text": "a"}, {"image": "nope.jpg"}]}).encode(),
        json.dumps({"id": "garbage", "segments": [{"image": "garbage.jpg"}]}).encode(),
        json.dumps({"id": "escape", "segments": [{"image": "../outside.png"}]}).encode(),
        json.dumps({"id": "good.1", "segments": [{"text": "again"}]}).encode(),
        b"",
        json.dumps({"id": "good/2", "segments": [{"text": "text only"}]}).encode(),
    ]
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines))

    stats = write_shards(tmp_path / "docs.jsonl", root, tmp_path / "out", samples_per_shard=10)
    assert stats.written == 2 and stats.images == 1
    assert stats.skipped == Counter(malformed_json=5, no_segments=2, missing_image=1, bad_image=1,
                                    bad_image_path=1, duplicate_id=1)
    summary = stats.summary()
    assert "wrote 2 documents (1 images) into 1 shards" in summary and "malformed_json: 5" in summary
    index = read_index(tmp_path / "out")
    assert index["total_samples"] == 2 and index["skipped"]["no_segments"] == 2

    samples = _read_samples(tmp_path / "out")
    assert [json.loads(s["json"])["id"] for s in samples] == ["good.1", "good/2"]
    assert [s["__key__"] for s in samples] == [sample_key("good.1"), sample_key("good/2")]


def test_keys_are_safe_and_unique():
    ids = ["a.b", "a/b", "a b", "a_b", "x" * 300, "x" * 301, "ok-id_1"]
    keys = [sample_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert all("." not in k and "/" not in k and 0 < len(k) <= 64 for k in keys)
    assert sample_key("ok-id_1") == "ok-id_1" and sample_key("a_b") == "a_b"


def test_argument_errors(corpus, tmp_path):
    with pytest.raises(ValueError):
        write_shards(corpus, corpus.parent, tmp_path, samples_per_shard=0)
    with pytest.raises(FileNotFoundError):
        write_shards(tmp_path / "none.jsonl", corpus.parent, tmp_path, samples_per_shard=2)
    write_shards(corpus, corpus.parent, tmp_path, samples_per_shard=4)
    with pytest.raises(FileExistsError):
        write_shards(corpus, corpus.parent, tmp_path, samples_per_shard=4)
    stats = write_shards(corpus, corpus.parent, tmp_path, samples_per_shard=8, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar"]  # stale shard removed
    assert stats.shards == [{"name": "shard-000000.tar", "samples": 8}]


def _cli(*args: str) -> subprocess.CompletedProcess:
    python = REPO / ".venv" / "bin" / "python"
    return subprocess.run([str(python if python.exists() else sys.executable), "-m", "data_pipelines.shards",
                           "write", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli(corpus, tmp_path):
    out = tmp_path / "out"
    common = ["--input", str(corpus), "--image-root", str(corpus.parent), "--out", str(out)]
    done = _cli(*common, "--samples-per-shard", "3")
    assert done.returncode == 0, done.stderr
    assert "wrote 8 documents" in done.stdout
    assert read_index(out)["total_samples"] == 8 and len(list(out.glob("*.tar"))) == 3

    again = _cli(*common, "--samples-per-shard", "3")
    assert again.returncode == 2 and "already holds shards" in again.stderr

    (tmp_path / "bad.jsonl").write_text('{"id": "a", "segments": []}\nnot json\n')
    nothing = _cli("--input", str(tmp_path / "bad.jsonl"), "--image-root", str(tmp_path),
                   "--out", str(tmp_path / "none"))
    assert nothing.returncode == 1
    assert "wrote 0 documents" in nothing.stdout and "no_segments: 1" in nothing.stdout
