import pytest
import torch

from data_pipelines.batch import IGNORE_INDEX, collate_rows
from data_pipelines.packing import Packer, PackingConfig
from tests.data_pipelines.docs_factory import IMAGE, IMAGE_END, IMAGE_START, make_doc


def pack_all(docs, cfg):
    packer = Packer(cfg)
    rows = []
    for doc in docs:
        packer.add(doc)
        while packer.full:
            rows.append(packer.pop_row())
    while row := packer.pop_row():
        rows.append(row)
    return packer, rows


def test_rows_respect_seq_len_and_keep_every_token_once():
    docs = [make_doc(f"d{i}", [5 + 7 * i, (4, 6), 3 + i], seed=i) for i in range(12)]
    cfg = PackingConfig(seq_len=64, buffer_docs=4, min_chunk_tokens=4)
    packer, rows = pack_all(docs, cfg)
    assert all(sum(len(d) for d in row) <= 64 for row in rows)
    # Reassemble each document from its pieces: every token exactly once, in order.
    pieces = {}
    for row in rows:
        for d in row:
            pieces.setdefault(d.key, []).append(d)
    for doc in docs:
        parts = sorted(pieces[doc.key], key=lambda d: d.offset)
        assert torch.equal(torch.cat([p.input_ids for p in parts]), doc.input_ids)
        assert sum(len(p.images) for p in parts) == 1
    assert packer.stats.tokens == sum(len(d) for d in docs)
    assert packer.stats.efficiency == pytest.approx(packer.stats.tokens / (len(rows) * 64))


def test_split_never_cuts_inside_an_image_span():
    # Room left in the row falls inside the image span: the cut must move before the image.
    doc = make_doc("long", [30, (8, 8), 20])  # 30 text + 18-token image span [30, 48) + 20 text
    cfg = PackingConfig(seq_len=40, buffer_docs=1, min_chunk_tokens=4)
    _, rows = pack_all([doc], cfg)
    for row in rows:
        for piece in row:
            ids = piece.input_ids.tolist()
            assert ids.count(IMAGE_START) == ids.count(IMAGE_END)
            if IMAGE in ids:
                assert ids.count(IMAGE) == 16 and len(piece.images) == 1
    assert [len(p) for row in rows for p in row] == [30, 38]


def test_unsplittable_and_oversized_documents_are_counted_not_fatal():
    too_big_image = make_doc("img", [2, (12, 12), 2])  # 38-token span > seq_len 32
    long_text = make_doc("txt", [100])
    ok = make_doc("ok", [20])
    packer, rows = pack_all([too_big_image, long_text, ok], PackingConfig(seq_len=32, buffer_docs=2, split_documents=False))
    assert packer.stats.dropped == {"vision_span_longer_than_seq_len": 1, "longer_than_seq_len": 1}
    assert [[d.key for d in row] for row in rows] == [["ok"]]


def test_collate_labels_are_shifted_within_documents_only():
    a, b = make_doc("a", [6]), make_doc("b", [3, (2, 2), 4])
    batch = collate_rows([[a, b]], seq_len=24, pad_id=0)
    n_a, n_b = len(a), len(b)
    labels = batch.labels[0]
    assert torch.equal(labels[: n_a - 1], a.input_ids[1:])
    assert labels[n_a - 1] == IGNORE_INDEX  # never predict the next document's first token
    # b: targets are its text tokens after the first; the image span is never a target.
    b_labels = labels[n_a : n_a + n_b]
    expected = torch.where(b.loss_mask[1:], b.input_ids[1:], IGNORE_INDEX)
    assert torch.equal(b_labels[:-1], expected)
    assert (labels[n_a + n_b :] == IGNORE_INDEX).all()
    assert batch.doc_ids[0].tolist() == [0] * n_a + [1] * n_b + [-1] * (24 - n_a - n_b)
    assert batch.position_ids[0, 0].tolist() == list(range(n_a)) + list(range(n_b)) + list(range(24 - n_a - n_b))
    assert batch.doc_keys == ["a", "b"]
    assert batch.image_grid_thw.tolist() == [[1, 2, 2]]


def test_packing_efficiency_on_a_mixed_length_stream():
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(300):
        text = int(torch.randint(20, 400, (1,), generator=g))
        pieces = [text // 2, (4, 4), text - text // 2] if i % 3 == 0 else [text]
        docs.append(make_doc(f"d{i}", pieces, seed=i))
    packer, rows = pack_all(docs, PackingConfig(seq_len=512, buffer_docs=32))
    assert packer.stats.efficiency >= 0.97


def test_short_documents_fill_whole_rows():
    """Caption-length documents: the look-ahead holds a row's worth of tokens, not only
    `buffer_docs` documents (64 documents of 16 tokens filled an 8,192-token row an eighth full)."""
    docs = [make_doc(f"c{i}", [16]) for i in range(600)]
    packer, rows = pack_all(docs, PackingConfig(seq_len=1024, buffer_docs=8, split_documents=False))
    assert [sum(map(len, row)) for row in rows[:-1]] == [1024] * (len(rows) - 1)
    assert packer.stats.documents == 600 and not packer.stats.dropped
