"""Training data for Hydra-XTok: images and videos from folders, JSONL manifests and `datasets` datasets, probed once
up front (size, frame count, readability), grouped into resolution buckets so that a batch holds one size and one
kind, and cropped to random 1+4k-frame clips at load time.

The sampler draws whole batches (`HydraXTokBucketBatchSampler`): each batch is image or video with probability set by
`video_ratio`, from one bucket, and every sample carries its own random seed. A batch's content is therefore a
function of (seed, epoch, position) alone: a resumed run sees exactly the batches an uninterrupted one would, and
accelerate hands whole batches to each process.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


class HydraXTokBadSample(ValueError):
    """A media file that cannot be used (missing, unreadable, too short), named with its origin."""


@dataclass(frozen=True)
class HydraXTokMedia:
    """One image or video: where it is read from and what the probe found.

    Args:
        kind: `"image"` or `"video"`.
        source: a file path, or `(dataset, row)` for an image stored in a `datasets` dataset.
        origin: where it came from, for messages (`file`, `manifest.jsonl:LINE`, `dataset row N`).
        height / width: size in pixels.
        num_frames: frames of a video (1 for an image).
    """

    kind: str
    source: object
    origin: str
    height: int
    width: int
    num_frames: int = 1


def report(message: str, on_bad_sample: str) -> None:
    """Raise for `on_bad_sample="error"`, else log a warning that the sample is skipped."""
    if on_bad_sample == "error":
        raise HydraXTokBadSample(f"{message} (pass --on-bad-sample skip to leave such samples out)")
    logger.warning(f"Skipping {message}")


EXIF_ORIENTATION = 0x0112  # the EXIF tag; its values 5–8 turn the stored image a quarter to show it
QUARTER_TURNS = (5, 6, 7, 8)


def header_exif(image: Image.Image) -> bool:
    """Whether the image's EXIF comes with its header (JPEG, TIFF, WebP, a PNG's `eXIf` before its pixels): probing
    reads only headers, and a PNG's later `eXIf` would take decoding it, so only header EXIF turns images upright here
    (probe and decode agree on every size)."""
    return image.format != "PNG" or "exif" in image.info


def open_image(source) -> Image.Image:
    """The image at a path, in row `source[1]` of a `datasets` dataset `source[0]` (a PIL image or a path), or a
    `datasets` image read undecoded (`{"bytes", "path"}`); use it as a context manager so the file is closed."""
    image = source[0][source[1]]["image"] if isinstance(source, tuple) else source
    if isinstance(image, dict):
        image = image["path"] if image.get("bytes") is None else io.BytesIO(image["bytes"])
    return image if isinstance(image, Image.Image) else Image.open(image)


def undecoded_video(value, root: Path) -> dict:
    """A dataset's `video` value as `datasets.Video(decode=False)` gives it, `{"bytes", "path"}` (a string column's
    path becomes one), a path without bytes taken relative to `root`, the dataset's folder."""
    value = value if isinstance(value, dict) else {"bytes": None, "path": value}
    return value if value.get("bytes") is not None else {"bytes": None, "path": str(root / value["path"])}


def video_file(source) -> str | bytes:
    """What PyAV opens for a video item: its path, or the file's bytes embedded in a `datasets.Video` value, given
    as `{"bytes", "path"}` or as row `source[1]` of a dataset `source[0]` from the folder `source[2]`."""
    if isinstance(source, tuple):
        dataset, row, root = source
        source = undecoded_video(dataset[row]["video"], root)
    if isinstance(source, dict):
        return source["path"] if source.get("bytes") is None else source["bytes"]
    return str(source)


def probe_video(file: str | bytes) -> tuple[int, int, int]:
    """(frames, height, width) of a video file (a path, or its bytes) as the video processor decodes it (frames less
    those an edit list discards, sides turned by the display rotation), read with PyAV; decodes only the first
    frame."""
    import av

    from processing_hydrax.video_processing_hydrax import count_video_frames, upright

    with av.open(io.BytesIO(file) if isinstance(file, bytes) else file) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        stream = container.streams.video[0]
        first = next(container.decode(stream), None)
        if first is None:
            return 0, 0, 0
        container.seek(0)
        height, width = upright(first).shape[:2]
        return count_video_frames(container, stream), height, width


def probe(kind: str, source, origin: str) -> HydraXTokMedia:
    """Reads a file's header (image) or stream (video) into a `HydraXTokMedia`; raises `HydraXTokBadSample`."""
    try:
        if kind == "image":
            with open_image(source) as image:  # reads the header only
                width, height = image.size
                if header_exif(image) and image.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:  # shown upright
                    width, height = height, width
            return HydraXTokMedia(kind, source, origin, height, width)
        frames, height, width = probe_video(video_file(source))
    except Exception as error:  # PIL, PyAV and the OS each raise their own types for an unreadable file
        raise HydraXTokBadSample(f"{origin}: unreadable {kind} ({type(error).__name__}: {error})") from error
    if not frames:
        raise HydraXTokBadSample(f"{origin}: the video has no decodable frames")
    return HydraXTokMedia(kind, source, origin, height, width, frames)


def decode_frames(file: str | bytes, indices: np.ndarray) -> torch.Tensor:
    """The frames at `indices` of a video file (a path, or its bytes) as uint8 `[T, 3, H, W]`, decoded by the
    project's video processor (PyAV)."""
    from processing_hydrax import HydraXVideoProcessor

    frames, _ = HydraXVideoProcessor().fetch_videos(file, lambda metadata, **kwargs: indices)
    frames = torch.as_tensor(np.asarray(frames))
    return frames.permute(0, 3, 1, 2) if frames.shape[-1] == 3 else frames


SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what `save_to_disk` writes


def is_saved_dataset(path) -> bool:
    """Whether `path` is a folder written by `datasets`' `save_to_disk`: a `Dataset` or a `DatasetDict` (whose
    `train` split is read)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES)


def list_source(source: str) -> list[tuple[str, object, str]]:
    """`(kind, source, origin)` of every item of a data source: a folder of images and/or videos (searched
    recursively), a JSONL manifest of `{"image": path}` / `{"video": path}` lines (paths relative to the manifest),
    or a `datasets` dataset (a `save_to_disk` folder or a `load_dataset` name) with an `image` or `video` column."""
    path = Path(source)
    if path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise FileNotFoundError(f"Manifest {path} does not exist.")
        items = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error}): {line!r}.") from error
            kinds = [kind for kind in ("image", "video") if isinstance(entry, dict) and kind in entry]
            if len(kinds) != 1:
                raise ValueError(f"{path}:{number}: a line needs exactly one of 'image' or 'video', got {line!r}.")
            items.append((kinds[0], str(path.parent / entry[kinds[0]]), f"{path}:{number}"))
        return items
    if path.is_dir() and not is_saved_dataset(path):
        files = sorted(file for file in path.rglob("*") if file.is_file())
        items = [("image", str(file), str(file)) for file in files if file.suffix.lower() in IMAGE_SUFFIXES]
        items += [("video", str(file), str(file)) for file in files if file.suffix.lower() in VIDEO_SUFFIXES]
        if not items:
            raise ValueError(f"{path} holds no image ({', '.join(IMAGE_SUFFIXES)}) or video file.")
        return items
    import datasets

    dataset = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(source, split="train")
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"]
    if "image" in dataset.column_names:
        return [("image", (dataset, row), f"{source} row {row}") for row in range(len(dataset))]
    if "video" in dataset.column_names:  # read undecoded, a path or the embedded file (datasets would use torchcodec)
        dataset = dataset.cast_column("video", datasets.Video(decode=False))
        root = path if path.is_dir() else Path(".")
        return [("video", (dataset, row, root), f"{source} row {row}") for row in range(len(dataset))]
    raise ValueError(f"{source}: the dataset has neither an 'image' nor a 'video' column ({dataset.column_names}).")


def check_bucket_resolutions(resolutions) -> list[tuple[int, int]]:
    """`(height, width)` buckets as tuples, one per aspect ratio: an item goes to the bucket nearest its aspect ratio,
    so a second size of the same ratio (e.g. 256 and 512) would never be used."""
    resolutions, seen = [tuple(resolution) for resolution in resolutions], {}
    for height, width in resolutions:
        earlier = seen.setdefault(Fraction(width, height), (height, width))
        if earlier != (height, width) or resolutions.count((height, width)) > 1:
            raise ValueError(
                f"resolutions {earlier[0]}x{earlier[1]} and {height}x{width} have the same aspect ratio; an item goes "
                "to the bucket nearest its aspect ratio, so only the first would be used. Give one size per aspect "
                "ratio (train another size in a run of its own)."
            )
    return resolutions


def parse_resolution(value: str) -> tuple[int, int]:
    """`"256"` → (256, 256); `"256x384"` → (256, 384) as (height, width)."""
    height, _, width = value.lower().partition("x")
    return int(height), int(width or height)


class HydraXTokCropper:
    """Turns an image or video (`HydraXTokMedia`) into a training sample of its resolution bucket: the bucket of
    `resolutions` nearest its aspect ratio, and with a seed a random crop (scale in `[min_crop_fraction, 1]` of the
    largest box of the bucket's aspect ratio), a horizontal flip, optionally shuffled colour channels and, for videos,
    a random clip start; `seed=None` gives the centred full box and the middle clip. What both training datasets
    (`HydraXTokClipDataset`, `HydraXTokStreamDataset`) share.

    Args:
        resolutions: `(height, width)` buckets, multiples of the tokenizer's patch size.
        num_frames: frames of a video clip, `1 + 4·k`.
        frame_stride: take every `frame_stride`-th frame of a video.
        min_crop_fraction: smallest side of a random crop, as a fraction of the largest box.
        shuffle_channels: permute the RGB channels of training crops (colour is then learnt, not memorised).
        on_bad_sample: `"skip"` or `"error"`.
        cache_media: decode each file once and keep its pixels in memory (small data sets: a video clip is then a
            slice, an image a crop, with no decoding).
    """

    def __init__(
        self,
        resolutions,
        num_frames: int = 17,
        frame_stride: int = 1,
        min_crop_fraction: float = 0.5,
        shuffle_channels: bool = False,
        on_bad_sample: str = "skip",
        cache_media: bool = False,
    ):
        if num_frames < 1 or (num_frames - 1) % 4:
            raise ValueError(f"`num_frames` must be 1 + 4·k (an anchor plus a multiple of 4), got {num_frames}.")
        if not 0 < min_crop_fraction <= 1:
            raise ValueError(f"`min_crop_fraction` must be in (0, 1], got {min_crop_fraction}.")
        if not isinstance(frame_stride, int) or frame_stride < 1:
            raise ValueError(f"`frame_stride` must be an int ≥ 1 (1: consecutive frames), got {frame_stride!r}.")
        self.resolutions = check_bucket_resolutions(resolutions)
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.min_crop_fraction, self.shuffle_channels = min_crop_fraction, shuffle_channels
        self.on_bad_sample, self.cache_media = on_bad_sample, cache_media
        self._cache: dict[str, torch.Tensor] = {}

    def bucket_size(self, item: HydraXTokMedia) -> tuple[int, int]:
        """The resolution nearest the item's aspect ratio (in log scale)."""
        aspect = math.log(item.width / item.height)
        return min(self.resolutions, key=lambda size: abs(math.log(size[1] / size[0]) - aspect))

    def probe(self, kind: str, source, origin: str) -> HydraXTokMedia:
        """`probe`, and a video shorter than a clip is a `HydraXTokBadSample` too."""
        item = probe(kind, source, origin)
        span = self.frame_stride * (self.num_frames - 1) + 1
        if kind == "video" and item.num_frames < span:
            raise HydraXTokBadSample(
                f"{origin}: the video has {item.num_frames} frames, shorter than a clip of {self.num_frames} frames "
                f"at stride {self.frame_stride} ({span} frames); lower --num-frames or --frame-stride"
            )
        return item

    def _frames(self, item: HydraXTokMedia, generator: torch.Generator | None) -> torch.Tensor:
        """uint8 `[T, 3, H, W]`: the image, or the video's clip (random start, or the middle one)."""
        if item.kind == "image" and self.cache_media:
            if item.origin not in self._cache:
                self._cache[item.origin] = self._decode_image(item)
            return self._cache[item.origin]
        if item.kind == "image":
            return self._decode_image(item)
        span = self.frame_stride * (self.num_frames - 1) + 1
        last_start = item.num_frames - span
        start = last_start // 2 if generator is None else int(torch.randint(last_start + 1, (), generator=generator))
        if self.cache_media:
            if item.origin not in self._cache:
                self._cache[item.origin] = decode_frames(video_file(item.source), np.arange(item.num_frames))
            return self._cache[item.origin][start : start + span : self.frame_stride]
        return decode_frames(video_file(item.source), np.arange(start, start + span, self.frame_stride))

    @staticmethod
    def _decode_image(item: HydraXTokMedia) -> torch.Tensor:
        """uint8 `[1, 3, H, W]`, read as the processor reads images: upright by its EXIF orientation, then `rgb_image`
        (16-bit scaled, transparency onto white; an RGB conversion would saturate the one and show what the other
        hides)."""
        from processing_hydrax.image_processing_hydrax import rgb_image

        with open_image(item.source) as image:
            upright = rgb_image(ImageOps.exif_transpose(image) if header_exif(image) else image)
        return torch.from_numpy(np.asarray(upright).copy()).permute(2, 0, 1)[None]

    def crop(self, item: HydraXTokMedia, seed: int | None) -> dict:
        """The item as `pixel_values` in [-1, 1], `[3, H, W]` (image) or `[3, F, H, W]` (video), of its bucket."""
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        try:
            frames = self._frames(item, generator)
        except Exception as error:  # a file that probed fine can still fail to decode (truncated, changed on disk)
            raise HydraXTokBadSample(f"{item.origin}: unreadable {item.kind} ({type(error).__name__}: {error})")
        height, width = self.bucket_size(item)
        source_height, source_width = frames.shape[-2:]
        scale = min(source_height / height, source_width / width)
        box_height, box_width = height * scale, width * scale
        if generator is None:
            fraction, flip = 1.0, False
        else:
            draw = torch.rand(2, generator=generator)
            fraction = self.min_crop_fraction + (1 - self.min_crop_fraction) * float(draw[0])
            flip = bool(draw[1] < 0.5)
        box_height, box_width = max(1, round(box_height * fraction)), max(1, round(box_width * fraction))
        if generator is None:
            top, left = (source_height - box_height) // 2, (source_width - box_width) // 2
        else:
            top = int(torch.randint(source_height - box_height + 1, (), generator=generator))
            left = int(torch.randint(source_width - box_width + 1, (), generator=generator))
            if self.shuffle_channels:
                frames = frames[:, torch.randperm(3, generator=generator)]
        box = frames[..., top : top + box_height, left : left + box_width].float()
        pixels = F.interpolate(box, size=(height, width), mode="bilinear", antialias=True) / 127.5 - 1
        pixels = pixels.clamp(-1, 1).flip(-1) if flip else pixels.clamp(-1, 1)
        pixels = pixels[0] if item.kind == "image" else pixels.transpose(0, 1)
        return {"pixel_values": pixels, "origin": item.origin}


class HydraXTokClipDataset(HydraXTokCropper, torch.utils.data.Dataset):
    """Images and video clips for Hydra-XTok, read lazily and cropped to their bucket ([`HydraXTokCropper`]).

    Every source is probed once (sizes, frame counts); unreadable files and videos shorter than a clip are reported
    with their origin, then skipped or fatal (`on_bad_sample`). Each item is assigned to the bucket of `resolutions`
    nearest its aspect ratio. Index it with `(index, seed)` (see [`HydraXTokCropper.crop`]).

    Args:
        sources: data sources (see `list_source`).
        *args, **kwargs: `resolutions` and the other options of [`HydraXTokCropper`].

    Example:

    ```python
    >>> import tempfile
    >>> from PIL import Image
    >>> from modeling_hydrax.data_hydrax_tok import HydraXTokClipDataset
    >>> folder = tempfile.mkdtemp()
    >>> Image.new("RGB", (64, 48), "red").save(f"{folder}/red.png")
    >>> dataset = HydraXTokClipDataset([folder], resolutions=[(32, 32)], num_frames=5)
    >>> dataset[(0, 1)]["pixel_values"].shape
    torch.Size([3, 32, 32])
    ```
    """

    def __init__(self, sources, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.items = []
        for source in sources:
            for kind, location, origin in list_source(str(source)):
                try:
                    self.items.append(self.probe(kind, location, origin))
                except HydraXTokBadSample as error:
                    report(str(error), self.on_bad_sample)
        if not self.items:
            raise ValueError(f"No usable image or video in {[str(source) for source in sources]}.")
        self.buckets: dict[tuple[str, int, int], list[int]] = {}
        for index, item in enumerate(self.items):
            self.buckets.setdefault((item.kind, *self.bucket_size(item)), []).append(index)

    def __len__(self) -> int:
        return len(self.items)

    def kinds(self) -> set[str]:
        return {item.kind for item in self.items}

    def load(self, index: int, seed: int | None) -> dict:
        """The item at `index`, cropped (see [`HydraXTokCropper.crop`])."""
        return self.crop(self.items[index], seed)

    def __getitem__(self, key) -> dict | None:
        """`dataset[(index, seed)]` (or `dataset[index]`, the centred crop): the sample. When its file fails to decode
        and `on_bad_sample` is `"skip"`, the next item of its bucket that loads stands in for it (so a batch keeps its
        size, and a batch of bad files still trains), or `None` when no item of the bucket loads."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            return self.load(index, seed)
        except HydraXTokBadSample as error:
            report(str(error), self.on_bad_sample)
        bucket = self.buckets[(self.items[index].kind, *self.bucket_size(self.items[index]))]
        position = bucket.index(index)
        for other in bucket[position + 1 :] + bucket[:position]:
            try:
                return self.load(other, seed)
            except HydraXTokBadSample:
                continue
        return None


def stream_source(source: str):
    """One data source as (a `datasets.IterableDataset` of `image` and `video` rows (`datasets` images and videos,
    undecoded: `{"bytes", "path"}`) with their `origin`, the kinds it holds), read lazily: a folder or manifest is
    listed, not probed; a `datasets` dataset is streamed (a `load_dataset` name is read while training, nothing
    downloaded up front)."""
    import datasets

    features = datasets.Features(
        image=datasets.Image(decode=False), video=datasets.Video(decode=False), origin=datasets.Value("string")
    )
    path = Path(source)
    is_saved = is_saved_dataset(path)
    if path.suffix.lower() == ".jsonl" or (path.is_dir() and not is_saved):
        rows = [
            {
                "image": location if kind == "image" else None,
                "video": location if kind == "video" else None,
                "origin": origin,
            }
            for kind, location, origin in list_source(source)
        ]
        kinds = {kind for kind in ("image", "video") if any(row[kind] is not None for row in rows)}
        return datasets.Dataset.from_list(rows, features=features).to_iterable_dataset(), kinds
    if is_saved:
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(source, split="train", streaming=True)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        dataset = dataset["train"]
    if isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    columns = dataset.column_names or list(next(iter(dataset)))
    if "image" not in columns and "video" not in columns:
        raise ValueError(f"{source}: the dataset has neither an 'image' nor a 'video' column ({columns}).")
    kind = "image" if "image" in columns else "video"
    if dataset.features is not None:  # read undecoded (datasets would decode videos with torchcodec)
        dataset = dataset.cast_column(kind, (datasets.Image if kind == "image" else datasets.Video)(decode=False))
    root = path if is_saved else Path(".")
    rows = dataset.map(
        lambda media, index: {
            "image": media if kind == "image" else None,
            "video": undecoded_video(media, root) if kind == "video" else None,
            "origin": f"{source} row {index}",
        },
        input_columns=[kind],
        with_indices=True,
        remove_columns=columns,
        features=features,
    )
    return rows, {kind}


class HydraXTokStreamDataset(HydraXTokCropper, torch.utils.data.IterableDataset):
    """Hydra-XTok training batches from streamed sources, for data too large to list and probe up front.

    The sources' rows are interleaved (image rows and video rows drawn with probability `1 - video_ratio` and
    `video_ratio` when both kinds exist), shuffled through a buffer of `buffer_size` rows, split among processes
    (`process_index` of `num_processes`), probed and cropped one by one ([`HydraXTokCropper`]); each sample joins the
    buffer of its kind and bucket, and a full buffer is yielded as a batch (`pixel_values`, as `collate_clips` gives).
    The buffers left at the end of a pass are yielded too. Iterating is one pass; `set_epoch` reshuffles. The batches
    are a function of (sources, seed, epoch, process) alone.

    Args:
        sources: data sources (see `stream_source`).
        resolutions: `(height, width)` buckets.
        batch_size: samples per batch.
        video_ratio: share of video rows when the sources hold both kinds.
        seed: shuffling and augmentation seed.
        buffer_size: rows the stream shuffles among.
        process_index, num_processes: this process's share of the rows.
        augment: random crops, flips and clip starts (else the centred box and middle clip).
        shuffle: rows shuffled and drawn by `video_ratio` (else in the sources' order); defaults to `augment`. With
            `augment` the scarcer kind repeats until both are exhausted (training); without, every row comes once.
        **kwargs: the other options of [`HydraXTokCropper`].
    """

    def __init__(
        self,
        sources,
        resolutions,
        batch_size: int,
        video_ratio: float = 0.5,
        seed: int = 0,
        buffer_size: int = 1000,
        process_index: int = 0,
        num_processes: int = 1,
        augment: bool = True,
        shuffle: bool | None = None,
        **kwargs,
    ):
        import datasets
        from datasets.distributed import split_dataset_by_node

        super().__init__(resolutions, **kwargs)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be ≥ 1, got {batch_size}.")
        if not 0 <= video_ratio <= 1:
            raise ValueError(f"`video_ratio` must be in [0, 1], got {video_ratio}.")
        self.sources, self.batch_size, self.seed, self.augment = list(sources), batch_size, seed, augment
        self.video_ratio, shuffle = video_ratio, augment if shuffle is None else shuffle
        self.process_index = process_index
        self.epoch = 0
        by_kind = {"image": [], "video": []}
        for source in sources:
            stream, kinds = stream_source(str(source))
            for kind in kinds:  # a folder may hold both kinds
                by_kind[kind].append(
                    stream.filter(lambda row, kind=kind: row[kind] is not None) if len(kinds) == 2 else stream
                )
        self.streams = {kind: parts for kind, parts in by_kind.items() if parts}
        if shuffle and len(self.streams) == 2 and video_ratio in (0, 1):  # interleaving would repeat one kind forever
            kept = "video" if video_ratio == 1 else "image"
            self.streams = {kept: self.streams[kept]}
        if not self.streams:
            raise ValueError(f"No image or video in {[str(source) for source in sources]}.")
        if video_ratio == 1 and "video" not in self.streams or video_ratio == 0 and "image" not in self.streams:
            raise ValueError(f"`video_ratio` {video_ratio} asks for a kind of data these sources lack.")
        kinds = [  # the sources of a kind in turns, each row once ("all_exhausted" would repeat the smaller ones)
            datasets.interleave_datasets(parts, stopping_strategy="all_exhausted_without_replacement")
            for parts in self.streams.values()
        ]
        if len(kinds) == 2 and not shuffle:  # every row once: the images, then the videos
            rows = datasets.concatenate_datasets(kinds)
        elif len(kinds) == 2:
            rows = datasets.interleave_datasets(
                kinds,
                probabilities=[1 - video_ratio, video_ratio],
                seed=seed,
                stopping_strategy="all_exhausted" if augment else "all_exhausted_without_replacement",
            )
        else:
            rows = kinds[0]
        rows = rows.shuffle(seed=seed, buffer_size=buffer_size) if shuffle else rows
        self.rows = split_dataset_by_node(rows, rank=process_index, world_size=num_processes)

    def kinds(self) -> set[str]:
        return set(self.streams)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.rows.set_epoch(self.epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch * 1_009 + self.process_index)
        buffers: dict[tuple[str, int, int], list[dict]] = {}
        for row in self.rows:
            kind = "image" if row["image"] is not None else "video"
            seed = int(torch.randint(2**62, (), generator=generator)) if self.augment else None
            try:
                item = self.probe(kind, row[kind], row["origin"])
                sample = self.crop(item, seed)
            except HydraXTokBadSample as error:
                report(str(error), self.on_bad_sample)
                continue
            key = (kind, *self.bucket_size(item))
            buffers.setdefault(key, []).append(sample)
            if len(buffers[key]) == self.batch_size:
                yield collate_clips(buffers.pop(key))
        for key in sorted(buffers):
            yield collate_clips(buffers[key])


class HydraXTokBucketBatchSampler(torch.utils.data.Sampler):
    """Batches of `(index, seed)` keys, each from one bucket of a `HydraXTokClipDataset`.

    A batch is a video batch with probability `video_ratio` (when the data has both kinds), from a bucket drawn in
    proportion to its size; items come from a per-bucket shuffled queue, so within an epoch a bucket repeats no item
    before it has given all of them (buckets drawn at random: an epoch sees most items, not each exactly once; a
    batch larger than its bucket repeats items). The draws depend on `seed` and the epoch (`set_epoch`) only. `len()`
    is the number of batches of one epoch: `ceil(len(dataset) / batch_size)`, rounded up to a multiple of
    `num_processes`.

    With `num_processes` > 1, each run of `num_processes` consecutive batches shares one kind: accelerate deals the
    batches to the processes in turn, so every process's micro-batch of a step is of the same kind and runs the same
    modules (video batches alone run the Decompressor). FSDP and DeepSpeed ZeRO-3 gather each module's shards as it
    runs; processes running different modules stopped on a collective mismatch.
    """

    def __init__(
        self,
        dataset: HydraXTokClipDataset,
        batch_size: int,
        video_ratio: float = 0.5,
        seed: int = 0,
        num_processes: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be ≥ 1, got {batch_size}.")
        if not 0 <= video_ratio <= 1:
            raise ValueError(f"`video_ratio` must be in [0, 1], got {video_ratio}.")
        self.buckets = dataset.buckets
        if num_processes < 1:
            raise ValueError(f"`num_processes` must be ≥ 1, got {num_processes}.")
        self.batch_size, self.video_ratio, self.seed, self.num_processes = batch_size, video_ratio, seed, num_processes
        # a whole number of steps of all processes: accelerate would fill the last one with the first batches, of
        # another kind maybe
        self.num_batches = math.ceil(math.ceil(len(dataset) / batch_size) / num_processes) * num_processes
        self.epoch = 0
        kinds = dataset.kinds()
        if video_ratio == 1 and "video" not in kinds or video_ratio == 0 and "image" not in kinds:
            raise ValueError(f"`video_ratio` {video_ratio} asks for a kind of data these sources lack ({kinds}).")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        by_kind = {
            kind: [key for key in self.buckets if key[0] == kind] for kind in ("image", "video") if self._has(kind)
        }
        queues = {key: [] for key in self.buckets}
        kind = next(iter(by_kind))
        for index in range(self.num_batches):
            if len(by_kind) == 2 and index % self.num_processes == 0:  # one kind per step's batches of all processes
                kind = "video" if float(torch.rand((), generator=generator)) < self.video_ratio else "image"
            keys = by_kind[kind]
            sizes = torch.tensor([len(self.buckets[key]) for key in keys], dtype=torch.float)
            key = keys[int(torch.multinomial(sizes, 1, generator=generator))]
            batch = []
            for _ in range(self.batch_size):
                if not queues[key]:
                    order = torch.randperm(len(self.buckets[key]), generator=generator).tolist()
                    queues[key] = [self.buckets[key][position] for position in order]
                seed = int(torch.randint(2**62, (), generator=generator))
                batch.append((queues[key].pop(), seed))
            yield batch

    def _has(self, kind: str) -> bool:
        return any(key[0] == kind for key in self.buckets)


def collate_clips(samples: list[dict | None]) -> dict:
    """Stacks a bucket's samples into `pixel_values` (and `origins`), leaving out the ones that failed to load."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        raise HydraXTokBadSample("every sample of a batch failed to load; see the warnings above for their files")
    return {"pixel_values": torch.stack([sample["pixel_values"] for sample in kept])}


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) for pixels in [-1, 1] (peak-to-peak 2)."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4 / mse)


__all__ = [
    "HydraXTokBadSample",
    "HydraXTokBucketBatchSampler",
    "HydraXTokClipDataset",
    "HydraXTokCropper",
    "HydraXTokMedia",
    "HydraXTokStreamDataset",
    "collate_clips",
    "parse_resolution",
    "psnr",
]
