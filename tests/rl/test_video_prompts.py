"""Video prompts in RL and evaluation (issue #12, item 5): a record's `videos` (frames with
timestamps or fps, or a video file) renders through the one renderer, the HF engine generates from
it (pixel_values_videos reach the model, also in a call that mixes image and text prompts), and the
rollout trains through the same uniform vision forward: the trainer's log-probs equal the engine's,
and the gradient reaches the vision tower. Engines that cannot take videos skip them, counted."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from data_pipelines.batch import collate_rows
from data_pipelines.chat import ChatRenderer
from data_pipelines.processor import VisionProcessor
from data_pipelines.prompts import PromptRecordError, encode_records, parse_record, rollout_document
from data_pipelines.synthetic import moving_shape_frames, write_mp4
from data_pipelines.tokenizer import SpecialTokens
from stages.rl.rollout.base import GenerationRequest, SamplingSpec
from stages.rl.rollout.hf_engine import HFEngine
from tests.rl.helpers import tiny_policy
from trainer.forward import wrap_forward
from trainer.loss import token_logprobs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_prompts")
    frames, _ = moving_shape_frames(random.Random(0), 6, (112, 112))
    for i, frame in enumerate(frames):
        frame.save(root / f"f{i}.png")
    Image.new("RGB", (112, 112), (20, 200, 30)).save(root / "a.png")
    raws = [
        {"id": "frames", "domain": "d", "question": "Which way does it move?", "answer": "left",
         "videos": [{"frames": [f"f{i}.png" for i in range(6)], "timestamps": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]}]},
        {"id": "image", "domain": "d", "question": "What colour?", "answer": "green", "images": ["a.png"]},
        {"id": "text", "domain": "d", "question": "2 + 2?", "answer": "4"},
    ]
    if _has_av():
        write_mp4(frames, root / "clip.mp4", fps=2)
        raws.append({"id": "file", "domain": "d", "question": "Describe it.", "answer": "x", "videos": ["clip.mp4"]})
    model, tok = tiny_policy(text_only=False, seed=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    renderer = ChatRenderer(tok, VisionProcessor())
    records = [parse_record(r) for r in raws]
    prompts, failed = encode_records(records, range(len(records)), renderer, root)
    assert failed == []
    return model.eval(), SpecialTokens.from_tokenizer(tok), records, prompts


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_video_records_render_with_their_frames(setup):
    _, special, records, prompts = setup
    video = prompts[0]
    assert len(video.document.videos) == 1 and not video.document.images
    (t, h, w) = video.document.videos[0].grid_thw.tolist()
    assert t == 3  # 6 frames at 2 fps, in temporal pairs
    assert (video.document.mm_token_type_ids == 2).sum().item() == t * h * w // 4
    assert special.video_start in video.input_ids and special.video_end in video.input_ids
    if len(records) > 3:  # the .mp4 of the same frames, decoded at 2 fps
        assert prompts[3].document.videos[0].grid_thw.tolist() == [t, h, w]
    for bad, reason in [({"videos": [{"frames": ["f0.png", "f1.png"], "timestamps": [1.0, 0.5]}]}, "malformed_record"),
                        ({"videos": [{"frames": []}]}, "malformed_record"),
                        ({"videos": ["clip.mp4"], "images": ["a.png"]}, "image_and_video")]:
        with pytest.raises(PromptRecordError) as err:
            parse_record({"id": "x", "domain": "d", "question": "q", "answer": 1, **bad})
        assert err.value.reason == reason


def test_hf_engine_generates_from_videos_and_the_trainer_scores_the_same(setup):
    model, special, records, prompts = setup
    inner, seen = model.model, []
    video_features = inner.get_video_features

    def spy(pixel_values_videos, video_grid_thw, **kwargs):
        seen.append(video_grid_thw.tolist())
        return video_features(pixel_values_videos, video_grid_thw, **kwargs)

    inner.get_video_features = spy
    try:
        engine = HFEngine(model, special, batch_size=64)
        requests = [GenerationRequest(prompts[s], 2, seed=s) for s in sorted(prompts)]
        groups = engine.generate(requests, SamplingSpec(temperature=1.0, top_p=1.0, max_tokens=6))
    finally:
        del inner.get_video_features
    # The frames reached the model: each video prompt's grid, once per sample, in one call.
    videos = [prompts[s].document.videos[0].grid_thw.tolist() for s in sorted(prompts) if records[s].videos]
    assert seen == [[grid for grid in videos for _ in range(2)]]
    assert all(len(g) == 2 and all(c.token_ids for c in g) for g in groups)

    # The rollout of the video prompt trains through the uniform vision forward: same log-probs.
    forward = wrap_forward(model.requires_grad_(True))  # the engine froze its copy; here it is the trainer's
    completion = groups[0][0]
    doc = rollout_document(prompts[0], completion.token_ids, [True] * len(completion.token_ids), "v")
    batch = collate_rows([[doc]], len(doc), special.eos)
    assert batch.pixel_values_videos is not None
    logp = token_logprobs(forward(batch), batch.labels)[batch.label_weights > 0]
    assert torch.allclose(logp.detach(), torch.tensor(completion.logprobs), atol=1e-4)
    model.zero_grad()
    (-logp.sum()).backward()
    patch = model.model.visual.patch_embed.proj.weight.grad
    assert patch is not None and patch.abs().sum() > 0


def test_engines_without_video_input_skip_video_prompts_counted(setup):
    _, _, records, _ = setup
    # The check comes before any rendering: no renderer is needed to skip them.
    _, failed = encode_records(records, [i for i, r in enumerate(records) if r.videos], None, takes_videos=False)
    video_slots = [i for i, r in enumerate(records) if r.videos]
    assert [(s, reason) for s, reason in failed if reason == "video_unsupported"] == [(s, "video_unsupported")
                                                                                      for s in video_slots]
