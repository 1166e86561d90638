"""SFT records in ShareGPT, LLaVA and OpenAI layouts (JSONL, JSON array, parquet, save_to_disk)
read through the SFT loader: each renders exactly as ponder's own record of the conversation."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from data_pipelines.chat import ChatConfig, ChatRenderer
from data_pipelines.chat_formats import detect, image_mark_is_video, placeholder_items, to_ponder
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


def test_cauldron_layout_renders_as_ponders_record(layouts, chat):
    """The Cauldron's rows (images, user / assistant pairs, no placeholders, no id) train as
    ponder's record with the images before the question."""
    reference, _ = documents(layouts["ponder"], chat)
    got, skipped = documents(layouts["cauldron"], chat)
    assert not skipped and len(got) == N
    for key, doc in zip(sorted(reference, key=lambda k: int(k.removeprefix("r"))), got.values()):
        same(doc, reference[key])


@pytest.mark.parametrize("record", [
    {"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    {"id": "x", "images": [{"bytes": None, "path": "a.png"}],  # Mantis-Instruct: `conversation`, role / content
     "conversation": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    {"id": "x", "images": ["a.png"], "messages": [{"role": "system", "content": "S"},
                                                  {"role": "user", "content": [{"type": "text", "text": "Q"}]},
                                                  {"role": "assistant", "content": "A"}]},
])
def test_media_without_placeholders_go_before_the_first_user_text(record):
    """LLaVA-OneVision's and InternVL's records without `<image>`: the images go first, as InternVL's
    loader and the Cauldron's trainers put them."""
    turns = [t for t in to_ponder(record, "auto", "x")["messages"] if t["role"] != "system"]
    image = record["image"] if "image" in record else record["images"][0]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[0]["content"][0] == {"type": "image", "image": image}
    assert turns[0]["content"][1:] == [{"type": "text", "text": "Q"}]


def test_detection_and_declared_format():
    assert detect({"conversations": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect({"images": [], "texts": [{"user": "Q", "assistant": "A", "source": "x"}]}) == "cauldron"
    assert detect({"images": [], "texts": ["an OBELICS text", None]}) == "ponder"
    html = to_ponder({"images": ["a.png"], "texts": [{"user": "Write it", "assistant": "<video src='v'></video>"}]})
    assert html["messages"] == [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                             {"type": "text", "text": "Write it"}]},
                                {"role": "assistant", "content": [{"type": "text", "text": "<video src='v'></video>"}]}]
    with pytest.raises(BadSample, match="pairs") as err:
        to_ponder({"images": ["a.png"], "texts": [{"user": None, "assistant": "A"}]})
    assert err.value.reason == "malformed_chat"
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
    {"conversations": [{"from": "human", "value": "Q <image>"}, {"from": "gpt", "value": "A"}], "image": ["a.png", "b.png"]},
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


def test_bad_sharegpt_records_stream_through_with_a_counter_each(layouts, chat, tmp_path, tokenizer):
    """Every kind of bad record is counted under its reason; the good ones all train."""
    import io

    from PIL import Image

    root = layouts["ponder"].parent
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    wide = io.BytesIO()
    Image.new("RGB", (3000, 10), "red").save(wide, format="PNG")  # 300:1
    (tmp_path / "wide.png").write_bytes(wide.getvalue())
    good = [json.loads(line) for line in layouts["sharegpt"].read_text().splitlines()]
    img = str(root / good[1]["images"][0])

    def conv(human, gpt, **extra):
        return {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}], **extra}

    answer = good[1]["conversations"][1]["value"]
    bad = {
        "malformed_chat": [
            conv("Q", answer, id="b-role") | {"conversations": [{"from": "function_call", "value": "f()"},
                                                                 {"from": "gpt", "value": answer}]},
            {"id": "b-missing", "question": "no turns"},
            conv(5, answer, id="b-type"),  # a value that is not text
            {"id": "b-last", "conversations": [{"from": "gpt", "value": answer}, {"from": "human", "value": "Q"}]},
        ],
        "image_mismatch": [conv("<image>Q", answer, id="b-more-images", images=[img, img]),
                           conv("<image><image>Q", answer, id="b-more-tags", images=[img])],
        "missing_image": [conv("<image>Q", answer, id="b-nofile", images=["nowhere/x.png"])],
        "undecodable_image": [conv("<image>Q", answer, id="b-broken", images=[str(tmp_path / "broken.png")])],
        "aspect_ratio": [conv("<image>Q", answer, id="b-wide", images=[str(tmp_path / "wide.png")])],
        "remote_image": [{"id": "b-url", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]},
            {"role": "assistant", "content": answer}]}],
        "bad_format": [conv("Q", "", id="b-empty"), conv("Q", "just text", id="b-noformat")],
        "longer_than_seq_len": [conv("Q " * 3000, answer, id="b-long")],
    }
    lines = [json.dumps(r) for r in good]
    for records in bad.values():
        lines += [json.dumps(r) for r in records]
    raw = "\n".join(lines).encode() + b"\n\xff\xfe not utf-8\n{not json\n"
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(raw)

    cfg = SFTDataConfig(train=str(path), seed=0, records_per_shard=4, max_epochs=1, image_root=str(root),
                        packing=PackingConfig(seq_len=1024, split_documents=False))
    source = RecordShards(cfg.train, cfg.records_per_shard, cfg.shuffle_shards, cfg.seed, cfg.format, cfg.image_root)
    loader = PackedLoader(ShardStream(cfg, chat, chat.special.eos, source=source))
    keys = [k for batch in loader for k in batch.doc_keys]
    expected = Counter({reason: len(records) for reason, records in bad.items()})
    expected["malformed_chat"] += 2  # the invalid UTF-8 line and the line that is not JSON
    assert Counter(loader.stats()["skipped"]) == expected
    assert sorted(keys) == sorted(r["id"] for r in good)
    assert sum(expected.values()) == 15  # 15 defects of 14 kinds under 8 reasons


def test_a_file_in_no_known_layout_stops_at_start(chat, tmp_path):
    from data_pipelines.reader import check_usable

    path = tmp_path / "alpaca.jsonl"  # Alpaca's instruction/input/output: not a chat layout
    path.write_text("".join(json.dumps({"instruction": f"Say {i}", "input": "", "output": f"{i}"}) + "\n"
                            for i in range(40)))
    with pytest.raises(ValueError, match=r"data.train \(.*\): none of its first samples is usable \(malformed_chat: 16; the first: "):
        check_usable("data.train", RecordShards(str(path), records_per_shard=20), chat)


def test_a_source_mostly_unusable_is_said_at_start(chat, tmp_path, caplog):
    import logging

    from data_pipelines.reader import check_usable

    # images only as URLs (MINT-1T, OmniCorpus as published) beside a few records without images:
    # training would go on with the few, so the start says how many of the first samples are skipped
    remote = {"messages": [{"role": "user", "content": [{"type": "image", "image": "https://example.com/a.jpg"},
                                                       {"type": "text", "text": "What is it?"}]},
                           {"role": "assistant", "content": "<think>a</think><answer><|begin_of_box|>x<|end_of_box|></answer>"}]}
    plain = {"messages": [{"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "<think>a</think><answer><|begin_of_box|>y<|end_of_box|></answer>"}]}
    path = tmp_path / "mostly_remote.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [remote, remote, remote, plain]))
    with caplog.at_level(logging.WARNING, logger="ponder"):
        check_usable("data.train", RecordShards(str(path), records_per_shard=4, shuffle=False), chat)
    assert "3 of its first 4 samples are unusable (remote_image: 3" in caplog.text
    caplog.clear()
    path.write_text("".join(json.dumps(r) + "\n" for r in [remote, plain, plain]))
    with caplog.at_level(logging.WARNING, logger="ponder"):
        check_usable("data.train", RecordShards(str(path), records_per_shard=4, shuffle=False), chat)
    assert "unusable" not in caplog.text  # one in three: counted in the metrics, not said at start


def test_responses_api_items(layouts):
    root = layouts["ponder"].parent
    record = {"messages": [{"role": "user", "content": [
        {"type": "input_image", "image_url": f"file://{root}/coco/train2017/000000000001.png"},
        {"type": "input_text", "text": "What colour is the square?"}]}, {"role": "assistant", "content": "x"}]}
    assert to_ponder(record)["messages"][0]["content"] == [
        {"type": "image", "image": f"{root}/coco/train2017/000000000001.png"},
        {"type": "text", "text": "What colour is the square?"}]


@pytest.mark.parametrize("layout", ["llamafactory", "llava_video", "llamafactory_parquet"])
def test_video_layouts_render_as_ponders_record(chat, tmp_path, layout):
    """LLaMA-Factory's `<video>` placeholders with a top-level `videos` list, and LLaVA-Video-178K's
    one `video` marked by `<image>`: the video reaches the document, as in ponder's own record. As
    parquet with `datasets.Video()` features, the videos are read undecoded (`datasets` would
    decode them with torchcodec, which the CPU set removes) and PyAV decodes them."""
    from PIL import Image

    from data_pipelines.synthetic import write_mp4

    write_mp4([Image.new("RGB", (56, 56), c) for c in ("red", "red", "blue", "blue")], tmp_path / "clips" / "a.mp4", fps=2)
    answer = "<think>It turns blue.</think><answer>It turns <|begin_of_box|>blue<|end_of_box|>.</answer>"
    ponder = {"id": "v", "messages": [
        {"role": "user", "content": [{"type": "video", "video": "clips/a.mp4"}, {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": answer}]}
    published = {
        "llamafactory": {"id": "v", "messages": [{"role": "user", "content": "<video>What happens?"},
                                                 {"role": "assistant", "content": answer}], "videos": ["clips/a.mp4"]},
        "llava_video": [{"id": "v", "video": "clips/a.mp4", "conversations": [
            {"from": "human", "value": "<image>What happens?"}, {"from": "gpt", "value": answer}]}],
        "llamafactory_parquet": None,
    }[layout]
    (tmp_path / "ponder.jsonl").write_text(json.dumps(ponder) + "\n")
    if layout == "llamafactory_parquet":
        import datasets

        path = tmp_path / "published.parquet"
        row = {"messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": answer}],
               "videos": [{"bytes": (tmp_path / "clips" / "a.mp4").read_bytes(), "path": None}], "id": "v"}
        datasets.Dataset.from_list([row], features=datasets.Features({
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "videos": datasets.List(datasets.Video()), "id": datasets.Value("string")})).to_parquet(str(path))
    else:
        path = tmp_path / ("published.jsonl" if layout == "llamafactory" else "published.json")
        path.write_text(json.dumps(published) + ("\n" if layout == "llamafactory" else ""))
    reference = documents(tmp_path / "ponder.jsonl", chat, image_root=str(tmp_path))[0]["v"]
    got, skipped = documents(path, chat, image_root=str(tmp_path))
    assert not skipped and list(got) == ["v"]
    doc = got["v"]
    assert torch.equal(doc.input_ids, reference.input_ids) and torch.equal(doc.loss_mask, reference.loss_mask)
    assert len(doc.videos) == 1 and torch.equal(doc.videos[0].pixel_values, reference.videos[0].pixel_values)
    if layout == "llamafactory_parquet":
        return
    # a placeholder without its media (LLaMA-Factory: no videos; LLaVA-Video: no video, so `<image>`
    # marks a missing image) is a counted mismatch, not a text-only record
    broken = {**published, "videos": []} if layout == "llamafactory" else [{**published[0], "video": None}]
    with pytest.raises(BadSample, match="placeholders"):
        to_ponder(broken if layout == "llamafactory" else broken[0], key="v")


def test_one_placeholder_reading_for_sft_records_and_prompts():
    """SFT records and RL/eval prompts read `<image>` / `<video>` placeholders the same way."""
    from data_pipelines.prompts import parse_record

    assert placeholder_items("<image>Find x. <video> then") == [
        {"type": "image"}, {"type": "text", "text": "Find x. "}, {"type": "video"}, {"type": "text", "text": " then"}]
    assert image_mark_is_video(["<image>What happens?"], images=0, videos=1)  # LLaVA-Video-178K
    assert not image_mark_is_video(["<image><video>"], images=0, videos=1)
    assert not image_mark_is_video(["<image>"], images=1, videos=0)
    text = "<image>\nWhat moves first?"
    sft = to_ponder({"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "The dot."}],
                     "video": "clip.mp4"})
    prompt = parse_record({"id": "p", "domain": "general", "question": text, "videos": ["clip.mp4"], "answer": "x"})
    assert sft["messages"][0]["content"] == [{"type": "video", "video": "clip.mp4"},
                                             {"type": "text", "text": "\nWhat moves first?"}]
    assert prompt.messages[0]["content"] == [{"type": "video"}, {"type": "text", "text": "\nWhat moves first?"}]


def test_video_r1_cot_trains_its_thinking_and_its_gold_in_the_box(chat, tmp_path):
    """Video-R1-COT-165k as published (a JSON list; `path` an image or a video by `data_type`,
    options in a column, `process` the thinking, `solution` the gold in <answer> tags). Before, it
    stopped at start as `malformed_chat`; renamed by hand, it trained without its media or options."""
    from PIL import Image

    from data_pipelines.synthetic import write_mp4
    from tests.public_layouts import png

    write_mp4([Image.new("RGB", (56, 56), c) for c in ("red", "red", "blue", "blue")], tmp_path / "LLaVA-Video-178K" / "a.mp4", fps=2)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "b.png").write_bytes(png("green"))
    rows = [{"problem_id": 1, "problem": "Which colour comes first?", "data_type": "video", "problem_type": "multiple choice",
             "options": ["A. Blue", "B. Red"], "process": "<think>Red fills the first second.</think>",
             "solution": "<answer>B</answer>", "path": "./LLaVA-Video-178K/a.mp4", "data_source": "LLaVA-Video-178K"},
            {"problem_id": 2, "problem": "What is the area?", "data_type": "image", "problem_type": "numerical",
             "options": [], "process": "<think>Half of 5 by 5.</think>", "solution": "<answer>12.5</answer>",
             "path": "./images/b.png", "data_source": "Multimodal-Open-R1"}]
    (tmp_path / "Video-R1-COT-165k.json").write_text(json.dumps(rows))
    got, skipped = documents(tmp_path / "Video-R1-COT-165k.json", chat)
    assert not skipped and len(got) == 2
    video, image = sorted(got.values(), key=lambda d: len(d.videos), reverse=True)
    assert (len(video.videos), len(video.images), len(image.videos), len(image.images)) == (1, 0, 0, 1)

    def text(doc, trained: bool) -> str:
        keep = (doc.loss_mask if trained else ~doc.loss_mask) & (doc.mm_token_type_ids == 0)
        return chat.tokenizer.decode(doc.input_ids[keep].tolist())

    assert text(video, True) == ("<think>Red fills the first second.</think><answer><|begin_of_box|>B<|end_of_box|>"
                                 "</answer><|endoftext|>")
    assert "Which colour comes first?\nA. Blue\nB. Red" in text(video, False)
    assert text(image, True).endswith("<answer><|begin_of_box|>12.5<|end_of_box|></answer><|endoftext|>")
    # MATH's problem and worked solution, without a thinking column, is still a prompt record
    assert detect({"problem": "1+1?", "solution": "It is \\boxed{2}."}) == "ponder"
    # beside turns that place their own image, a `path` is metadata, not a second image
    placed = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
                           {"role": "assistant", "content": "x"}], "path": "meta/b.jpg"}
    assert to_ponder(placed)["messages"][0]["content"] == [{"type": "image", "image": "a.png"}]


def test_folders_of_frames_take_their_rate_from_the_item_or_the_config(tokenizer, tmp_path):
    """ShareGPTVideo keeps each video as a folder of frames. Without a rate the skip names where to
    give one (its hint used to name data.frames_fps, which SFT does not have, and an item's `fps`
    was ignored)."""
    from tests.public_layouts import jpeg

    folder = tmp_path / "frames" / "v_0001"
    folder.mkdir(parents=True)
    for i in range(8):
        (folder / f"c{i + 1:02d}.jpg").write_bytes(jpeg("red" if i < 4 else "blue", (56, 56)))
    answer = "<think>It turns blue.</think><answer><|begin_of_box|>blue<|end_of_box|></answer>"
    llava = {"id": "v", "video": "frames/v_0001", "conversations": [
        {"from": "human", "value": "<video>What happens?"}, {"from": "gpt", "value": answer}]}
    item = {"id": "v", "messages": [{"role": "user", "content": [
        {"type": "video", "video": "frames/v_0001", "fps": 2}, {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": answer}]}
    processor = VisionProcessor(ProcessorConfig(max_pixels=56 * 56 * 4))
    plain, at_two = ChatRenderer(tokenizer, processor), ChatRenderer(tokenizer, processor, ChatConfig(frames_fps=2))
    with pytest.raises(BadSample, match="data.chat.frames_fps") as err:
        plain.document(llava, root=tmp_path)
    assert err.value.reason == "missing_video"
    by_config, by_item = at_two.document(llava, root=tmp_path), plain.document(item, root=tmp_path)
    # 8 frames at 2 fps are 4 s: 8 frames at the model's 2 fps, in pairs
    assert int(by_config.videos[0].grid_thw[0]) == 4 and torch.equal(by_config.input_ids, by_item.input_ids)
    assert torch.equal(by_config.videos[0].pixel_values, by_item.videos[0].pixel_values)
    endless = {**item, "messages": [{"role": "user", "content": [{"type": "video", "video": "frames/v_0001",
                                                                  "fps": float("inf")}]}, item["messages"][1]]}
    with pytest.raises(BadSample, match="fps must be a positive number") as err:  # it crashed the cut (NaN to int)
        plain.document(endless, root=tmp_path)
    assert err.value.reason == "malformed_chat"
    # a video PyAV cannot read: the skip's message names the record (it said "'<none>'")
    broken = {**item, "messages": [{"role": "user", "content": [{"type": "video", "video": b"\x00not a video"}]},
                                   item["messages"][1]]}
    with pytest.raises(BadSample, match="^v: undecodable video") as err:
        plain.document(broken, key="v")
    assert err.value.reason == "bad_video"
