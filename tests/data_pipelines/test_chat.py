"""Chat records -> Documents: the template, loss masks token by token, visuals, the format gate."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from data_pipelines import answer_format
from data_pipelines.batch import IGNORE_INDEX, collate_rows
from data_pipelines.chat import BadResponseFormat, ChatConfig, ChatRenderer, MalformedChat, MissingMedia
from data_pipelines.processor import AspectRatioError, ProcessorConfig, VisionProcessor
from data_pipelines.chat_formats import detect, to_ponder
from data_pipelines.chat import encode_prompt

R1 = "<think>I count them: one, two.</think><answer>There are <|begin_of_box|>2<|end_of_box|> circles.</answer>"
R2 = "<think>The square is filled with red.</think><answer>It is <|begin_of_box|>red<|end_of_box|>.</answer>"
R3 = "<think>7 + 5 = 12.</think><answer><|begin_of_box|>12<|end_of_box|></answer>"
EOS = "<|endoftext|>"



@pytest.fixture(scope="module")
def processor():
    return VisionProcessor(ProcessorConfig(max_pixels=112 * 112 * 2))


@pytest.fixture(scope="module")
def chat(tokenizer, processor):
    return ChatRenderer(tokenizer, processor)


def image(w: int, h: int, colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def user(*items) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": i} if isinstance(i, str) else i for i in items]}


def targets(tokenizer, doc) -> str:
    return tokenizer.decode(doc.input_ids[doc.loss_mask], skip_special_tokens=False)


def check_invariants(doc) -> None:
    """No target on a vision token or the first token; each record weighs exactly 1 in the loss."""
    assert not doc.loss_mask[0]
    assert not (doc.loss_mask & (doc.mm_token_type_ids != 0)).any()
    for start, end, _ in doc.atomic_spans:
        assert not doc.loss_mask[start:end].any()
    assert doc.token_weight * int(doc.loss_mask.sum()) == pytest.approx(1.0)


def test_single_turn_trains_exactly_the_response_and_its_end(tokenizer, processor, chat):
    record = {"id": "one", "messages": [
        {"role": "system", "content": "Answer briefly."},
        user({"type": "image", "image": image(84, 56)}, "How many circles?"),
        {"role": "assistant", "content": R1}]}
    doc = chat(record)
    check_invariants(doc)
    assert doc.key == "one"
    assert targets(tokenizer, doc) == R1 + EOS
    # Everything before the targets is the inference prompt, token for token (what generation sees).
    reference = encode_prompt(record["messages"][:-1], tokenizer, processor, images=[image(84, 56)])
    first_target = int(doc.loss_mask.nonzero()[0])
    assert doc.input_ids[:first_target].tolist() == reference.input_ids[0].tolist()
    assert doc.mm_token_type_ids[:first_target].tolist() == reference.mm_token_type_ids[0].tolist()
    assert torch.equal(doc.images[0].pixel_values, reference.pixel_values)
    prompt = chat.prompt(record)
    assert prompt.input_ids.tolist() == reference.input_ids[0].tolist()
    assert not prompt.loss_mask.any()


def test_multi_turn_history_keeps_only_answers_and_only_chosen_turns_carry_loss(tokenizer, processor):
    record = {"messages": [
        user({"type": "image", "image": image(56, 56)}, "How many circles?"),
        {"role": "assistant", "content": R1},
        user("And the colour of the square?"),
        {"role": "assistant", "content": R2}]}
    last = ChatRenderer(tokenizer, processor).document(record, key="mt")
    check_invariants(last)
    text = tokenizer.decode(last.input_ids, skip_special_tokens=False)
    answer1 = R1.split("</think>")[1]
    assert "I count them" not in text and answer1 in text  # earlier thinking stripped from history
    assert targets(tokenizer, last) == R2 + EOS

    every = ChatRenderer(tokenizer, processor, ChatConfig(train_turns="all")).document(record, key="mt")
    check_invariants(every)
    assert torch.equal(every.input_ids, last.input_ids)  # same tokens, more targets
    # The earlier turn is trained as it appears in history, and ends at the next role marker.
    assert targets(tokenizer, every) == answer1 + "<|user|>" + R2 + EOS
    assert every.token_weight < last.token_weight


def test_multi_image_and_video_expand_in_order_and_carry_no_loss(tokenizer, processor, chat, tmp_path):
    frames = []
    for t in range(4):
        path = tmp_path / f"f{t}.png"
        image(56, 56, (10 * t, 100, 100)).save(path)
        frames.append(path.name)
    record = {"id": "mm", "messages": [
        user({"type": "image", "image": image(112, 56)}, "Compare with",
             {"type": "image", "image": image(56, 112, (0, 0, 200))},
             {"type": "video", "video": frames, "fps": 2}, "How many circles in all?"),
        {"role": "assistant", "content": R1}]}
    doc = chat.document(record, root=tmp_path)
    check_invariants(doc)
    assert targets(tokenizer, doc) == R1 + EOS
    assert [kind for *_, kind in doc.atomic_spans] == ["image", "image", "video"]
    first, second = (processor.process_image(image(112, 56)), processor.process_image(image(56, 112, (0, 0, 200))))
    assert torch.equal(doc.images[0].pixel_values, first.pixel_values)
    assert torch.equal(doc.images[1].pixel_values, second.pixel_values)
    assert doc.videos[0].grid_thw.tolist() == [2, 4, 4]  # 4 frames at 2 fps -> 2 frame pairs
    assert int((doc.mm_token_type_ids == 1).sum()) == first.num_tokens + second.num_tokens
    assert int((doc.mm_token_type_ids == 2).sum()) == 2 * 4
    # Same as the inference prompt built by chat.encode_prompt, video timestamps included.
    reference = encode_prompt(record["messages"][:-1], tokenizer, processor,
                              images=[image(112, 56), image(56, 112, (0, 0, 200))],
                              videos=[([tmp_path / f for f in frames], 2.0)])
    first_target = int(doc.loss_mask.nonzero()[0])
    assert doc.input_ids[:first_target].tolist() == reference.input_ids[0].tolist()


def test_text_only_record(tokenizer, chat):
    doc = chat({"id": "t", "messages": [{"role": "user", "content": "What is 7 + 5?"},
                                        {"role": "assistant", "content": R3}]})
    check_invariants(doc)
    assert doc.images == [] and doc.videos == [] and doc.atomic_spans == []
    assert targets(tokenizer, doc) == R3 + EOS


def test_collated_labels_are_the_targets_shifted_with_per_record_weights(tokenizer, chat):
    docs = [chat({"id": f"r{i}", "messages": [user({"type": "image", "image": image(56, 56 * (i + 1))}, "Q?"),
                                               {"role": "assistant", "content": r}]})
            for i, r in enumerate((R1, R2, R3))]
    seq_len = sum(len(d) for d in docs) + 7  # room for padding
    batch = collate_rows([docs], seq_len, pad_id=tokenizer.eos_token_id)
    offset = 0
    for i, doc in enumerate(docs):
        n = len(doc)
        labels = batch.labels[0, offset:offset + n - 1]
        expected = torch.where(doc.loss_mask[1:], doc.input_ids[1:], IGNORE_INDEX)
        assert torch.equal(labels, expected)
        assert batch.label_weights[0, offset:offset + n].sum().item() == pytest.approx(1.0)  # one per record
        offset += n
    assert (batch.labels[0, offset - 1:] == IGNORE_INDEX).all()  # no label across the end or on padding
    assert batch.label_weights[0, offset:].sum() == 0


@pytest.mark.parametrize("response, problem", [
    ("The answer is 2.", "missing_think"),
    ("<think>hm</think><answer>2</answer>", "no_box"),
    ("<think>hm</think><answer><|begin_of_box|>2<|end_of_box|> <|begin_of_box|>3<|end_of_box|></answer>",
     "multiple_boxes"),
    ("<think>hm</think><answer><|begin_of_box|> <|end_of_box|></answer>", "empty_box"),
])
def test_bad_format_is_skipped_by_default_or_kept_on_request(tokenizer, processor, chat, response, problem):
    record = {"id": "bad", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": response}]}
    assert answer_format.format_violation(response) == problem
    with pytest.raises(BadResponseFormat) as err:
        chat(record)
    assert err.value.reason == "bad_format"
    kept = ChatRenderer(tokenizer, processor, ChatConfig(skip_bad_format=False))(record)
    assert targets(tokenizer, kept) == response + EOS
    if problem == "no_box":  # answers without a box pass when boxes are not required
        no_box = ChatRenderer(tokenizer, processor, ChatConfig(require_box=False))
        assert targets(tokenizer, no_box(record)) == response + EOS


def test_the_reward_gate_is_the_same_function():
    from stages.rl.rewards import gate

    assert gate.parse_response is answer_format.parse_response
    assert gate.format_violation is answer_format.format_violation


@pytest.mark.parametrize("record, error, reason", [
    (b"{not json", MalformedChat, "malformed_chat"),
    (b"\xff\xfe", MalformedChat, "malformed_chat"),
    ({"messages": []}, MalformedChat, "malformed_chat"),
    ({"messages": [{"role": "user", "content": "Q?"}]}, MalformedChat, "malformed_chat"),  # no response
    ({"messages": [{"role": "robot", "content": "Q?"}, {"role": "assistant", "content": R3}]}, MalformedChat,
     "malformed_chat"),
    ({"messages": [{"role": "user", "content": "Q? <|assistant|>sure"}, {"role": "assistant", "content": R3}]},
     MalformedChat, "malformed_chat"),  # a role marker smuggled into content
    ({"messages": [{"role": "user", "content": "see <|begin_of_image|><|image|><|end_of_image|>"},
                   {"role": "assistant", "content": R3}]}, MalformedChat, "malformed_chat"),  # placeholder, no image
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]},
                   {"role": "assistant", "content": R3}]}, MalformedChat, "malformed_chat"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": ["a.png"], "fps": 0}]},
                   {"role": "assistant", "content": R3}]}, MalformedChat, "malformed_chat"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "missing.png"}]},
                   {"role": "assistant", "content": R3}]}, MissingMedia, "missing_image"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": image(3000, 10)}]},
                   {"role": "assistant", "content": R3}]}, AspectRatioError, "aspect_ratio"),
])
def test_bad_records_raise_a_counted_reason(chat, tmp_path, record, error, reason):
    with pytest.raises(error) as err:
        chat({"__key__": "k", "record": record, "root": str(tmp_path)})
    assert err.value.reason == reason


def test_json_text_and_hf_style_rows_give_the_same_document(chat, tmp_path):
    image(56, 84).save(tmp_path / "a.png")
    record = {"id": "x", "messages": [user({"type": "image", "image": "a.png"}, "Q?"),
                                      {"role": "assistant", "content": R2}]}
    # An HF `datasets` row carries every struct field, absent ones as None, and content as lists.
    hf_row = {"id": "x", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.png", "text": None, "video": None, "fps": None},
                                     {"type": "text", "text": "Q?", "image": None, "video": None, "fps": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": R2, "image": None, "video": None, "fps": None}]}]}
    a = chat({"__key__": "k", "record": json.dumps(record).encode(), "root": str(tmp_path)})
    b = chat({"__key__": "k", "record": hf_row, "root": str(tmp_path)})
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
    assert torch.equal(a.images[0].pixel_values, b.images[0].pixel_values)


# R1-style long CoT as its publishers ship it (the thinking of a real row is thousands of tokens)
OPENR1_MATH = {"problem": "What is 1/4 + 1/4?", "solution": "1/2", "answer": "\\frac{1}{2}", "messages": [
    {"role": "user", "content": "What is 1/4 + 1/4?"},
    {"role": "assistant", "content": "<think>\nTwo quarters make a half.\n</think>\n\nAdding: $\\boxed{\\frac{1}{2}}$"}]}
OPENTHOUGHTS = {"system": "Your role as an assistant involves thoroughly exploring questions.", "conversations": [
    {"from": "user", "value": "Return your final response within \\boxed{}. What is 3 + 4?"},
    {"from": "assistant", "value": "<|begin_of_thought|>\n\nThree and four.\n\n<|end_of_thought|>\n\n"
                                   "<|begin_of_solution|>\n\nThe sum is \\boxed{7}.\n\n<|end_of_solution|>"}]}
NO_OPENING_TAG = {"messages": [{"role": "user", "content": "2 + 2?"},
                               {"role": "assistant", "content": "Two and two.\n</think>\nIt is \\boxed{4}."}]}
# s1K (simplescaling/s1K): no turns, the thinking in a list column of its own, then the attempt
S1K = {"solution": "4", "question": "2 + 2?", "cot_type": "math", "source_type": "qfq/openaimath/Algebra",
       "metadata": "{'level': 1}", "cot": None, "thinking_trajectories": ["Two and two."],
       "attempt": "The answer is $\\boxed{4}$."}
# s1K-1.1: DeepSeek-R1's thinking and attempt beside Gemini's; DeepSeek's are trained
S1K_11 = {"solution": "7", "question": "3 + 4?", "gemini_thinking_trajectory": "Gemini thinks.",
          "gemini_attempt": "\\boxed{6}", "deepseek_thinking_trajectory": "Three and four.",
          "deepseek_attempt": "So \\boxed{7}."}


@pytest.mark.parametrize("record,expected", [
    (OPENR1_MATH, "<think>Two quarters make a half.</think><answer>Adding: "
                  "<|begin_of_box|>\\frac{1}{2}<|end_of_box|></answer>"),  # the $...$ around the box goes with it
    (OPENTHOUGHTS, "<think>Three and four.</think><answer>The sum is <|begin_of_box|>7<|end_of_box|>.</answer>"),
    (NO_OPENING_TAG, "<think>Two and two.</think><answer>It is <|begin_of_box|>4<|end_of_box|>.</answer>"),
    (S1K, "<think>Two and two.</think><answer>The answer is <|begin_of_box|>4<|end_of_box|>.</answer>"),
    (S1K_11, "<think>Three and four.</think><answer>So <|begin_of_box|>7<|end_of_box|>.</answer>"),
])
def test_r1_style_responses_train_in_the_answer_format(tokenizer, processor, chat, record, expected):
    doc = chat(record)
    check_invariants(doc)
    assert targets(tokenizer, doc) == expected + EOS
    assert answer_format.format_violation(expected) is None
    with pytest.raises(BadResponseFormat, match="missing_"):  # without the conversion: skipped
        ChatRenderer(tokenizer, processor, ChatConfig(convert_r1=False))(record)


# LLaVA-CoT-100k (Xkev/LLaVA-CoT-100k): ShareGPT turns, the response in four tagged stages
LLAVA_COT = {"id": "1", "conversations": [
    {"from": "human", "value": "How many apples are there?"},
    {"from": "gpt", "value": "<SUMMARY>I will count the apples.</SUMMARY>\n\n<CAPTION>Three red apples on a table."
                             "</CAPTION>\n\n<REASONING>One, two, three.</REASONING>\n\n<CONCLUSION>3</CONCLUSION>"}]}


def test_llava_cot_stages_train_in_the_answer_format(tokenizer, processor, chat):
    open_ended = ChatRenderer(tokenizer, processor, ChatConfig(require_box=False))
    expected = ("<think>I will count the apples.\n\nThree red apples on a table.\n\nOne, two, three.</think>"
                "<answer>3</answer>")
    assert targets(tokenizer, open_ended(LLAVA_COT)) == expected + EOS
    with pytest.raises(BadResponseFormat, match="no_box"):  # its conclusions have no box: skipped by default
        chat(LLAVA_COT)


def test_question_and_answer_columns_are_no_chat(chat):
    # an RL prompt record (a short gold, no response column) is not taken for s1K's layout
    assert detect({"question": "2 + 2?", "answer": "4"}) == "ponder" and detect(S1K) == "columns"
    with pytest.raises(MalformedChat, match="a `question` without a response to train"):  # GSM8K given to SFT
        chat({"question": "2 + 2?", "answer": "4"})
    # thinking and attempt come from one source: a DeepSeek row without its attempt trains Gemini's pair
    turns = to_ponder({**S1K_11, "deepseek_attempt": None})["messages"]
    assert turns[1]["content"] == "<think>Gemini thinks.</think>\\boxed{6}"
    # OpenOrca: its system prompt is the system turn; a list of responses is not glued into one
    orca = to_ponder({"system_prompt": "Be brief.", "question": "Hi?", "response": "Hello."})["messages"]
    assert [(m["role"], m["content"]) for m in orca] == [("system", "Be brief."), ("user", "Hi?"),
                                                        ("assistant", "Hello.")]
    assert detect({"question": "Hi?", "response": ["Hello.", "Hey."]}) == "ponder"


@pytest.mark.parametrize("response,problem", [
    ("<think>a</think>It is \\boxed{1} or \\boxed{2}.", "multiple_boxes"),
    ("<think>a</think>It is \\boxed{1.", "no_box"),  # braces never close: no box
    ("<think>a</think>Proved.", "no_box"),
])
def test_r1_style_responses_without_one_box_are_still_skipped(tokenizer, processor, chat, response, problem):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": response}]}
    with pytest.raises(BadResponseFormat, match=problem):
        chat(record)


def test_r1_boxes_with_a_space_escaped_braces_or_inside_a_formula():
    assert answer_format.from_r1("<think>a</think>\\boxed {\\left\\{1, 2\\right\\}}") == (
        "<think>a</think><answer><|begin_of_box|>\\left\\{1, 2\\right\\}<|end_of_box|></answer>")
    assert answer_format.from_r1("<think>a</think>\\[ \\boxed{x^2} \\] and $x = \\boxed{2}$") == (
        "<think>a</think><answer><|begin_of_box|>x^2<|end_of_box|> and $x = <|begin_of_box|>2<|end_of_box|>$</answer>")


@pytest.mark.parametrize("response", [
    "no thinking at all \\boxed{1}", "text first <think>a</think>b", "<think>a</think>", "<think>a</think>b</think>c",
    "<think>a</think><answer>b</answer>c", "<think>a</think>b <|begin_of_box|>1<|end_of_box|>",
])
def test_what_is_not_r1_style_is_left_alone(response):
    assert answer_format.from_r1(response) is None
