"""Streaming reader: bad samples counted and skipped; saved state restores exactly."""

import itertools
from collections import Counter

import pytest

from data_pipelines.interleaved import InterleavedDocuments
from data_pipelines.packing import PackingConfig
from data_pipelines.processor import VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream
from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_corrupt_corpus, make_interleaved_corpus
from tests.data_pipelines.docs_factory import signature



@pytest.fixture(scope="module")
def documents(tokenizer):
    # Small max_pixels keeps image spans short, so many documents share a row.
    from data_pipelines.processor import ProcessorConfig

    return InterleavedDocuments(tokenizer, VisionProcessor(ProcessorConfig(max_pixels=56 * 56 * 4)))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = make_interleaved_corpus(root / "raw", num_docs=40, seed=3, text_words=(10, 120))
    write_shards(docs, root / "raw", root / "shards", samples_per_shard=5)
    return root / "shards"


def loader_for(shard_dir, documents, tokenizer, **overrides):
    cfg = ReaderConfig(shards=str(shard_dir), seed=1, batch_rows=2,
                       packing=PackingConfig(seq_len=256, buffer_docs=6, min_chunk_tokens=16), **overrides)
    return PackedLoader(ShardStream(cfg, documents, tokenizer.eos_token_id))


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_state_yields_exactly_the_remaining_batches(shard_dir, documents, tokenizer, workers):
    total, cut = 14, 5  # 40 docs of ~100-400 tokens: this crosses shard and epoch boundaries
    reference = [signature(b) for b in itertools.islice(loader_for(shard_dir, documents, tokenizer, num_workers=workers), total)]

    first = loader_for(shard_dir, documents, tokenizer, num_workers=workers)
    head = [signature(b) for b in itertools.islice(first, cut)]
    state = first.state_dict()
    assert any(s["pending"] for s in state["streams"].values())  # the packing buffer is part of it

    resumed = loader_for(shard_dir, documents, tokenizer, num_workers=workers)
    resumed.load_state_dict(state)
    tail = [signature(b) for b in itertools.islice(resumed, total - cut)]
    assert head + tail == reference


def test_every_document_appears_once_per_epoch_in_order_of_its_pieces(shard_dir, documents, tokenizer):
    loader = loader_for(shard_dir, documents, tokenizer, max_epochs=1)
    pieces = Counter()
    tokens = 0
    for batch in loader:
        tokens += batch.num_tokens
        for key in batch.doc_keys:
            pieces[key.split("@")[0]] += 1
    assert sorted(pieces) == [f"doc-{i:06d}" for i in range(40)]
    stats = loader.stats()
    assert stats["tokens"] == tokens and stats["documents"] == 40 and stats["skipped"] == {}
    assert stats["splits"] == sum(pieces.values()) - 40


def test_corrupt_corpus_streams_to_the_end_with_each_problem_counted(tmp_path, tokenizer):
    shards, bad = make_corrupt_corpus(tmp_path, seed=0, seq_len=256)
    documents = InterleavedDocuments(tokenizer, VisionProcessor())
    cfg = ReaderConfig(shards=str(shards), max_epochs=1, shuffle_shards=False,
                       packing=PackingConfig(seq_len=256, buffer_docs=4, split_documents=False))
    loader = PackedLoader(ShardStream(cfg, documents, tokenizer.eos_token_id))
    keys = [k for batch in loader for k in batch.doc_keys]
    assert sorted(keys) == [f"good-{i:03d}" for i in range(7)]  # every good document, once
    skipped = loader.stats()["skipped"]
    assert len(bad) == 7
    assert skipped == {
        "malformed_sample": 3,  # truncated JSON, invalid JSON, the cut tar's JSON-less remnant
        "missing_image": 1,  # the member dropped from the tar
        "undecodable_image": 1,  # the truncated JPEG
        "aspect_ratio": 1,  # the 300:1 image
        "longer_than_seq_len": 1,  # the over-long document (SFT-style packing keeps samples whole)
        "corrupt_tar": 2,  # tar read errors reported by webdataset's handler
    }


def test_too_few_shards_for_streams_is_a_clear_error(shard_dir, documents, tokenizer):
    with pytest.raises(ValueError, match="cannot feed"):
        ShardStream(ReaderConfig(shards=str(shard_dir), num_workers=3), documents, 0, rank=0, world_size=4)


def test_start_up_errors_name_the_first_failure_and_each_fix_once():
    from data_pipelines.chat import MissingMedia
    from data_pipelines.processor import BadSample
    from data_pipelines.reader import check_usable

    class Samples:
        def __init__(self, n):
            self.n = n

        def samples(self, shard, on_error=None):
            return iter(range(self.n))

        def name(self, shard):
            return "data.jsonl#shard0"

    def missing(sample):
        raise MissingMedia(f"r{sample}: image or frame /x/a.png not found (relative paths are read from "
                           "data.image_root, default the data file's folder)")

    with pytest.raises(ValueError) as refused:
        check_usable("data.train", Samples(3), missing)
    said = str(refused.value)
    assert "(missing_image: 3; the first: r0: image or frame /x/a.png not found" in said
    assert said.count("data.image_root") == 1  # the message names it; the hint is not added again

    class BadFormat(BadSample):
        reason = "bad_format"

    with pytest.raises(ValueError, match=r"\(bad_format: 2; the first: no answer\)\. Responses not in .*skip_bad_format"):
        check_usable("data.train", Samples(2), lambda s: (_ for _ in ()).throw(BadFormat("no answer")))
    with pytest.raises(ValueError, match=r"none of its first samples is usable \(no samples\)\. See docs"):
        check_usable("data.train", Samples(0), missing)
