"""Sequence parallelism on CPU: sp=2 on 2 ranks trains like sp=1 on the same global batch, with
documents and images across the slice boundary, and a killed sp=2 run resumes exactly."""

from __future__ import annotations

import pytest

from data_pipelines.interleaved import InterleavedDocuments
from data_pipelines.processor import VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream
from data_pipelines.packing import PackingConfig
from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from tests.trainer.launching import check, launch, metrics
from trainer.sequence_parallel import check_model, pretraining_only

SEQ_LEN, ROWS, STEPS = 512, 2, 10
BASE = ["recipe=pretrain_tiny", f"data.packing.seq_len={SEQ_LEN}", "data.packing.buffer_docs=16",
        f"data.batch_rows={ROWS}", "data.num_workers=1", "trainer.optim.warmup_steps=3",
        "model.attn_implementation=ponder_varlen", f"trainer.max_steps={STEPS}", "trainer.save_every=3",
        "logging.progress_bar=false", "logging.wandb_mode=disabled"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp_data")
    docs = make_interleaved_corpus(root, num_docs=80, seed=3, text_words=(20, 200))
    write_shards(docs, root, root / "shards", samples_per_shard=10)
    return root / "shards"


def _crossings(shards) -> tuple[int, int]:
    """(documents, image blocks) spanning the sp=2 slice boundary in the batches the runs train on."""
    tokenizer = load_tokenizer("tiny")
    cfg = ReaderConfig(shards=str(shards), batch_rows=ROWS, num_workers=0,
                       packing=PackingConfig(seq_len=SEQ_LEN, buffer_docs=16))
    stream = ShardStream(cfg, InterleavedDocuments(tokenizer, VisionProcessor()),
                         SpecialTokens.from_tokenizer(tokenizer).eos)
    docs = images = 0
    for _, batch in zip(range(STEPS), PackedLoader(stream)):
        mid = SEQ_LEN // 2
        docs += int(((batch.doc_ids[:, mid - 1] == batch.doc_ids[:, mid]) & (batch.doc_ids[:, mid] >= 0)).sum())
        images += int(((batch.mm_token_type_ids[:, mid - 1] == 1) & (batch.mm_token_type_ids[:, mid] == 1)).sum())
    return docs, images


def test_sp2_equals_sp1_and_resumes_exactly(shards, tmp_path):
    docs, images = _crossings(shards)
    assert docs >= 5 and images >= 1  # the split really cuts documents and an image

    one = tmp_path / "sp1"
    check(launch("pretrain.py", BASE + [f"data.shards={shards}", f"hydra.run.dir={one}"]))

    two = tmp_path / "sp2"
    args = BASE + [f"data.shards={shards}", "trainer.sequence_parallel_size=2", f"hydra.run.dir={two}"]
    killed = launch("pretrain.py", args, nproc=2, fault="kill_in_step:9")
    assert killed.returncode != 0
    before = metrics(two)
    assert [m["step"] for m in before] == list(range(1, 9))
    assert (two / "checkpoints" / "latest").read_text() == "step_6"
    check(launch("pretrain.py", args, nproc=2))  # resume=auto from step 6
    after, reference = metrics(two), metrics(one)

    assert [m["step"] for m in after] == list(range(1, STEPS + 1))
    # Steps 7 and 8 ran twice (before the kill and after the resume): bit-identical.
    assert [m["loss"] for m in after[6:8]] == [m["loss"] for m in before[6:8]]
    assert [m["grad_norm"] for m in after[6:8]] == [m["grad_norm"] for m in before[6:8]]
    # Same global batch as one rank without the split: same tokens, documents, losses.
    assert [m["tokens"] for m in after] == [m["tokens"] for m in reference]
    assert [m["documents"] for m in after] == [m["documents"] for m in reference]  # counted once per group
    assert [m["packing_efficiency"] for m in after] == [m["packing_efficiency"] for m in reference]
    for a, b in zip(after, reference):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a["step"], a["loss"], b["loss"])
    assert reference[-1]["loss"] < reference[0]["loss"] - 1.0  # it trains


@pytest.mark.parametrize("args, message", [
    ((2, "sdpa", 4, 512), "needs model.attn_implementation=ponder_varlen"),
    ((3, "ponder_varlen", 4, 513), "must divide the text attention heads"),
    ((4, "ponder_varlen", 4, 1022), "must be a multiple of trainer.sequence_parallel_size"),
])
def test_splits_the_model_cannot_serve_stop_at_start(args, message):
    with pytest.raises(ValueError, match=message):
        check_model(*args)
    check_model(1, "sdpa", 4, 513)  # sp=1 asks nothing


def test_other_stages_refuse_a_split():
    with pytest.raises(ValueError, match="serves pretraining only, not SFT"):
        pretraining_only(2, "SFT")
    pretraining_only(1, "SFT")
