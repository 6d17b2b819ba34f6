"""Media files as users have them (phone videos, cut clips, 16-bit and transparent images) read the same way by the
processor, the pipelines' helpers, the tokenizer's data and the evaluation loaders."""

import fractions
import sys
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch

from modeling_hydrax.data_hydrax_tok import HydraXTokCropper, decode_frames, probe, probe_video
from processing_hydrax import HydraXImageProcessor, HydraXVideoProcessor
from processing_hydrax.image_processing_hydrax import rgb_image


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from script_args import load_source  # noqa: E402


def write_video(path, frames: list[np.ndarray], rotation=None, first_pts=0, times=None):
    """An H.264 MP4 of `frames` at 10 fps; `rotation` sets a display matrix (counterclockwise degrees), and a negative
    `first_pts` starts the edit list after that many frames, as `ffmpeg -ss … -c copy` cuts do. `times` (seconds)
    present the frames at those times instead (a variable frame rate, as phones record)."""
    height, width = frames[0].shape[:2]
    time_base = fractions.Fraction(1, 10 if times is None else 90000)
    pts = [first_pts + index for index in range(len(frames))] if times is None else [round(t * 90000) for t in times]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = pts[index], time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def grey_frames(count, height=48, width=64):
    return [np.full((height, width, 3), 12 * index, np.uint8) for index in range(count)]


def test_a_clip_cut_without_reencoding_decodes_the_frames_of_its_edit_list(tmp_path):
    path = write_video(tmp_path / "cut.mp4", grey_frames(21), first_pts=-4)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 21  # the container counts the 4 pre-roll samples
    out = HydraXVideoProcessor(do_resize=False)(path, num_frames=17)  # all 17 frames that play
    frames = (out["pixel_values_videos"][0].mean(dim=(0, 2, 3)) + 1) * 127.5
    assert out["pixel_values_videos"].shape[2] == 17 and out["video_metadata"][0].total_num_frames == 17
    assert abs(float(frames[0]) - 48) < 4 and abs(float(frames[-1]) - 240) < 4  # frames 4 … 20 of the encoding
    assert probe_video(path) == (17, 48, 64)


def numbered_frames(count, height=48, width=64):
    """Frames whose index is drawn as 8 black/white bars (read back by `frame_numbers`, robust to compression)."""
    frames = [np.zeros((height, width, 3), np.uint8) for _ in range(count)]
    for index, frame in enumerate(frames):
        for bit in range(8):
            frame[:, bit * 8 : (bit + 1) * 8] = 255 * ((index >> bit) & 1)
    return frames


def frame_numbers(pixel_values) -> list[int]:
    bars = pixel_values[0].mean(dim=(0, 2)).unflatten(-1, (-1, 8))[:, :8].mean(-1)  # [T, 8] in [-1, 1]
    return [sum(1 << bit for bit in range(8) if bars[t, bit] > 0) for t in range(len(bars))]


def test_a_variable_frame_rate_video_is_sampled_at_the_times_its_frames_show(tmp_path):
    # a phone clip: 2 s at 30 fps, then 2 s at 15 fps in dim light (90 frames, 4 s)
    times = [k / 30 for k in range(60)] + [2 + k / 15 for k in range(30)]
    path = write_video(tmp_path / "vfr.mp4", numbered_frames(90), times=times)
    processor = HydraXVideoProcessor(do_resize=False)
    by_rate = processor(path, fps=2)  # 8 samples in 4 s, 5 kept: 0, 0.5, 1, 1.5, 2 s
    assert frame_numbers(by_rate["pixel_values_videos"]) == [0, 15, 30, 45, 60]  # by index: [0, 11, 22, 34, 45]
    metadata = by_rate["video_metadata"][0]
    assert metadata.duration == pytest.approx(4.0) and metadata.timestamps == pytest.approx([0, 0.5, 1, 1.5, 2])
    over_clip = processor(path, num_frames=5)  # 0, 0.98, 1.97, 2.95, 3.93 s
    assert frame_numbers(over_clip["pixel_values_videos"]) == [0, 29, 59, 74, 89]  # by index: [0, 22, 44, 67, 89]
    # sampling faster than the slow stretch would show frames twice: evenly spaced indices then, every frame once
    every = processor(path, num_frames=89)["pixel_values_videos"]
    assert frame_numbers(every) == [*range(44), *range(45, 90)]
    short = write_video(tmp_path / "short.mp4", numbered_frames(9), times=[0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3])
    assert frame_numbers(processor(short)["pixel_values_videos"]) == list(range(9))  # a short clip keeps them all
    # the metadata goes back in with decoded frames (VideoMetadata(**metadata) refused its frame times)
    again = processor(np.stack(numbered_frames(90)), video_metadata=metadata, num_frames=5)
    assert frame_numbers(again["pixel_values_videos"]) == [0, 22, 44, 67, 89]


def test_a_constant_rate_video_with_jittered_times_is_sampled_by_index(tmp_path):
    times = [k / 30 + (0.004 if k % 3 == 1 else 0) for k in range(21)]  # millisecond timestamps of a 30 fps clip
    path = write_video(tmp_path / "cfr.mp4", numbered_frames(21), times=times)
    out = HydraXVideoProcessor(do_resize=False)(path, num_frames=5)
    assert frame_numbers(out["pixel_values_videos"]) == [0, 5, 10, 15, 20]
    assert out["video_metadata"][0].frame_times is None


def test_a_phone_video_is_turned_upright_by_its_display_rotation(tmp_path):
    landscape = np.zeros((32, 64, 3), np.uint8)
    landscape[:8, :8] = 255  # a white corner, top left as stored
    path = write_video(tmp_path / "phone.mp4", [landscape] * 5, rotation=90)
    out = HydraXVideoProcessor(do_resize=False)(path, num_frames=5)
    pixels = out["pixel_values_videos"][0, 0, 0]
    assert pixels.shape == (64, 32)  # shown as portrait, as ffmpeg's autorotate shows it
    assert float(pixels[-8:, :8].mean()) > 0.9 and float(pixels[:8, :8].mean()) < -0.9  # rotated 90° counterclockwise
    assert (out["video_metadata"][0].height, out["video_metadata"][0].width) == (64, 32)
    assert probe_video(path) == (5, 64, 32)
    assert tuple(decode_frames(path, np.arange(5)).shape) == (5, 3, 64, 32)


def test_sixteen_bit_frames_are_scaled_as_sixteen_bit_images_are():
    levels = np.linspace(0, 65535, 5)
    frames = [PIL.Image.fromarray(np.full((32, 32), level, np.uint16)) for level in levels]
    as_video = HydraXVideoProcessor(do_resize=False)(frames)["pixel_values_videos"][0, 0]
    as_images = HydraXImageProcessor(do_resize=False)(frames)["pixel_values"][:, 0]
    torch.testing.assert_close(as_video, as_images)
    assert [round(float(frame.mean()), 2) for frame in as_video] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    arrays = HydraXVideoProcessor(do_resize=False)(np.full((5, 32, 32, 3), 32896, np.uint16))
    torch.testing.assert_close(
        arrays["pixel_values_videos"], torch.full_like(arrays["pixel_values_videos"], 128 / 127.5 - 1)
    )


@pytest.fixture
def transparent_logo(tmp_path):
    """An RGBA PNG: a red square on a fully transparent background whose hidden colour is black."""
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[8:24, 8:24] = (255, 0, 0, 255)
    path = tmp_path / "logo.png"
    PIL.Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_a_transparent_image_gets_a_white_background_by_path_as_in_memory(transparent_logo):
    processor = HydraXImageProcessor(do_resize=False)
    by_path = processor(str(transparent_logo))["pixel_values"]
    in_memory = processor(PIL.Image.open(transparent_logo))["pixel_values"]
    torch.testing.assert_close(by_path, in_memory)
    assert float(by_path[0, :, 0, 0].min()) == 1.0  # white, not the black the pixels hide
    assert np.asarray(rgb_image(PIL.Image.open(transparent_logo)))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_source(transparent_logo, 32, 32))[0, 0].tolist() == [255, 255, 255]


def test_a_transparent_video_gets_a_white_background_as_its_frames_do(tmp_path):
    """A PNG-in-MOV clip with alpha read by path showed what its transparent pixels hide (blue here), its frames
    passed as PIL images white: the processor and the tokenizer's training data now agree with the images' rule."""
    pixels = np.zeros((5, 32, 32, 4), np.uint8)
    pixels[:, :, :16] = (0, 0, 255, 0)  # transparent, hiding blue
    pixels[:, :, 16:] = (255, 0, 0, 255)
    path = tmp_path / "alpha.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "rgba"
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgba")))
        container.mux(stream.encode())
    processor = HydraXVideoProcessor(do_resize=False)
    by_path = processor(str(path), num_frames=5)["pixel_values_videos"]
    in_memory = processor([PIL.Image.fromarray(frame, "RGBA") for frame in pixels])["pixel_values_videos"]
    torch.testing.assert_close(by_path, in_memory)
    assert float(by_path[0, :, :, :, :16].min()) == 1.0, "white, not the blue the pixels hide"
    assert decode_frames(str(path), np.arange(5))[:, :, :, :16].min() == 255


def test_a_sixteen_bit_source_photo_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "grey16.png"
    PIL.Image.fromarray(np.full((32, 32), 16448, np.uint16)).save(path)  # 25 % grey
    assert np.asarray(load_source(path, 32, 32))[0, 0].tolist() == [64, 64, 64]


def test_an_animated_webp_that_ffmpeg_cannot_decode_names_the_way_around(tmp_path):
    path = tmp_path / "clip.webp"
    frames = [PIL.Image.fromarray(frame) for frame in grey_frames(5)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ValueError, match="animated WebP.*ImageSequence"), pytest.warns(UserWarning):
        HydraXVideoProcessor()(str(path))


def test_the_tokenizers_training_data_reads_photos_upright(tmp_path):
    """A phone photo stored landscape with EXIF "rotate 90°": its bucket and pixels are portrait, as the processor
    reads it."""
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "portrait.jpg", exif=exif)
    item = probe("image", str(tmp_path / "portrait.jpg"), "portrait.jpg")
    assert (item.height, item.width) == (64, 32)
    assert tuple(HydraXTokCropper._decode_image(item).shape) == (1, 3, 64, 32)
    assert HydraXImageProcessor(do_resize=False)(str(tmp_path / "portrait.jpg"))["pixel_values"].shape[-2:] == (64, 32)
