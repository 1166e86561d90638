"""Chat records as virtual shards: JSONL and HF `datasets` sources, and the reader over them."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from data_pipelines.chat import ChatRenderer
from data_pipelines.packing import PackingConfig
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream
from data_pipelines.records import RecordShards, resolve_records
from data_pipelines.synthetic import make_sft_records
from tests.data_pipelines.docs_factory import signature



@pytest.fixture(scope="module")
def chat(tokenizer):
    return ChatRenderer(tokenizer, VisionProcessor(ProcessorConfig(max_pixels=112 * 112 * 2)))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return make_sft_records(root, n=48, seed=4, image_side=(56, 112))


def ids_of(source: RecordShards) -> list[str]:
    return [json.loads(s["record"])["id"] for s in source.records()]


def test_virtual_shards_partition_the_records_deterministically(records):
    lines = [json.loads(line)["id"] for line in records.read_text().splitlines()]
    plain = RecordShards(str(records), records_per_shard=5, shuffle=False)
    assert (len(plain), plain.num_records) == (10, 48)
    assert ids_of(plain) == lines  # file order without shuffling
    shuffled = ids_of(RecordShards(str(records), records_per_shard=5, seed=1))
    assert sorted(shuffled) == sorted(lines) and shuffled != lines
    assert shuffled == ids_of(RecordShards(str(records), records_per_shard=5, seed=1))
    assert shuffled != ids_of(RecordShards(str(records), records_per_shard=5, seed=2))
    assert ids_of(RecordShards(str(records), records_per_shard=5, shuffle=False, limit=7)) == lines[:7]
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        resolve_records(str(records.parent / "images"))


def test_blank_lines_are_not_records_and_every_line_reads_back(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n\n   \n{"id": 2}\nnot json\n')
    source = RecordShards(str(path), records_per_shard=2, shuffle=False)
    assert [s["record"].strip() for s in source.records()] == [b'{"id": 1}', b'{"id": 2}', b"not json"]
    assert {s["root"] for s in source.records()} == {str(tmp_path)}


def test_a_glob_over_folders_reads_each_rows_images_from_its_own_folder(tmp_path):
    import datasets

    # OBELICS-style pages in two folders, each with its own 0000.png: a row read from part-b took
    # part-a's image before, without a word
    for part, rows in (("part-a", 2), ("part-b", 3)):
        (tmp_path / part).mkdir()
        datasets.Dataset.from_list([{"id": f"{part}-{i}", "images": ["0000.png", None], "texts": [None, "x"]}
                                    for i in range(rows)]).to_parquet(str(tmp_path / part / "data.parquet"))
    source = RecordShards(str(tmp_path / "part-*" / "data.parquet"), records_per_shard=2, seed=3)
    roots = {s["record"]["id"]: s["root"] for s in source.records()}
    assert len(roots) == 5 and all(root == str(tmp_path / rid[:6]) for rid, root in roots.items())
    given = RecordShards(str(tmp_path / "part-*" / "data.parquet"), records_per_shard=2, image_root="/imgs")
    assert {s["root"] for s in given.records()} == {"/imgs"}


def test_parquet_and_saved_datasets_give_the_same_documents_as_jsonl(records, chat, tmp_path):
    import datasets

    rows = []
    for line in records.read_text().splitlines():
        record = json.loads(line)
        for m in record["messages"]:  # parquet needs one type per column: content as a list of items
            if isinstance(m["content"], str):
                m["content"] = [{"type": "text", "text": m["content"]}]
            for item in m["content"]:
                item.setdefault("text", None), item.setdefault("image", None)
                item.setdefault("video", None), item.setdefault("fps", None)
        rows.append(record)
    table = datasets.Dataset.from_list(rows)
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    table.save_to_disk(str(tmp_path / "disk"))
    root = str(records.parent)
    expected = [chat(s) for s in RecordShards(str(records), 8, shuffle=False).records()]
    for spec, fmt in ((tmp_path / "pq", "parquet"), (tmp_path / "disk", "disk")):
        source = RecordShards(str(spec), 8, shuffle=False, image_root=root)
        assert source.fmt == fmt and source.num_records == len(expected)
        got = [chat(s) for s in source.records()]
        assert [d.key for d in got] == [d.key for d in expected]
        for a, b in zip(got, expected):
            assert a.input_ids.tolist() == b.input_ids.tolist() and a.loss_mask.tolist() == b.loss_mask.tolist()


def loader(records, chat, tokenizer, **overrides):
    cfg = ReaderConfig(seed=3, batch_rows=2, packing=PackingConfig(seq_len=384, buffer_docs=6, split_documents=False),
                       **overrides)
    source = RecordShards(str(records), records_per_shard=4, shuffle=cfg.shuffle_shards, seed=cfg.seed)
    return PackedLoader(ShardStream(cfg, chat, tokenizer.eos_token_id, source=source))


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_state_yields_exactly_the_remaining_batches(records, chat, tokenizer, workers):
    total, cut = 12, 6  # 48 records in ~5 batches per epoch: crosses shards and epoch boundaries
    reference = [signature(b) for b in itertools.islice(loader(records, chat, tokenizer, num_workers=workers), total)]
    first = loader(records, chat, tokenizer, num_workers=workers)
    head = [signature(b) for b in itertools.islice(first, cut)]
    state = first.state_dict()
    assert any(s["pending"] for s in state["streams"].values())
    resumed = loader(records, chat, tokenizer, num_workers=workers)
    resumed.load_state_dict(state)
    assert head + [signature(b) for b in itertools.islice(resumed, total - cut)] == reference


def test_each_record_once_per_epoch_whole_and_bad_ones_counted(records, chat, tokenizer, tmp_path):
    lines = records.read_text().splitlines()
    good_response = json.loads(lines[0])["messages"][-1]
    missing_image = {"role": "user", "content": [{"type": "image", "image": "nope.png"}]}
    bad = [
        "{truncated",
        json.dumps({"id": "bad-format", "messages": [{"role": "user", "content": "Q?"},
                                                      {"role": "assistant", "content": "no tags at all"}]}),
        json.dumps({"id": "bad-image", "messages": [missing_image, good_response]}),
        json.dumps({"id": "too-long", "messages": [{"role": "user", "content": "word " * 600}, good_response]}),
    ]
    mixed = records.parent / "mixed.jsonl"
    mixed.write_text("\n".join(lines[:20] + bad[:2] + lines[20:] + bad[2:]) + "\n")
    keys = Counter()
    reader = loader(mixed, chat, tokenizer, max_epochs=1)
    for batch in reader:
        keys.update(batch.doc_keys)
    assert sorted(keys) == sorted(json.loads(line)["id"] for line in lines)  # each once, never a piece
    assert set(keys.values()) == {1}
    assert reader.stats()["skipped"] == {"malformed_chat": 1, "bad_format": 1, "missing_image": 1,
                                         "longer_than_seq_len": 1}
    assert reader.stats()["splits"] == 0


def test_synthetic_sft_records_are_deterministic_and_well_formed(tmp_path, chat):
    mix = {k: 1.0 for k in ("image", "text", "multi_image", "multi_turn", "video")}
    a = make_sft_records(tmp_path / "a", n=20, seed=9, image_side=(56, 84), mix=mix)
    b = make_sft_records(tmp_path / "b", n=20, seed=9, image_side=(56, 84), mix=mix)
    assert a.read_bytes() == b.read_bytes()
    assert [p.read_bytes() for p in sorted((tmp_path / "a" / "images").iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "b" / "images").iterdir())]
    docs = [chat(s) for s in RecordShards(str(a), 20, shuffle=False).records()]  # none is skipped
    assert {len(d.images) for d in docs} == {0, 1, 2} and any(d.videos for d in docs)
    assert any(json.loads(line)["messages"][2:] for line in a.read_text().splitlines())  # a multi-turn one


def test_a_hub_folder_of_several_splits_asks_for_one(tmp_path):
    """A downloaded hub dataset (data/train-*.parquet beside data/test-*.parquet) read as a folder
    would train on its test rows; files whose columns differ (LLaVA-Instruct's several .json) would
    fail deep inside `datasets`. Both stop at start, saying what to point at."""
    import datasets

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"holds the splits test, train; point at one, e\.g\. '.*/data/train-\*\.parquet'"):
        resolve_records(str(tmp_path / "hub"))
    assert RecordShards(str(tmp_path / "hub" / "data" / "train-*.parquet"), 4).num_records == 1
    for split in ("train", "test"):  # the hub's parquet conversion: a folder per split
        (tmp_path / "converted" / "default" / split).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "converted" / "default" / split / "0000.parquet"))
    with pytest.raises(ValueError, match=r"holds the splits test, train; point at one, e\.g\. '.*/default/train'"):
        resolve_records(str(tmp_path / "converted"))
    assert RecordShards(str(tmp_path / "converted" / "default" / "train"), 4).num_records == 1
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "a.json").write_text(json.dumps([{"id": "1", "conversations": []}]))
    (tmp_path / "llava" / "b.json").write_text(json.dumps([{"id": "2", "model": "x", "conversations": []}]))
    with pytest.raises(ValueError, match="could not be read as one table"):
        RecordShards(str(tmp_path / "llava"), 4)


MATHVERSE_CARD = """---
task_categories:
- visual-question-answering
configs:
- config_name: testmini
  data_files:
  - split: testmini
    path: testmini.parquet
- config_name: testmini_text_only
  data_files:
  - split: testmini_text_only
    path: testmini_text_only.parquet
dataset_info:
- config_name: testmini
  features:
  - name: sample_index
    dtype: string
---
# MathVerse
"""


def test_a_hub_folder_is_split_as_its_card_says(tmp_path, monkeypatch):
    """File names alone do not split MathVerse (testmini.parquet beside testmini_text_only.parquet,
    the same problems without their images); its card (README.md's YAML header, as the hub
    publishes it) does. Configs sharing a split are one set; a card above `data/` counts; a card
    whose YAML is broken is ignored, not fatal."""
    import datasets

    from data_pipelines.hub_card import matches

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]
    (tmp_path / "MathVerse").mkdir()
    for name in ("testmini", "testmini_text_only"):
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "MathVerse" / f"{name}.parquet"))
    (tmp_path / "MathVerse" / "README.md").write_text(MATHVERSE_CARD)
    with pytest.raises(ValueError, match=r"holds the splits testmini, testmini_text_only; point at one, "
                                         r"e\.g\. '.*MathVerse/testmini\.parquet'"):
        resolve_records(str(tmp_path / "MathVerse"))
    (tmp_path / "MathVerse" / "README.md").write_text("---\nconfigs: [unclosed\n---\n")
    assert len(resolve_records(str(tmp_path / "MathVerse"))[1]) == 2  # names alone: one set, as before

    # languages as configs of one split: names would say two splits (en-..., de-...), the card says one
    (tmp_path / "langs" / "data").mkdir(parents=True)
    for lang in ("en", "de"):
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "langs" / "data" / f"{lang}-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="holds the splits de, en"):
        resolve_records(str(tmp_path / "langs"))
    (tmp_path / "langs" / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: data/en-*\n"
        "- config_name: de\n  data_files: data/de-*\n---\n")
    assert RecordShards(str(tmp_path / "langs"), 4).num_records == 2
    assert RecordShards(str(tmp_path / "langs" / "data"), 4).num_records == 2  # the card above data/

    # a card above data/ that splits it: the suggestion is the card's own pattern
    (tmp_path / "langs" / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n    validation: data/en-*\n    test: [data/de-*]\n---\n")
    with pytest.raises(ValueError, match=r"holds the splits test, validation; point at one, e\.g\. '.*langs/data/en-\*'"):
        resolve_records(str(tmp_path / "langs" / "data"))
    assert RecordShards(str(tmp_path / "langs" / "data" / "en-*"), 4).num_records == 1

    # a card's catch-all (`data_files: '*.jsonl'`, every file "train") does not merge train with test
    (tmp_path / "star").mkdir()
    for split in ("train", "test"):
        (tmp_path / "star" / f"{split}.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "star" / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: '*.jsonl'\n---\n")
    with pytest.raises(ValueError, match=r"holds the splits test, train; point at one, e\.g\. '.*star/train\.jsonl'"):
        resolve_records(str(tmp_path / "star"))

    # a card with a byte-order mark and `..` from inside data/ (pointing at `.`) are read as the hub reads them
    (tmp_path / "MathVerse" / "README.md").write_text("\ufeff\n" + MATHVERSE_CARD)
    with pytest.raises(ValueError, match="holds the splits testmini, testmini_text_only"):
        resolve_records(str(tmp_path / "MathVerse"))
    (tmp_path / "MathVerse" / "data").mkdir()
    for name in ("testmini", "testmini_text_only"):
        (tmp_path / "MathVerse" / f"{name}.parquet").rename(tmp_path / "MathVerse" / "data" / f"{name}.parquet")
    (tmp_path / "MathVerse" / "README.md").write_text(MATHVERSE_CARD.replace("path: testmini", "path: data/testmini"))
    monkeypatch.chdir(tmp_path / "MathVerse" / "data")
    with pytest.raises(ValueError, match=r"point at one, e\.g\. '\.\./data/testmini\.parquet'"):
        resolve_records(".")

    # a split at several depths: the suggestion reads every depth
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    for i, sub in enumerate(("", "a", "a/b")):
        for split in ("train", "test"):
            (tmp_path / "deep" / sub / f"{split}-{i}.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "deep" / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                                 "    train: '**/train-*'\n    test: '**/test-*'\n---\n")
    with pytest.raises(ValueError, match=r"point at one, e\.g\. '(.*/deep/\*\*/train-\*\.jsonl)'") as stop:
        resolve_records(str(tmp_path / "deep"))
    assert RecordShards(str(stop.value).split("'")[1], 4, shuffle=False).num_records == 3

    # a glob's shard prefixes may be sources, not splits (c4's en- and fr- shards); val and validation are one split
    (tmp_path / "c4").mkdir()
    for prefix in ("en", "fr", "val", "validation"):
        (tmp_path / "c4" / f"{prefix}-00000-of-00001.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert len(resolve_records(str(tmp_path / "c4" / "[ef]*-of-*.jsonl"))[1]) == 2
    assert len(resolve_records(str(tmp_path / "c4" / "val*.jsonl"))[1]) == 2
    with pytest.raises(ValueError, match="holds the splits en, fr, validation"):
        resolve_records(str(tmp_path / "c4"))  # a folder: every shard prefix is a split, as before

    assert matches("data/train-00000-of-00002.parquet", "data/train-*")
    assert not matches("data/x/train-0.parquet", "data/train-*")  # `*` stays within a folder
    assert matches("Art/x/validation-0.parquet", "**/validation-*") and matches("validation-0.parquet", "**/validation-*")
    assert not matches("testmini_text_only.parquet", "testmini.parquet")


def test_a_saved_datasetdict_is_read_by_its_train_split(tmp_path):
    """docs/data.md: a save_to_disk DatasetDict is read by its `train` split (its folder holds
    dataset_dict.json and one folder per split, whose .json metadata are no records)."""
    import datasets

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": s}]} for s in "ab"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
                         ).save_to_disk(str(tmp_path / "dd"))
    assert resolve_records(str(tmp_path / "dd")) == ("disk", [tmp_path / "dd"])
    assert RecordShards(str(tmp_path / "dd"), 4).num_records == 2
