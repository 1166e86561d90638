"""Our processor against transformers' references: Glm4vImageProcessorPil (pixels, grids),
Glm4vVideoProcessor's sample_frames/patchify and Glm4vProcessor's prompt layout (called unbound,
since the classes need torchvision to run end to end)."""

import functools
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, PreTrainedTokenizerFast
from transformers.image_utils import load_image
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
from transformers.models.glm4v.processing_glm4v import Glm4vProcessor
from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
from transformers.video_utils import VideoMetadata

from data_pipelines.processor import (
    AspectRatioError,
    BadSample,
    BadVideoError,
    EmptyImageError,
    ImageDecodeError,
    ProcessorConfig,
    VisionProcessor,
    image_size,
    image_token_ids,
    sample_frame_indices,
    save_hf_processor_files,
    smart_resize,
    video_token_ids,
)
from data_pipelines.tokenizer import SpecialTokens, build_tiny_tokenizer

RELEASED_IMAGE_SIZE = {"shortest_edge": 12544, "longest_edge": 9633792}  # GLM-4.1V-9B-Thinking
RELEASED_VIDEO_SIZE = {"shortest_edge": 12544, "longest_edge": 47040000}


@pytest.fixture(scope="module")
def ours() -> VisionProcessor:
    return VisionProcessor()


@pytest.fixture(scope="module")
def reference() -> Glm4vImageProcessorPil:
    return Glm4vImageProcessorPil(size=RELEASED_IMAGE_SIZE)



def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def assert_same(result, ref_out) -> None:
    assert result.grid_thw.tolist() == ref_out["image_grid_thw"][0].tolist()
    assert result.pixel_values.dtype == torch.float32
    np.testing.assert_allclose(result.pixel_values.numpy(), ref_out["pixel_values"], rtol=0, atol=1e-5)


# ---- images ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "width,height,grid",
    [
        (10, 10, [1, 6, 6]),  # raised to 28 then to min_pixels
        (28, 28, [1, 6, 6]),
        (224, 224, [1, 16, 16]),
        (333, 517, [1, 36, 24]),
        (1000, 50, [1, 4, 72]),
        (50, 1000, [1, 72, 4]),
    ],
)
def test_image_equals_reference(ours, reference, width, height, grid):
    img = noise(width, height, seed=width * height)
    result = ours.process_image(img)
    assert_same(result, reference(img, return_tensors="np"))
    assert result.grid_thw.tolist() == grid
    assert result.pixel_values.shape == (grid[1] * grid[2], 3 * 2 * 14 * 14)
    assert result.num_tokens == grid[1] * grid[2] // 4 == ours.num_image_tokens(width, height)
    assert ours.image_grid_for_size(width, height) == tuple(grid)


def test_downscale_above_max_pixels_equals_reference():
    # Same branch as a >4.8 MP photo at the released limit, at a size that keeps the test fast.
    ours = VisionProcessor(ProcessorConfig(max_pixels=200_000))
    reference = Glm4vImageProcessorPil(size={"shortest_edge": 12544, "longest_edge": 200_000})
    img = noise(640, 480, seed=3)
    result = ours.process_image(img)
    assert_same(result, reference(img, return_tensors="np"))
    assert 2 * result.grid_thw[1] * result.grid_thw[2] * 14 * 14 <= 200_000 < 2 * 640 * 480


@pytest.mark.parametrize("width,height", [(2600, 1900), (4032, 3024), (7000, 35), (100_000, 600), (1, 150)])
def test_grid_from_size_equals_reference_at_released_limits(ours, reference, width, height):
    patches = reference.get_number_of_image_patches(height, width)
    t, h, w = ours.image_grid_for_size(width, height)
    assert t * h * w == patches
    assert ours.num_image_tokens(width, height) == patches // 4 <= 6144
    assert 2 * h * w * 14 * 14 <= RELEASED_IMAGE_SIZE["longest_edge"]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_modes_convert_to_rgb_like_reference(ours, reference, mode):
    img = noise(70, 45, seed=7).convert(mode)
    assert_same(ours.process_image(img), reference(img, return_tensors="np"))


def test_encoded_input_and_exif_orientation_match_load_image(ours, reference, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: 90x40 stored, 40x90 shown
    data = encode(noise(90, 40, seed=5), "PNG", exif=exif)
    path = tmp_path / "rotated.png"
    path.write_bytes(data)
    expected = reference(load_image(str(path)), return_tensors="np")
    assert expected["image_grid_thw"][0].tolist() == [1, 10, 4]  # portrait: rows > cols
    for source in (data, path, str(path)):
        assert_same(ours.process_image(source), expected)
    assert image_size(data) == image_size(path) == (40, 90)
    assert ours.num_image_tokens(*image_size(data)) == ours.process_image(data).num_tokens


def test_rgba_png_bytes(ours, reference):
    img = noise(64, 48, seed=9).convert("RGBA")
    data = encode(img, "PNG")
    assert_same(ours.process_image(data), reference(img, return_tensors="np"))


# ---- errors ---------------------------------------------------------------------------------
def test_error_reasons():
    assert issubclass(AspectRatioError, BadSample) and AspectRatioError.reason == "aspect_ratio"
    assert issubclass(ImageDecodeError, BadSample) and ImageDecodeError.reason == "undecodable_image"
    assert issubclass(EmptyImageError, BadSample) and EmptyImageError.reason == "empty_image"
    assert issubclass(BadVideoError, BadSample) and BadVideoError.reason == "bad_video"


def test_aspect_ratio(ours):
    with pytest.raises(AspectRatioError):
        ours.process_image(Image.new("RGB", (9000, 30)))
    with pytest.raises(AspectRatioError):
        ours.num_image_tokens(300, 1)  # raised to 8400x28: still 300:1
    with pytest.raises(AspectRatioError):
        ours.num_image_tokens(28, 5628)
    assert ours.num_image_tokens(5600, 28) == 200  # exactly 200:1 is allowed: 1 x 200 tokens
    with pytest.raises(ValueError, match="200"):  # the reference rejects the same sizes
        Glm4vImageProcessorPil().get_number_of_image_patches(1, 300)


def test_truncated_garbage_and_empty_inputs(ours, tmp_path):
    jpeg = encode(noise(64, 64), "JPEG", quality=90)
    assert ours.process_image(jpeg).grid_thw.tolist() == [1, 6, 6]
    with pytest.raises(ImageDecodeError, match="truncated"):
        ours.process_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):  # a lazily opened PIL image too
        ours.process_image(Image.open(io.BytesIO(jpeg[: len(jpeg) // 2])))
    with pytest.raises(ImageDecodeError):
        ours.process_image(b"\x00not an image at all" * 10)
    with pytest.raises(ImageDecodeError):
        image_size(b"garbage bytes")
    with pytest.raises(EmptyImageError):
        ours.process_image(b"")
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    with pytest.raises(EmptyImageError):
        ours.process_image(empty_file)
    with pytest.raises(EmptyImageError):
        ours.process_image(Image.new("RGB", (0, 0)))
    with pytest.raises(EmptyImageError):
        ours.num_image_tokens(0, 10)


# ---- videos ---------------------------------------------------------------------------------
def indexed_frames(n: int, width: int = 84, height: int = 56) -> list[Image.Image]:
    """Frame i is filled with value i, so the patches tell which frames were kept."""
    return [Image.new("RGB", (width, height), (i % 256, i // 256, 0)) for i in range(n)]


def frame_values(ours: VisionProcessor, video) -> list[int]:
    """The source frame index of each of the video's frames, read back from its patches."""
    t, h, w = video.grid_thw.tolist()
    first = video.pixel_values.reshape(t, h * w, 3, 2, 14 * 14)[:, 0, 0, :, 0]  # red of patch 0
    return [int(np.argmin(np.abs(ours._lut[0] - v))) for v in first.flatten().tolist()]


@pytest.mark.parametrize(
    "total,fps",
    [(105, 30.0), (12000, 30.0), (800, 2.0), (601, 2.0), (9000, 29.97), (1, 30.0), (3, 1.0), (7, 2.0)],
)
def test_frame_sampling_equals_reference(total, fps):
    metadata = VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps)
    expected = Glm4vVideoProcessor.sample_frames(SimpleNamespace(fps=2, max_duration=300), metadata)
    assert sample_frame_indices(total, fps) == expected.tolist()


def test_short_clip_sampling_and_timestamps(ours):
    video = ours.process_video(indexed_frames(105), fps=30.0)  # 3.5 s at 30 fps
    assert frame_values(ours, video) == [0, 15, 30, 45, 60, 75, 90, 90]  # 7 frames, last repeated
    assert video.grid_thw.tolist() == [4, 4, 6]
    assert video.timestamps == [0, 1, 2, 3]
    assert video.pixel_values.shape == (4 * 4 * 6, 1176)


def test_long_clip_caps_at_600_frames(ours):
    video = ours.process_video(indexed_frames(800, 28, 28), fps=2.0)  # 400 s at 2 fps
    indices = sample_frame_indices(800, 2.0)
    assert len(indices) == 600 and video.grid_thw.tolist() == [300, 2, 2]
    assert frame_values(ours, video) == [i % 256 for i in indices]
    assert video.timestamps == [int(i / 2.0) for i in indices[::2]]
    assert video.timestamps[0] == 0 and video.timestamps[-1] == 399


def test_odd_frame_count_pads_with_last_frame(ours):
    video = ours.process_video(indexed_frames(3), fps=1.0)
    assert frame_values(ours, video) == [0, 1, 2, 2]
    assert video.grid_thw.tolist() == [2, 4, 6] and video.timestamps == [0, 2]
    sampled = ours.process_sampled_video(indexed_frames(3), [0, 1, 2], fps=1.0)
    assert torch.equal(sampled.pixel_values, video.pixel_values)


def test_video_pixels_equal_reference_patchify(ours, reference):
    frames = [noise(150, 100, seed=s) for s in range(5)]
    video = ours.process_video(frames, fps=2.0)  # 2.5 s -> frames 0..4, padded to 6
    t, h, w = video.grid_thw.tolist()
    assert (t, h, w) == (3, 8, 10) and video.timestamps == [0, 1, 2]
    # Reference pipeline minus the torchvision resize: PIL BICUBIC to the same size, the
    # reference's rescale/normalize, then Glm4vVideoProcessor.patchify.
    normalized = []
    for f in frames + frames[-1:]:
        chw = np.asarray(f.resize((w * 14, h * 14), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
        chw = reference.normalize(reference.rescale(chw, 1 / 255), reference.image_mean, reference.image_std)
        normalized.append(chw)
    batch = torch.from_numpy(np.stack(normalized))[None]
    expected, *grid = Glm4vVideoProcessor.patchify(
        None, batch, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    assert grid == [t, h, w]
    np.testing.assert_allclose(video.pixel_values.numpy(), expected[0].numpy(), rtol=0, atol=1e-5)


def test_video_of_two_identical_frames_equals_image(ours):
    img = noise(200, 120, seed=11)
    image = ours.process_image(img)
    video = ours.process_sampled_video([img, img], [0, 1], fps=2.0)
    assert torch.equal(video.pixel_values, image.pixel_values)
    assert video.grid_thw.tolist() == image.grid_thw.tolist()


def test_bad_videos(ours):
    with pytest.raises(BadVideoError):
        ours.process_video([], fps=30.0)
    with pytest.raises(BadVideoError):
        ours.process_video(indexed_frames(4), fps=0.0)
    with pytest.raises(AspectRatioError):
        ours.process_video([Image.new("RGB", (6000, 20))] * 2, fps=2.0)


def test_smart_resize_video_budget_equals_reference():
    from transformers.models.glm4v.video_processing_glm4v import smart_resize as ref_smart_resize

    limits = {"min_pixels": 12544, "max_pixels": RELEASED_VIDEO_SIZE["longest_edge"]}
    for frames, height, width in [(600, 1080, 1920), (8, 720, 1280), (2, 30, 40), (300, 2160, 3840)]:
        expected = ref_smart_resize(frames, height, width, **limits)
        assert smart_resize(frames, height, width, **limits) == expected


# ---- prompt expansion -----------------------------------------------------------------------
def reference_mm_types(ids: list[int], special: SpecialTokens) -> list[int]:
    ns = SimpleNamespace(
        video_start_id=special.video_start, video_end_id=special.video_end, image_token_id=special.image
    )
    return Glm4vProcessor.create_mm_token_type_ids(ns, [ids])[0]


def test_image_token_ids(tokenizer):
    special = SpecialTokens.from_tokenizer(tokenizer)
    ids = image_token_ids(3, special)
    text = "<|begin_of_image|>" + "<|image|>" * 3 + "<|end_of_image|>"
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert reference_mm_types(ids, special) == [0, 1, 1, 1, 0]


def test_video_token_ids_equal_glm4v_processor(ours, tokenizer):
    special = SpecialTokens.from_tokenizer(tokenizer)
    total, fps = 12000, 30.0  # 400 s: timestamps up to three digits
    indices = sample_frame_indices(total, fps)
    grid = torch.tensor([len(indices) // 2, 4, 6])
    timestamps = [int(i / fps) for i in indices[::2]]
    # Glm4vProcessor.replace_video_token expands <|video|> from the grid and the frame indices.
    ns = SimpleNamespace(image_token="<|image|>", video_processor=SimpleNamespace(merge_size=2))
    ns.replace_frame_token_id = functools.partial(Glm4vProcessor.replace_frame_token_id, ns)
    metadata = VideoMetadata(total_num_frames=total, fps=fps, frames_indices=indices)
    inputs = {"video_grid_thw": grid[None], "video_metadata": [metadata]}
    inner = Glm4vProcessor.replace_video_token(ns, inputs, 0)
    text = "<|begin_of_video|>" + inner + "<|end_of_video|>"
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, types = video_token_ids(grid, timestamps, special, tokenizer)
    assert ids == expected
    assert types == reference_mm_types(expected, special)
    assert types.count(2) == 300 * 6 and ids.count(special.image_start) == 300


# ---- HF processor files ---------------------------------------------------------------------
def test_saved_processor_files_load_in_transformers(ours, tokenizer, tmp_path):
    save_hf_processor_files(tmp_path, tokenizer)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    video = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert pre["size"] == RELEASED_IMAGE_SIZE and pre["image_processor_type"] == "Glm4vImageProcessor"
    assert video["size"] == RELEASED_VIDEO_SIZE and video["video_processor_type"] == "Glm4vVideoProcessor"
    processor = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor == {"processor_class": "Glm4vProcessor"}

    img = noise(333, 517, seed=1)
    for loaded in (Glm4vImageProcessorPil.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert_same(ours.process_image(img), loaded(img, return_tensors="np"))
    video_proc = Glm4vVideoProcessor.from_pretrained(tmp_path)
    assert (video_proc.fps, video_proc.max_duration, video_proc.size.longest_edge) == (2.0, 300, 47040000)

    assert (tmp_path / "chat_template.jinja").read_text() == tokenizer.chat_template
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded("<|image|>12")["input_ids"] == tokenizer("<|image|>12")["input_ids"]


def test_save_requires_chat_template(tmp_path):
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        save_hf_processor_files(tmp_path, tok)
