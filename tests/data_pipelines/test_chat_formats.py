"""SFT records in ShareGPT, LLaVA and OpenAI layouts (JSONL, JSON array, parquet, save_to_disk)
read through the SFT loader: each renders exactly as ponder's own record of the conversation."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from data_pipelines.chat import ChatConfig, ChatRenderer
from data_pipelines.chat_formats import detect, to_ponder
from data_pipelines.packing import PackingConfig
from data_pipelines.processor import BadSample, ProcessorConfig, VisionProcessor
from data_pipelines.reader import PackedLoader, ShardStream
from data_pipelines.records import RecordShards
from stages.sft import SFTDataConfig
from tests.public_layouts import write_sft_layouts

N = 6


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_sft_layouts(tmp_path_factory.mktemp("sft_layouts"), N)


@pytest.fixture(scope="module")
def chat(tokenizer):
    return ChatRenderer(tokenizer, VisionProcessor(ProcessorConfig(max_pixels=56 * 56 * 4)))


def documents(path, chat, image_root=None):
    """Every document the SFT loader reads from `path` (keyed by record id), and its skip counts."""
    cfg = SFTDataConfig(train=str(path), seed=0, records_per_shard=2, max_epochs=1, shuffle_shards=False,
                        image_root=image_root, packing=PackingConfig(seq_len=1024, split_documents=False))
    source = RecordShards(cfg.train, cfg.records_per_shard, cfg.shuffle_shards, cfg.seed, cfg.format, cfg.image_root)
    stream = ShardStream(cfg, chat, chat.special.eos, source=source)
    cursor = {"next": (0, 0, 0), "skipped": Counter(), "documents": 0, "tokens": 0}
    return {d.key: d for d in stream._part_documents(0, 0, cursor)}, cursor["skipped"]


def same(a, b):
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images):
        assert torch.equal(x.pixel_values, y.pixel_values)


@pytest.mark.parametrize("layout", ["sharegpt", "llava", "openai", "sharegpt_parquet", "openai_disk"])
def test_layout_renders_as_ponders_record(layouts, chat, layout):
    reference, _ = documents(layouts["ponder"], chat)
    got, skipped = documents(layouts[layout], chat, image_root=str(layouts["ponder"].parent))
    assert not skipped and sorted(got) == sorted(reference) and len(got) == N
    for key in reference:
        same(got[key], reference[key])
    assert sum(len(d.images) for d in got.values()) == N + (N + 2) // 3


def test_detection_and_declared_format():
    assert detect({"conversations": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect({"messages": [{"from": "human", "value": "x"}], "images": ["a.png"]}) == "sharegpt"
    assert detect({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a"}}]}]}) == "openai"
    plain = {"messages": [{"role": "user", "content": "hi <image>"}, {"role": "assistant", "content": "x"}]}
    assert detect(plain) == "openai" and to_ponder(plain, "ponder") is plain
    ponder = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}]}
    assert to_ponder(ponder) is ponder  # ponder's own records pass untouched
    with pytest.raises(ValueError, match="chat.format"):
        ChatConfig(format="alpaca")


@pytest.mark.parametrize("record", [
    {"conversations": [{"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}], "images": ["a.png"]},
    {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "image": "a.png"},
    {"messages": [{"role": "user", "content": "<image> Q"}, {"role": "assistant", "content": "A"}], "images": []},
    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
                  {"role": "assistant", "content": "A"}], "images": ["a.png", "b.png"]},
])
def test_placeholders_that_disagree_with_images_are_skipped(record):
    with pytest.raises(BadSample) as err:
        to_ponder(record, "auto", "k")
    assert err.value.reason == "image_mismatch"


def test_mismatched_records_are_counted_by_the_loader(layouts, chat, tmp_path):
    lines = layouts["sharegpt"].read_text().splitlines()
    broken = json.loads(lines[1])
    broken["images"] = broken["images"] + broken["images"]  # one placeholder, two images
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(broken), *lines[2:]]) + "\n")
    got, skipped = documents(path, chat, image_root=str(layouts["ponder"].parent))
    assert skipped == Counter(image_mismatch=1) and len(got) == N - 1
