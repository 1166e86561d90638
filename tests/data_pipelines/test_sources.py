"""Pretraining sources in their published layouts (img2dataset tars, OBELICS parquet, plain text),
shard specs (globs, brace ranges, pipe:, http://), and the weighted mixture with exact resume."""

import functools
import http.server
import itertools
import threading
from collections import Counter

import pytest
import torch

from data_pipelines.packing import PackingConfig
from data_pipelines.processor import ProcessorConfig, VisionProcessor
from data_pipelines.reader import (
    PackedLoader,
    ReaderConfig,
    ShardStream,
    TarShards,
    resolve_shards,
)
from data_pipelines.shards import write_shards
from data_pipelines.sources import (
    CaptionDocuments,
    SourceConfig,
    build_mixture,
    build_part,
)
from data_pipelines.synthetic import make_interleaved_corpus
from tests.public_layouts import (
    write_caption_records,
    write_img2dataset,
    write_mmc4_jsonl,
    write_obelics_parquet,
    write_text_jsonl,
    write_video2dataset,
)

PROCESSOR = VisionProcessor(ProcessorConfig(max_pixels=56 * 56 * 4))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    write_img2dataset(root / "laion", shards=4, per_shard=12, seed=1, failed_every=5, no_caption_every=7)
    write_obelics_parquet(root / "obelics" / "bytes.parquet", 6, "bytes", seed=2)
    write_obelics_parquet(root / "obelics_hf" / "hf.parquet", 6, "hf", seed=3)
    write_obelics_parquet(root / "obelics_path" / "path.parquet", 6, "path", seed=4)
    write_obelics_parquet(root / "obelics_url" / "url.parquet", 4, "url", seed=5)
    write_text_jsonl(root / "text" / "c4.jsonl", 400, seed=6)
    docs = make_interleaved_corpus(root / "raw", num_docs=16, seed=3, text_words=(10, 60))
    write_shards(docs, root / "raw", root / "ponder", samples_per_shard=4)
    return root


def read_all(part, tokenizer):
    """Every document of one source (one stream, one epoch) and the stream's skip counters."""
    cfg = ReaderConfig(seed=0, max_epochs=1, packing=PackingConfig(seq_len=512, buffer_docs=1))
    stream = ShardStream(cfg, None, tokenizer.eos_token_id, mixture=[part])
    cursor = {"next": (0, 0, 0), "skipped": Counter(), "documents": 0, "tokens": 0}
    return list(stream._part_documents(0, 0, cursor)), cursor["skipped"]


def test_img2dataset_shards_read_as_published(data, tokenizer):
    # 4 shards x 12 pairs; every 5th failed to download (kept out of the tar by img2dataset), every 7th captionless.
    part = build_part(SourceConfig(name="laion", kind="captions", path=str(data / "laion")), tokenizer, PROCESSOR)
    docs, skipped = read_all(part, tokenizer)
    in_tars = [i for i in range(12) if i % 5 != 4]
    assert skipped == Counter(no_caption=4 * sum(i % 7 == 6 for i in in_tars))
    assert len(docs) == 4 * sum(i % 7 != 6 for i in in_tars)
    doc = docs[0]
    assert len(doc.images) == 1 and doc.atomic_spans[0][0] == 0  # the image, then its caption
    text = tokenizer.decode(doc.input_ids[doc.atomic_spans[0][1]:].tolist())
    assert text.startswith("a photo of a ") and text.endswith("<|endoftext|>")
    assert not doc.loss_mask[: doc.atomic_spans[0][1]].any() and doc.loss_mask[doc.atomic_spans[0][1]:].all()
    # The caption may come from the json instead: the same documents.
    by_json = build_part(SourceConfig(name="j", kind="captions", path=str(data / "laion"), caption_field="caption"),
                         tokenizer, PROCESSOR)
    docs_json, _ = read_all(by_json, tokenizer)
    assert [d.input_ids.tolist() for d in docs_json] == [d.input_ids.tolist() for d in docs]


def test_video_caption_pairs_as_video2dataset_writes_them(tokenizer, tmp_path):
    """video2dataset's tars (mp4 + txt + json) and the same pairs as records train as a video span,
    then its caption; before, every sample was `no_image`."""
    tar = write_video2dataset(tmp_path / "webvid")
    for path in (tar, tar.parent / "clips.jsonl"):
        docs, skipped = read_all(build_part(SourceConfig(name="v", kind="captions", path=str(path)), tokenizer,
                                            PROCESSOR), tokenizer)
        assert len(docs) == 3 and skipped == (Counter(bad_video=1) if path == tar else Counter())
        for doc in docs:
            assert not doc.images and len(doc.videos) == 1 and int(doc.videos[0].grid_thw[0]) == 2  # 2 s at 2 fps, pairs
            caption = tokenizer.decode(doc.input_ids[doc.mm_token_type_ids == 0].tolist())
            assert caption.startswith("<|begin_of_video|>") and caption.endswith("screen for two seconds<|endoftext|>")
            assert not doc.loss_mask[doc.mm_token_type_ids != 0].any()


def test_failed_status_and_missing_members_are_counted(tokenizer):
    documents = CaptionDocuments(tokenizer, PROCESSOR)
    from data_pipelines.processor import BadSample

    for sample, reason in [({"__key__": "a", "txt": b"x", "json": b'{"status": "failed_to_download"}'},
                            "failed_download"),
                           ({"__key__": "b", "txt": b"x"}, "no_image"),
                           ({"__key__": "v", "mp4": b"not a video", "txt": b"x"}, "bad_video"),
                           ({"__key__": "c", "jpg": b"not a jpeg", "txt": b"x"}, "undecodable_image")]:
        with pytest.raises(BadSample) as err:
            documents(sample)
        assert err.value.reason == reason


@pytest.mark.parametrize("layout", ["bytes", "hf", "path"])
def test_obelics_parquet(data, tokenizer, layout):
    folder = data / {"bytes": "obelics", "hf": "obelics_hf", "path": "obelics_path"}[layout]
    part = build_part(SourceConfig(name="o", kind="obelics", path=str(folder)), tokenizer, PROCESSOR)
    docs, skipped = read_all(part, tokenizer)
    assert len(docs) == 6 and not skipped
    import pyarrow.parquet as pq

    rows = pq.read_table(next(folder.glob("*.parquet"))).to_pylist()
    by_text = {tokenizer.decode(d.input_ids.tolist()).split("<|begin_of_image|>")[0]: d for d in docs}
    for row in rows:  # each page: its texts in order, one image span per non-null image
        doc = by_text[row["texts"][0]]
        assert len(doc.images) == sum(i is not None for i in row["images"])
        decoded = tokenizer.decode([t for t, m in zip(doc.input_ids.tolist(), doc.mm_token_type_ids.tolist()) if m == 0])
        for text in filter(None, row["texts"]):
            assert text in decoded


@pytest.mark.parametrize("layout", ["cc3m", "img2dataset_parquet"])
def test_caption_records(tokenizer, tmp_path, layout):
    """Image-caption pairs in parquet train as the same image + caption documents as tar pairs."""
    path = write_caption_records(tmp_path)[layout]
    docs, skipped = read_all(build_part(SourceConfig(name="c", kind="captions", path=str(path), records_per_shard=3),
                                        tokenizer, PROCESSOR), tokenizer)
    assert not skipped and len(docs) == 6 and all(len(d.images) == 1 for d in docs)
    texts = sorted(tokenizer.decode(d.input_ids[d.mm_token_type_ids == 0].tolist()) for d in docs)
    assert texts == sorted(f"<|begin_of_image|><|end_of_image|>a {c} square<|endoftext|>"
                           for c in ["red", "green", "blue", "yellow", "purple", "orange"])
    with pytest.raises(ValueError, match="no_caption: "):  # a column that is not there
        build_part(SourceConfig(name="c", kind="captions", path=str(path), caption_field="alt"), tokenizer, PROCESSOR)


def test_caption_records_nobody_showed(tokenizer, tmp_path):
    """img2dataset's parquet keeps failed downloads as rows; an empty image dict falls through to
    the next image column, a blank caption to the next caption column, a URL is remote."""
    import datasets

    from tests.public_layouts import png

    rows = [{"image": None, "jpg": png("red"), "caption": " ", "text": "a red square", "status": "success"},
            {"image": None, "jpg": None, "caption": None, "text": None, "status": "failed_to_download"},
            {"image": "https://example.com/a.png", "jpg": None, "caption": "a", "text": None, "status": "success"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    docs, skipped = read_all(build_part(SourceConfig(name="c", kind="captions", path=str(tmp_path / "pairs.parquet")),
                                        tokenizer, PROCESSOR), tokenizer)
    assert skipped == {"failed_download": 1, "remote_image": 1} and len(docs) == 1
    assert tokenizer.decode(docs[0].input_ids[docs[0].mm_token_type_ids == 0].tolist()).endswith("a red square<|endoftext|>")


def test_mmc4_pages_read_as_their_obelics_positions(tokenizer, tmp_path):
    """MMC4's sentences and matched images train as the same page in OBELICS' layout."""
    mmc4, obelics = write_mmc4_jsonl(tmp_path)
    images = str(tmp_path / "images")
    got, skipped = read_all(build_part(SourceConfig(name="m", kind="obelics", path=str(mmc4), image_root=images),
                                       tokenizer, PROCESSOR), tokenizer)
    want, _ = read_all(build_part(SourceConfig(name="o", kind="obelics", path=str(obelics), image_root=images),
                                  tokenizer, PROCESSOR), tokenizer)
    got, want = (sorted(docs, key=lambda d: d.input_ids.tolist()) for docs in (got, want))  # pages, in one order
    assert not skipped and len(got) == len(want) == 4 and sorted(len(d.images) for d in got) == [1, 1, 2, 2]
    for a, b in zip(got, want):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        assert all(torch.equal(x.pixel_values, y.pixel_values) for x, y in zip(a.images, b.images))
    from data_pipelines.processor import BadSample
    from data_pipelines.sources import _mmc4_positions

    with pytest.raises(BadSample, match="matched_text_index") as err:  # an image matched past the last sentence
        _mmc4_positions({"text_list": ["a"], "image_info": [{"image_name": "x.jpg", "matched_text_index": 3}]}, "k")
    assert err.value.reason == "malformed_sample"


def test_obelics_as_published_with_urls_stops_at_start(data, tokenizer):
    with pytest.raises(ValueError, match=r"\[o\] \(obelics\) \(.*\): none of its first samples is usable \(remote_image: 4; the first: .*is a URL; download the images first\)"):
        build_part(SourceConfig(name="o", kind="obelics", path=str(data / "obelics_url")), tokenizer, PROCESSOR)
    with pytest.raises(ValueError, match="no_caption: 10"):  # the wrong caption field (10 pairs in shard 0)
        build_part(SourceConfig(name="c", kind="captions", path=str(data / "laion"), caption_field="alt"),
                   tokenizer, PROCESSOR)


def test_text_records(data, tokenizer):
    part = build_part(SourceConfig(name="t", kind="text", path=str(data / "text" / "c4.jsonl"), records_per_shard=50),
                      tokenizer, PROCESSOR)
    docs, skipped = read_all(part, tokenizer)
    assert len(docs) == 400 and not skipped
    assert all(tokenizer.decode(d.input_ids.tolist()).startswith("Text ") for d in docs)
    # The same records as parquet, under another field name.
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (data / "text" / "c4.jsonl").read_text().splitlines()]
    (data / "text_parquet").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"content": r["text"], "id": r["id"]} for r in rows]),
                   data / "text_parquet" / "train-00000-of-00001.parquet")
    part = build_part(SourceConfig(name="p", kind="text", path=str(data / "text_parquet"), text_field="content",
                                   records_per_shard=50), tokenizer, PROCESSOR)
    from_parquet, _ = read_all(part, tokenizer)
    assert sorted(d.input_ids.tolist() for d in from_parquet) == sorted(d.input_ids.tolist() for d in docs)
    ranged = str(data / "text_parquet" / "train-{00000..00000}-of-00001.parquet")  # record paths take brace ranges
    assert read_all(build_part(SourceConfig(name="r", kind="text", path=ranged, text_field="content",
                                            records_per_shard=50), tokenizer, PROCESSOR), tokenizer)[0][0].key == from_parquet[0].key
    with pytest.raises(FileNotFoundError, match="records .*1 missing: .*train-00001-of-00001.parquet"):
        build_part(SourceConfig(name="r", kind="text", path=ranged.replace("00000..00000", "00000..00001"),
                                text_field="content"), tokenizer, PROCESSOR)


def test_shard_specs(data, tmp_path):
    laion = data / "laion"
    paths = [str(laion / f"{i:05d}.tar") for i in range(4)]
    assert resolve_shards(str(laion)) == paths
    assert resolve_shards(str(laion / "*.tar")) == paths
    assert resolve_shards(str(laion / "{00000..00003}.tar")) == paths
    with pytest.raises(FileNotFoundError, match=r"2 missing: .*00004.tar, .*00005.tar"):
        resolve_shards(str(laion / "{00000..00005}.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        resolve_shards(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="4 missing"):
        TarShards(str(tmp_path / "nope-{0..3}.tar"))


def _keys(source: TarShards) -> list[str]:
    return [s["__key__"] for shard in range(len(source)) for s in source.samples(shard, lambda e: False)]


def test_pipe_and_http_shards_read_the_same_samples(data):
    laion = data / "laion"
    local = _keys(TarShards(str(laion / "{00000..00003}.tar")))
    assert _keys(TarShards(f"pipe:cat {laion}/{{00000..00003}}.tar")) == local
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(laion))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert _keys(TarShards(base + "/{00000..00003}.tar")) == local
        with pytest.raises(FileNotFoundError, match="00009.tar cannot be read"):
            TarShards(base + "/{00000..00009}.tar")  # a wrong range fails at start
    finally:
        server.shutdown()
        server.server_close()


# -- the mixture -------------------------------------------------------------------------------
def mixture_sources(data):
    return [
        SourceConfig(name="captions", kind="captions", path=str(data / "laion"), weight=0.3),
        SourceConfig(name="web", kind="obelics", path=str(data / "obelics"), weight=0.2, records_per_shard=2),
        SourceConfig(name="ponder", kind="interleaved", path=str(data / "ponder"), weight=0.1),
        SourceConfig(name="text", kind="text", path=str(data / "text" / "c4.jsonl"), weight=0.4, records_per_shard=50),
    ]


def mixed_loader(data, tokenizer, workers=0):
    cfg = ReaderConfig(seed=1, batch_rows=2, num_workers=workers,
                       packing=PackingConfig(seq_len=128, buffer_docs=12, min_chunk_tokens=16))
    parts = build_mixture(mixture_sources(data), tokenizer, PROCESSOR, seed=cfg.seed)
    return PackedLoader(ShardStream(cfg, None, tokenizer.eos_token_id, mixture=parts))


def test_mixture_proportions_over_2000_documents(data, tokenizer):
    # The documents as the packer receives them (packing does not reorder sources' shares).
    cfg = ReaderConfig(seed=1)
    stream = ShardStream(cfg, None, tokenizer.eos_token_id,
                         mixture=build_mixture(mixture_sources(data), tokenizer, PROCESSOR, seed=cfg.seed))
    cursors = [{"next": (0, 0, 0), "skipped": Counter(), "documents": 0, "tokens": 0} for _ in stream.parts]
    docs = list(itertools.islice(stream._mixed_documents(0, cursors), 2000))
    realised = Counter(doc.origin[0] for doc in docs)
    for k, source in enumerate(mixture_sources(data)):
        assert abs(realised[k] / 2000 - source.weight) < 0.02, realised
        assert cursors[k]["documents"] == realised[k]
        assert cursors[k]["tokens"] == sum(len(d) for d in docs if d.origin[0] == k)
    assert cursors[0]["skipped"]["no_caption"] > 0  # skips stay with their source
    assert not any(c["skipped"] for c in cursors[1:])


def batch_tensors(batch) -> list:
    return [batch.input_ids, batch.labels, batch.position_ids, batch.label_weights, batch.doc_keys,
            batch.pixel_values, batch.image_grid_thw]


def assert_same(a, b):
    for x, y in zip(batch_tensors(a), batch_tensors(b), strict=True):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@pytest.mark.parametrize("workers", [0, 2])
def test_mixture_resume_is_bit_identical(data, tokenizer, workers):
    total = 14
    reference = list(itertools.islice(mixed_loader(data, tokenizer, workers), total))
    first, head = mixed_loader(data, tokenizer, workers), []
    for batch in first:  # stop where documents wait in the packing buffer: the hard case
        head.append(batch)
        state = first.state_dict()
        if len(head) >= 4 and any(s["pending"] for s in state["streams"].values()):
            break
    assert len(head) < total
    assert all(set(s["sources"]) == {"captions", "web", "ponder", "text"} for s in state["streams"].values())
    resumed = mixed_loader(data, tokenizer, workers)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(resumed, total - len(head)))
    for a, b in zip(head + tail, reference, strict=True):
        assert_same(a, b)
    uninterrupted = mixed_loader(data, tokenizer, workers)
    list(itertools.islice(uninterrupted, total))
    assert resumed.stats() == uninterrupted.stats()  # counters resume too


def test_missing_source_fails_at_start(data, tokenizer, tmp_path):
    sources = mixture_sources(data) + [SourceConfig(name="gone", kind="text", path=str(tmp_path / "gone.jsonl"))]
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        build_mixture(sources, tokenizer, PROCESSOR)


def test_each_rank_reads_its_own_share_of_every_source(data, tokenizer):
    parts = build_mixture(mixture_sources(data)[:2], tokenizer, PROCESSOR, seed=1)  # captions 0.3, web 0.2
    seen = []
    for rank in (0, 1):
        stream = ShardStream(ReaderConfig(seed=1), None, tokenizer.eos_token_id, rank=rank, world_size=2, mixture=parts)
        cursors = [{"next": (0, 0, 0), "skipped": Counter(), "documents": 0, "tokens": 0} for _ in parts]
        docs = list(itertools.islice(stream._mixed_documents(0, cursors), 10))
        assert Counter(d.origin[0] for d in docs) == {0: 6, 1: 4}  # 0.3 : 0.2 on every rank
        seen.append({(d.origin[0], d.key) for d in docs})
    assert not seen[0] & seen[1]  # disjoint shards per rank, per source
