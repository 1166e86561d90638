"""RL / eval prompt sets in the column layouts of well-known HF datasets (ScienceQA, MathVista,
MMMU, MATH, verl's parquet), data.columns, and multiple choice -> fill in the blank."""

from __future__ import annotations

import json
import logging

import pytest

from data_pipelines.processor import BadSample
from data_pipelines.prompt_columns import PromptColumns, PromptLayout, normalize_row, with_unique_ids
from data_pipelines.prompts import PromptRecordError, encode_prompt_record, load_prompt_records, parse_record
from stages.rl.prompt_sets import load_gradable_prompts
from stages.rl.rewards import RewardConfig
from tests.public_layouts import png, write_prompt_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_prompt_sets(tmp_path_factory.mktemp("prompt_sets"))


def text_of(record) -> str:
    content = record.messages[-1]["content"]
    return content if isinstance(content, str) else "".join(i.get("text", "") for i in content)


def encoded_images(record, renderer, root) -> int:
    prompt = encode_prompt_record(record, renderer, image_root=root)
    return sum(kind == "image" for _, _, kind in prompt.document.atomic_spans)


def test_scienceqa_as_multiple_choice_and_as_blanks(sets, renderer):
    mc, skipped = load_prompt_records(sets["scienceqa"], PromptLayout(domain="science", options_in_prompt=True))
    assert not skipped and [r.id for r in mc] == ["row-0", "row-1", "row-2"]
    assert mc[0].answer == "B" and mc[0].info["options"] == ["blue", "red"]  # index 1 -> its letter
    assert text_of(mc[0]) == "Which colour is the square?\nA. blue\nB. red"
    assert [encoded_images(r, renderer, sets["scienceqa"].parent) for r in mc] == [1, 0, 0]
    blanks, _ = load_prompt_records(sets["scienceqa"], PromptLayout(domain="science", mc_to_blank=True))
    assert [(text_of(r), r.answer, "options" in r.info) for r in blanks] == [
        ("Which colour is the square?", "red", False),
        ("Which is a mammal?", "otter", False),
        ("Which word is spelled right?", "A", True),  # two identical choices: not a unique answer, kept
    ]
    unlisted, _ = load_prompt_records(sets["scienceqa"], PromptLayout(domain="science"))  # the default lists none
    assert text_of(unlisted[0]) == "Which colour is the square?" and unlisted[0].info["options"] == ["blue", "red"]
    assert blanks[1].info["solution"] == "Otters are mammals."  # other columns reach the verifier


def test_options_a_question_lists_already_are_not_listed_again():
    from data_pipelines.prompt_columns import normalize_row

    LISTED = PromptLayout(options_in_prompt=True)
    listed = "Which is red?\n(A) blue\n(B) red"  # MathVista's `query`, RealWorldQA, MathVerse
    row = normalize_row({"question": listed, "choices": ["blue", "red"], "answer": "red"}, 0, LISTED)
    assert row["question"] == listed and row["answer"] == "red"
    partly = normalize_row({"question": "Which is red?\n(A) blue", "choices": ["blue", "red"], "answer": "red"}, 0,
                           LISTED)
    assert partly["question"] == "Which is red?\n(A) blue\nA. blue\nB. red"
    inline = normalize_row({"question": "Which is red? (A) blue (B) red", "choices": ["blue", "red"], "answer": "B"}, 0,
                           LISTED)
    assert inline["question"] == "Which is red? (A) blue (B) red"


def test_rows_without_a_domain_need_data_domain(sets):
    records, skipped = load_prompt_records(sets["scienceqa"])
    assert records == [] and skipped == {"missing_domain": 3}


def test_blank_media_and_option_cells_leave_the_other_columns_read():
    """An empty `option` or `image` cell is no column: the question's options and `image_path` are read."""
    layout = PromptLayout(domain="multiple_choice")
    for option in ("", "open"):
        row = normalize_row({"question": "Which?\nA. cat\nB. dog", "answer": "A", "option": option}, 0, layout)
        assert row["options"] == {"A": "cat", "B": "dog"}, option
    assert normalize_row({"question": "q", "answer": "A", "image": "", "image_path": "a.png"}, 0, layout)["images"] == ["a.png"]


def test_a_domain_column_of_numbers_is_text():
    """CharXiv's reasoning_a_type (1..4) as the domain: each number a domain to map, not a malformed row."""
    row = normalize_row({"question": "q", "answer": "a", "reasoning_a_type": 2}, 0,
                        PromptLayout(columns=PromptColumns(domain="reasoning_a_type")))
    assert parse_record(row).domain == "2"


def test_mathvista_save_to_disk(sets, renderer):
    records, skipped = load_prompt_records(sets["mathvista"], PromptLayout(domain="math", mc_to_blank=True))
    assert not skipped and [r.id for r in records] == ["1", "2"]
    assert (records[0].answer, "options" in records[0].info) == ("green", False)
    assert records[1].answer == "1" and "options" not in records[1].info  # free-form: null choices dropped
    assert [encoded_images(r, renderer, None) for r in records] == [1, 1]  # decoded_image: pixels, not a path
    # The path column, named: the same pixels, read relative to the set.
    by_path, _ = load_prompt_records(sets["mathvista"], PromptLayout(domain="math", mc_to_blank=True,
                                                                     columns=PromptColumns(images="image")))
    a = encode_prompt_record(by_path[0], renderer, image_root=sets["mathvista"].parent)
    b = encode_prompt_record(records[0], renderer)
    assert by_path[0].images == ["images/1.png"]
    assert a.input_ids == b.input_ids and (a.pixel_values == b.pixel_values).all()


def test_mmmu_options_text_and_image_columns(sets, renderer):
    layout = PromptLayout(domain="art", mc_to_blank=True,
                          columns=PromptColumns(images=",".join(f"image_{k}" for k in range(1, 8))))
    records, skipped = load_prompt_records(sets["mmmu"], layout)
    assert not skipped
    first, both = records
    assert (first.answer, "options" in first.info) == ("The first", False)
    assert (both.answer, both.info["options"]) == ("C", ["The first", "The second", "Both of them"])  # refers to others
    assert [encoded_images(r, renderer, None) for r in records] == [2, 2]
    assert first.messages[0]["content"] == [{"type": "image"}, {"type": "image"},
                                            {"type": "text", "text": " Which image is red?"}]


def test_numbered_image_references_place_their_image(tmp_path):
    """MMMU's "<image 1>" / MathVision's "<image1>": each image where the text refers to it (in the
    text's order); references that do not number every image once leave the images first."""
    import json

    rows = [{"id": "a", "question": "Is <image 2> larger than <image1>?", "images": ["one.png", "two.png"], "answer": "no"},
            {"id": "b", "question": "Compare <image 1> and <image 3>.", "images": ["one.png", "two.png"], "answer": "x"}]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (placed, unplaced), _ = load_prompt_records(tmp_path / "set.jsonl", PromptLayout(domain="general"))
    assert placed.images == ["two.png", "one.png"]
    assert placed.messages[0]["content"] == [{"type": "text", "text": "Is "}, {"type": "image"},
                                             {"type": "text", "text": " larger than "}, {"type": "image"},
                                             {"type": "text", "text": "?"}]
    assert unplaced.images == ["one.png", "two.png"]
    assert unplaced.messages[0]["content"][2] == {"type": "text", "text": "Compare <image 1> and <image 3>."}


def test_math_and_verl_layouts(sets):
    math, _ = load_prompt_records(sets["math"], PromptLayout(domain="math"))
    assert [(r.id, text_of(r), r.answer) for r in math[:2]] == [  # as published (the graders take its last box)
        ("row-0", "What is $2+3$?", "We add: $2+3=\\boxed{5}$."), ("row-1", "What is $4 \\cdot 2$?", "$\\boxed{8}$")]
    layout = PromptLayout(columns=PromptColumns(domain="ability", answer="reward_model.ground_truth", id="extra_info.index"))
    verl, skipped = load_prompt_records(sets["verl"], layout)
    assert not skipped and (verl[0].id, verl[0].domain, verl[0].answer) == ("0", "math", "7")
    assert verl[0].messages == [{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}]
    geo3k, skipped = load_prompt_records(sets["verl_geo3k"], layout)  # `<image>` inside the chat turn
    assert not skipped and (geo3k[0].id, geo3k[0].answer, len(geo3k[0].images)) == ("0", "38", 1)
    assert geo3k[0].messages == [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Find x. Put the answer in \\boxed{}."}]}]


def test_geometry3k_images_go_where_their_placeholders_are(sets, renderer):
    records, skipped = load_prompt_records(sets["geometry3k"], PromptLayout(domain="math"))
    assert skipped == {"image_count_mismatch": 1}  # two <image> for one image
    assert [r.messages[0]["content"] for r in records] == [
        [{"type": "image"}, {"type": "text", "text": "Find x. Round to the nearest tenth."}],
        [{"type": "text", "text": "In the figure "}, {"type": "image"}, {"type": "text", "text": ", find y."}]]
    prompt = encode_prompt_record(records[1], renderer)
    kinds = [kind for _, _, kind in prompt.document.atomic_spans]
    assert kinds == ["image"] and "<image>" not in renderer.tokenizer.decode(prompt.input_ids)


def test_docvqa_answers_are_each_accepted(sets):
    from data_pipelines.prompt_columns import normalize_row
    from stages.rl.rewards.scoring import score

    records, skipped = load_prompt_records(sets["docvqa"], PromptLayout(domain="ocr"))
    assert not skipped and [(r.id, r.answer) for r in records] == [
        ("337", {"any_of": ["March 3, 1979", "3/3/79"]}), ("338", {"any_of": ["Paul"]})]
    graded = lambda r, text: score("ocr", f"<think>.</think><answer><|begin_of_box|>{text}<|end_of_box|></answer>",
                                   r.answer).reward
    assert [graded(records[0], "3/3/79"), graded(records[0], "March 3, 1979"), graded(records[1], "Paul")] == [1, 1, 1]
    assert 0 < graded(records[1], "Paula") < 1 and graded(records[0], "1979") < graded(records[0], "3/3/79")
    # VQAv2: ten annotators' {"answer": ...} dicts, repeated answers once
    row = normalize_row({"question": "How many?", "answers": [{"answer": "2", "answer_confidence": "yes"},
                                                              {"answer": "2"}, {"answer": "two"}]}, 0, PromptLayout())
    assert row["answer"] == {"any_of": ["2", "two"]}


@pytest.mark.parametrize("answers, expected", [
    ([3, "three", 3.5], {"any_of": ["3", "three", "3.5"]}),
    ([["a", "b"], "c"], {"any_of": ["c"]}),  # nested lists are not answers; unhashable items once crashed the load
    ([{"answer": ["a"]}], None), ([None], None), ([{"text": "a"}], None), ([], None), ([True], None),
])
def test_answers_lists_nobody_showed_keep_their_answers_or_count_as_missing(answers, expected):
    from data_pipelines.prompt_columns import normalize_row
    from data_pipelines.prompts import PromptRecordError, parse_record

    row = normalize_row({"question": "Q?", "answers": answers, "domain": "ocr"}, 0, PromptLayout())
    assert row["answer"] == expected
    if expected is None:
        with pytest.raises(PromptRecordError) as skipped:
            parse_record(row)
        assert skipped.value.reason == "missing_answer"


def test_vqa_metric_keeps_every_annotators_vote(sets):
    """data.answers_metric=vqa: the annotators' answers with their repeats (the votes), graded by the
    VQA accuracy; the default keeps each once and takes the best grade."""
    from data_pipelines.prompt_columns import normalize_row
    from stages.rl.rewards import RewardConfig
    from stages.rl.rewards.scoring import score

    votes = ["Stop", "stop", "stop sign", "STOP SIGN", "red", "red", "red", "red", "octagon", "stop"]
    vqa, best = (normalize_row({"question": "What does the sign say?", "answers": votes}, 0,
                               PromptLayout(domain="vqa", answers_metric=metric))["answer"] for metric in ("vqa", "best"))
    assert vqa == {"vqa_answers": votes} and best == {"any_of": list(dict.fromkeys(votes))}
    graded = lambda gt, text: score("vqa", f"<think>.</think><answer><|begin_of_box|>{text}<|end_of_box|></answer>",  # noqa: E731
                                    gt, config=RewardConfig(num_workers=0)).reward
    assert [graded(vqa, "stop"), graded(vqa, "the stop sign"), graded(vqa, "octagon"), graded(vqa, "red")] == \
        pytest.approx([0.9, 0.6, 0.3, 1.0])
    assert graded(best, "octagon") == 1.0  # best-of: one annotator's answer is enough
    records, skipped = load_prompt_records(sets["docvqa"], PromptLayout(domain="ocr", answers_metric="vqa"))
    assert not skipped and records[0].answer == {"vqa_answers": ["March 3, 1979", "3/3/79"]}
    with pytest.raises(ValueError, match="answers_metric"):
        PromptLayout(answers_metric="anls")


def boxed(domain: str, text: str, gold, **info) -> float:
    from stages.rl.rewards import RewardConfig
    from stages.rl.rewards.scoring import score

    return score(domain, f"<think>.</think><answer><|begin_of_box|>{text}<|end_of_box|></answer>", gold,
                 config=RewardConfig(num_workers=0), **info).reward


def test_answer_given_as_an_option_index_in_text(sets):
    """AI2D's answer is the option's 0-based index written as text ("1"). Digits that are no option's
    text are read as the index by default; data.answer_is_index=true reads them so even where an
    option's text is also a number ("1" among 8, 6, 1, 4 is B, not the option "1")."""
    guessed, _ = load_prompt_records(sets["ai2d"], PromptLayout(domain="multiple_choice"))
    indexed, skipped = load_prompt_records(sets["ai2d"], PromptLayout(domain="multiple_choice", answer_is_index=True))
    assert not skipped and [r.answer for r in guessed] == ["B", "1"] and [r.answer for r in indexed] == ["B", "B"]
    words, numbers = indexed
    assert boxed("multiple_choice", "B", numbers.answer, **numbers.info) == 1.0
    assert boxed("multiple_choice", "C", numbers.answer, **numbers.info) == 0.0
    assert boxed("multiple_choice", "larva", words.answer, **words.info) == 1.0
    blanks, _ = load_prompt_records(sets["ai2d"], PromptLayout(domain="science", answer_is_index=True, mc_to_blank=True))
    assert [r.answer for r in blanks] == ["larva", "6"]


def test_ids_joined_from_several_columns_keep_every_prompt(sets, caplog):
    """MME asks a yes and a no question of each image under one question_id: the second was a
    duplicate_id skip (a model answering "yes" to all scored 100%), with a warning that names the
    fix; data.columns.id joins columns into one id, and the columns stay fields."""
    import logging

    with caplog.at_level(logging.WARNING, logger="data_pipelines.prompts"):
        alone, skipped = load_prompt_records(sets["mme"], PromptLayout(domain="chart"))
    assert len(alone) == 1 and skipped == {"duplicate_id": 1} and "data.columns.id=" in caplog.text
    both, skipped = load_prompt_records(sets["mme"], PromptLayout(domain="chart", columns=PromptColumns(id="question_id,answer")))
    assert not skipped and [(r.id, r.answer) for r in both] == [("color/0001.jpg/Yes", "Yes"), ("color/0001.jpg/No", "No")]
    assert both[0].info["question_id"] == "color/0001.jpg"


def test_answer_map_turns_labels_into_answers(sets):
    """HallusionBench's gt_answer is "1" / "0" for yes / no: data.answer_map maps it (on the command
    line: ++data.answer_map.1=Yes ++data.answer_map.0=No); a row with a null image is text-only."""
    layout = PromptLayout(domain="chart", answer_map={"1": "Yes", "0": "No"},
                          columns=PromptColumns(id="set_id,figure_id,question_id", answer="gt_answer"))
    records, skipped = load_prompt_records(sets["hallusionbench"], layout)
    assert not skipped and [(r.id, r.answer, len(r.images)) for r in records] == [("0/0/0", "Yes", 1), ("0/1/0", "No", 0)]
    assert boxed("chart", "yes", records[0].answer) == 1.0 and boxed("chart", "Yes", records[1].answer) == 0.0
    from data_pipelines.prompt_columns import normalize_row

    mapped = normalize_row({"question": "?", "answers": ["1", "0", "1"]}, 0, PromptLayout(answer_map={"1": "Yes"}))
    assert mapped["answer"] == {"any_of": ["Yes", "0"]}
    floats = normalize_row({"question": "?", "label": 1.0}, 0, PromptLayout(answer_map={"1": "Yes"}))
    assert floats["answer"] == "Yes"  # a label column read as floats


def test_accepted_answers_in_other_layouts(sets):
    """OCRBench lists accepted readings under `answer` (data.accepted_answers=true: any list answer
    is the accepted answers); VQAv2's answers as `datasets` reads a Sequence of dicts (a dict of
    lists), or named by a dotted path into the list of dicts (answers.answer)."""
    from data_pipelines.prompt_columns import normalize_row

    plain, _ = load_prompt_records(sets["ocrbench"], PromptLayout(domain="ocr"))
    accepted, _ = load_prompt_records(sets["ocrbench"], PromptLayout(domain="ocr", accepted_answers=True))
    assert plain[0].answer == ["3/3/79", "March 3, 1979"] and accepted[0].answer == {"any_of": ["3/3/79", "March 3, 1979"]}
    assert boxed("ocr", "March 3, 1979", accepted[0].answer) == 1.0
    (vqa,), skipped = load_prompt_records(sets["vqav2"], PromptLayout(domain="vqa", answers_metric="vqa"))
    assert not skipped and vqa.id == "1000" and vqa.answer == {"vqa_answers": ["red"] * 9 + ["pink"]}
    assert (boxed("vqa", "Red", vqa.answer), boxed("vqa", "pink", vqa.answer)) == pytest.approx((1.0, 0.3))
    row = {"question": "?", "answers": [{"answer": "red", "answer_id": 1}, {"answer": "pink", "answer_id": 2}]}
    assert normalize_row(row, 0, PromptLayout(columns=PromptColumns(answer="answers.answer")))["answer"] == \
        {"any_of": ["red", "pink"]}
    (vizwiz,), _ = load_prompt_records(sets["vizwiz"], PromptLayout(domain="vqa", answers_metric="vqa"))
    assert boxed("vqa", "Unanswerable", vizwiz.answer) == pytest.approx(0.3)  # one of ten said it
    assert boxed("vqa", "red", vizwiz.answer) == 1.0


def test_numbered_image_references_without_images_are_counted(sets):
    """MMMU-Pro's image_1 .. image_7 are read only when named; unread, its `<image 1>` rows used to be
    evaluated text-only. They are now image_count_mismatch skips."""
    unread, skipped = load_prompt_records(sets["mmmu_pro"], PromptLayout(domain="multiple_choice"))
    assert not unread and skipped == {"image_count_mismatch": 1}
    named = PromptLayout(domain="multiple_choice", columns=PromptColumns(images=",".join(f"image_{i}" for i in range(1, 8))))
    (record,), skipped = load_prompt_records(sets["mmmu_pro"], named)
    assert not skipped and len(record.images) == 1 and record.info["options"] == ["red", "blue"]


def test_mathvision_reads_the_decoded_image_and_keeps_vision_only_rows(sets, renderer):
    """MathVision's `image` is a path inside the hub repo; `decoded_image` holds the pixels. A row
    whose question is empty (MathVerse's "Vision Only") is its image alone."""
    records, skipped = load_prompt_records(sets["mathvision"], PromptLayout(domain="math"))
    assert not skipped and [encoded_images(r, renderer, sets["mathvision"].parent) for r in records] == [1, 1]
    assert records[0].messages[0]["content"] == [{"type": "text", "text": "Which number is missing?\n"}, {"type": "image"}]
    assert records[1].messages[0]["content"] == [{"type": "image"}]
    unread, skipped = load_prompt_records(sets["mathvision"], PromptLayout(
        domain="math", columns=PromptColumns(images="nowhere")))  # neither row can be asked without its image
    assert not unread and skipped == {"empty_question": 1, "image_count_mismatch": 1}


def test_a_datasets_video_column_is_read_without_torchcodec(tmp_path, renderer):
    from PIL import Image

    from data_pipelines.synthetic import write_mp4
    from tests.public_layouts import write_video_prompt_set

    write_mp4([Image.new("RGB", (56, 56), c) for c in ("red", "red", "blue", "blue")], tmp_path / "clip.mp4", fps=2)
    path = write_video_prompt_set(tmp_path, (tmp_path / "clip.mp4").read_bytes())
    records, skipped = load_prompt_records(path)
    assert not skipped and [(len(r.images), len(r.videos)) for r in records] == [(0, 1), (0, 1)]
    assert records[0].videos[0] == ((tmp_path / "clip.mp4").read_bytes(), None)  # the file's bytes, decoded by PyAV
    prompt = encode_prompt_record(records[0], renderer)
    assert [kind for _, _, kind in prompt.document.atomic_spans] == ["video"]


def test_options_one_per_column_and_hints_are_read(sets, renderer):
    """MMBench's options A..D (one left "nan") and SEED-Bench's choice_a..choice_d become options by
    letter that reach the prompt and the verifier; MMBench's hint goes before the question."""
    from stages.rl.rewards.scoring import score

    layout = PromptLayout(domain="multiple_choice", options_in_prompt=True)
    mmbench, skipped = load_prompt_records(sets["mmbench"], layout)
    assert not skipped and [(r.id, r.answer, r.info["options"]) for r in mmbench] == [
        ("0", "B", {"A": "blue", "B": "red", "C": "green", "D": "yellow"}),
        ("1", "A", {"A": "circle", "B": "square"})]  # C null, D "nan": left out
    assert not {"A", "B", "C", "D"} & set(mmbench[0].info)
    assert text_of(mmbench[0]) == "What colour is the square?\nA. blue\nB. red\nC. green\nD. yellow"
    assert text_of(mmbench[1]) == "The shape is round.\nWhich shape is shown?\nA. circle\nB. square"
    assert [encoded_images(r, renderer, None) for r in mmbench] == [1, 1]
    graded = lambda r, text: score("multiple_choice", f"<think>.</think><answer><|begin_of_box|>{text}"
                                                      "<|end_of_box|></answer>", r.answer, **r.info).reward
    assert [graded(mmbench[0], "red"), graded(mmbench[0], "B"), graded(mmbench[0], "blue")] == [1, 1, 0]
    (seed,), skipped = load_prompt_records(sets["seedbench"], layout)
    assert not skipped and seed.info["options"] == {"A": "red", "B": "blue", "C": "green", "D": "pink"}
    assert graded(seed, "green") == 1 and text_of(seed).endswith("C. green\nD. pink")
    blank, _ = load_prompt_records(sets["mmbench"], PromptLayout(domain="science", mc_to_blank=True))
    assert [(text_of(r), r.answer) for r in blank] == [("What colour is the square?", "red"),
                                                      ("The shape is round.\nWhich shape is shown?", "circle")]


@pytest.mark.parametrize("row, options, question", [
    ({"A": 3, "B": 4.5, "C": float("nan")}, {"A": "3", "B": "4.5"}, "Q?"),  # numbers are options, NaN is none
    ({"A": None, "B": "nan"}, None, "Q?"),  # nothing left: no options at all
    ({"choice_A": "x", "choice_B": "y", "hint": "h", "context": "c"}, {"A": "x", "B": "y"}, "c\nQ?"),
    ({"hint": 5}, None, "Q?"),  # not text: stays in info
])
def test_option_columns_and_context_nobody_showed(row, options, question):
    from data_pipelines.prompt_columns import normalize_row

    out = normalize_row({"question": "Q?", "answer": "A", **row}, 0, PromptLayout())
    assert out.get("options") == options and out["question"] == question
    assert ("hint" in out) == (row.get("hint") == "h") and ("context" in out) == (row.get("hint") == 5)


def test_aokvqa_direct_answers_or_its_choice(sets):
    """A-OKVQA has no `answer`: its ten direct answers are each accepted, or its choice index is the answer."""
    from stages.rl.rewards.scoring import score

    (direct,), _ = load_prompt_records(sets["aokvqa"], PromptLayout(domain="ocr",
                                                                    columns=PromptColumns(answer="direct_answers")))
    assert direct.answer == {"any_of": ["banana", "lemon"]}
    assert score("ocr", "<think>.</think><answer><|begin_of_box|>lemon<|end_of_box|></answer>",
                 direct.answer).reward == 1.0
    (choice,), _ = load_prompt_records(sets["aokvqa"], PromptLayout(
        domain="multiple_choice", columns=PromptColumns(answer="correct_choice_idx"), options_in_prompt=True))
    assert choice.answer == "B" and text_of(choice).endswith("B. banana\nC. plum\nD. kiwi")


def test_options_listed_in_the_question_are_removed(sets):
    records, _ = load_prompt_records(sets["mc"], PromptLayout(mc_to_blank=True))
    assert (text_of(records[0]), records[0].answer) == ("Which planet is largest?", "Jupiter")
    kept, _ = load_prompt_records(sets["mc"])
    assert kept[0].answer == "(B)" and kept[0].info["options"] == ["Mars", "Jupiter", "Venus"]


def test_normalised_records_grade_with_the_verifiers(sets):
    from stages.rl.rewards.scoring import score

    def response(answer: str) -> str:
        return f"<think>...</think><answer>It is <|begin_of_box|>{answer}<|end_of_box|>.</answer>"

    mc, _ = load_prompt_records(sets["scienceqa"], PromptLayout(domain="science"))
    assert score("multiple_choice", response("red"), mc[0].answer, **mc[0].info).reward == 1.0
    assert score("multiple_choice", response("B"), mc[0].answer, **mc[0].info).reward == 1.0
    assert score("multiple_choice", response("A"), mc[0].answer, **mc[0].info).reward == 0.0
    math, _ = load_gradable_prompts(sets["math"], PromptLayout(domain="math"), RewardConfig())  # worked solutions
    assert [r.answer for r in math] == ["5", "8", "8", "2"]  # their last box, as MATH's grader takes it
    assert [score("math", response(a), r.answer).reward for r, a in zip(math, ["5", "8", "8", "2"])] == [1.0] * 4
    assert [score("math", response(a), r.answer).reward for r, a in zip(math, ["6", "9", "3", "4"])] == [0.0] * 4


def test_final_answers_inside_published_golds(sets, tmp_path):
    import json

    from data_pipelines.answer_format import final_answer
    from stages.rl.rewards.scoring import score

    def graded(domain: str, record, answer: str) -> float:
        response = f"<think>...</think><answer>It is <|begin_of_box|>{answer}<|end_of_box|>.</answer>"
        return score(domain, response, record.answer, **record.info).reward

    # GSM8K: the worked solution was the gold, and 72 scored 0 without a word
    gsm8k, skipped = load_gradable_prompts(sets["gsm8k"], PromptLayout(domain="math"), RewardConfig())
    assert not skipped and [r.answer for r in gsm8k] == ["72", "2200"]  # thousands commas go, as GSM8K's grader drops them
    assert [graded("math", gsm8k[0], a) for a in ("72", "73")] == [1.0, 0.0]
    assert [graded("math", gsm8k[1], a) for a in ("2200", "2,200", "2000")] == [1.0, 1.0, 0.0]
    # R1-V's CLEVR: "<answer> 3 </answer>" was ungradable under counting and 0 under math
    (clevr,), _ = load_gradable_prompts(sets["clevr_r1v"], PromptLayout(domain="counting"), RewardConfig())
    assert clevr.answer == "3" and [graded(d, clevr, a) for d in ("counting", "math") for a in ("3", "4")] == [
        1.0, 0.0, 1.0, 0.0]
    # only verifiers of one final answer read it: an OCR or VQA gold is taken as it is, but for what
    # one pair of <answer> tags holds (Video-R1's golds; empty: no answer)
    rows = [{"question": "q", "answer": "<answer> </answer>"}, {"question": "r", "answer": "y = \\boxed{x^2} + 1"},
            {"question": "s", "answer": "Chapter 1\n#### Summary"},
            {"question": "t", "answer": "4", "response": "4", "config": "c"}]  # columns named like score's arguments
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    math, skipped = load_gradable_prompts(tmp_path / "mixed.jsonl", PromptLayout(domain="math"), RewardConfig())
    assert skipped == {"missing_answer": 1} and [r.answer for r in math] == ["x^2", "Chapter 1\n#### Summary", "4"]
    ocr, skipped = load_gradable_prompts(tmp_path / "mixed.jsonl", PromptLayout(domain="ocr"), RewardConfig())
    assert skipped == {"missing_answer": 1} and [r.answer for r in ocr] == [row["answer"] for row in rows[1:]]
    # boxes one answer is written in, and those that are steps before it
    assert final_answer("$x=\\boxed{3}$ or $x=\\boxed{-3}$") == "3, -3"
    assert final_answer("(1) $\\boxed{a_n=2n-1}$; (2) $\\boxed{T_n=n^2}$") == "a_n=2n-1, T_n=n^2"
    assert final_answer("Roots $\\boxed{3}$ and $\\boxed{5}$, so the sum is $\\boxed{8}$.") == "8"
    assert final_answer("<answer>x</answer> and <answer>y</answer>") is None


def test_bad_prompt_rows_are_counted_by_reason(tmp_path, renderer):
    """Bad rows of an HF-style prompt set: each counted under its reason at load or at encoding
    (what RL, grading and evaluation skip), the good ones kept."""
    import io
    import json

    from PIL import Image

    from data_pipelines.prompts import encode_records
    from tests.public_layouts import png

    (tmp_path / "ok.png").write_bytes(png("red"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    wide = io.BytesIO()
    Image.new("RGB", (4200, 20), "red").save(wide, format="PNG")  # 210:1 (200:1 itself is the largest allowed)
    (tmp_path / "wide.png").write_bytes(wide.getvalue())
    rows = [
        {"problem": "1+1?", "solution": "2"},  # good
        {"question": "What colour?", "image": "ok.png", "answer": "red"},  # good
        {"question": "No answer here"},  # missing_answer
        {"question": 7, "answer": "7"},  # malformed_record: a question that is not text
        {"question": " ", "answer": "7"},  # empty_question: no text and no image
        {"question": "<image> or <image>?", "image": "ok.png", "answer": "x"},  # image_count_mismatch
        {"answer": "3"},  # malformed_record: no question at all
        {"id": "dup", "question": "a?", "answer": "a"}, {"id": "dup", "question": "b?", "answer": "b"},  # duplicate_id
        {"messages": [{"role": "user", "content": [{"type": "image"}]}], "images": ["ok.png", "ok.png"],
         "answer": "x"},  # image_count_mismatch: more images than placeholders
        {"question": "Which?", "image": "nowhere.png", "answer": "x"},  # missing_image (at encoding)
        {"question": "Which?", "image": "broken.png", "answer": "x"},  # undecodable_image
        {"question": "Which?", "image": "wide.png", "answer": "x"},  # aspect_ratio
        {"question": "long " * 400, "answer": "x"},  # prompt_too_long
    ]
    path = tmp_path / "set.jsonl"
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in rows) + b"\n\xff\xfe{bad utf-8\n{not json\n")
    records, skipped = load_prompt_records(path, PromptLayout(domain="general"))
    assert skipped == {"missing_answer": 1, "malformed_record": 2, "empty_question": 1, "duplicate_id": 1,
                       "image_count_mismatch": 2, "malformed_json": 2}
    encoded, failed = encode_records(records, range(len(records)), renderer, image_root=tmp_path, max_tokens=256)
    assert sorted(reason for _, reason in failed) == ["aspect_ratio", "missing_image", "prompt_too_long",
                                                     "undecodable_image"]
    assert sorted(records[i].id for i in encoded) == ["dup", "row-0", "row-1"]


@pytest.mark.parametrize("question, content", [
    ("<video>What happens?", [{"type": "video"}, {"type": "text", "text": "What happens?"}]),  # LLaMA-Factory
    ("<image>\nWhat happens?", [{"type": "video"}, {"type": "text", "text": "\nWhat happens?"}]),  # LLaVA-Video-178K
    ("What happens?", [{"type": "video"}, {"type": "text", "text": "What happens?"}]),
])
def test_video_placeholders_in_questions_place_the_video(question, content):
    from data_pipelines.prompts import PromptRecordError, parse_record

    record = parse_record({"id": "v", "domain": "ocr", "answer": "blue", "question": question, "videos": ["clip.mp4"]})
    assert record.messages == [{"role": "user", "content": content}]
    with pytest.raises(PromptRecordError) as skipped:
        parse_record({"id": "v", "domain": "ocr", "answer": "blue", "question": "<video><video>Why?", "videos": ["a.mp4"]})
    assert skipped.value.reason == "image_count_mismatch"


@pytest.mark.parametrize("options, kept", [
    (["A. Apples.", "B. Red."], ["Apples.", "Red."]),  # Video-MME
    ({"A": "(A) x", "B": "(B) y"}, {"A": "x", "B": "y"}),
    (["A", "B", "C"], ["A", "B", "C"]),  # MathVision: the options are their letters
    (["A. x", "C. y"], ["A. x", "C. y"]),  # not each its own letter
    (["A. x", "y"], ["A. x", "y"]),
    (["A.B. testing", "B. none"], ["A.B. testing", "B. none"]),  # "A.B." is no "A. " prefix
])
def test_options_that_carry_their_own_letter(options, kept):
    row = normalize_row({"question": "Which?", "options": options, "answer": "A"}, 0, PromptLayout())
    assert row["options"] == kept


@pytest.mark.parametrize("question, options", [
    ("What colour?\nOptions: A: red, B: blue, C: green", {"A": "red", "B": "blue", "C": "green"}),  # MMStar
    ("Which?\nChoices: A. yes, B. no", {"A": "yes", "B": "no"}),
    ("Which?\nOptions: red, blue", None),
    ("Which?\nOptions: A: red, C: blue", None),  # letters out of order
    ("Options: A: red", None),  # one option
    ("The options: A: red, B: blue are shown.", None),  # not a line of options
    ("Which colour?\nChoices:\nA: red\nB: blue", {"A": "red", "B": "blue"}),  # ViRL39K's M3CoT rows
    ("Which?\nOptions:\n\n(A) yes\n(B) no\nAnswer with the letter. A: is not an option", {"A": "yes", "B": "no"}),
    ("Which?\r\nChoices:\r\nA) red\r\nB) blue", {"A": "red", "B": "blue"}),  # Windows line ends
    ("Which?\nChoices:\nA. x\n\nB. y\n \nC. z\nPick one.", {"A": "x", "B": "y", "C": "z"}),  # blank lines between
    ("Which?\nChoices:\nB. red\nA. blue", None),  # letters out of order
    ("Which?\nChoices:\nA. red\nand more", None),  # one option
])
def test_options_listed_inline_in_the_question(question, options):
    row = normalize_row({"question": question, "answer": "A"}, 0, PromptLayout())
    assert row.get("options") == options


def test_options_read_from_the_question_must_hold_a_letter_gold():
    # ten options, the gold the tenth: the list is read whole; a list that stops short of a letter
    # gold (a line the reader does not take for an option) is no list of the options, and the
    # letter grades as before
    ten = "Which?\nOptions:\n" + "\n".join(f"{c}. opt{c}" for c in "ABCDEFGHIJ")
    assert list(normalize_row({"question": ten, "answer": "J"}, 0, PromptLayout())["options"]) == list("ABCDEFGHIJ")
    cut = "Which?\nChoices:\nA. x\nB. y\nsee the figure\nC. z"
    assert "options" not in normalize_row({"question": cut, "answer": "(C)"}, 0, PromptLayout())
    assert normalize_row({"question": cut, "answer": "B"}, 0, PromptLayout())["options"] == {"A": "x", "B": "y"}


def test_numbered_option_columns_candidates_and_unique_ids():
    nextqa = normalize_row({"question": "q", "answer": 2, **{f"a{i}": t for i, t in enumerate("vwxyz")}}, 0,
                           PromptLayout())
    assert nextqa["answer"] == "C" and nextqa["options"] == dict(zip("ABCDE", "vwxyz"))
    mvbench = normalize_row({"question": "q", "candidates": ["x", "y"], "answer": "y"}, 0, PromptLayout())
    assert mvbench["options"] == ["x", "y"] and mvbench["answer"] == "y"
    rows = [{"question_id": 0, "index": i} for i in range(3)]
    assert with_unique_ids(rows, PromptLayout()).columns.id == "index"  # question_id repeats
    assert with_unique_ids([{"question_id": 0}, {"question_id": 0}], PromptLayout()).columns.id is None
    explicit = PromptLayout(columns=PromptColumns(id="question_id"))
    assert with_unique_ids(rows, explicit) is explicit


def test_media_paths_built_from_columns(tmp_path, renderer):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "7.png").write_bytes(png("red"))
    layout = PromptLayout(domain="ocr", image_path="img/{pid}.png")
    rows = [{"pid": 7, "question": "q", "answer": "a"}, {"question": "q", "answer": "a"}]
    found, lacking = (parse_record(normalize_row(r, i, layout)) for i, r in enumerate(rows))
    assert found.images == ["img/7.png"] and encoded_images(found, renderer, tmp_path) == 1
    with pytest.raises(BadSample, match=r"img/\{pid\}.png") as err:  # the column it lacks, named
        encode_prompt_record(lacking, renderer, image_root=tmp_path)
    assert err.value.reason == "missing_image"
    for template in ("data/{videoID", "{videoID!r}.mp4", "{}.mp4", "{videoID:>8}.mp4"):  # a typo stops at start
        with pytest.raises(ValueError, match="data.video_path"):
            PromptLayout(video_path=template)


def test_option_edges_nobody_showed():
    # option keys with regex characters do not stop the load
    row = normalize_row({"question": "Which?", "options": {"A)": "A) x", "B)": "B) y"}, "answer": "A"}, 0,
                        PromptLayout(options_in_prompt=True))
    assert row["answer"] == "A"
    # a gold written as the whole lettered option follows its option
    row = normalize_row({"question": "Which?", "options": ["A. Apples.", "B. Red."], "answer": "B. Red."}, 0,
                        PromptLayout())
    assert row["options"] == ["Apples.", "Red."] and row["answer"] == "Red."
    # a blank made from MMStar's inline options leaves no options line behind
    row = normalize_row({"question": "What colour?\nOptions: A: red, B: blue", "answer": "B"}, 0,
                        PromptLayout(mc_to_blank=True))
    assert row["question"] == "What colour?" and row["answer"] == "blue" and "options" not in row
    # an index names its column's letter where an earlier option was left empty
    row = normalize_row({"question": "q", "answer": 2, "a0": "x", "a1": None, "a2": "z"}, 0, PromptLayout())
    assert row["options"] == {"A": "x", "C": "z"} and row["answer"] == "C"


def test_media_cells_nobody_showed_are_counted_skips(tmp_path, renderer):
    import base64

    rows = [{"question": "q", "answer": "a", "image": float("nan")},  # a float column's null
            {"question": "q", "answer": "a", "image": 3.0},
            {"question": "q", "answer": "a", "image": "NExTVideo/" + "A" * 80}]  # missing, and base64-shaped
    for i, row in enumerate(rows):
        record = parse_record(normalize_row(row, i, PromptLayout(domain="ocr")))
        with pytest.raises(BadSample) as err:
            encode_prompt_record(record, renderer, image_root=tmp_path)
        assert err.value.reason == "missing_image"
    cell = base64.b64encode(png("red")).decode()  # VLMEvalKit's cell: decoded
    record = parse_record(normalize_row({"question": "q", "answer": "a", "image": cell}, 0, PromptLayout(domain="ocr")))
    assert encoded_images(record, renderer, tmp_path) == 1
    with pytest.raises(ValueError, match="only the domain"):
        PromptLayout(columns=PromptColumns(id=""))


def test_virl39k_boxed_answers_are_their_box(sets, renderer):
    from stages.rl.prompt_sets import letter_of_unseen_options
    from stages.rl.rewards.scoring import score

    records, skipped = load_prompt_records(sets["virl39k"], PromptLayout(domain="math", columns=PromptColumns(id="qid")))
    assert not skipped and [(r.id, r.answer) for r in records] == [("MMK12-1", "17^\\circ"), ("M3CoT-2", "A")]
    assert encoded_images(records[0], renderer, sets["virl39k"].parent) == 1
    assert records[1].info["category"] == "Spatial Reasoning"

    def graded(record, domain: str, answer: str) -> float:
        response = f"<think>...</think><answer>It is <|begin_of_box|>{answer}<|end_of_box|>.</answer>"
        return score(domain, response, record.answer, **record.info).reward

    assert [graded(records[0], "math", a) for a in ("17", "17^\\circ", "18")] == [1.0, 1.0, 0.0]
    # the same golds under verifiers that do not read LaTeX: the box is gone before they see it
    assert [graded(records[1], "multiple_choice", a) for a in ("A", "(A)", "B")] == [1.0, 1.0, 0.0]
    assert graded(records[1], "math", "A") == 1.0
    # its options listed one a line under "Choices:" are the record's options: the text grades too
    assert records[1].info["options"] == {"A": "red", "B": "blue"} and not letter_of_unseen_options(records[1])
    assert [graded(records[1], "multiple_choice", a) for a in ("red", "blue")] == [1.0, 0.0]


def test_pixel_boxes_of_vlm_r1_rec_are_scaled_by_their_image(tmp_path, renderer, caplog):
    import json

    from PIL import Image

    from stages.rl.rewards.scoring import score

    # VLM-R1's RefCOCO REC lines: a COCO path, the expression, the gold box in pixels of a 640 x 480 image
    (tmp_path / "coco").mkdir()
    Image.new("RGB", (640, 480), "red").save(tmp_path / "coco" / "1.jpg")
    rows = [{"image": "coco/1.jpg", "problem": "the top left quarter", "normal_caption": "the top left quarter",
             "solution": [0.0, 0.0, 320.0, 240.0]},
            {"image": "coco/1.jpg", "problem": "the right half", "solution": [320, 0, 640, 480]}]
    (tmp_path / "rec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, skipped = load_prompt_records(tmp_path / "rec.jsonl", PromptLayout(domain="grounding", box_units="pixels"))
    assert not skipped and len(records) == 2

    def graded(record, box: list[int]) -> tuple[float, str]:
        got = score("grounding", f"<think>...</think><answer><|begin_of_box|>{box}<|end_of_box|></answer>",
                    record.answer, **record.info)
        return got.reward, got.reason

    # before its image is read the size is unknown: ungradable, never a guess
    assert graded(records[0], [0, 0, 500, 500])[1].startswith("bad_ground_truth")
    for record in records:
        assert encoded_images(record, renderer, tmp_path) == 1
    assert records[0].info["image_size"] == [640, 480]
    assert graded(records[0], [0, 0, 500, 500])[0] == 1.0  # the quarter on GLM's 0-999 grid
    assert graded(records[0], [0, 0, 320, 240])[0] == 0.0  # the pixels echoed are not it
    assert graded(records[1], [500, 0, 999, 999])[0] == 1.0  # a right edge at 640 px is 999
    # read as published without the key, pixels passed for 0-999 and the right answer scored 0
    plain, _ = load_prompt_records(tmp_path / "rec.jsonl", PromptLayout(domain="grounding"))
    assert graded(plain[0], [0, 0, 500, 500])[0] == 0.0
    # ... and a gold past 999 (a 1280-px image) cannot be read at all: said at load, before any rollout
    Image.new("RGB", (1280, 960), "red").save(tmp_path / "coco" / "2.jpg")
    rows.append({"image": "coco/2.jpg", "problem": "the right half", "solution": [640, 0, 1280, 960]})
    (tmp_path / "rec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="ponder"):
        load_gradable_prompts(tmp_path / "rec.jsonl", PromptLayout(domain="grounding", box_units="pixels"), RewardConfig())
    assert "cannot be graded" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="ponder"):
        load_gradable_prompts(tmp_path / "rec.jsonl", PromptLayout(domain="grounding"), RewardConfig())
    assert "1 of 3 golds checked (the first 32 of each domain) cannot be graded by their verifier" in caplog.text
    assert "row-2" in caplog.text
    with pytest.raises(ValueError, match="box_units"):
        PromptLayout(box_units="normalized")


def test_a_published_pass_rate_is_the_curriculums_prior(sets):
    from stages.rl.curriculum import CurriculumConfig, PromptMeta, offline_counts

    layout = PromptLayout(domain="math", columns=PromptColumns(difficulty="PassRate_7BUntrained"))
    records, skipped = load_prompt_records(sets["virl39k"], layout)
    assert not skipped and [r.difficulty for r in records] == [None, 0.75]  # an empty cell: no prior
    cfg = CurriculumConfig()
    passes, samples = offline_counts(PromptMeta(records[1].id, "math", records[1].difficulty), None, cfg)
    assert (passes, samples) == (0.75 * cfg.human_label_weight, cfg.human_label_weight)
    cells = [parse_record(normalize_row({"question": "q", "answer": "1", "domain": "math", "p": cell}, 0,
                                        PromptLayout(columns=PromptColumns(difficulty="p")))).difficulty
             for cell in (float("nan"), "0.25", "", "hard")]
    assert cells == [None, 0.25, None, "hard"]  # pandas' NaN and TSV text cells; a tier name stays
    for gold in ("\\boxed{}", " \\boxed{ } "):  # an empty box is no answer
        with pytest.raises(PromptRecordError, match="missing_answer"):
            parse_record(normalize_row({"question": "q", "answer": gold, "domain": "math"}, 0, PromptLayout()))


@pytest.mark.parametrize("row, columns, media", [
    ({"path": "clips/a.MP4"}, {}, {"videos": ["clips/a.MP4"]}),
    ({"path": "a.png", "data_type": "video"}, {}, {"videos": ["a.png"]}),  # data_type decides
    ({"path": ["a.jpg", "b.webm"]}, {}, {"images": ["a.jpg"], "videos": ["b.webm"]}),
    ({"path": "a.gif"}, {}, {"images": ["a.gif"]}),
    ({"path": "runs/2024/notes"}, {}, {}),  # not a media file: the column stays as it is
    ({"image": "x.png", "path": "a.mp4"}, {}, {"images": ["x.png"]}),  # media columns come first
    ({"file": "scans/0042.dcm"}, {"media": "file"}, {"images": ["scans/0042.dcm"]}),  # named: read as is
])
def test_one_media_column_per_row_kind(row, columns, media):
    out = normalize_row({"question": "What is shown?", "answer": "x", **row}, 0, PromptLayout(
        columns=PromptColumns(**columns)))
    assert {k: out[k] for k in ("images", "videos") if k in out} == media
    if not media:
        assert out["path"] == row["path"]


def test_lettered_lines_that_are_not_choices_leave_a_numeric_gold_alone():
    """Option lines that end a question without a header are its options only when the gold names
    one: a question about lettered statements or points keeps its number."""
    statements = {"question": "How many of these are true?\nA. 2 is prime.\nB. 9 is prime.\nC. 7 is prime.", "answer": "2"}
    points = {"question": "Find the distance between\nA: (0, 0)\nB: (3, 4)", "answer": 5}
    for row in (statements, points):
        out = normalize_row(row, 0, PromptLayout(domain="math"))
        assert out["answer"] == row["answer"] and "options" not in out
    by_text = normalize_row({**statements, "answer": "9 is prime."}, 0, PromptLayout(domain="multiple_choice"))
    assert by_text["options"] == {"A": "2 is prime.", "B": "9 is prime.", "C": "7 is prime."}


def test_the_gold_check_reads_every_domain_of_a_set_sorted_by_source(tmp_path, caplog):
    """A set sorted by source (Video-R1: its OCR rows start deep into the file): a domain whose
    golds its verifier cannot read is named at load even when 40 readable rows come first."""
    rows = [{"id": f"count-{i}", "problem": "How many?", "solution": str(i % 5), "domain": "counting"}
            for i in range(40)]
    rows += [{"id": f"box-{i}", "problem": "Where?", "solution": [640, 0, 1280, 960], "domain": "grounding"}
             for i in range(3)]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="ponder"):
        records, _ = load_gradable_prompts(tmp_path / "mixed.jsonl", PromptLayout(), RewardConfig())
    assert len(records) == 43
    assert "3 of 35 golds checked (the first 32 of each domain)" in caplog.text and "box-0" in caplog.text
