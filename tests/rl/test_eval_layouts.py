"""Eval sets as their publishers ship them: VLMEvalKit's TSVs (base64 images, shared-image indexes,
list texts) and video sets (Video-MME, MVBench, NExT-QA, Video-R1, VSI-Bench, TempCompass), read,
rendered and graded."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
import torch

from data_pipelines.processor import BadSample
from data_pipelines.prompt_columns import PromptColumns, PromptLayout
from data_pipelines.prompts import encode_prompt_record, load_prompt_records
from stages.evaluate import PromptOutcome, circular_copies, decoding_metrics
from stages.rl.prompt_sets import letter_of_unseen_options, load_gradable_prompts
from stages.rl.rewards import RewardConfig
from stages.rl.rewards.scoring import score
from tests.public_layouts import jpeg, write_video_eval_sets, write_vlmeval_tsvs


@pytest.fixture(scope="module")
def tsvs(tmp_path_factory):
    return write_vlmeval_tsvs(tmp_path_factory.mktemp("LMUData"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_video_eval_sets(tmp_path_factory.mktemp("video_sets"))


def grade(record, answer: str) -> float:
    response = f"<think>I look.</think><answer><|begin_of_box|>{answer}<|end_of_box|></answer>"
    return score(record.domain, response, record.answer, config=RewardConfig(), **record.info).reward


def question(record) -> str:
    return "".join(i.get("text", "") for i in record.messages[-1]["content"])


def spans(prompt) -> list[str]:
    return [kind for _, _, kind in prompt.document.atomic_spans]


def test_mmbench_tsv_base64_images_a_shared_index_and_a_photo(tsvs, renderer):
    records, skipped = load_prompt_records(tsvs["MMBench_DEV_EN"], PromptLayout(domain="multiple_choice",
                                                                                 options_in_prompt=True))
    assert not skipped and [r.id for r in records] == ["0", "1", "2", "1000000", "2000000", "1000001", "1000002"]
    assert question(records[0]) == "What colour is the square?\nA. red\nB. blue\nC. green"
    assert question(records[2]) == "Red is a warm colour.\nIs the square warm or cold?\nA. cold\nB. warm"
    assert records[2].images == records[0].images  # "0": the image of the row whose index is 0
    assert len(records[1].images[0]) > 20_000  # a photo's base64: no file name, decoded, not a crash
    for record in records:
        assert spans(encode_prompt_record(record, renderer)) == ["image"]
    assert [grade(records[0], a) for a in ("A", "red", "B")] == [1.0, 1.0, 0.0]
    assert records[3].images == records[0].images and records[5].images == records[1].images


def test_mmbench_circular_accuracy_needs_every_rotation_right(tsvs):
    records, _ = load_prompt_records(tsvs["MMBench_DEV_EN"], PromptLayout(domain="multiple_choice"))
    by_id = {r.id: r for r in records}
    # A model that always answers "red" for the colour, letter "B" for noise, and "warm" for warmth:
    # question 0 right in all three rotations, question 1 right in one of two, question 2 in both.
    answers = {"0": "red", "1000000": "C", "2000000": "red", "1": "B", "1000001": "B", "2": "warm", "1000002": "A"}
    outcomes = [PromptOutcome(slot, rid, "multiple_choice", [grade(by_id[rid], a)], [True], [9], [False], [False])
                for slot, (rid, a) in enumerate(answers.items())]
    copies = circular_copies(records)
    assert copies == Counter({0: 3, 1: 2, 2: 2})
    got = decoding_metrics(outcomes, (1,), 1.0, copies=copies)
    assert got["accuracy"] == pytest.approx(6 / 7)  # row by row: only the noise question's first copy wrong
    assert got["questions"] == 3 and got["circular_accuracy"] == pytest.approx(2 / 3)
    assert got["incomplete_questions"] == 0
    # A rotation skipped at load (its image unreadable, say): its question is one row short of its
    # three options, and counted; it is scored on the copies that were read.
    read = [r for r in records if r.id != "2000000"]
    assert circular_copies(read) == copies
    got = decoding_metrics([o for o in outcomes if o.id != "2000000"], (1,), 1.0, copies=circular_copies(read))
    assert got["questions"] == 3 and got["incomplete_questions"] == 1
    # options kept as text the loader could not split are no count of rotations: the rows read are
    text = dataclasses.replace(records[0], info={**records[0].info, "options": "red, blue or green"})
    assert circular_copies([text]) == Counter({0: 1})


def test_other_vlmeval_tsvs(tsvs, renderer):
    (mmstar,), skipped = load_prompt_records(tsvs["MMStar"], PromptLayout(domain="multiple_choice"))
    assert mmstar.info["options"] == {"A": "red", "B": "blue", "C": "green", "D": "yellow"}  # inline "Options:"
    assert [grade(mmstar, a) for a in ("A", "red", "A: red", "blue")] == [1.0, 1.0, 1.0, 0.0]
    (ocr,), _ = load_prompt_records(tsvs["OCRBench"], PromptLayout(domain="ocr", accepted_answers=True))
    assert ocr.answer == {"any_of": ["3/3/79", "March 3, 1979"]}  # the list's Python text
    assert [grade(ocr, a) for a in ("3/3/79", "March 3, 1979")] == [1.0, 1.0]
    hallusion, skipped = load_prompt_records(tsvs["HallusionBench"], PromptLayout(domain="yesno"))
    assert not skipped and [r.id for r in hallusion] == ["0", "1"]  # index, not the repeating question_id
    (mmmu,), _ = load_prompt_records(tsvs["MMMU_DEV_VAL"], PromptLayout(domain="multiple_choice"))
    assert len(mmmu.images) == 2 and [i.get("type") for i in mmmu.messages[0]["content"]] == [
        "text", "image", "text", "image", "text"]  # <image 1>, <image 2> in place
    assert spans(encode_prompt_record(mmmu, renderer)) == ["image", "image"]


def test_text_that_names_no_file_is_a_counted_skip(tmp_path, renderer):
    """A path too long for the file system (OSError) or a file that is not there: missing_image."""
    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "domain": "ocr", "question": "Read it.", "answer": "x",
                                        "images": [image]}) + "\n"
                            for i, image in enumerate(["dir/" * 80 + "a.png", "b" * 300 + ".png", "gone.png"])))
    records, _ = load_prompt_records(data)
    for record in records:
        with pytest.raises(BadSample) as err:
            encode_prompt_record(record, renderer, image_root=tmp_path)
        assert err.value.reason == "missing_image" and len(str(err.value)) < 400


def test_video_mme_ids_only_options_with_letters_and_a_category_column(videos, renderer):
    path = videos["videomme"]
    layout = PromptLayout(domain="multiple_choice", options_in_prompt=True, columns=PromptColumns(domain=""),
                          video_path="data/{videoID}.mp4")
    (record,), skipped = load_prompt_records(path, layout)
    assert not skipped and record.domain == "multiple_choice" and record.info["row_domain"] == "Knowledge"
    assert record.info["options"] == ["Apples.", "Red.", "Black.", "White."]  # "A. Apples." without its letter
    assert question(record) == "Which colour fills the screen at the start?\nA. Apples.\nB. Red.\nC. Black.\nD. White."
    assert [grade(record, a) for a in ("B", "Red", "B. Red.", "Apples")] == [1.0, 1.0, 1.0, 0.0]
    assert spans(encode_prompt_record(record, renderer, image_root=path.parent.parent)) == ["video"]
    with pytest.raises(BadSample) as err:  # the template's folder is the dataset's, not the parquet's
        encode_prompt_record(record, renderer, image_root=path.parent)
    assert err.value.reason == "missing_video"


def test_mvbench_candidates_clips_and_folders_of_frames(videos, renderer):
    root = videos["mvbench_action_sequence"].parent.parent / "video"
    whole, _ = load_prompt_records(videos["mvbench_action_sequence"], PromptLayout(domain="multiple_choice"))
    clipped, _ = load_prompt_records(videos["mvbench_action_sequence"], PromptLayout(
        domain="multiple_choice", columns=PromptColumns(video_start="start", video_end="end")))
    assert whole[0].info["options"] == ["Ate the medicine.", "Took the box."]  # `candidates`
    assert [grade(whole[0], a) for a in ("B", "Took the box.", "A")] == [1.0, 1.0, 0.0]

    def frames(record, folder: str) -> int:  # frames the model sees (2 fps, in pairs)
        prompt = encode_prompt_record(record, renderer, image_root=root / folder)
        return int(prompt.document.videos[0].grid_thw[0]) * 2

    # 4 s at 4 fps: 8 frames at 2 fps; its 1-3 s: 4
    assert frames(whole[0], "star/Charades_v1_480") == 8 and frames(clipped[0], "star/Charades_v1_480") == 4
    tvqa = "tvqa/frames_fps3_hq"
    folder, _ = load_prompt_records(videos["mvbench_episodic_reasoning"], PromptLayout(
        domain="multiple_choice", frames_fps=3, columns=PromptColumns(video_start="start", video_end="end")))
    assert frames(folder[0], tvqa) == 2  # 1-2 s of the 3 s at 3 fps: 3 frames, 2 at 2 fps
    unknown_rate, _ = load_prompt_records(videos["mvbench_episodic_reasoning"], PromptLayout(domain="multiple_choice"))
    with pytest.raises(BadSample, match="data.frames_fps") as err:  # a folder's frame rate is not guessed
        encode_prompt_record(unknown_rate[0], renderer, image_root=root / tvqa)
    assert err.value.reason == "missing_video"


def test_nextqa_numbered_option_columns_and_a_video_stem(videos, renderer):
    path = videos["nextqa"]
    (record,), _ = load_prompt_records(path, PromptLayout(domain="multiple_choice",
                                                          video_path="NExTVideo/{video}.mp4"))
    assert record.answer == "C" and record.info["options"] == {"A": "black", "B": "white", "C": "red",
                                                               "D": "blue", "E": "pink"}
    assert [grade(record, a) for a in ("C", "red", "A")] == [1.0, 1.0, 0.0]
    assert spans(encode_prompt_record(record, renderer, image_root=path.parent.parent)) == ["video"]


def test_video_r1_mixed_image_and_video_rows_kinds_of_question_and_tagged_golds(videos, renderer):
    """Video-R1's one file: `path` is an image or a video by `data_type`; `problem_type` names the
    verifier as Video-R1 does ("multiple choice", "OCR", "numerical", "regression", "free-form"); every gold is in
    <answer> tags, whatever its verifier. Before, the media were dropped without a word, and OCR and
    regression golds kept their tags: right answers scored 0.35 and 0."""
    path = videos["video_r1"]
    layout = PromptLayout(columns=PromptColumns(domain="problem_type"), options_in_prompt=True)
    records, skipped = load_gradable_prompts(path, layout, RewardConfig())
    assert not skipped and [(len(r.images), len(r.videos)) for r in records] == [(0, 1), (1, 0), (1, 0), (0, 1), (0, 1)]
    assert [r.answer for r in records] == ["B", "12.5", "STOP HERE", "2.4", "The screen turns from red to blue."]
    choice, area, sign, distance, story = records
    assert question(choice).endswith("\nA. Blue\nB. Red\nC. Green")
    assert [grade(choice, a) for a in ("B", "Red", "A")] == [1.0, 1.0, 0.0]
    assert [grade(area, a) for a in ("12.5", "25/2", "12")] == [1.0, 1.0, 0.0]
    assert grade(sign, "STOP HERE") == 1.0 and grade(sign, "GO") < 0.2  # OCR: 1 - normalised edit distance
    assert [grade(distance, a) for a in ("2.4", "2.2 m", "4")] == [1.0, 0.9, 0.0]  # mean relative accuracy
    assert grade(story, "The screen turns from red to blue") == 1.0 and 0 < grade(story, "it turns blue") < 0.6  # ROUGE
    for record in records:
        assert spans(encode_prompt_record(record, renderer, image_root=path.parent)) == (
            ["video"] if record.videos else ["image"])


def test_vsi_bench_numerical_answers_by_mean_relative_accuracy(videos, renderer):
    path = videos["vsibench"]
    layout = PromptLayout(columns=PromptColumns(domain="question_type"), options_in_prompt=True,
                          video_path="{dataset}/{scene_name}.mp4")
    rewards = RewardConfig(domain_verifiers={"object_abs_distance": "mra",
                                             "object_rel_direction_easy": "multiple_choice"})
    (distance, direction), skipped = load_gradable_prompts(path, layout, rewards)
    assert not skipped and distance.answer == "22.5" and direction.info["options"] == ["left", "right"]

    def graded(record, answer):
        response = f"<think>I look.</think><answer><|begin_of_box|>{answer}<|end_of_box|></answer>"
        return score(record.domain, response, record.answer, config=rewards, **record.info).reward

    # VSI-Bench's MRA: 21 is 6.7% off, within 1 - θ for θ = 0.50 .. 0.90: 9 of 10
    assert [graded(distance, a) for a in ("22.5", "21", "21 meters", "45", "about 22")] == [1.0, 0.9, 0.9, 0.0, 0.0]
    assert [graded(direction, a) for a in ("B", "right", "A")] == [1.0, 1.0, 0.0]
    assert spans(encode_prompt_record(distance, renderer, image_root=path.parent)) == ["video"]


@pytest.mark.parametrize("task, right, wrong", [
    ("multi-choice", ("B", "from right to left", "B. from right to left"), ("A", "from left to right")),
    ("caption_matching", ("A", "Caption A", "A car drives left."), ("B", "A car drives right.")),
])
def test_tempcompass_options_below_the_question_and_lettered_golds(videos, task, right, wrong):
    """The options are the question's last lines, without an "Options:" header, and the gold is the
    whole option line: before, only that exact line scored, and the letter asked for scored 0."""
    (record,), _ = load_gradable_prompts(videos[f"tempcompass_{task}"], PromptLayout(
        domain="multiple_choice", video_path="../videos/{video_id}.mp4"), RewardConfig())
    assert len(record.info["options"]) in (2, 3) and record.answer in ("A", "B")
    assert [grade(record, a) for a in right] == [1.0] * len(right)
    assert [grade(record, a) for a in wrong] == [0.0] * len(wrong)


@pytest.mark.parametrize("row, clip_error", [
    ({"start": "x", "end": 2}, True), ({"start": 3, "end": 2}, True), ({"start": -1, "end": 2}, True),
    ({"start": 0, "end": float("inf")}, True), ({"start": True, "end": 2}, True),
    ({"start": "0.5", "end": "1.5"}, False),  # TSV cells are text
    ({"start": float("nan"), "end": float("nan")}, False),  # a float column's nulls: the whole video
])
def test_clip_bounds_nobody_showed_are_checked(tmp_path, row, clip_error):
    data = tmp_path / "clips.jsonl"
    data.write_text(json.dumps({"id": "v", "domain": "multiple_choice", "question": "What?", "answer": "A",
                                "video": "v.mp4", **row}, allow_nan=True) + "\n")
    records, skipped = load_prompt_records(data, PromptLayout(columns=PromptColumns(video_start="start",
                                                                                    video_end="end")))
    assert (skipped == {"malformed_record": 1}) if clip_error else (len(records) == 1 and not skipped)


def test_a_folder_of_frames_is_read_in_number_order(tmp_path, renderer):
    """Unpadded names (1.jpg .. 12.jpg) in time order, hidden files (macOS' ._1.jpg) left out: the
    frames at 1 s and later are blue, so the two frames kept from the first second are red."""
    from data_pipelines.video import VideoClip

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(1, 13):  # 2 fps: frames 1-2 red (0-1 s), 3-12 blue
        (folder / f"{i}.jpg").write_bytes(jpeg("red" if i <= 2 else "blue", (56, 56)))
    (folder / "._1.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: not an image
    first_second = renderer._video(VideoClip("clip", 0.0, 1.0, 2.0), None, tmp_path, "k")
    red = renderer._video([jpeg("red", (56, 56))] * 2, 2.0, None, "k")  # (in name order: 1.jpg, 10.jpg)
    assert torch.equal(first_second.pixel_values, red.pixel_values)
    assert int(renderer._video(VideoClip("clip", fps=2.0), None, tmp_path, "k").grid_thw[0]) == 6  # 12 frames


def test_letter_answers_whose_options_the_prompt_never_shows_are_flagged(tsvs, tmp_path):
    plain, _ = load_prompt_records(tsvs["MMBench_DEV_EN"], PromptLayout(domain="multiple_choice"))
    listed, _ = load_prompt_records(tsvs["MMBench_DEV_EN"], PromptLayout(domain="multiple_choice",
                                                                        options_in_prompt=True))
    assert [letter_of_unseen_options(r) for r in plain] == [True] * 7
    assert not any(map(letter_of_unseen_options, listed))
    (mmstar,), _ = load_prompt_records(tsvs["MMStar"], PromptLayout(domain="multiple_choice"))
    assert not letter_of_unseen_options(mmstar)  # its question lists them ("Options: A: red, ...")
    named = tmp_path / "named.jsonl"  # a gold named by its text: options are the verifier's, not the model's
    named.write_text(json.dumps({"id": "1", "domain": "multiple_choice", "question": "Which colour?",
                                 "answer": "red", "options": ["red", "blue"]}) + "\n")
    (record,), _ = load_prompt_records(named)
    assert not letter_of_unseen_options(record)
