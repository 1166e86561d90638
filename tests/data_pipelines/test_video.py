"""Videos in pretraining documents: PyAV decoding at 2 fps, the shard writer, the reader (never
cut inside a video, exact resume) and bad videos counted and skipped, never fatal."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
import webdataset as wds

av = pytest.importorskip("av", reason="PyAV decodes video files (Makefile installs it)")

from data_pipelines import video as video_module  # noqa: E402
from data_pipelines.interleaved import InterleavedDocuments  # noqa: E402
from data_pipelines.packing import PackingConfig  # noqa: E402
from data_pipelines.processor import VisionProcessor  # noqa: E402
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream  # noqa: E402
from data_pipelines.shards import write_shards  # noqa: E402
from data_pipelines.synthetic import make_interleaved_corpus, moving_shape_frames, write_mp4  # noqa: E402
from data_pipelines.tokenizer import SpecialTokens, load_tokenizer  # noqa: E402
from data_pipelines.video import decode_video  # noqa: E402


def _mp4(tmp_path, frames, fps: int, name: str = "clip.mp4") -> bytes:
    write_mp4(frames, tmp_path / name, fps)
    return (tmp_path / name).read_bytes()


def test_decoding_equals_the_processor_on_every_frame(tmp_path):
    """Keeping only the sampled frames (and shrinking them while decoding) gives exactly what the
    processor makes of all decoded frames: 2 fps sampling of a 10 fps clip, pairs, timestamps."""
    frames, _ = moving_shape_frames(random.Random(0), 37, size=(160, 120))
    data = _mp4(tmp_path, frames, fps=10)
    with av.open(io.BytesIO(data)) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    assert len(decoded) == 37
    processor = VisionProcessor()
    ours, reference = decode_video(data, processor), processor.process_video(decoded, 10.0)
    assert torch.equal(ours.grid_thw, reference.grid_thw)
    assert ours.grid_thw[0] == 4  # 3.7 s at 2 fps: 7 frames, padded to 8, paired
    assert ours.timestamps == reference.timestamps == [0, 1, 2, 3]
    assert torch.equal(ours.pixel_values, reference.pixel_values)


def _bad_shard(path, tmp_path) -> int:
    """A shard written by nobody's writer: one good text document and documents whose videos are
    bad in every way the reader must survive. Returns the number of bad ones."""
    good_frames, _ = moving_shape_frames(random.Random(1), 8)
    good = _mp4(tmp_path, good_frames, fps=4, name="good.mp4")
    with av.open(str(tmp_path / "empty.mp4"), mode="w") as container:  # a stream with zero frames
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height = 64, 64
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # the header, then no frame
    empty = (tmp_path / "empty.mp4").read_bytes()
    big = _mp4(tmp_path, moving_shape_frames(random.Random(2), 4, size=(128, 96))[0], fps=4, name="big.mp4")
    frame = io.BytesIO()
    good_frames[0].save(frame, format="JPEG")
    bad = {
        "garbage": {"vid000.mp4": b"this is not a video at all" * 40},
        "truncated": {"vid000.mp4": good[: len(good) // 3]},
        "zero_frames": {"vid000.mp4": empty},
        "absurd_size": {"vid000.mp4": big},  # over MAX_FRAME_PIXELS, patched small below
        "zero_fps_frames": {"vid000.f000.jpg": frame.getvalue()},
        "corrupt_frame": {"vid000.f000.jpg": b"\xff\xd8\xff not a jpeg", "vid000.f001.jpg": frame.getvalue()},
    }
    segments = {
        "zero_fps_frames": {"video": ["vid000.f000.jpg"], "fps": 0},
        "corrupt_frame": {"video": ["vid000.f000.jpg", "vid000.f001.jpg"], "fps": 2},
    }
    with wds.TarWriter(str(path), encoder=False) as writer:
        writer.write({"__key__": "fine", "json": json.dumps({"id": "fine", "segments": [
            {"text": "text before"}, {"video": "vid000.mp4"}, {"text": "text after"}]}).encode(),
            "vid000.mp4": good})
        for key, members in bad.items():
            seg = segments.get(key, {"video": "vid000.mp4"})
            doc = {"id": key, "segments": [{"text": "some words"}, seg]}
            writer.write({"__key__": key, "json": json.dumps(doc).encode(), **members})
    return len(bad)


def _loader(shards, seq_len: int = 512, rows: int = 2) -> PackedLoader:
    tokenizer = load_tokenizer("tiny")
    cfg = ReaderConfig(shards=str(shards), batch_rows=rows, num_workers=0, max_epochs=1, shuffle_shards=False,
                       packing=PackingConfig(seq_len=seq_len, buffer_docs=8, min_chunk_tokens=16))
    stream = ShardStream(cfg, InterleavedDocuments(tokenizer, VisionProcessor()),
                         SpecialTokens.from_tokenizer(tokenizer).eos)
    return PackedLoader(stream)


def test_corpus_with_videos_streams_whole_videos_counts_bad_ones_and_resumes_exactly(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    docs = make_interleaved_corpus(root, num_docs=24, seed=5, images_per_doc=(0, 1), text_words=(40, 400),
                                   video_fraction=0.5)
    lines = [json.loads(line) for line in docs.read_text().splitlines()]
    with_video = sum(any("video" in s for s in d["segments"]) for d in lines)
    as_files = sum(any(isinstance(s.get("video"), str) for s in d["segments"]) for d in lines)
    assert with_video >= 6 and 0 < as_files < with_video  # both kinds: .mp4 files and frame lists
    stats = write_shards(docs, root, tmp_path / "shards", samples_per_shard=6)
    assert stats.videos == with_video and not stats.skipped
    n_bad = _bad_shard(tmp_path / "shards" / "shard-999999.tar", tmp_path)
    monkeypatch.setattr(video_module, "MAX_FRAME_PIXELS", 112 * 84)

    loader = _loader(tmp_path / "shards")
    batches = list(loader)
    sp = SpecialTokens.from_tokenizer(load_tokenizer("tiny"))
    videos = 0
    for batch in batches:
        grids = [] if batch.video_grid_thw is None else batch.video_grid_thw.tolist()
        videos += len(grids)
        frame_tokens = iter([h * w // 4] * t for t, h, w in grids)
        for row in batch.input_ids.tolist():
            # Every video in a row is whole: its markers, T frame blocks of h*w/4 tokens each.
            for start in (i for i, t in enumerate(row) if t == sp.video_start):
                end = row.index(sp.video_end, start)
                blocks = [row[i + 1:row.index(sp.image_end, i)] for i in range(start, end) if row[i] == sp.image_start]
                assert [len(b) for b in blocks] == next(frame_tokens)
            assert row.count(sp.video_start) == row.count(sp.video_end)
        assert int((batch.mm_token_type_ids == 2).sum()) == sum(t * h * w // 4 for t, h, w in grids)
        assert batch.pixel_values_videos is None or batch.pixel_values_videos.shape[0] == sum(t * h * w for t, h, w in grids)
    assert videos == with_video + 1  # every good video of the corpus, and the hand-written good one
    counts = loader.stats()
    assert counts["skipped"] == {"bad_video": n_bad}, counts
    assert counts["documents"] >= len(lines) + 1

    # Exact resume: stop after 3 batches, restore into a fresh loader, get the same batches.
    first = _loader(tmp_path / "shards")
    it = iter(first)
    for _ in range(3):
        next(it)
    resumed = _loader(tmp_path / "shards")
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    rest = list(resumed)
    assert len(rest) == len(batches) - 3
    for a, b in zip(rest, batches[3:]):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.position_ids, b.position_ids)
        assert (a.pixel_values_videos is None) == (b.pixel_values_videos is None)
        if a.pixel_values_videos is not None:
            assert torch.equal(a.pixel_values_videos, b.pixel_values_videos)


def test_the_writer_skips_bad_videos_with_a_reason(tmp_path, monkeypatch):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "junk.mp4").write_bytes(b"junk" * 100)
    (tmp_path / "v" / "clip.txt").write_bytes(b"junk")
    frames, _ = moving_shape_frames(random.Random(3), 8)
    write_mp4(frames, tmp_path / "v" / "ok.mp4", 4)
    frames[0].save(tmp_path / "v" / "f0.jpg")
    docs = [
        {"id": "ok", "segments": [{"text": "a"}, {"video": "v/ok.mp4"}]},
        {"id": "frames", "segments": [{"video": ["v/f0.jpg", "v/f0.jpg"], "fps": 2}]},
        {"id": "junk", "segments": [{"video": "v/junk.mp4"}]},
        {"id": "ext", "segments": [{"video": "v/clip.txt"}]},
        {"id": "missing", "segments": [{"video": "v/none.mp4"}]},
        {"id": "nofps", "segments": [{"video": ["v/f0.jpg"]}]},
        {"id": "missing_frame", "segments": [{"video": ["v/f0.jpg", "v/f9.jpg"], "fps": 2}]},
        {"id": "huge", "segments": [{"video": "v/huge.mp4"}]},
    ]
    write_mp4(moving_shape_frames(random.Random(4), 40)[0], tmp_path / "v" / "huge.mp4", 4)  # larger than ok.mp4
    monkeypatch.setattr(video_module, "MAX_VIDEO_BYTES", (tmp_path / "v" / "ok.mp4").stat().st_size)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = write_shards(tmp_path / "docs.jsonl", tmp_path, tmp_path / "shards", samples_per_shard=10)
    assert stats.written == 2 and stats.videos == 2
    assert dict(stats.skipped) == {"bad_video": 5, "missing_video": 1}
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["skipped"] == {"bad_video": 5, "missing_video": 1}


def test_a_video_segment_names_the_part_it_is_about(tmp_path, tokenizer):
    """Panda-70M / InternVid captions are about seconds of longer videos: `start` / `end` in a
    segment reach the shard and only that part is decoded. Before, the bounds were dropped without
    a word and the whole video trained under a caption about one part of it."""
    frames, _ = moving_shape_frames(random.Random(5), 24)  # 6 s at 4 fps
    write_mp4(frames, tmp_path / "long.mp4", 4)
    docs = [{"id": "whole", "segments": [{"video": "long.mp4"}, {"text": "a shape moves"}]},
            {"id": "part", "segments": [{"video": "long.mp4", "start": 1.0, "end": 3.0}, {"text": "a shape moves"}]},
            {"id": "tail", "segments": [{"video": "long.mp4", "start": 4}, {"text": "a shape moves"}]},
            {"id": "backwards", "segments": [{"video": "long.mp4", "start": 3, "end": 1}]},
            {"id": "text_bound", "segments": [{"video": "long.mp4", "start": "one"}]}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = write_shards(tmp_path / "docs.jsonl", tmp_path, tmp_path / "shards", samples_per_shard=10)
    assert stats.written == 3 and dict(stats.skipped) == {"malformed_json": 2}
    documents = InterleavedDocuments(tokenizer, VisionProcessor())
    read = {}
    for sample in wds.WebDataset(str(tmp_path / "shards" / "shard-000000.tar"), shardshuffle=False):
        doc = documents(sample)
        read[doc.key] = doc
    # 2 fps, frames in pairs: 6 s -> 6 temporal patches, [1, 3) s -> 2, [4, 6) s -> 2
    assert {k: int(d.videos[0].grid_thw[0]) for k, d in read.items()} == {"whole": 6, "part": 2, "tail": 2}
    clip = decode_video((tmp_path / "long.mp4").read_bytes(), VisionProcessor(), video_module.VideoClip(None, 1.0, 3.0))
    assert torch.equal(read["part"].videos[0].pixel_values, clip.pixel_values)
    bad = {"__key__": "x", "json": json.dumps({"id": "x", "segments": [{"video": "v.mp4", "start": -1}]}),
           "v.mp4": (tmp_path / "long.mp4").read_bytes()}
    with pytest.raises(video_module.BadVideoError, match="0 <= start < end"):  # shards written by hand: counted
        documents(bad)


def test_a_folder_of_frames_becomes_its_frames_at_the_segments_rate(tmp_path, tokenizer):
    """ShareGPTVideo keeps each video as a folder of frames: `{"video": FOLDER, "fps": F}` is its
    frames in time order (2 before 10), cut by start / end; without `fps` the document is a counted
    missing_video (it was one for any folder)."""
    folder = tmp_path / "train_300k" / "v_01"
    folder.mkdir(parents=True)
    frames, _ = moving_shape_frames(random.Random(6), 12)
    for i, frame in enumerate(frames):
        frame.save(folder / f"c{i + 1}.jpg")  # unpadded: c10.jpg sorts after c9.jpg
    (folder / "._c1.jpg").write_bytes(b"macOS metadata")
    listed = [f"train_300k/v_01/c{i + 1}.jpg" for i in range(12)]
    docs = [{"id": "folder", "segments": [{"video": "train_300k/v_01", "fps": 4}, {"text": "a shape moves"}]},
            {"id": "listed", "segments": [{"video": listed, "fps": 4}, {"text": "a shape moves"}]},
            {"id": "part", "segments": [{"video": "train_300k/v_01", "fps": 4, "start": 1, "end": 2}, {"text": "x"}]},
            {"id": "no_rate", "segments": [{"video": "train_300k/v_01"}]}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = write_shards(tmp_path / "docs.jsonl", tmp_path, tmp_path / "shards", samples_per_shard=10)
    assert stats.written == 3 and dict(stats.skipped) == {"missing_video": 1}
    documents = InterleavedDocuments(tokenizer, VisionProcessor())
    read = {doc.key: doc for doc in map(documents, wds.WebDataset(str(tmp_path / "shards" / "shard-000000.tar"),
                                                                  shardshuffle=False))}
    assert torch.equal(read["folder"].videos[0].pixel_values, read["listed"].videos[0].pixel_values)
    assert int(read["folder"].videos[0].grid_thw[0]) == 3 and int(read["part"].videos[0].grid_thw[0]) == 1  # 3 s, 1 s
