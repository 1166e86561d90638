"""Files in public dataset layouts, written the way their publishers' tools write them (not in
ponder's own schema), for the readers of every stage to be tested on.

- img2dataset (LAION, COYO, DataComp): `NNNNN.tar` of `KEY.jpg` + `KEY.txt` + `KEY.json`, with a
  `NNNNN.parquet` and `NNNNN_stats.json` beside each tar (img2dataset's webdataset writer).
- OBELICS: parquet rows {images, metadata, general_metadata, texts}, position-aligned lists.
- ShareGPT / LLaVA / OpenAI chat records; HF prompt sets with their usual column names.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def png(colour: str, size: tuple[int, int] = (56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(colour: str, size: tuple[int, int] = (56, 84)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_img2dataset(out_dir: Path, shards: int, per_shard: int, seed: int = 0,
                      failed_every: int = 0, no_caption_every: int = 0) -> list[Path]:
    """img2dataset `output_format=webdataset`: per shard `{shard:05d}.tar` with members
    `{key}.jpg`, `{key}.txt`, `{key}.json` (key = shard id + index, zero-padded to 9 digits), plus
    the shard's `.parquet` of metadata and `_stats.json`. `no_caption_every`: captionless pairs
    (an empty `.txt` and a null json caption), which LAION does hold."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tars = []
    for shard in range(shards):
        rows = []
        path = out_dir / f"{shard:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                colour = rng.choice(COLOURS)
                caption = f"a photo of a {colour} square number {shard * per_shard + i}"
                if no_caption_every and i % no_caption_every == no_caption_every - 1:
                    caption = None
                image = jpeg(colour)
                meta = {
                    "url": f"https://example.com/img/{key}.jpg", "caption": caption, "key": key,
                    "status": "success", "error_message": None, "width": 56, "height": 84,
                    "original_width": 112, "original_height": 168, "exif": "{}",
                    "sha256": hashlib.sha256(image).hexdigest(),
                }
                rows.append(meta)
                sample = {"__key__": key, "jpg": image, "txt": caption or "", "json": json.dumps(meta, indent=4)}
                if failed_every and i % failed_every == failed_every - 1:
                    # img2dataset keeps failed downloads out of the tar, in the parquet only.
                    rows[-1] = {**meta, "status": "failed_to_download", "error_message": "HTTP 404",
                                "width": None, "height": None, "sha256": None}
                    continue
                sink.write(sample)
        pq.write_table(pa.Table.from_pylist(rows), out_dir / f"{shard:05d}.parquet")
        (out_dir / f"{shard:05d}_stats.json").write_text(json.dumps(
            {"count": per_shard, "successes": sum(r["status"] == "success" for r in rows)}))
        tars.append(path)
    return tars


def write_video2dataset(out_dir: Path, per_shard: int = 3) -> Path:
    """video2dataset `--output_format webdataset`: `00000.tar` with `{key}.mp4`, `{key}.txt`,
    `{key}.json` (WebVid / Panda-70M clips as it downloads them), one undecodable clip last; and
    the same pairs as records (`clips.jsonl`: `video` a path next to it, `caption`)."""
    import webdataset as wds

    from data_pipelines.synthetic import write_mp4

    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with wds.TarWriter(str(out_dir / "00000.tar")) as sink:
        for i in range(per_shard):
            key, colour = f"{i:09d}", COLOURS[i % len(COLOURS)]
            write_mp4([Image.new("RGB", (56, 56), colour)] * 8, out_dir / f"{key}.mp4", fps=4)
            caption = f"a {colour} screen for two seconds"
            meta = {"url": f"https://example.com/v/{key}.mp4", "key": key, "status": "success", "caption": caption,
                    "duration": 2.0, "clips": [[0.0, 2.0]]}
            sink.write({"__key__": key, "mp4": (out_dir / f"{key}.mp4").read_bytes(), "txt": caption,
                        "json": json.dumps(meta)})
            records.append({"video": f"{key}.mp4", "caption": caption})
        sink.write({"__key__": "broken", "mp4": b"\x00\x00\x00\x18ftypmp42 not a video", "txt": "x", "json": "{}"})
    (out_dir / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out_dir / "00000.tar"


def obelics_rows(n: int, images: str, image_dir: Path | None = None, seed: int = 0) -> list[dict]:
    """OBELICS rows: `texts` and `images` aligned by position (one of the two null at each).
    `images`: "bytes" (raw encoded bytes), "hf" ({bytes, path} dicts, HF's Image storage), "path"
    (file names under `image_dir`) or "url" (as OBELICS is published: URLs to download)."""
    rng = random.Random(seed)
    rows = []
    for d in range(n):
        texts, imgs = [], []
        for p in range(rng.randint(2, 4)):
            if p % 2 == 1:
                colour = rng.choice(COLOURS)
                data = png(colour)
                if images == "bytes":
                    value = data
                elif images == "hf":
                    value = {"bytes": data, "path": f"{d}-{p}.png"}
                elif images == "path":
                    (image_dir / f"{d}-{p}.png").write_bytes(data)
                    value = f"{d}-{p}.png"
                else:
                    value = f"https://example.com/{d}-{p}.png"
                texts.append(None)
                imgs.append(value)
            else:
                texts.append(f"Paragraph {p} of page {d} talks about {rng.choice(COLOURS)} things.")
                imgs.append(None)
        meta = [None if t is not None else {"src": i if isinstance(i, str) else "x"} for t, i in zip(texts, imgs)]
        rows.append({
            "images": imgs, "metadata": json.dumps(meta), "general_metadata": json.dumps(
                {"url": f"https://example.com/page/{d}", "warc_filename": "x.warc.gz"}), "texts": texts,
        })
    return rows


def write_obelics_parquet(path: Path, n: int, images: str, seed: int = 0) -> Path:
    """An OBELICS-style parquet; "hf" images are written through `datasets` (a Sequence of
    `Image` features, as `push_to_hub` stores image datasets)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = obelics_rows(n, images, path.parent, seed)
    if images == "hf":
        features = datasets.Features({
            "images": datasets.Sequence(datasets.Image()), "metadata": datasets.Value("string"),
            "general_metadata": datasets.Value("string"), "texts": datasets.Sequence(datasets.Value("string"))})
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_mmc4_jsonl(root: Path, n: int = 4) -> tuple[Path, Path]:
    """MMC4 (allenai/mmc4 docs_shard_*.jsonl): `text_list` sentences, `image_info` entries matched to
    a sentence (images downloaded into a folder by `image_name`), `similarity_matrix`; and the same
    pages in OBELICS' layout (each image before its matched sentence, sentences joined by a space)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    mmc4, obelics = [], []
    for page in range(n):
        sentences = [f"Sentence {i} of page {page} is about {COLOURS[(page + i) % 6]} things." for i in range(4)]
        matched = sorted({(page + 1) % 4, (page + 2) % 4} if page % 2 else {(page + 1) % 4})
        infos = []
        for j, index in enumerate(matched):
            name = f"{page:04d}{j}abcdef.jpg"
            (root / "images" / name).write_bytes(jpeg(COLOURS[index % 6]))
            infos.append({"image_name": name, "raw_url": f"https://example.com/{page}/{j}.jpg",
                          "matched_text_index": index, "matched_sim": 0.3, "face_detections": None})
        mmc4.append({"url": f"https://example.com/page/{page}", "text_list": sentences, "image_info": infos,
                     "similarity_matrix": [[0.25] * 4 for _ in infos], "could_have_url_duplicate": 0})
        texts, images = [], []
        for i, sentence in enumerate(sentences):
            for info in infos:
                if info["matched_text_index"] == i:
                    texts.append(None)
                    images.append(info["image_name"])
            texts.append(sentence if i == 0 else " " + sentence)
            images.append(None)
        obelics.append({"texts": texts, "images": images})
    (root / "mmc4").mkdir(exist_ok=True)
    (root / "obelics").mkdir(exist_ok=True)
    (root / "mmc4" / "docs_shard_0_v3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mmc4))
    (root / "obelics" / "pages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in obelics))
    return root / "mmc4" / "docs_shard_0_v3.jsonl", root / "obelics" / "pages.jsonl"


def write_caption_records(root: Path, n: int = 6) -> dict[str, Path]:
    """Image-caption pairs as records: CC3M-style parquet (`image` an HF Image, `caption`), and
    img2dataset's parquet output with the bytes in a `jpg` column and the caption in `caption`."""
    import datasets

    rows = [{"image": {"bytes": png(COLOURS[i % 6]), "path": None}, "caption": f"a {COLOURS[i % 6]} square",
             "url": f"https://example.com/{i}.png"} for i in range(n)]
    (root / "cc3m").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=datasets.Features({
        "image": datasets.Image(), "caption": datasets.Value("string"), "url": datasets.Value("string")})
    ).to_parquet(str(root / "cc3m" / "train-00000-of-00001.parquet"))
    (root / "img2dataset_parquet").mkdir(exist_ok=True)
    datasets.Dataset.from_list([{"key": f"{i:09d}", "jpg": r["image"]["bytes"], "caption": r["caption"],
                                 "status": "success"} for i, r in enumerate(rows)]
                               ).to_parquet(str(root / "img2dataset_parquet" / "00000.parquet"))
    return {"cc3m": root / "cc3m", "img2dataset_parquet": root / "img2dataset_parquet"}


def write_text_jsonl(path: Path, n: int, seed: int = 0, field: str = "text") -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(n):
            words = " ".join(rng.choice(COLOURS) for _ in range(rng.randint(5, 30)))
            f.write(json.dumps({field: f"Text {i}: {words}.", "id": f"t{i}", "meta": {"lang": "en"}}) + "\n")
    return path


# -- SFT chat layouts ----------------------------------------------------------------------------
RESPONSE = "<think>I look at the square: it is {c}.</think><answer>It is <|begin_of_box|>{c}<|end_of_box|>.</answer>"


def write_sft_layouts(root: Path, n: int = 6) -> dict[str, Path]:
    """The same conversations in each public layout (images as files under `root/coco/`, or
    inline) plus, per layout, what ponder's own record of each conversation is (`ponder.jsonl`).
    Record i shows colour COLOURS[i % 6]; every third record has two images."""
    import base64

    import datasets

    (root / "coco" / "train2017").mkdir(parents=True, exist_ok=True)
    ponder, sharegpt, llava, openai, sharegpt_rows = [], [], [], [], []
    for i in range(n):
        c, c2 = COLOURS[i % 6], COLOURS[(i + 1) % 6]
        rel = [f"coco/train2017/{i:012d}.png"] + ([f"coco/train2017/{i:012d}_b.png"] if i % 3 == 0 else [])
        for r, colour in zip(rel, (c, c2)):
            (root / r).write_bytes(png(colour))
        question = "What colour is the square?" if len(rel) == 1 else "What colour is the first square?"
        answer = RESPONSE.format(c=c)
        ponder.append({"id": f"r{i}", "messages": [
            {"role": "user", "content": [*({"type": "image", "image": r} for r in rel), {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer}]})
        placeholders = "<image>" * len(rel)
        sharegpt.append({"id": f"r{i}", "conversations": [{"from": "human", "value": placeholders + question},
                                                           {"from": "gpt", "value": answer}], "images": rel})
        llava.append({"id": f"r{i}", "image": rel[0] if len(rel) == 1 else rel,
                      "conversations": [{"from": "human", "value": placeholders + question},
                                        {"from": "gpt", "value": answer}]})
        url = "data:image/png;base64," + base64.b64encode((root / rel[0]).read_bytes()).decode()
        items = [{"type": "image_url", "image_url": {"url": url}}]
        items += [{"type": "image_url", "image_url": {"url": f"file://{root / r}"}} for r in rel[1:]]
        openai.append({"id": f"r{i}", "messages": [{"role": "user", "content": [*items, {"type": "text", "text": question}]},
                                                  {"role": "assistant", "content": answer}]})
        sharegpt_rows.append({**sharegpt[-1], "images": [{"bytes": (root / r).read_bytes(), "path": r} for r in rel]})
    out = {"ponder": root / "ponder.jsonl", "sharegpt": root / "sharegpt.jsonl", "llava": root / "llava_instruct.json",
           "openai": root / "openai.jsonl"}
    out["ponder"].write_text("".join(json.dumps(r) + "\n" for r in ponder))
    out["sharegpt"].write_text("".join(json.dumps(r) + "\n" for r in sharegpt))
    out["llava"].write_text(json.dumps(llava, indent=2))  # LLaVA ships one JSON array
    out["openai"].write_text("".join(json.dumps(r) + "\n" for r in openai))
    features = datasets.Features({
        "id": datasets.Value("string"),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        "images": datasets.Sequence(datasets.Image())})
    (root / "sharegpt_parquet").mkdir(exist_ok=True)
    datasets.Dataset.from_list(sharegpt_rows, features=features).to_parquet(str(root / "sharegpt_parquet" / "train.parquet"))
    out["sharegpt_parquet"] = root / "sharegpt_parquet"
    # Arrow needs one type per column: every content a list of items, as HF chat datasets store it.
    listed = [{**r, "messages": [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str)
                                 else m for m in r["messages"]]} for r in openai]
    datasets.Dataset.from_list(listed).save_to_disk(str(root / "openai_disk"))
    out["openai_disk"] = root / "openai_disk"
    # The Cauldron (HuggingFaceM4/the_cauldron; FineVision alike): images, and user / assistant text
    # pairs without placeholders; no id column.
    cauldron = [{"images": r["images"], "texts": [{"user": r["conversations"][0]["value"].replace("<image>", ""),
                                                   "assistant": r["conversations"][1]["value"], "source": "synthetic"}]}
                for r in sharegpt_rows]
    (root / "cauldron").mkdir(exist_ok=True)
    datasets.Dataset.from_list(cauldron, features=datasets.Features({
        "images": datasets.Sequence(datasets.Image()),
        "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                   "source": datasets.Value("string")}]})).to_parquet(str(root / "cauldron" / "train-00000-of-00001.parquet"))
    out["cauldron"] = root / "cauldron"
    return out


# -- RL / eval prompt sets ----------------------------------------------------------------------
def write_prompt_sets(root: Path) -> dict[str, Path]:
    """Small prompt sets in the column layouts of well-known HF datasets, written through
    `datasets` with the features they are published with."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    img = lambda c: {"bytes": png(c), "path": None}
    out = {}
    # ScienceQA: image (nullable), question, choices, answer = index of the right choice, no id.
    scienceqa = [
        {"image": img("red"), "question": "Which colour is the square?", "choices": ["blue", "red"], "answer": 1,
         "hint": "", "subject": "natural science", "lecture": "", "solution": "It is red."},
        {"image": None, "question": "Which is a mammal?", "choices": ["trout", "otter", "frog"], "answer": 1,
         "hint": "", "subject": "natural science", "lecture": "", "solution": "Otters are mammals."},
        {"image": None, "question": "Which word is spelled right?", "choices": ["recieve", "recieve"], "answer": 0,
         "hint": "", "subject": "language science", "lecture": "", "solution": ""},
    ]
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "answer": datasets.Value("int64"), "hint": datasets.Value("string"),
                                  "subject": datasets.Value("string"), "lecture": datasets.Value("string"),
                                  "solution": datasets.Value("string")})
    datasets.Dataset.from_list(scienceqa, features=features).to_parquet(str(root / "scienceqa.parquet"))
    out["scienceqa"] = root / "scienceqa.parquet"
    # MathVista (testmini): pid, question, image = a relative path, decoded_image, choices or null, answer text.
    (root / "images").mkdir(exist_ok=True)
    (root / "images" / "1.png").write_bytes(png("green"))
    (root / "images" / "2.png").write_bytes(png("blue"))
    mathvista = [
        {"pid": "1", "question": "What colour is the image?", "image": "images/1.png", "decoded_image": img("green"),
         "choices": ["red", "green", "blue"], "unit": None, "precision": None, "answer": "green",
         "question_type": "multi_choice", "answer_type": "text", "query": "Hint: ...", "metadata": {"source": "x"}},
        {"pid": "2", "question": "How many squares are there?", "image": "images/2.png", "decoded_image": img("blue"),
         "choices": None, "unit": None, "precision": None, "answer": "1", "question_type": "free_form",
         "answer_type": "integer", "query": "Hint: ...", "metadata": {"source": "y"}},
    ]
    datasets.Dataset.from_list(mathvista, features=datasets.Features({
        "pid": datasets.Value("string"), "question": datasets.Value("string"), "image": datasets.Value("string"),
        "decoded_image": datasets.Image(), "choices": datasets.Sequence(datasets.Value("string")),
        "unit": datasets.Value("string"), "precision": datasets.Value("float64"), "answer": datasets.Value("string"),
        "question_type": datasets.Value("string"), "answer_type": datasets.Value("string"),
        "query": datasets.Value("string"), "metadata": {"source": datasets.Value("string")}})
    ).save_to_disk(str(root / "mathvista"))
    out["mathvista"] = root / "mathvista"
    # MMMU: id, question, options as the Python text of a list, answer letter, image_1 .. image_7.
    mmmu = [{"id": "validation_Art_1", "question": "<image 1> <image 2> Which image is red?",
             "options": "['The first', 'The second', 'Both of them']", "explanation": "", "answer": "A",
             **{f"image_{k}": None for k in range(1, 8)}, "img_type": "['Photographs']", "question_type": "multiple-choice"}]
    mmmu[0]["image_1"], mmmu[0]["image_2"] = img("red"), img("blue")
    mmmu.append({**mmmu[0], "id": "validation_Art_2", "answer": "C", "image_2": img("red")})
    datasets.Dataset.from_list(mmmu, features=datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"), "options": datasets.Value("string"),
        "explanation": datasets.Value("string"), "answer": datasets.Value("string"),
        **{f"image_{k}": datasets.Image() for k in range(1, 8)}, "img_type": datasets.Value("string"),
        "question_type": datasets.Value("string")})).to_parquet(str(root / "mmmu.parquet"))
    out["mmmu"] = root / "mmmu.parquet"
    # MATH: problem, solution (worked, with the boxed answer), level, type.
    (root / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"problem": "What is $2+3$?", "solution": "We add: $2+3=\\boxed{5}$.", "level": "Level 1", "type": "Algebra"},
        {"problem": "What is $4 \\cdot 2$?", "solution": "$\\boxed{8}$", "level": "Level 1", "type": "Algebra"},
        # intermediate results boxed before the final one, and hendrycks' brace-less box
        {"problem": "Add the roots of $x^2-8x+15$.", "solution": "The roots are $\\boxed{3}$ and $\\boxed{5}$, "
         "so their sum is $\\boxed{8}$.", "level": "Level 2", "type": "Algebra"},
        {"problem": "Solve $2x+3=7$.", "solution": "So $x=\\boxed 2$.", "level": "Level 1", "type": "Algebra"}]))
    out["math"] = root / "math.jsonl"
    # GSM8K (openai/gsm8k, main): the worked solution, its calculator marks, then "#### <answer>".
    datasets.Dataset.from_list([
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                     "How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"},
        {"question": "Betty has 1,200 stamps and buys 1,000 more. How many does she have?",
         "answer": "1,200 + 1,000 = <<1200+1000=2200>>2,200\n#### 2,200"}],
        features=datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string")})
    ).to_parquet(str(root / "gsm8k_main_test.parquet"))
    out["gsm8k"] = root / "gsm8k_main_test.parquet"
    # R1-V's CLEVR counting set (leonardPKU/clevr_cogen_a_train): the gold in answer tags.
    datasets.Dataset.from_list([{"image": img("red"), "problem": "How many items are there in the image?",
                                 "solution": "<answer> 3 </answer>"}],
                               features=datasets.Features({"image": datasets.Image(), "problem": datasets.Value("string"),
                                                           "solution": datasets.Value("string")})
                               ).to_parquet(str(root / "clevr_cogen_a_train.parquet"))
    out["clevr_r1v"] = root / "clevr_cogen_a_train.parquet"
    # verl's RL parquet: prompt as chat turns, the ground truth nested in reward_model.
    verl = [{"data_source": "gsm8k", "prompt": [{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}],
             "ability": "math", "reward_model": {"ground_truth": "7", "style": "rule"},
             "extra_info": {"index": 0, "split": "train"}}]
    datasets.Dataset.from_list(verl).to_parquet(str(root / "verl.parquet"))
    out["verl"] = root / "verl.parquet"
    # verl's multimodal RL parquet (examples/data_preprocess/geo3k.py): `<image>` inside the chat
    # turn's text, the images in their own column.
    geo3k = [{"data_source": "hiyouga/geometry3k", "images": [img("red")],
              "prompt": [{"role": "user", "content": "<image>Find x. Put the answer in \\boxed{}."}],
              "ability": "math", "reward_model": {"ground_truth": "38", "style": "rule"},
              "extra_info": {"index": 0, "split": "train"}}]
    datasets.Dataset.from_list(geo3k, features=datasets.Features({
        "data_source": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
        "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "ability": datasets.Value("string"),
        "reward_model": {"ground_truth": datasets.Value("string"), "style": datasets.Value("string")},
        "extra_info": {"index": datasets.Value("int64"), "split": datasets.Value("string")}})
    ).to_parquet(str(root / "verl_geo3k.parquet"))
    out["verl_geo3k"] = root / "verl_geo3k.parquet"
    # A generic MC set whose question lists its options in the text.
    (root / "mc.jsonl").write_text(json.dumps(
        {"id": "mc1", "question": "Which planet is largest?\nChoices:\n(A) Mars\n(B) Jupiter\n(C) Venus",
         "choices": ["Mars", "Jupiter", "Venus"], "answer": "(B)", "domain": "general"}) + "\n")
    out["mc"] = root / "mc.jsonl"
    # Geometry3K (hiyouga/geometry3k): images (a list), problem with an <image> placeholder, answer.
    datasets.Dataset.from_list([
        {"images": [img("red")], "problem": "<image>Find x. Round to the nearest tenth.", "answer": "38"},
        {"images": [img("blue")], "problem": "In the figure <image>, find y.", "answer": "12"},
        {"images": [img("green")], "problem": "Compare <image> with <image>.", "answer": "1"},  # 2 placeholders, 1 image
    ], features=datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                   "answer": datasets.Value("string")})).to_parquet(str(root / "geometry3k.parquet"))
    out["geometry3k"] = root / "geometry3k.parquet"
    # DocVQA (lmms-lab/DocVQA validation): questionId, question, image, answers = what annotators accepted.
    datasets.Dataset.from_list([
        {"questionId": 337, "question": "What is the date?", "image": img("yellow"),
         "answers": ["March 3, 1979", "3/3/79"], "question_types": ["layout"]},
        {"questionId": 338, "question": "Who signed?", "image": img("purple"), "answers": ["Paul"],
         "question_types": ["handwritten"]},
    ], features=datasets.Features({"questionId": datasets.Value("int64"), "question": datasets.Value("string"),
                                   "image": datasets.Image(), "answers": datasets.List(datasets.Value("string")),
                                   "question_types": datasets.List(datasets.Value("string"))})
    ).to_parquet(str(root / "docvqa.parquet"))
    out["docvqa"] = root / "docvqa.parquet"
    # MathVision (MathLLMs/MathVision): image = a path inside the hub repo (absent here), decoded_image,
    # options (empty for free-form), answer; MathVerse's "Vision Only" rows: an empty question.
    datasets.Dataset.from_list([
        {"id": "1", "question": "Which number is missing?\n<image1>", "options": [], "image": "images/1.jpg",
         "decoded_image": img("orange"), "answer": "14", "solution": None, "level": 2, "subject": "arithmetic"},
        {"id": "2", "question": "", "options": ["A", "B", "C"], "image": "images/2.jpg",
         "decoded_image": img("red"), "answer": "B", "solution": None, "level": 1, "subject": "logic"},
    ], features=datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                   "options": datasets.List(datasets.Value("string")), "image": datasets.Value("string"),
                                   "decoded_image": datasets.Image(), "answer": datasets.Value("string"),
                                   "solution": datasets.Value("string"), "level": datasets.Value("int64"),
                                   "subject": datasets.Value("string")})).to_parquet(str(root / "mathvision.parquet"))
    out["mathvision"] = root / "mathvision.parquet"
    # MMBench (lmms-lab/MMBench, dev): options one per column A..D (null or pandas' "nan" where a
    # question has fewer), answer letter, a hint that goes before the question (null or "nan" if none).
    text = datasets.Value("string")
    mmbench = [{"index": 0, "question": "What colour is the square?", "hint": None, "answer": "B",
                "A": "blue", "B": "red", "C": "green", "D": "yellow", "image": img("red")},
               {"index": 1, "question": "Which shape is shown?", "hint": "The shape is round.", "answer": "A",
                "A": "circle", "B": "square", "C": None, "D": "nan", "image": img("blue")}]
    datasets.Dataset.from_list([{**r, "category": "attribute_recognition", "source": "x", "L2-category": "y",
                                 "comment": None, "split": "dev"} for r in mmbench], features=datasets.Features({
        "index": datasets.Value("int64"), "question": text, "hint": text, "answer": text,
        **{letter: text for letter in "ABCD"}, "image": datasets.Image(), "category": text, "source": text,
        "L2-category": text, "comment": text, "split": text})).to_parquet(str(root / "mmbench.parquet"))
    out["mmbench"] = root / "mmbench.parquet"
    # SEED-Bench (lmms-lab/SEED-Bench): choice_a..choice_d, answer letter, image = a list (video frames).
    datasets.Dataset.from_list([
        {"answer": "C", "choice_a": "red", "choice_b": "blue", "choice_c": "green", "choice_d": "pink",
         "data_id": "1.jpg", "data_type": "image", "question": "What colour is it?", "question_id": "101",
         "question_type_id": 1, "image": [img("green")], "segment": None}],
        features=datasets.Features({"answer": text, **{f"choice_{c}": text for c in "abcd"}, "data_id": text,
                                    "data_type": text, "question": text, "question_id": text,
                                    "question_type_id": datasets.Value("int16"),
                                    "image": datasets.Sequence(datasets.Image()),
                                    "segment": datasets.Sequence(datasets.Value("int64"))})
    ).to_parquet(str(root / "seedbench.parquet"))
    out["seedbench"] = root / "seedbench.parquet"
    # A-OKVQA (HuggingFaceM4/A-OKVQA): no `answer`; choices + correct_choice_idx, and the ten
    # annotators' direct_answers.
    datasets.Dataset.from_list([
        {"image": img("yellow"), "question_id": "q1", "question": "What fruit has this colour?",
         "choices": ["apple", "banana", "plum", "kiwi"], "correct_choice_idx": 1,
         "direct_answers": ["banana"] * 7 + ["lemon"] * 3, "difficult_direct_answer": False,
         "rationales": ["Bananas are yellow."]}],
        features=datasets.Features({"image": datasets.Image(), "question_id": text, "question": text,
                                    "choices": datasets.Sequence(text), "correct_choice_idx": datasets.Value("int8"),
                                    "direct_answers": datasets.Sequence(text),
                                    "difficult_direct_answer": datasets.Value("bool"),
                                    "rationales": datasets.Sequence(text)})
    ).to_parquet(str(root / "aokvqa.parquet"))
    out["aokvqa"] = root / "aokvqa.parquet"
    # ViRL39K (TIGER-Lab, 39Krelease.parquet): every answer written as \boxed{...}, the images a list
    # of paths into images/ (shipped zipped), `<image>` in the question.
    (root / "images" / "virl_1.png").write_bytes(png("red"))
    datasets.Dataset.from_list([
        {"qid": "MMK12-1", "question": "<image>Find the angle x.", "answer": "\\boxed{17^\\circ}",
         "image": ["images/virl_1.png"], "category": "(GradeSchool) Geometric", "source": "MMK12",
         "PassRate_32BTrained": 0.5, "PassRate_7BUntrained": None},
        {"qid": "M3CoT-2", "question": "<image>Which colour is the square?\nChoices:\nA: red\nB: blue",
         "answer": "\\boxed{A}", "image": ["images/virl_1.png"], "category": "Spatial Reasoning", "source": "M3CoT",
         "PassRate_32BTrained": 1.0, "PassRate_7BUntrained": 0.75}],
        features=datasets.Features({"qid": text, "question": text, "answer": text, "image": datasets.Sequence(text),
                                    "category": text, "source": text, "PassRate_32BTrained": datasets.Value("float64"),
                                    "PassRate_7BUntrained": datasets.Value("float64")})
    ).to_parquet(str(root / "39Krelease.parquet"))
    out["virl39k"] = root / "39Krelease.parquet"
    out.update(_write_more_eval_sets(root, img))
    return out


def _write_more_eval_sets(root: Path, img) -> dict[str, Path]:
    """AI2D, MME, HallusionBench, OCRBench, VQAv2, VizWiz and MMMU-Pro as their publishers lay them out."""
    import datasets

    text, out = datasets.Value("string"), {}

    def write(name: str, rows: list[dict], features: dict) -> None:
        datasets.Dataset.from_list(rows, features=datasets.Features(features)).to_parquet(str(root / f"{name}.parquet"))
        out[name] = root / f"{name}.parquet"

    # AI2D (lmms-lab/ai2d): options, answer = the option's 0-based index as text.
    write("ai2d", [{"question": "Which stage follows the egg?", "options": ["adult", "larva", "pupa", "egg"],
                    "answer": "1", "image": img("green")},
                   {"question": "How many legs does it have?", "options": ["8", "6", "1", "4"], "answer": "1",
                    "image": img("red")}],
          {"question": text, "options": datasets.Sequence(text), "answer": text, "image": datasets.Image()})
    # MME (lmms-lab/MME): a yes and a no question per image, both under the image's question_id.
    write("mme", [{"question_id": "color/0001.jpg", "image": img("red"), "answer": answer, "category": "color",
                   "question": f"Is the square {colour}? Please answer yes or no."}
                  for colour, answer in (("red", "Yes"), ("blue", "No"))],
          {"question_id": text, "image": datasets.Image(), "question": text, "answer": text, "category": text})
    # HallusionBench (lmms-lab/HallusionBench): question_id counts within a figure; gt_answer "1" / "0".
    write("hallusionbench", [{"category": "VD", "subcategory": "illusion", "set_id": "0", "figure_id": figure,
                              "question_id": "0", "question": f"Is figure {figure} red?", "gt_answer": gold,
                              "gt_answer_details": "", "figure_type": "illusion", "sample_note": "",
                              "image": img("red") if figure == "0" else None}
                             for figure, gold in (("0", "1"), ("1", "0"))],
          {**{k: text for k in ("category", "subcategory", "set_id", "figure_id", "question_id", "question",
                                "gt_answer", "gt_answer_details", "figure_type", "sample_note")},
           "image": datasets.Image()})
    # OCRBench (echo840/OCRBench): `answer` is a list of accepted readings.
    write("ocrbench", [{"dataset": "docVQA", "question": "What is the date?", "question_type": "Doc-oriented VQA",
                        "answer": ["3/3/79", "March 3, 1979"], "image": img("white")}],
          {"dataset": text, "question": text, "question_type": text, "answer": datasets.Sequence(text),
           "image": datasets.Image()})
    # VQAv2 (lmms-lab/VQAv2): answers as Sequence({answer, answer_confidence, answer_id}), which
    # `datasets` reads back as a dict of lists.
    votes = ["red"] * 9 + ["pink"]
    write("vqav2", [{"question_id": 1000, "question": "What colour is it?", "image": img("red"),
                     "answers": {"answer": votes, "answer_confidence": ["yes"] * 10, "answer_id": list(range(1, 11))},
                     "multiple_choice_answer": "red", "answer_type": "other"}],
          {"question_id": datasets.Value("int64"), "question": text, "image": datasets.Image(),
           "answers": datasets.Sequence({"answer": text, "answer_confidence": text, "answer_id": datasets.Value("int64")}),
           "multiple_choice_answer": text, "answer_type": text})
    # VizWiz-VQA (lmms-lab/VizWiz-VQA): ten answers as plain strings, "unanswerable" among them.
    write("vizwiz", [{"question_id": "VizWiz_val_00000000.jpg", "image": img("red"), "question": "What colour is this?",
                      "answers": ["red"] * 8 + ["dark red", "unanswerable"], "category": "other"}],
          {"question_id": text, "image": datasets.Image(), "question": text, "answers": datasets.Sequence(text),
           "category": text})
    # MMMU-Pro (MMMU/MMMU_Pro, standard): image_1 .. image_7 named by <image N> in the question.
    write("mmmu_pro", [{"id": "validation_1", "question": "<image 1> Which colour is shown?",
                        "options": "['red', 'blue']", "explanation": "", "image_1": img("red"),
                        **{f"image_{i}": None for i in range(2, 8)}, "img_type": "['Photos']", "answer": "A",
                        "topic_difficulty": "Easy", "subject": "Art"}],
          {"id": text, "question": text, "options": text, "explanation": text,
           **{f"image_{i}": datasets.Image() for i in range(1, 8)}, "img_type": text, "answer": text,
           "topic_difficulty": text, "subject": text})
    return out


def write_video_prompt_set(root: Path, clip: bytes) -> Path:
    """Video QA as published with `datasets.Video()` (a `video` column of {bytes, path}), which
    `datasets` would decode with torchcodec."""
    import datasets

    path = root / "video_qa.parquet"
    datasets.Dataset.from_list([{"video": {"bytes": clip, "path": None}, "question": "What colour comes first?",
                                 "answer": "red", "domain": "general"}] * 2,
                               features=datasets.Features({"video": datasets.Video(), "question": datasets.Value("string"),
                                                           "answer": datasets.Value("string"),
                                                           "domain": datasets.Value("string")})).to_parquet(str(path))
    return path


def write_vlmeval_tsvs(root: Path) -> dict[str, Path]:
    """VLMEvalKit's LMUData TSVs as its tools write them (pandas, tab-separated, NaN as an empty cell):
    base64 images; an `image` cell of <= 64 characters is the `index` of the row whose image it shares
    (MMBench, MME); MMBench's rotated copies of a question at index + k * 1,000,000; MMMU's multi-image cell is the Python text of a list; OCRBench's answer the Python
    text of a list; MMStar's options only inline; HallusionBench's question_id repeats, index does not."""
    import base64

    import numpy as np
    import pandas as pd

    def b64(colour: str) -> str:
        return base64.b64encode(jpeg(colour, (56, 56))).decode("ascii")

    def photo() -> str:  # a real cell is 20-200 KB: no legal file name
        noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="JPEG", quality=85)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    nan, out = float("nan"), {}

    def write(name: str, rows: list[dict]) -> None:
        out[name] = root / f"{name}.tsv"
        pd.DataFrame(rows).to_csv(out[name], sep="\t", index=False)

    mmbench = {"hint": nan, "C": nan, "D": nan, "category": "attribute_recognition", "source": "MMBench",
               "l2-category": "finegrained_perception (instance-level)", "comment": nan, "split": "dev"}
    write("MMBench_DEV_EN", [
        {**mmbench, "index": 0, "question": "What colour is the square?", "A": "red", "B": "blue", "C": "green",
         "answer": "A", "image": b64("red")},
        {**mmbench, "index": 1, "question": "Is this picture noisy?", "A": "yes", "B": "no", "answer": "A",
         "image": photo()},
        {**mmbench, "index": 2, "question": "Is the square warm or cold?", "hint": "Red is a warm colour.",
         "A": "cold", "B": "warm", "answer": "B", "image": "0"},
        # the circular copies: the options rotated, at index + k * 1,000,000, the image by index
        {**mmbench, "index": 1000000, "question": "What colour is the square?", "A": "blue", "B": "green",
         "C": "red", "answer": "C", "image": "0"},
        {**mmbench, "index": 2000000, "question": "What colour is the square?", "A": "green", "B": "red",
         "C": "blue", "answer": "B", "image": "0"},
        {**mmbench, "index": 1000001, "question": "Is this picture noisy?", "A": "no", "B": "yes", "answer": "B",
         "image": "1"},
        {**mmbench, "index": 1000002, "question": "Is the square warm or cold?", "hint": "Red is a warm colour.",
         "A": "warm", "B": "cold", "answer": "A", "image": "0"}])
    write("MMStar", [{"index": 0, "question": "What colour is shown?\nOptions: A: red, B: blue, C: green, D: yellow",
                      "answer": "A", "category": "coarse perception", "l2_category": "image scene and topic",
                      "bench": "SEEDBench_IMG", "image": b64("red")}])
    write("OCRBench", [{"index": 0, "image": b64("white"), "question": "what is written in the image?",
                        "answer": "['3/3/79', 'March 3, 1979']", "category": "Regular Text Recognition"}])
    write("HallusionBench", [{"index": i, "image": b64("red"), "question": q, "answer": a, "category": "VD",
                              "l2-category": "illusion", "set_id": 0, "figure_id": 0, "question_id": 0}
                             for i, (q, a) in enumerate((("Is the square red?", "Yes"), ("Is it blue?", "No")))])
    write("MMMU_DEV_VAL", [
        {"index": 0, "id": "validation_Art_2", "question": "Which of <image 1> and <image 2> is blue?",
         "A": "<image 1>", "B": "<image 2>", "C": nan, "D": nan, "answer": "B", "question_type": "multiple-choice",
         "image": str([b64("red"), b64("blue")]), "image_path": str(["validation_Art_2_1.jpg", "validation_Art_2_2.jpg"])}])
    return out


def write_video_eval_sets(root: Path) -> dict[str, Path]:
    """Video-MME (lmms-lab/Video-MME: a parquet without a path column, videos `data/{videoID}.mp4`,
    options "A. Apples.", a `domain` column that is the video's category), MVBench (OpenGVLab:
    `json/<task>.json` with `candidates`, the answer's text, `start` / `end` seconds; videos under a
    per-task folder, TVQA's as folders of frames at 3 fps) and NExT-QA (lmms-lab/NExTQA: options a0..a4,
    the answer their index, `video` the file's stem)."""
    import datasets

    from data_pipelines.synthetic import write_mp4

    def clip(path: Path, colours: list[str], fps: int = 4) -> None:  # one colour per second
        write_mp4([Image.new("RGB", (56, 56), c) for c in colours for _ in range(fps)], path, fps=fps)

    text, out = datasets.Value("string"), {}
    clip(root / "videomme" / "data" / "fFjv93ACGo8.mp4", ["red", "blue"])
    out["videomme"] = root / "videomme" / "videomme" / "test-00000-of-00001.parquet"
    out["videomme"].parent.mkdir(parents=True)
    columns = ("video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type",
               "question", "answer")
    datasets.Dataset.from_list(
        [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
          "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
          "task_type": "Temporal Perception", "question": "Which colour fills the screen at the start?",
          "options": ["A. Apples.", "B. Red.", "C. Black.", "D. White."], "answer": "B"}],
        features=datasets.Features({**{c: text for c in columns}, "options": datasets.Sequence(text)}),
    ).to_parquet(str(out["videomme"]))
    mvbench = root / "mvbench"
    clip(mvbench / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4", ["red", "green", "blue", "blue"])
    frames = mvbench / "video" / "tvqa" / "frames_fps3_hq" / "s01e01_seg02_clip_00"
    frames.mkdir(parents=True)
    for i, colour in enumerate(["red"] * 3 + ["green"] * 3 + ["blue"] * 3):  # 3 s at 3 fps
        (frames / f"{i + 1:05d}.jpg").write_bytes(jpeg(colour, (56, 56)))
    (mvbench / "json").mkdir()
    for task, video, candidates, answer, window in (
            ("action_sequence", "ZS9XR.mp4", ["Ate the medicine.", "Took the box."], "Took the box.", (1.0, 3.0)),
            ("episodic_reasoning", "s01e01_seg02_clip_00", ["He stood up.", "He ate.", "He left."], "He ate.", (1.0, 2.0))):
        out[f"mvbench_{task}"] = mvbench / "json" / f"{task}.json"
        out[f"mvbench_{task}"].write_text(json.dumps([{"video": video, "question": "What happened?", "candidates":
                                                       candidates, "answer": answer, "start": window[0], "end": window[1]}]))
    clip(root / "nextqa" / "NExTVideo" / "4010069381.mp4", ["red", "blue"])
    out["nextqa"] = root / "nextqa" / "MC" / "test-00000-of-00001.parquet"
    out["nextqa"].parent.mkdir(parents=True)
    integer = datasets.Value("int64")
    datasets.Dataset.from_list(
        [{"video": "4010069381", "frame_count": 8, "width": 56, "height": 56, "question": "what colour is shown first",
          "answer": 2, "qid": 4, "type": "TN", "a0": "black", "a1": "white", "a2": "red", "a3": "blue", "a4": "pink"}],
        features=datasets.Features({"video": text, "frame_count": integer, "width": integer, "height": integer,
                                    "question": text, "answer": integer, "qid": integer, "type": text,
                                    **{f"a{i}": text for i in range(5)}}),
    ).to_parquet(str(out["nextqa"]))
    out.update(_write_video_rl_sets(root, clip, text))
    return out


def _write_video_rl_sets(root: Path, clip, text) -> dict[str, Path]:
    """Video-R1 (tulerfeng/Video-R1: one JSON list of image and video rows, `path` relative to the
    data root, `data_type`, `problem_type` with spaces, golds in `<answer>` tags, options "A. ..."),
    VSI-Bench (nyu-visionx: parquet, `{dataset}/{scene_name}.mp4`, numerical golds as text, options
    null for them) and TempCompass (lmms-lab: options as the question's last lines, no header; golds
    "B. from right to left", "Caption A: ...")."""
    import datasets

    out = {}
    video_r1 = root / "Video-R1-data"
    clip(video_r1 / "LLaVA-Video-178K" / "videos" / "ytb_7nRmsEw7nsE.mp4", ["red", "blue"])
    (video_r1 / "Multimodal-Open-R1" / "images").mkdir(parents=True)
    (video_r1 / "Multimodal-Open-R1" / "images" / "geo_1.png").write_bytes(png("green"))
    out["video_r1"] = video_r1 / "Video-R1-260k.json"
    common = {"process": "<think>I look at it.</think>", "data_source": "LLaVA-Video-178K/2_3_m_youtube_v0_1"}
    out["video_r1"].write_text(json.dumps([
        {"problem_id": 2, "problem": "Which colour comes first?", "data_type": "video", "problem_type": "multiple choice",
         "options": ["A. Blue", "B. Red", "C. Green"], "solution": "<answer>B</answer>",
         "path": "./LLaVA-Video-178K/videos/ytb_7nRmsEw7nsE.mp4", **common},
        {"problem_id": 3, "problem": "What is the area of the triangle?", "data_type": "image", "problem_type": "numerical",
         "options": [], "solution": "<answer>12.5</answer>", "path": "./Multimodal-Open-R1/images/geo_1.png", **common},
        {"problem_id": 4, "problem": "What text is on the sign?", "data_type": "image", "problem_type": "OCR",
         "options": [], "solution": "<answer>STOP HERE</answer>", "path": "./Multimodal-Open-R1/images/geo_1.png", **common},
        {"problem_id": 5, "problem": "How far does the ball roll, in metres?", "data_type": "video",
         "problem_type": "regression", "options": [], "solution": "<answer>2.4</answer>",
         "path": "./LLaVA-Video-178K/videos/ytb_7nRmsEw7nsE.mp4", **common},
        {"problem_id": 6, "problem": "What happens in the video?", "data_type": "video", "problem_type": "free-form",
         "options": [], "solution": "<answer>The screen turns from red to blue.</answer>",
         "path": "./LLaVA-Video-178K/videos/ytb_7nRmsEw7nsE.mp4", **common}]))
    vsi = root / "VSI-Bench"
    clip(vsi / "arkitscenes" / "41069025.mp4", ["white", "grey"])
    out["vsibench"] = vsi / "test-00000-of-00001.parquet"
    datasets.Dataset.from_list(
        [{"id": 0, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_abs_distance",
          "question": "What is the distance between the sofa and the table (in meters)?", "ground_truth": "22.5",
          "options": None},
         {"id": 1, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_rel_direction_easy",
          "question": "Is the table to the left or the right of the sofa?", "ground_truth": "B",
          "options": ["A. left", "B. right"]}],
        features=datasets.Features({"id": datasets.Value("int64"), "dataset": text, "scene_name": text,
                                    "question_type": text, "question": text, "ground_truth": text,
                                    "options": datasets.Sequence(text)}),
    ).to_parquet(str(out["vsibench"]))
    tempcompass = root / "TempCompass"
    clip(tempcompass / "videos" / "1025198.mp4", ["red", "blue"])
    for task, question, answer in (
            ("multi-choice", "What is the direction of the car?\nA. from left to right\nB. from right to left\n"
                             "C. it does not move", "B. from right to left"),
            ("caption_matching", "Which caption matches the video better?\nCaption A: A car drives left.\n"
                                 "Caption B: A car drives right.", "Caption A: A car drives left.")):
        out[f"tempcompass_{task}"] = tempcompass / task / "test-00000-of-00001.parquet"
        out[f"tempcompass_{task}"].parent.mkdir(parents=True)
        datasets.Dataset.from_list([{"video_id": "1025198", "question": question, "answer": answer, "dim": "direction"}],
                                   features=datasets.Features({c: text for c in ("video_id", "question", "answer", "dim")}),
                                   ).to_parquet(str(out[f"tempcompass_{task}"]))
    return out


# The chat template of zai-org/GLM-4.1V-9B-Thinking's `chat_template.jinja`, whitespace as published.
RELEASED_CHAT_TEMPLATE = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        {%- if msg.content is string %}\n{{ msg.content }}\n"
    "        {%- else %}\n            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n{{ item.text }}\n                {%- endif %}\n"
    "            {%- endfor %}\n        {%- endif %}\n    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n{{ msg.content }}\n"
    "        {%- else %}\n<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n    {%- endif %}\n"
    "{%- endfor %}\n{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# The released tokenizer's specials, in id order from 151329 (the order after `<|video|>` is not
# confirmed from a public copy); its generation_config also stops at 151348, taken here as `</answer>`.
RELEASED_SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|image|>", "<|video|>", "<|begin_of_box|>", "<|end_of_box|>", "<answer>", "</answer>", "<think>", "</think>",
]


def write_released_glm41v(out: Path, vocab_size: int = 2048, bpe_size: int = 1900) -> Path:
    """A tiny `zai-org/GLM-4.1V-9B-Thinking` folder as the hub publishes it: config.json with a
    `text_config` (rope_scaling, partial rotary) and bf16 weights in `model-0000K-of-0000N`
    shards with their index, generation_config.json (four eos ids, sampling defaults), a
    tokenizer.json whose specials follow a byte-level BPE (their ids are not ponder's tiny
    tokenizer's), tokenizer_config.json, the published chat_template.jinja and both processor
    configs. The model is ponder's tiny preset in size."""
    import shutil

    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    from data_pipelines.tokenizer import ASSETS

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([  # GLM-4's split, then bytes
        pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(ASSETS / "corpus.txt")], trainers.BpeTrainer(
        vocab_size=bpe_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in RELEASED_SPECIALS])
    ids = {s: bpe.token_to_id(s) for s in RELEASED_SPECIALS}
    bpe.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": {str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": True} for s in RELEASED_SPECIALS},
        "clean_up_tokenization_spaces": False, "do_lower_case": False, "eos_token": "<|endoftext|>",
        "extra_special_tokens": {}, "model_max_length": 128000, "pad_token": "<|endoftext|>",
        "padding_side": "left", "remove_space": False, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    (out / "chat_template.jinja").write_text(RELEASED_CHAT_TEMPLATE)
    media = {f"{name}_token_id": ids[token] for name, token in [
        ("image_start", "<|begin_of_image|>"), ("image_end", "<|end_of_image|>"), ("video_start", "<|begin_of_video|>"),
        ("video_end", "<|end_of_video|>"), ("image", "<|image|>"), ("video", "<|video|>")]}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"], ids["</answer>"]]
    config = {
        "architectures": ["Glm4vForConditionalGeneration"], "model_type": "glm4v", **media,
        "text_config": {
            "model_type": "glm4v_text", "vocab_size": vocab_size, "pad_token_id": eos[0], "eos_token_id": eos,
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "partial_rotary_factor": 0.5, "attention_bias": True,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3]}, "rope_theta": 10000.0,
            "max_position_embeddings": 65536, "rms_norm_eps": 1e-05, "hidden_act": "silu", "attention_dropout": 0.0,
            "initializer_range": 0.02, "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "bfloat16",
            **media},
        "vision_config": {
            "model_type": "glm4v", "depth": 2, "hidden_size": 64, "num_heads": 2, "out_hidden_size": 128,
            "intermediate_size": 256, "patch_size": 14, "image_size": 336, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "in_channels": 3, "hidden_act": "silu", "rms_norm_eps": 1e-05,
            "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02},
        "torch_dtype": "bfloat16", "transformers_version": "4.53.0dev"}
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration._from_config(Glm4vConfig.from_dict(json.loads(json.dumps(config))),
                                                       dtype=torch.bfloat16)
    staging = out / "_save"
    model.save_pretrained(str(staging), max_shard_size="1MB")
    for file in [*staging.glob("model-*.safetensors"), staging / "model.safetensors.index.json"]:
        shutil.move(str(file), out / file.name)
    shutil.rmtree(staging)
    (out / "config.json").write_text(json.dumps(config, indent=2))  # the published file, not transformers 5's
    (out / "generation_config.json").write_text(json.dumps({
        "_from_model_config": True, "do_sample": True, "eos_token_id": eos, "pad_token_id": eos[0],
        "temperature": 0.8, "top_k": 2, "top_p": 0.6, "transformers_version": "4.53.0dev"}, indent=2))
    processing = {"do_rescale": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
                  "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                  "processor_class": "Glm4vProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 12544, "longest_edge": 9633792}, "image_processor_type": "Glm4vImageProcessor",
        **processing}, indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 12544, "longest_edge": 47040000}, "video_processor_type": "Glm4vVideoProcessor",
        **processing}, indent=2))
    return out
