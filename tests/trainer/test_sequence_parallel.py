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
    assert [m["images/train"] for m in after] == [m["images/train"] for m in reference]  # once per group too
    assert sum(m["images/train"] for m in reference) > 0
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


def test_each_slice_embeds_exactly_its_part_of_the_whole_row():
    """Images and video frames cut by slice boundaries (sp=2 and sp=4): every slice's embeddings,
    from the tower run on its own items only, equal that slice of the unsplit embeddings."""
    import random

    import torch

    from data_pipelines.batch import collate_rows
    from data_pipelines.document import DocumentBuilder, Visual
    from data_pipelines.processor import image_token_ids, video_token_ids
    from data_pipelines.synthetic import make_image, moving_shape_frames
    from data_pipelines.tokenizer import build_tiny_tokenizer
    from trainer.forward import UniformVisionForward
    from trainer.model import build_model, load_preset
    from trainer.sequence_parallel import SequenceParallel, shard_batch

    tokenizer, processor = build_tiny_tokenizer(), VisionProcessor()
    special = SpecialTokens.from_tokenizer(tokenizer)
    rng = random.Random(0)

    def document(key: str, video: bool) -> object:
        doc = DocumentBuilder(key)
        doc.add_tokens(tokenizer.encode("words " * rng.randint(5, 60), add_special_tokens=False), train=True)
        image = processor.process_image(make_image(rng)[0])
        n = int(image.grid_thw.prod()) // 4
        doc.add_visual(image_token_ids(n, special), [0] + [1] * n + [0], Visual(image.pixel_values, image.grid_thw), "image")
        if video:
            clip = processor.process_video(moving_shape_frames(rng, 12)[0], 4.0)
            ids, types = video_token_ids(clip.grid_thw, clip.timestamps, special, tokenizer)
            doc.add_visual(ids, types, Visual(clip.pixel_values, clip.grid_thw), "video")
        doc.add_tokens([special.eos], train=True)
        return doc.build()

    rows = [[document("a", True), document("b", False)], [document("c", False), document("d", True)]]
    seq_len = 8 * ((max(sum(len(d) for d in r) for r in rows) + 7) // 8)
    batch = collate_rows(rows, seq_len, special.eos)
    torch.manual_seed(0)
    forward = UniformVisionForward(build_model(load_preset("tiny"), tokenizer)).eval()
    with torch.no_grad():
        whole = forward.embed(batch)
        cut_items = 0
        for size in (2, 4):
            for rank in range(size):
                part = shard_batch(batch, SequenceParallel(size, rank, None, 0, 1))
                width = seq_len // size
                assert torch.allclose(forward.embed(part), whole[:, rank * width:(rank + 1) * width], atol=1e-6)
                cut_items += 0 if part.image_grid_thw is None else len(part.image_grid_thw)
    total_items = len(batch.image_grid_thw) + int(batch.video_grid_thw[:, 0].sum())
    assert cut_items > 2 * total_items  # items cut by a boundary ran on more than one slice
