"""trainer.model: presets, build / compose / save-reload of Glm4v, parameter counts."""

import dataclasses
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
    Glm4Config,
    Glm4ForCausalLM,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
)
from transformers.vision_utils import get_vision_position_ids

from data_pipelines.tokenizer import SpecialTokens, load_tokenizer
from trainer.model import (
    MERGER,
    ModelConfig,
    build_model,
    compose_model,
    count_parameters,
    glm4v_config,
    load_preset,
    map_weights,
    save_hf_checkpoint,
)

# Ids of the released GLM-4.1V tokenizer (docs/glm41v.md).
RELEASED_IDS = dict(
    eos=151329, user=151336, observation=151338, image_start=151339, image_end=151340,
    video_start=151341, video_end=151342, image=151343, video=151344,
)



@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    return load_preset("tiny")


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    # Init leaves norms at 1 and biases at 0; make every tensor distinctive so copies are checked.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def sources(tiny):
    torch.manual_seed(0)
    vision = Aimv2VisionModel(Aimv2VisionConfig(
        hidden_size=tiny.vision_hidden_size, intermediate_size=tiny.vision_out_hidden_size,
        num_hidden_layers=tiny.vision_depth, num_attention_heads=tiny.vision_num_heads,
        image_size=tiny.vision_image_size, patch_size=tiny.vision_patch_size, use_head=True,
    ))
    language = Glm4ForCausalLM(Glm4Config(
        vocab_size=tiny.vocab_size, hidden_size=tiny.text_hidden_size,
        intermediate_size=tiny.text_intermediate_size, num_hidden_layers=tiny.text_num_hidden_layers,
        num_attention_heads=tiny.text_num_attention_heads, head_dim=tiny.text_head_dim,
        num_key_value_heads=tiny.text_num_key_value_heads, rms_norm_eps=tiny.rms_norm_eps, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": tiny.rope_theta,
                         "partial_rotary_factor": tiny.partial_rotary_factor},
    ))
    return _perturb(vision), _perturb(language)


@pytest.fixture(scope="module")
def composed(sources, tiny, tokenizer):
    return compose_model(*sources, tiny, tokenizer).eval()


def test_presets_and_validation(tmp_path, tiny):
    assert (tiny.preset, tiny.text_head_dim, tiny.mrope_section) == ("tiny", 32, [2, 3, 3])
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_preset("no_such_preset")
    (tmp_path / "typo.yaml").write_text("text_hiden_size: 64\n")
    with pytest.raises(ValueError, match="text_hiden_size"):
        load_preset("typo", preset_dir=tmp_path)
    with pytest.raises(ValueError, match="mrope_section"):
        dataclasses.replace(tiny, mrope_section=[2, 3, 4])
    with pytest.raises(ValueError, match="vision_out_hidden_size"):
        dataclasses.replace(tiny, vision_out_hidden_size=64)
    with pytest.raises(ValueError, match="both"):
        dataclasses.replace(tiny, vision_init="a")


def test_9b_preset_is_the_released_config():
    special = SpecialTokens(**{f.name: -1 for f in dataclasses.fields(SpecialTokens)} | RELEASED_IDS)
    ours, ref = glm4v_config(load_preset("glm41v_9b"), special), Glm4vConfig()
    assert ours.vision_config.to_dict() == ref.vision_config.to_dict()
    ours_text, ref_text = ours.text_config.to_dict(), ref.text_config.to_dict()
    # transformers' class defaults omit the released rope details and context length.
    assert ours_text.pop("rope_parameters") == {
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [8, 12, 12]}
    assert (ours_text.pop("max_position_embeddings"), ours_text.pop("pad_token_id")) == (65536, 151329)
    for key in ("rope_parameters", "max_position_embeddings", "pad_token_id"):
        ref_text.pop(key)
    assert ours_text == ref_text
    for key in ("image", "video", "image_start", "image_end", "video_start", "video_end"):
        assert getattr(ours, f"{key}_token_id") == getattr(ref, f"{key}_token_id")


@pytest.mark.parametrize("name,low,high", [("glm41v_1b", 1.0e9, 1.3e9), ("glm41v_9b", 10.2e9, 10.35e9)])
def test_preset_parameter_counts(name, low, high, tokenizer):
    with torch.device("meta"):  # shapes only, no memory
        model = Glm4vForConditionalGeneration(glm4v_config(load_preset(name), SpecialTokens.from_tokenizer(tokenizer)))
    counts = count_parameters(model)
    print(name, {k: f"{v / 1e6:.1f}M" for k, v in counts.items()})
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["vision"] + counts["merger"] + counts["language"] == counts["total"]
    assert low < counts["total"] < high  # the released 9B has 10.3B parameters


def test_build_tiny_carries_tokenizer_ids(tiny, tokenizer):
    special = SpecialTokens.from_tokenizer(tokenizer)
    model = build_model(tiny, tokenizer)
    config = model.config
    assert (config.image_token_id, config.video_token_id) == (special.image, special.video)
    assert (config.image_start_token_id, config.image_end_token_id) == (special.image_start, special.image_end)
    assert (config.video_start_token_id, config.video_end_token_id) == (special.video_start, special.video_end)
    assert config.text_config.pad_token_id == special.eos
    assert model.generation_config.eos_token_id == [special.eos, special.user, special.observation]
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert 1e6 < count_parameters(model)["total"] < 5e6
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(dataclasses.replace(tiny, vocab_size=len(tokenizer) - 1), tokenizer)


def test_compose_text_logits_equal_glm4(composed, sources, tokenizer):
    language = sources[1]
    ids = torch.tensor([tokenizer("[gMASK]<sop><|user|>\nwhat is two plus two?<|assistant|>").input_ids])
    with torch.no_grad():
        ref = language(input_ids=ids).logits
        got = composed(input_ids=ids).logits
    assert ref.abs().max() > 0.1  # a real signal, not a near-zero comparison
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_compose_mapping_is_strict(sources, composed, tiny, tokenizer):
    vision, language = sources
    weights = map_weights(vision, language, tiny.vision_temporal_patch_size)
    used = Counter(key for keys in weights.sources.values() for key in keys)
    all_sources = {"vision/" + k for k in vision.state_dict()} | {"language/" + k for k in language.state_dict()}
    assert set(used.values()) == {1}
    assert set(used) | set(weights.dropped) == all_sources and not set(used) & set(weights.dropped)
    assert weights.dropped and all(k.startswith("vision/head.") for k in weights.dropped)
    left = set(composed.state_dict()) - set(weights.tensors)
    assert left and all(k.startswith(MERGER) for k in left)

    got = composed.state_dict()
    src = vision.state_dict()
    last = tiny.vision_depth - 1
    q, k, v = (src[f"encoder.layers.{last}.attention.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(got[f"model.visual.blocks.{last}.attn.qkv.weight"], torch.cat([q, k, v]))
    for ours, theirs in [
        (f"blocks.{last}.attn.proj.weight", f"encoder.layers.{last}.attention.out_proj.weight"),
        (f"blocks.{last}.mlp.up_proj.weight", f"encoder.layers.{last}.ffn.up_proj.weight"),
        (f"blocks.{last}.norm2.weight", f"encoder.layers.{last}.rms_norm2.weight"),
        ("post_layernorm.weight", "rms_norm.weight"),
    ]:
        assert torch.equal(got["model.visual." + ours], src[theirs]), ours
    assert torch.equal(got["lm_head.weight"], language.state_dict()["lm_head.weight"])

    with pytest.raises(ValueError, match="text layers"):
        compose_model(vision, language, dataclasses.replace(tiny, text_num_hidden_layers=3), tokenizer)


def test_build_model_composes_from_checkpoint_dirs(tmp_path, sources, composed, tiny, tokenizer):
    vision, language = sources
    vision.save_pretrained(tmp_path / "aimv2")
    language.save_pretrained(tmp_path / "glm4")
    cfg = dataclasses.replace(tiny, vision_init=str(tmp_path / "aimv2"), language_init=str(tmp_path / "glm4"))
    model = build_model(cfg, tokenizer)
    ours, ref = model.state_dict(), composed.state_dict()
    copied = [k for k in ref if not k.startswith(MERGER)]
    assert all(torch.equal(ours[k], ref[k]) for k in copied)


def test_inflated_patch_embed_and_positions_match_aimv2(sources, composed, tiny):
    vision = sources[0]
    visual = composed.model.visual
    side, p = tiny.vision_image_size // tiny.vision_patch_size, tiny.vision_patch_size
    torch.manual_seed(1)
    image = torch.randn(1, 3, side * p, side * p)
    grid = torch.tensor([[1, side, side]])
    # Processor order (2x2 merge blocks) with each patch's (h, w); a still image is two equal frames.
    hw = get_vision_position_ids(grid, tiny.vision_spatial_merge_size)
    patches = image[0].unfold(1, p, p).unfold(2, p, p)[:, hw[:, 0], hw[:, 1]]  # (3, N, p, p)
    patches = patches.transpose(0, 1).unsqueeze(2).expand(-1, -1, 2, -1, -1).reshape(len(hw), -1)
    raster = hw[:, 0] * side + hw[:, 1]

    conv = vision.embeddings.patch_embed
    with torch.no_grad():
        ref_conv = F.conv2d(image, conv.weight, conv.bias, stride=p).flatten(2)[0].T
        ref_embed = vision.embeddings(image)[0]
        got_conv = visual.patch_embed(patches)
        got_embed = visual.embeddings(visual.post_conv_layernorm(got_conv), torch.tensor([len(hw)]), grid,
                                      hw[:, 0], hw[:, 1])
    torch.testing.assert_close(got_conv, ref_conv[raster], rtol=0, atol=1e-5)
    # Norm and the learned 24x24 position table (sampled at its own grid) also match AIMv2.
    torch.testing.assert_close(got_embed, ref_embed[raster], rtol=0, atol=1e-5)


def test_save_reload_same_logits_and_generation(tmp_path, tiny, tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny, tokenizer).eval()
    special = SpecialTokens.from_tokenizer(tokenizer)
    text = tokenizer("what is in the picture?", add_special_tokens=False).input_ids
    ids = [special.gmask, special.sop, special.user, special.image_start, *[special.image] * 4,
           special.image_end, *text, special.assistant]
    inputs = dict(
        input_ids=torch.tensor([ids]),
        mm_token_type_ids=torch.tensor([[int(i == special.image) for i in ids]]),
        pixel_values=torch.randn(4 * 4, 3 * 2 * 14 * 14),  # a 56x56 image: 4x4 patches, 4 LLM tokens
        image_grid_thw=torch.tensor([[1, 4, 4]]),
    )
    out_dir = save_hf_checkpoint(model, tokenizer, tmp_path / "ckpt")
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json", "processor_config.json"):
        assert (out_dir / name).is_file(), name

    reloaded = Glm4vForConditionalGeneration.from_pretrained(out_dir).eval()
    with torch.no_grad():
        ref, got = model(**inputs).logits, reloaded(**inputs).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=0)

    gen = dict(max_new_tokens=4, do_sample=False)
    ref_tokens = model.generate(**inputs, **gen)
    got_tokens = reloaded.generate(**inputs, **gen)
    assert torch.equal(got_tokens, ref_tokens) and torch.equal(ref_tokens[:, : len(ids)], inputs["input_ids"])
    assert ref_tokens.shape[1] > len(ids)

    # The checkpoint is also a valid `init` for build_model with its own saved tokenizer.
    again = build_model(ModelConfig(init=str(out_dir)), load_tokenizer(out_dir))
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
