"""SFT loss under packing: per-sample losses of packed rows equal each record run alone, and the
step objective is the mean of per-sample means however the records are packed."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.batch import collate_rows
from data_pipelines.chat import ChatRenderer
from data_pipelines.packing import Packer, PackingConfig
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.records import RecordShards
from data_pipelines.synthetic import make_sft_records
from trainer.forward import UniformVisionForward
from trainer.loss import token_losses, weighted_loss_sum
from trainer.model import build_model, load_preset


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    forward = UniformVisionForward(build_model(load_preset("tiny"), tokenizer).eval())
    chat = ChatRenderer(tokenizer, VisionProcessor(ProcessorConfig(max_pixels=112 * 112 * 2)))
    path = make_sft_records(tmp_path_factory.mktemp("sft"), n=14, seed=2, image_side=(56, 112),
                            mix={k: 1.0 for k in ("image", "text", "multi_image", "multi_turn", "video")})
    docs = [chat(s) for s in RecordShards(str(path), 100, shuffle=False).records()]
    return forward, docs, tokenizer.eos_token_id


def per_sample(forward, batch) -> dict[str, float]:
    """Each record's share of the loss sum: sum over its targets of weight * token loss."""
    with torch.no_grad():
        weighted = token_losses(forward(batch), batch.labels) * batch.label_weights
    return {key: weighted[batch.doc_ids == i].sum().item() for i, key in enumerate(batch.doc_keys)}


def test_packed_and_unpacked_sft_give_the_same_per_sample_losses(setup):
    forward, docs, pad = setup
    kinds = {"image": any(len(d.images) == 1 for d in docs), "multi_image": any(len(d.images) == 2 for d in docs),
             "video": any(d.videos for d in docs), "text": any(not d.images and not d.videos for d in docs)}
    assert all(kinds.values()), kinds
    packer = Packer(PackingConfig(seq_len=512, buffer_docs=len(docs), split_documents=False))
    for doc in docs:
        packer.add(doc)
    rows = []
    while row := packer.pop_row():
        rows.append(row)
    assert len(rows) < len(docs) / 2 and max(len(r) for r in rows) >= 4  # really packed
    packed = per_sample(forward, collate_rows(rows, 512, pad))
    alone = {}
    for doc in docs:
        alone.update(per_sample(forward, collate_rows([[doc]], len(doc) + 3, pad)))  # + padding
    assert sorted(packed) == sorted(alone) == sorted(d.key for d in docs)
    for key in alone:
        assert packed[key] == pytest.approx(alone[key], abs=1e-5), key

    # The step objective sum(w * loss) / sum(w) is the mean over records of their mean token loss,
    # for this packing and for one record per row alike.
    with torch.no_grad():
        packed_batch = collate_rows(rows, 512, pad)
        objective = weighted_loss_sum(forward, packed_batch)[0].item() / packed_batch.label_weights.sum().item()
    assert packed_batch.label_weights.sum().item() == pytest.approx(len(docs))
    assert objective == pytest.approx(sum(alone.values()) / len(docs), abs=1e-6)
