# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Video processor for Hydra-X: decode with PyAV, sample 1 + 4k frames, resize to a 16-pixel grid, normalise."""

import io
import math
import os
import urllib.request
import warnings

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .image_processing_hydrax import (
    HYDRAX_IMAGE_MEAN,
    HYDRAX_IMAGE_STD,
    check_size_dict,
    describe_input,
    numpy_to_tensor,
    pil_to_array,
    postprocess_pixels,
    prefers_channels_last,
    resize_to_grid,
    smart_resize,
    stack_if_uniform,
    to_channels_first,
)


def largest_valid_num_frames(num_frames: int, temporal_compression: int = 4) -> int:
    """The largest `1 + temporal_compression * k` that does not exceed `num_frames`."""
    return 1 + ((num_frames - 1) // temporal_compression) * temporal_compression


def sample_frame_indices(
    total_num_frames: int,
    num_frames: int | None = None,
    fps: float | None = None,
    video_fps: float | None = None,
    temporal_compression: int = 4,
    name: str = "The video",
) -> np.ndarray:
    r"""
    Indices of the frames to keep from a video of `total_num_frames` frames. Hydra-XTok encodes one anchor frame plus
    groups of `temporal_compression` frames, so the count is always `1 + temporal_compression * k`:

    - `num_frames`: that many frames spread uniformly over the whole video (first and last included), rounded to
      the nearest valid count;
    - `fps` (needs `video_fps`): frames at that rate from the start, as many as the video holds, rounded down to a
      valid count;
    - neither: every frame, the tail trimmed to a valid count.

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
        if num_frames > total_num_frames:
            raise ValueError(
                f"{name} has {total_num_frames} frames but num_frames={num_frames} were requested; pass "
                f"num_frames <= {largest_valid_num_frames(total_num_frames, step)} (a value 1 + {step}k) or sample "
                "with `fps` instead."
            )
        count = 1 + round((num_frames - 1) / step) * step
        if count > total_num_frames:
            count -= step
        if count != num_frames:
            warnings.warn(
                f"num_frames={num_frames} is not of the form 1 + {step}k that Hydra-XTok needs; sampling {count} "
                f"frames from {name} instead.",
                UserWarning,
                stacklevel=3,
            )
        return np.linspace(0, total_num_frames - 1, count).round().astype(np.int64)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"`fps` must be positive, got {fps}.")
        if not video_fps:
            raise ValueError(
                f"Cannot sample {name} at fps={fps}: its frame rate is unknown. Pass "
                "`video_metadata={'fps': ...}` with the source frame rate, or sample with `num_frames`."
            )
        rate = min(fps, video_fps)
        wanted = max(1, min(total_num_frames, math.floor(total_num_frames / video_fps * rate)))
        count = largest_valid_num_frames(wanted, step)
        if count != wanted:
            warnings.warn(
                f"Sampling {name} at fps={fps} gives {wanted} frames; keeping {count} = 1 + {step}k frames, the "
                "count Hydra-XTok needs.",
                UserWarning,
                stacklevel=3,
            )
        return np.floor(np.arange(count) * video_fps / rate).astype(np.int64)
    count = largest_valid_num_frames(total_num_frames, step)
    if count != total_num_frames:
        warnings.warn(
            f"{name} has {total_num_frames} frames; keeping the first {count} = 1 + {step}k frames, the count "
            "Hydra-XTok needs.",
            UserWarning,
            stacklevel=3,
        )
    return np.arange(count, dtype=np.int64)


def _is_frame(value) -> bool:
    return isinstance(value, PIL.Image.Image) or (
        isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3)
    )


def make_list_of_videos(videos) -> list:
    r"""
    Normalises video inputs to a flat list with one entry per video: a path or URL (`str`), a `[T, ...]` array or
    tensor, or a list of frames. Accepts a single video, a batch, a 5D array, and nested lists (one list per sample,
    as `apply_chat_template` builds them). A single frame (PIL image or 3D array) counts as a one-frame video.

    Example:

    ```python
    >>> import numpy as np
    >>> len(make_list_of_videos(np.zeros((2, 5, 8, 8, 3), dtype=np.uint8)))
    2
    ```
    """
    flat = _flatten_videos(videos)
    if not flat:
        raise ValueError("Received an empty list of videos; pass at least one video or `videos=None`.")
    return flat


def _flatten_videos(videos) -> list:
    if isinstance(videos, (str, os.PathLike)):
        return [os.fspath(videos)]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return list(videos)
        if videos.ndim in (2, 3, 4):
            return [videos if videos.ndim == 4 else videos[None]]
        raise ValueError(
            f"Unsupported video array of shape {tuple(videos.shape)}: pass (T, H, W, C) / (T, C, H, W) for one video "
            "or (N, T, ...) for a batch."
        )
    if isinstance(videos, PIL.Image.Image):
        return [[videos]]
    if not isinstance(videos, (list, tuple)):
        raise TypeError(
            f"Unsupported video input: {describe_input(videos)}. Pass a path, a URL, a list of frames (PIL images or "
            "arrays), a (T, H, W, C) array or tensor, or a list of those."
        )
    if videos and all(_is_frame(item) for item in videos):
        return [list(videos)]
    flat = []
    for item in videos:
        if _is_frame(item):
            raise TypeError(
                f"A video list mixes single frames ({describe_input(item)}) with whole videos; pass either the frames "
                "of one video or a list of videos."
            )
        flat.extend(_flatten_videos(item))
    return flat


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding video files needs PyAV: `pip install av`, or pass the decoded frames.") from error
    return av


def _fetch_video(source: str, name: str) -> bytes | None:
    """Downloads an http(s) video once (returns its bytes); checks that a local path exists (returns None)."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source) as response:
                return response.read()
        except OSError as error:
            raise ValueError(
                f"Could not download video {name} ({error}); check the URL or pass a local file."
            ) from error
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"Video file {name} does not exist. Pass an existing path, an http(s) URL, or the decoded frames."
        )
    return None


def _open_container(source: str, payload: bytes | None, name: str):
    av = _import_av()
    try:
        return av.open(io.BytesIO(payload) if payload is not None else source)
    except (av.FFmpegError, OSError) as error:
        raise ValueError(
            f"Could not open video {name} ({error}). Check that it is a complete, valid video file (re-encode it "
            "with ffmpeg if needed) or pass the decoded frames instead."
        ) from error


def read_video_pyav(source: str, sample_indices_fn) -> tuple[np.ndarray, VideoMetadata]:
    r"""
    Decodes the frames `sample_indices_fn(metadata)` of the video at `source` (a path or an http(s) URL) with PyAV.
    Only the chosen frames are converted to RGB. When the container's frame count is missing or wrong, the frames are
    counted by decoding and sampling is redone on the true count.

    Returns the frames `[T, H, W, 3]` (uint8) and a `VideoMetadata` with fps, duration, size and sampled indices.
    """
    av = _import_av()
    name = describe_input(source)
    payload = _fetch_video(source, name)
    with _open_container(source, payload, name) as container:
        if not container.streams.video:
            raise ValueError(f"{name} has no video stream; pass a video file.")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ValueError(
                f"Video {name} is corrupted: its video stream cannot be decoded. Re-encode it with ffmpeg or pass the "
                "decoded frames instead."
            )
        rate = stream.average_rate or stream.guessed_rate
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        metadata = VideoMetadata(
            total_num_frames=int(total),
            fps=float(rate) if rate else None,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            duration=float(total / rate) if rate else None,
            video_backend="pyav",
        )
    for _ in range(2):
        indices = np.asarray(sample_indices_fn(metadata=metadata)) if metadata.total_num_frames else np.zeros(0)
        wanted, frames, decoded = set(indices.tolist()), {}, 0
        with _open_container(source, payload, name) as container:
            container.streams.video[0].thread_type = "AUTO"
            try:
                for decoded, frame in enumerate(container.decode(video=0), start=1):
                    if decoded - 1 in wanted:
                        frames[decoded - 1] = frame.to_ndarray(format="rgb24")
                    if len(frames) == len(wanted):
                        break
            except av.FFmpegError as error:
                raise ValueError(
                    f"Video {name} is corrupted: decoding stopped after {decoded} frames ({error}). Re-encode it with "
                    "ffmpeg or pass the decoded frames instead."
                ) from error
        if len(wanted) and len(frames) == len(wanted):
            metadata.frames_indices = indices.tolist()
            return np.stack([frames[i] for i in indices.tolist()]), metadata
        if decoded == 0:
            raise ValueError(f"Video {name} has no decodable frames; check that the file is a valid, complete video.")
        # The container announced more frames than it holds: sample again on the decoded count.
        metadata.total_num_frames = decoded
        metadata.duration = decoded / metadata.fps if metadata.fps else None
    raise ValueError(f"Could not decode the sampled frames of {name}; re-encode the video with ffmpeg.")


class HydraXVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    patch_size (`int`, *optional*, defaults to 16):
        Spatial patch size of Hydra-XTok; frame sides are snapped to multiples of it.
    temporal_compression (`int`, *optional*, defaults to 4):
        Frames per latent frame after the anchor: videos get `1 + temporal_compression * k` frames and
        `1 + k` latent frames.
    max_aspect_ratio (`float`, *optional*, defaults to 200):
        Videos more elongated than this are rejected.
    """

    patch_size: int
    temporal_compression: int
    max_aspect_ratio: float


class HydraXVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of Hydra-X. Takes paths, http(s) URLs, lists of frames (PIL images or arrays), `(T, H, W, C)` /
    `(T, C, H, W)` arrays and tensors, or batches of them. Files are decoded with PyAV; frames are sampled so that
    every clip has `1 + 4k` frames (an anchor plus groups of `temporal_compression` frames), by `num_frames`
    (default 17, uniformly over the clip) or by `fps` (from the start, at that rate); with `do_sample_frames=False`
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
        super().__init__(**kwargs)

    def preprocess(self, videos, **kwargs: Unpack[HydraXVideoProcessorKwargs]) -> BatchFeature:
        valid_names = set(self.valid_kwargs.__annotations__) | {"return_tensors"}
        unknown = sorted(set(kwargs) - valid_names)
        if unknown:
            raise TypeError(
                f"Unexpected keyword argument(s) {unknown} for {type(self).__name__}; valid ones: "
                f"{sorted(valid_names)}."
            )
        if kwargs.get("fps") is not None and "num_frames" not in kwargs:
            kwargs["num_frames"] = None  # an explicit fps replaces the default frame count
        for key in self.valid_kwargs.__annotations__:
            kwargs.setdefault(key, getattr(self, key, None))
        kwargs = self._standardize_kwargs(**kwargs)
        self._validate_preprocess_kwargs(**kwargs)
        check_size_dict(kwargs["size"], kwargs["do_resize"])

        videos = make_list_of_videos(videos)
        metadata = self._make_metadata_list(kwargs.pop("video_metadata"), len(videos))
        temporal_compression = kwargs["temporal_compression"]
        resample = kwargs["do_sample_frames"]

        def sample_fn(metadata, name="the video"):
            rate = {"num_frames": kwargs["num_frames"], "fps": kwargs["fps"], "video_fps": metadata.fps}
            return sample_frame_indices(
                metadata.total_num_frames,
                temporal_compression=temporal_compression,
                name=name,
                **(rate if resample else {}),
            )

        pixel_values, grids, metadata_out = [], [], []
        for index, (video, video_metadata) in enumerate(zip(videos, metadata)):
            frames, video_metadata = self._load_frames(video, index, video_metadata, sample_fn, kwargs)
            pixels, grid = self._process_frames(frames, kwargs)
            pixel_values.append(pixels)
            grids.append(grid)
            metadata_out.append(video_metadata)

        data = {
            "pixel_values_videos": stack_if_uniform(pixel_values),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
        }
        if kwargs["return_metadata"]:
            data["video_metadata"] = metadata_out
        skip = ["video_metadata"] + (["pixel_values_videos"] if isinstance(data["pixel_values_videos"], list) else [])
        return BatchFeature(data=data, tensor_type=kwargs["return_tensors"], skip_tensor_conversion=skip)

    @staticmethod
    def _make_metadata_list(video_metadata, num_videos: int) -> list:
        if video_metadata is None:
            return [None] * num_videos
        if isinstance(video_metadata, (dict, VideoMetadata)):
            video_metadata = [video_metadata]
        if len(video_metadata) == 1 and isinstance(video_metadata[0], (list, tuple)):
            video_metadata = video_metadata[0]
        if len(video_metadata) != num_videos:
            raise ValueError(
                f"Received {num_videos} videos but {len(video_metadata)} `video_metadata` entries; pass one per video."
            )
        return [
            m if m is None or isinstance(m, VideoMetadata) else VideoMetadata(**{"total_num_frames": 0, **m})
            for m in video_metadata
        ]

    def _load_frames(self, video, index: int, metadata, sample_fn, kwargs) -> tuple[torch.Tensor, VideoMetadata]:
        """Decodes or converts one video and keeps the sampled frames: returns `[T, 3, H, W]` and its metadata."""
        name = f"video {index} ({describe_input(video)})"
        if isinstance(video, str):
            frames, metadata = read_video_pyav(video, lambda metadata: sample_fn(metadata, name=name))
            return to_channels_first(torch.from_numpy(frames), name, ndim=4, prefer_last=True), metadata  # RGB24
        if isinstance(video, list):  # frames
            frames = [pil_to_array(frame) if isinstance(frame, PIL.Image.Image) else frame for frame in video]
            shapes = {tuple(f.shape) for f in frames}
            if len(shapes) != 1:
                raise ValueError(f"The frames of {name} have different shapes {sorted(shapes)}; resize them to one.")
            if isinstance(frames[0], torch.Tensor):
                video = torch.stack([torch.as_tensor(frame) for frame in frames])
            else:
                video = np.stack(frames)
        prefer_last = prefers_channels_last(video, kwargs.get("input_data_format"))
        if isinstance(video, np.ndarray):
            video = numpy_to_tensor(video, name)
        if video.shape[0] == 0:
            raise ValueError(f"{name} has no frames.")
        metadata = VideoMetadata(**dict(metadata)) if metadata is not None else VideoMetadata(total_num_frames=0)
        metadata.total_num_frames = video.shape[0]
        metadata.duration = video.shape[0] / metadata.fps if metadata.fps else None
        indices = sample_fn(metadata, name=name)
        metadata.frames_indices = indices.tolist()
        frames = to_channels_first(
            video[torch.from_numpy(indices)],
            name,
            ndim=4,
            prefer_last=prefer_last,
            convert_rgb=kwargs["do_convert_rgb"],
        )
        metadata.height, metadata.width = frames.shape[-2:]
        return frames, metadata

    def _process_frames(self, frames: torch.Tensor, kwargs) -> tuple[torch.Tensor, list[int]]:
        """Resizes and normalises sampled frames `[T, 3, H, W]`; returns `[3, T, H', W']` and the latent grid."""
        patch_size, temporal_compression = kwargs["patch_size"], kwargs["temporal_compression"]
        if kwargs["device"] is not None:
            frames = frames.to(kwargs["device"])
        if kwargs["do_resize"]:
            frames = resize_to_grid(
                self, frames, kwargs["size"], kwargs["resample"], patch_size, kwargs["max_aspect_ratio"]
            )
        num_frames, _, height, width = frames.shape
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"A video of frame size {height}x{width} is not a multiple of the patch size {patch_size}; use "
                "`do_resize=True` or crop it to multiples of the patch size."
            )
        frames = self.rescale_and_normalize(
            frames,
            kwargs["do_rescale"],
            kwargs["rescale_factor"],
            kwargs["do_normalize"],
            kwargs["image_mean"],
            kwargs["image_std"],
        )
        grid = [1 + (num_frames - 1) // temporal_compression, height // patch_size, width // patch_size]
        return frames.permute(1, 0, 2, 3).contiguous(), grid

    def get_video_grid_thw(
        self, num_frames: int, height: int, width: int, videos_kwargs: dict | None = None
    ) -> tuple[int, int, int]:
        """The latent grid `(1 + T/4, h, w)` of a clip of `num_frames` (already sampled) frames of `height x width`
        pixels, without processing it."""
        videos_kwargs = videos_kwargs or {}
        patch_size = videos_kwargs.get("patch_size") or self.patch_size
        temporal_compression = videos_kwargs.get("temporal_compression") or self.temporal_compression
        size = videos_kwargs.get("size") or self.size
        size = size if isinstance(size, SizeDict) else SizeDict(**size)
        new_height, new_width = smart_resize(
            height, width, patch_size, size.min_pixels, size.max_pixels, self.max_aspect_ratio
        )
        latent_frames = 1 + (largest_valid_num_frames(num_frames, temporal_compression) - 1) // temporal_compression
        return latent_frames, new_height // patch_size, new_width // patch_size

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None) -> int:
        """Number of latent tokens (= `<|video_pad|>` placeholders) for such a clip."""
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
        return postprocess_pixels(videos, self.image_mean, self.image_std, output_type, kind="video")


__all__ = ["HydraXVideoProcessor", "make_list_of_videos", "read_video_pyav", "sample_frame_indices"]
