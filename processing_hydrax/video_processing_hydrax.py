# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Video processor for Hydra-X: decode with PyAV, sample 1 + 4k frames, resize to a 16-pixel grid, normalise."""

import functools
import io
import math
import os
import urllib.request
import warnings

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, make_batched_videos

from .image_processing_hydrax import (
    HYDRAX_IMAGE_MEAN,
    HYDRAX_IMAGE_STD,
    URL_TIMEOUT,
    describe_input,
    grid_batch,
    load_image_source,
    pixel_bounds,
    postprocess_pixels,
    rgb_image,
    smart_resize,
    to_8_bit,
    to_grid,
    warn_if_unit_range,
)


def largest_valid_num_frames(num_frames: int, temporal_compression: int = 4) -> int:
    """The largest `1 + temporal_compression * k` that does not exceed `num_frames`."""
    return 1 + ((num_frames - 1) // temporal_compression) * temporal_compression


VFR_TOLERANCE = 0.25  # frame intervals off the median by more than this fraction make a variable frame rate


class HydraXVideoMetadata(VideoMetadata):
    """`VideoMetadata` of a decoded file, with `frame_times`, the presentation time in seconds of each of its frames
    when they are unevenly spaced (None at a constant frame rate): frames are then sampled, and `timestamps` given,
    by time rather than by index. `frame_times` is an attribute, not a field: metadata passed back with the decoded
    frames (which `VideoMetadata(**metadata)` rebuilds, here and in transformers) leaves it behind, as it should
    (the times are the file's frames', not the sampled ones')."""

    frame_times: list[float] | None = None

    @property
    def timestamps(self) -> list[float]:
        "Timestamps of the sampled frames in seconds."
        if self.frame_times is None or self.frames_indices is None:
            return super().timestamps
        return [self.frame_times[index] for index in self.frames_indices]


class FrameBudget(int):
    """A processor's configured `num_frames`: a shorter clip keeps all its frames (trimmed to `1 + 4k`) where an
    explicit `num_frames` larger than the clip is an error."""


def sample_frame_indices(
    total_num_frames: int,
    num_frames: int | None = None,
    fps: float | None = None,
    video_fps: float | None = None,
    temporal_compression: int = 4,
    name: str = "The video",
    frame_times: list[float] | None = None,
) -> np.ndarray:
    r"""
    Indices of the frames to keep from a video of `total_num_frames` frames. Hydra-XTok encodes one anchor frame plus
    groups of `temporal_compression` frames, so the count is always `1 + temporal_compression * k`:

    - `num_frames`: that many frames spread uniformly over the whole video (first and last included), rounded to
      the nearest valid count;
    - `fps` (needs `video_fps`): frames at that rate from the start, as many as the video holds, rounded down to a
      valid count;
    - neither: every frame, the tail trimmed to a valid count.

    With `frame_times` (the presentation time of every frame, for a variable frame rate), `num_frames` and `fps`
    pick the frame shown at evenly spaced times rather than at evenly spaced indices.

    Every rounding is reported with a `UserWarning`.

    Example:

    ```python
    >>> sample_frame_indices(100, num_frames=5).tolist()
    [0, 25, 50, 74, 99]
    ```
    """
    step = temporal_compression
    if total_num_frames < 1:
        raise ValueError(f"{name} has no frames.")
    if num_frames is not None and fps is not None:
        raise ValueError(f"Pass either `num_frames` or `fps` to sample {name}, not both (got {num_frames} and {fps}).")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
        if num_frames > total_num_frames and not isinstance(num_frames, FrameBudget):
            raise ValueError(
                f"{name} has {total_num_frames} frames but num_frames={num_frames} were requested; pass "
                f"num_frames <= {largest_valid_num_frames(total_num_frames, step)} (a value 1 + {step}k) or sample "
                "with `fps` instead."
            )
        if num_frames > total_num_frames:  # the processor's budget: a shorter clip keeps what it has
            count = largest_valid_num_frames(total_num_frames, step)
            message = (
                f"{name} has {total_num_frames} frames, fewer than the processor's num_frames={int(num_frames)}; "
                f"keeping {count} = 1 + {step}k frames spread over it."
            )
        else:
            count = 1 + round((num_frames - 1) / step) * step
            count -= step if count > total_num_frames else 0
            message = (
                f"num_frames={num_frames} is not of the form 1 + {step}k that Hydra-XTok needs; sampling {count} "
                f"frames from {name} instead."
            )
        if count != num_frames:
            warnings.warn(message, UserWarning, stacklevel=3)
        by_index = np.linspace(0, total_num_frames - 1, count).round().astype(np.int64)
        if frame_times is None:
            return by_index
        return frames_shown_at(frame_times, np.linspace(0, frame_times[-1], count), by_index)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"`fps` must be positive, got {fps}.")
        if not video_fps:
            raise ValueError(
                f"Cannot sample {name} at fps={fps}: its frame rate is unknown. Pass "
                "`video_metadata={'fps': ...}` with the source frame rate, or sample with `num_frames`."
            )
        rate = min(fps, video_fps)
        # the sample times k / rate within the clip, k / rate < total / video_fps: frame floor(k · stride) below shows
        # at each (the margin keeps `61 / 29.97 * 29.97` from counting 60, and the last index below the frame count)
        duration = total_num_frames / video_fps if frame_times is None else clip_end(frame_times)
        wanted = min(total_num_frames, math.floor(duration * rate - 1e-5) + 1)
        count = largest_valid_num_frames(wanted, step)
        if count != wanted:
            warnings.warn(
                f"Sampling {name} at fps={fps} gives {wanted} frames; keeping {count} = 1 + {step}k frames, the "
                "count Hydra-XTok needs.",
                UserWarning,
                stacklevel=3,
            )
        stride = video_fps / rate  # divided first: `k * 29.97 / 29.97` rounds below k, and floor repeats a frame
        by_index = np.floor(np.arange(count) * stride + 1e-6).astype(np.int64)
        return by_index if frame_times is None else frames_shown_at(frame_times, np.arange(count) / rate, by_index)
    count = largest_valid_num_frames(total_num_frames, step)
    if count != total_num_frames:
        warnings.warn(
            f"{name} has {total_num_frames} frames; keeping the first {count} = 1 + {step}k frames, the count "
            "Hydra-XTok needs.",
            UserWarning,
            stacklevel=3,
        )
    return np.arange(count, dtype=np.int64)


def frames_shown_at(frame_times: list[float], times: np.ndarray, by_index: np.ndarray) -> np.ndarray:
    """The frames on screen at `times` (the last one presented at or before each). Where that shows a frame twice
    (the sampling outpaces the clip's slower stretches, e.g. when every frame is kept) the evenly spaced indices
    `by_index` are kept instead: a clip never repeats a frame."""
    picked = np.searchsorted(np.asarray(frame_times), times + 1e-6, side="right").astype(np.int64) - 1
    return picked if len(np.unique(picked)) == len(picked) else by_index


def clip_end(frame_times: list[float]) -> float:
    """When a clip of frames presented at `frame_times` ends: its last frame lasts as long as the one before."""
    return 2 * frame_times[-1] - frame_times[-2]


def _checked_leaves(videos):
    """`videos` with path-like leaves as strings, rejecting leaves `make_batched_videos` would silently drop."""
    if isinstance(videos, (list, tuple)):
        return [_checked_leaves(item) for item in videos]
    if isinstance(videos, os.PathLike):
        return os.fspath(videos)
    if isinstance(videos, PIL.Image.Image):  # 16-bit, palette, grayscale or RGBA frames; transparency onto white
        return convert_to_rgb(to_8_bit(videos), return_numpy=True)
    if not isinstance(videos, (str, PIL.Image.Image, np.ndarray, torch.Tensor)):
        raise TypeError(
            f"Unsupported video input: {describe_input(videos)}. Pass a path, a URL, a list of frames (PIL images or "
            "arrays), a (T, H, W, C) array or tensor, or a list of those."
        )
    if (
        not isinstance(videos, str)
        and videos.ndim == 3
        and videos.shape[0] not in (1, 3, 4)
        and videos.shape[-1] not in (1, 3, 4)
    ):
        raise ValueError(
            f"A 3-D video array of shape {tuple(videos.shape)} is neither one (H, W, C) / (C, H, W) frame nor a clip; "
            "give grayscale frames a channel axis (`video[..., None]`: (T, H, W, 1))."
        )
    return to_8_bit(videos)


def _leaf_shapes(videos) -> list[tuple]:
    """The distinct shapes of a nested input's arrays and PIL images (after `_checked_leaves`), in order."""
    if isinstance(videos, list):
        return list(dict.fromkeys(shape for item in videos for shape in _leaf_shapes(item)))
    return [] if isinstance(videos, str) else [tuple(videos.shape)]


def make_list_of_videos(videos) -> list:
    """`make_batched_videos` (one path, URL or `[T, ...]` array per video) with errors for empty and unsupported
    inputs, which it would crash on or drop, and for frames of different sizes, which it fails to stack."""
    videos = _checked_leaves(videos)
    try:
        videos = make_batched_videos(videos) if not isinstance(videos, list) or videos else []  # it fails on []
    except ValueError as error:
        if "same shape" not in str(error):
            raise
        raise ValueError(
            f"The frames of a video must share one size, got frames of shapes {_leaf_shapes(videos)}; resize them "
            "first (videos of different sizes go in as separate clips)."
        ) from error
    if not videos:
        raise ValueError("Received an empty list of videos; pass at least one video or `videos=None`.")
    return [frames_from_paths(video) if is_frame_paths(video) else video for video in videos]


def is_frame_paths(video) -> bool:
    """Whether a video is given as its frames' image files (paths, URLs or base64 strings), as `make_batched_videos`
    keeps a list of them nested in a sample's list (`{"type": "video", "video": [frame paths]}` in a chat)."""
    return isinstance(video, list) and bool(video) and all(isinstance(frame, str) for frame in video)


def frames_from_paths(paths: list[str]) -> np.ndarray:
    """The frames `[T, H, W, 3]` of a video given as image files, each read as a PIL frame is (`_checked_leaves`:
    16-bit scaled, transparency onto white); they must share one size."""
    frames = [_checked_leaves(load_image_source(path)) for path in paths]
    shapes = list(dict.fromkeys(frame.shape for frame in frames))
    if len(shapes) > 1:
        raise ValueError(
            f"The frames of a video must share one size, got frames of shapes {shapes} from "
            f"{describe_input(paths[0])} and the rest; resize them first."
        )
    return np.stack(frames)


def _metadata_list(videos: list, video_metadata) -> list[VideoMetadata]:
    """One `VideoMetadata` per video, also from partial entries such as `{"fps": 30}`: the frame count and duration
    of a decoded video come from its frames (a file's come from its container when it is decoded)."""
    if video_metadata is None:
        video_metadata = [{}] * len(videos)
    elif isinstance(video_metadata, (dict, VideoMetadata)):
        video_metadata = [video_metadata]
    elif video_metadata and isinstance(video_metadata[0], (list, tuple)):  # one list per sample, as videos may come
        video_metadata = [entry for sample in video_metadata for entry in sample]
    if len(video_metadata) != len(videos):
        raise ValueError(
            f"Received {len(videos)} videos but {len(video_metadata)} `video_metadata` entries; pass one per video."
        )
    metadata = []
    for video, entry in zip(videos, video_metadata):
        entry = VideoMetadata(**{"total_num_frames": 0, **dict(entry or {})})
        if not isinstance(video, str):
            entry.total_num_frames = len(video)
            entry.duration = len(video) / entry.fps if entry.fps else None
        metadata.append(entry)
    return metadata


def count_video_frames(container, stream) -> int:
    """The frames a decoder gives for a video stream, counted without decoding: the container's index less the
    samples an edit list marks to discard (a clip cut without re-encoding keeps its pre-roll there, which
    `stream.frames` counts), or the packets where the container indexes only some frames (WebM, MKV)."""
    entries = stream.index_entries
    if stream.frames and len(entries) == stream.frames:
        return sum(1 for entry in entries if not entry.is_discard)
    return sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)


def variable_frame_times(source, total: int) -> list[float] | None:
    """The presentation times (seconds from the first frame) of the `total` frames a decoder gives for a video file
    whose frames are not evenly spaced (phone cameras halve the rate in dim light), read from the packets without
    decoding; None at a constant frame rate (frame `i` shows at `i / fps`, within `VFR_TOLERANCE` of an interval) or
    when the packets carry no times."""
    with import_av().open(source) as container:
        stream = container.streams.video[0]
        times = [packet.pts for packet in container.demux(stream) if packet.size and not packet.is_discard]
        time_base = float(stream.time_base)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    if total < 3 or len(times) != total or None in times:
        return None
    times = np.sort(np.asarray(times, dtype=np.float64)) * time_base
    intervals = np.diff(times)
    median = float(np.median(intervals))
    if median <= 0 or np.abs(intervals - median).max() <= VFR_TOLERANCE * median:
        return None
    return (times - times[0]).tolist()


def upright(frame) -> np.ndarray:
    """A decoded PyAV frame as RGB `[H, W, 3]`, turned as players show it: phone videos are stored sideways with a
    display rotation (counterclockwise degrees, as PyAV reports it), as photos are with an EXIF orientation. A frame
    with transparency (animated PNG, QuickTime Animation) is composited onto white, as images are (`rgb_image`):
    `rgb24` shows what the transparent pixels hide."""
    if any(component.is_alpha for component in frame.format.components):
        pixels = np.asarray(rgb_image(PIL.Image.fromarray(frame.to_ndarray(format="rgba"), "RGBA")))
    else:
        pixels = frame.to_ndarray(format="rgb24")
    return np.rot90(pixels, k=round(frame.rotation / 90))


def import_av():
    """PyAV (the `video` extra), imported when a video file is decoded. The import sits in a `try`, which transformers'
    `check_imports` skips, so that a checkpoint's remote code loads without PyAV (images and decoded frames need
    none)."""
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding video files needs PyAV: `pip install av`, or pass the decoded frames.") from error
    return av


def read_video_frames(source, total: int, sample_indices_fn, name: str) -> tuple[np.ndarray, VideoMetadata]:
    """The frames `[T, H, W, 3]` of a video file at the indices `sample_indices_fn(metadata=...)` picks from its
    `total` frames, upright (`upright`), and their metadata. transformers' `read_video_pyav` takes the count from the
    container (wrong for edit lists, missing in WebM) and ignores display rotation."""
    av = import_av()
    try:
        frame_times = variable_frame_times(source, total)
        with av.open(source) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            metadata = HydraXVideoMetadata(
                total_num_frames=total,
                fps=fps,
                duration=total / fps if frame_times is None else clip_end(frame_times),
                video_backend="pyav",
            )
            metadata.frame_times = frame_times
            indices = np.asarray(sample_indices_fn(metadata=metadata), dtype=np.int64)
            wanted, decoded = set(indices.tolist()), {}
            for position, frame in enumerate(container.decode(stream)):
                if position in wanted:
                    decoded[position] = upright(frame)
                if position >= indices.max():
                    break
    except av.FFmpegError as error:
        hint = (
            " FFmpeg cannot decode animated WebP: pass its frames, "
            "`[frame.convert('RGB') for frame in PIL.ImageSequence.Iterator(PIL.Image.open(path))]`."
            if name.lower().rstrip("'\"").endswith(".webp")
            else ""
        )
        raise ValueError(
            f"Video {name} is corrupted: decoding failed ({error}). Re-encode it with ffmpeg or pass the decoded "
            f"frames instead.{hint}"
        ) from error
    if len(decoded) != len(wanted):
        raise ValueError(
            f"Video {name} is truncated: it announces {total} frames but only {len(decoded)} of the {len(wanted)} "
            "sampled ones could be decoded. Re-encode it with ffmpeg or pass the decoded frames instead."
        )
    metadata.frames_indices = indices
    frames = np.stack([decoded[index] for index in indices.tolist()])
    metadata.height, metadata.width = frames.shape[1:3]
    return frames, metadata


def _open_video(source: str | bytes, name: str) -> tuple:
    """The file to decode (a path, a file's bytes, or the bytes of an http(s) URL downloaded with a timeout) and its
    frame count, checked up front: transformers' PyAV reader assumes a video stream with a frame rate and takes the
    frame count from the container, which WebM and MKV do not record (it is then counted here from the packets)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=URL_TIMEOUT) as response:
                source = io.BytesIO(response.read())
        except OSError as error:
            raise ValueError(
                f"Could not download video {name} ({error}); check the URL or pass a local file."
            ) from error
    elif not os.path.isfile(source):
        raise FileNotFoundError(
            f"Video file {name} does not exist. Pass an existing path, an http(s) URL, or the decoded frames."
        )
    av = import_av()
    try:
        with av.open(source) as container:
            stream = container.streams.video[0] if container.streams.video else None
            readable = stream is not None and stream.average_rate is not None
            total = readable and count_video_frames(container, stream)
    except (av.FFmpegError, OSError) as error:
        raise ValueError(
            f"Could not open video {name} ({error}). Check that it is a complete, valid video file (re-encode it "
            "with ffmpeg if needed) or pass the decoded frames instead."
        ) from error
    if not total:
        raise ValueError(
            f"Could not open video {name}: it has no video stream with frames and a frame rate. Re-encode it with "
            "ffmpeg or pass the decoded frames instead."
        )
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source, total


class HydraXVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    patch_size (`int`, *optional*, defaults to 16):
        Spatial patch size of Hydra-XTok; frame sides are snapped to multiples of it.
    temporal_compression (`int`, *optional*, defaults to 4):
        Frames per latent frame after the anchor: videos get `1 + temporal_compression * k` frames and
        `1 + k` latent frames.
    max_aspect_ratio (`float`, *optional*, defaults to 200):
        Videos more elongated than this are rejected.
    min_pixels (`int`, *optional*), max_pixels (`int`, *optional*):
        Shorthands for the per-frame bounds of `size` (as Qwen2-VL's processors take them); the other bound keeps
        its value.
    """

    patch_size: int
    temporal_compression: int
    max_aspect_ratio: float
    min_pixels: int
    max_pixels: int


class HydraXVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of Hydra-X. Takes paths, http(s) URLs, lists of frames (PIL images or arrays), `(T, H, W, C)` /
    `(T, C, H, W)` arrays and tensors, or batches of them. Files are decoded with PyAV; frames are sampled so that
    every clip has `1 + 4k` frames (an anchor plus groups of `temporal_compression` frames), by `num_frames`
    (default 17, uniformly over the clip; a shorter clip keeps all its frames) or by `fps` (from the start, at that
    rate); with `do_sample_frames=False`
    every frame is kept, the tail trimmed to `1 + 4k`. Any rounding is reported with a warning. Frames are resized like
    images (aspect ratio kept, pixel budget `size`, sides multiple of `patch_size`) and normalised to [-1, 1].

    Returns `pixel_values_videos` (`[N, 3, 1+T, H, W]`, channels first then frames as Hydra-XTok takes them; a list
    of `[3, 1+T_i, H_i, W_i]` tensors when the videos differ in shape), `video_grid_thw` (latent grid
    `(1 + T/4, H/16, W/16)` per video) and, with `return_metadata=True` (the default), `video_metadata` (source fps,
    duration, size and the sampled frame indices).

    Example:

    ```python
    >>> import numpy as np
    >>> from processing_hydrax import HydraXVideoProcessor
    >>> processor = HydraXVideoProcessor(num_frames=9)
    >>> out = processor(np.zeros((30, 128, 160, 3), dtype=np.uint8))
    >>> out["pixel_values_videos"].shape, out["video_grid_thw"].tolist()
    (torch.Size([1, 3, 9, 128, 160]), [[3, 8, 10]])
    ```
    """

    resample = PILImageResampling.BICUBIC
    size = {"min_pixels": 128 * 128, "max_pixels": 448 * 448}
    default_to_square = False
    do_resize = True
    do_rescale = True
    do_normalize = True
    image_mean = HYDRAX_IMAGE_MEAN
    image_std = HYDRAX_IMAGE_STD
    do_convert_rgb = True
    do_sample_frames = True
    num_frames = 17
    fps = None
    return_metadata = True
    patch_size = 16
    temporal_compression = 4
    max_aspect_ratio = 200.0
    valid_kwargs = HydraXVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, **kwargs: Unpack[HydraXVideoProcessorKwargs]):
        bounds = [kwargs.pop(name, None) for name in ("size", "min_pixels", "max_pixels")]
        size = pixel_bounds(self.size, *bounds)
        super().__init__(**kwargs, **({} if size is None else {"size": size}))

    def preprocess(self, videos, **kwargs: Unpack[HydraXVideoProcessorKwargs]) -> BatchFeature:
        """`BaseVideoProcessor.preprocess`, except that unknown keyword arguments are errors, a call-time `fps` or
        `num_frames` replaces the processor's way of sampling, the processor's `num_frames` is a budget (a shorter
        clip keeps its frames), and frames are always sampled: `do_sample_frames=False` keeps every frame but still
        trims the tail to `1 + 4k`."""
        valid_names = set(self.valid_kwargs.__annotations__) | {"return_tensors"}
        unknown = sorted(set(kwargs) - valid_names)
        if unknown:
            raise TypeError(
                f"Unexpected keyword argument(s) {unknown} for {type(self).__name__}; valid ones: "
                f"{sorted(valid_names)}."
            )
        num_frames, fps = self._frame_sampling(kwargs)
        return super().preprocess(videos, **{**kwargs, "num_frames": num_frames, "fps": fps, "do_sample_frames": True})

    def _frame_sampling(self, kwargs: dict) -> tuple:
        """The `(num_frames, fps)` a call with `kwargs` samples by (`sample_frame_indices`' arguments): neither with
        `do_sample_frames=False` (every frame, the tail trimmed to `1 + 4k`); a call-time `num_frames` or `fps` over
        the processor's way; else the processor's `fps`, or its `num_frames` as a budget."""
        if not kwargs.get("do_sample_frames", self.do_sample_frames):
            return None, None
        if kwargs.get("num_frames") is not None:
            return kwargs["num_frames"], kwargs.get("fps")
        fps = kwargs["fps"] if kwargs.get("fps") is not None else self.fps
        if fps is not None:
            return None, fps
        return (None if self.num_frames is None else FrameBudget(self.num_frames)), None

    def _standardize_kwargs(self, size=None, min_pixels=None, max_pixels=None, **kwargs) -> dict:
        """`min_pixels` / `max_pixels` folded into `size` (`pixel_bounds`), then transformers' standardisation."""
        return super()._standardize_kwargs(size=pixel_bounds(self.size, size, min_pixels, max_pixels), **kwargs)

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames=None,
        fps=None,
        temporal_compression=None,
        name: str = "The video",
        **kwargs,
    ) -> np.ndarray:
        """`sample_frame_indices` on a video's metadata: `1 + 4k` frame indices by `num_frames` or `fps`."""
        return sample_frame_indices(
            metadata.total_num_frames,
            num_frames=num_frames,
            fps=fps,
            video_fps=metadata.fps,
            temporal_compression=temporal_compression or self.temporal_compression,
            name=name,
            frame_times=getattr(metadata, "frame_times", None),
        )

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        """Decodes a path, an http(s) URL or a video file's bytes (or a list of them) with PyAV (`read_video_frames`):
        the base class hard-codes torchcodec, which needs a system FFmpeg that matches torch, while PyAV wheels bundle
        FFmpeg. Samples on the frame count `_open_video` found. Returns the sampled frames `[T, H, W, 3]` and their
        metadata."""
        if isinstance(video_url_or_urls, (list, tuple)):
            return list(zip(*[self.fetch_videos(video, sample_indices_fn) for video in video_url_or_urls]))
        name = describe_input(video_url_or_urls)
        source, total = _open_video(video_url_or_urls, name)
        return read_video_frames(source, total, sample_indices_fn or self.sample_frames, name)

    def _decode_and_sample_videos(self, videos, video_metadata, do_sample_frames=None, sample_indices_fn=None):
        """Samples every video, decoded arrays directly and files while decoding them; a batch may mix both."""
        videos = make_list_of_videos(videos)
        sampled, sampled_metadata = [], []
        for index, (video, metadata) in enumerate(zip(videos, _metadata_list(videos, video_metadata))):
            sample = functools.partial(sample_indices_fn, name=f"video {index} ({describe_input(video)})")
            if isinstance(video, str):
                video, metadata = self.fetch_videos(video, sample)
            else:
                metadata.frames_indices = sample(metadata=metadata)
                video = video[metadata.frames_indices]  # a copy: writable and contiguous, as torch wants it
            metadata.frames_indices = [int(index) for index in metadata.frames_indices]
            sampled.append(video)
            sampled_metadata.append(metadata)
        return sampled, sampled_metadata

    def _prepare_input_videos(self, videos, do_convert_rgb=None, input_data_format=None, device=None):
        """Reads numpy videos as `(T, H, W, C)` when their last axis can hold channels, as the image processor does
        (transformers does not infer RGBA, and assumes channels-first when both layouts fit)."""
        if input_data_format is None and all(isinstance(v, np.ndarray) and v.shape[-1] in (1, 3, 4) for v in videos):
            input_data_format = ChannelDimension.LAST
        return super()._prepare_input_videos(videos, do_convert_rgb, input_data_format, device)

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        patch_size: int,
        temporal_compression: int,
        max_aspect_ratio: float,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        warn_if_unit_range(videos, do_rescale, "Video")
        pixel_values, grids = [], []
        for index, video in enumerate(videos):
            video, grid = to_grid(
                self, video, size, resample, patch_size, max_aspect_ratio, do_resize, name=f"Video {index}"
            )
            video = self.rescale_and_normalize(video, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            pixel_values.append(video.transpose(0, 1).contiguous())  # [3, T, H, W], the clip layout of Hydra-XTok
            grids.append([1 + (len(video) - 1) // temporal_compression, *grid])
        return grid_batch("pixel_values_videos", pixel_values, "video_grid_thw", grids, return_tensors)

    def get_num_sampled_frames(self, num_frames: int, videos_kwargs: dict | None = None) -> int:
        """How many of a clip's `num_frames` frames a call with `videos_kwargs` keeps, sampling as `preprocess` does
        (the processor's `num_frames` budget by default). Sampling by `fps` depends on the clip's frame rate, which a
        frame count does not give: it is an error here."""
        videos_kwargs = videos_kwargs or {}
        temporal_compression = videos_kwargs.get("temporal_compression") or self.temporal_compression
        wanted, fps = self._frame_sampling(videos_kwargs)
        if wanted is None and fps is not None:
            raise ValueError(
                f"Sampling at fps={fps} keeps a number of frames that depends on each video's frame rate, which a "
                "frame count does not give; count with `num_frames=...`, or pass the sampled clips' frame counts with "
                "`do_sample_frames=False`."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rounding warnings belong to the call that samples the frames
            return len(sample_frame_indices(num_frames, wanted, fps, temporal_compression=temporal_compression))

    def get_video_grid_thw(
        self, num_frames: int, height: int, width: int, videos_kwargs: dict | None = None
    ) -> tuple[int, int, int]:
        """The latent grid `(1 + T/4, h, w)` of a clip of `num_frames` frames of `height x width` pixels after the
        call's frame sampling (`get_num_sampled_frames`), without processing it."""
        videos_kwargs = videos_kwargs or {}
        patch_size = videos_kwargs.get("patch_size") or self.patch_size
        temporal_compression = videos_kwargs.get("temporal_compression") or self.temporal_compression
        size = self._standardize_kwargs(**videos_kwargs)["size"] or self.size
        max_aspect_ratio = videos_kwargs.get("max_aspect_ratio") or self.max_aspect_ratio
        new_height, new_width = smart_resize(
            height, width, patch_size, size.min_pixels, size.max_pixels, max_aspect_ratio
        )
        latent_frames = 1 + (self.get_num_sampled_frames(num_frames, videos_kwargs) - 1) // temporal_compression
        return latent_frames, new_height // patch_size, new_width // patch_size

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None) -> int:
        """Number of latent tokens (= `<|video_pad|>` placeholders) a call gives a clip of `num_frames` frames."""
        return math.prod(self.get_video_grid_thw(num_frames, height, width, videos_kwargs))

    def postprocess(self, videos, output_type: str = "pil"):
        r"""
        Turns generated videos `[N, 3, T, H, W]` (or a list of `[3, T, H, W]`) in [-1, 1] into `output_type`:

        - `"pil"`: one list of `PIL.Image` frames per video;
        - `"np"`: float arrays in [0, 1] of shape `[N, T, H, W, 3]`;
        - `"pt"`: float tensors in [0, 1] of shape `[N, T, 3, H, W]` (the diffusers video layout).

        Example:

        ```python
        >>> import torch
        >>> from processing_hydrax import HydraXVideoProcessor
        >>> frames = HydraXVideoProcessor().postprocess(torch.zeros(1, 3, 5, 32, 32))[0]
        >>> len(frames), frames[0].size
        (5, (32, 32))
        ```
        """
        return postprocess_pixels(videos, self.image_mean, self.image_std, output_type, video=True)


__all__ = ["HydraXVideoMetadata", "HydraXVideoProcessor", "sample_frame_indices"]
