# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for Hydra-X: resize to a 16-pixel grid, normalise to the Hydra-XTok range [-1, 1]."""

import base64
import binascii
import math
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    load_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType


HYDRAX_IMAGE_MEAN = (0.5, 0.5, 0.5)
HYDRAX_IMAGE_STD = (0.5, 0.5, 0.5)
OUTPUT_TYPES = ("pil", "np", "pt")


def smart_resize(
    height: int,
    width: int,
    factor: int = 16,
    min_pixels: int = 256 * 256,
    max_pixels: int = 1024 * 1024,
    max_aspect_ratio: float = 200.0,
) -> tuple[int, int]:
    """Returns the `(height, width)` closest to the input that keeps its aspect ratio, has both sides divisible by
    `factor` (the tokenizer's patch size) and `min_pixels <= height * width <= max_pixels`.

    Example:

    ```python
    >>> smart_resize(480, 640, factor=16, min_pixels=256 * 256, max_pixels=512 * 512)
    (432, 576)
    ```
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"Cannot resize an image of size {height}x{width}: both sides must be at least 1 pixel.")
    if max(height, width) / min(height, width) > max_aspect_ratio:
        raise ValueError(
            f"An image of size {height}x{width} has an aspect ratio above {max_aspect_ratio}; crop it to a less "
            "extreme shape before processing."
        )
    if min_pixels > max_pixels:
        raise ValueError(f"`min_pixels` ({min_pixels}) must not exceed `max_pixels` ({max_pixels}).")
    if max_pixels < factor * factor:
        raise ValueError(f"`max_pixels` ({max_pixels}) is smaller than one {factor}x{factor} patch.")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def describe_input(value) -> str:
    """A short human-readable description of an input, for error messages."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return repr(text if len(text) <= 120 else text[:117] + "...")
    if isinstance(value, PIL.Image.Image):
        return f"PIL.Image(mode={value.mode}, size={value.size})"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    return f"an object of type {type(value).__name__}"


def pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    """RGB (or RGBA when the image has transparency, to be composited onto white) `(H, W, C)` pixels of any PIL
    mode: grayscale, palette, CMYK, ..."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return np.array(image.convert("RGBA" if has_alpha else "RGB"))


def prefers_channels_last(value, input_data_format=None) -> bool:
    """The layout to assume when both `(..., H, W, C)` and `(..., C, H, W)` fit the shape: `input_data_format` when
    given, else channels-last for numpy arrays and PIL images and channels-first for tensors."""
    if isinstance(value, PIL.Image.Image):
        return True
    if input_data_format is not None:
        return ChannelDimension(input_data_format) == ChannelDimension.LAST
    return isinstance(value, np.ndarray)


def to_channels_first(
    array: torch.Tensor, name: str, ndim: int, prefer_last: bool = False, convert_rgb: bool = True
) -> torch.Tensor:
    """Puts the channel axis of an image (`ndim=3`) or a stack of frames (`ndim=4`) right before (H, W) and, with
    `convert_rgb`, turns grayscale into RGB and composites RGBA onto white. Returns a tensor `[..., 3, H, W]`.
    `prefer_last` picks (H, W, C) when both layouts fit the shape (e.g. a 4x4x3 image)."""
    if array.ndim == ndim - 1:  # grayscale without a channel axis
        array = array.unsqueeze(-3)
    if array.ndim != ndim:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; expected {ndim} dimensions "
            f"({'(H, W, C) or (C, H, W)' if ndim == 3 else '(T, H, W, C) or (T, C, H, W)'})."
        )
    channels_first, channels_last = array.shape[-3] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
    if channels_last and (prefer_last or not channels_first):
        array = array.movedim(-1, -3)
    elif not channels_first:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}: no axis holds 1, 3 or 4 channels. Pass RGB, grayscale or "
            "RGBA pixels laid out as (H, W, C) or (C, H, W)."
        )
    if 0 in array.shape[-2:]:
        raise ValueError(f"{name} has zero size {tuple(array.shape[-2:])}; every image needs at least 1x1 pixels.")
    if array.shape[-3] != 3 and not convert_rgb:
        raise ValueError(f"{name} has {array.shape[-3]} channels; pass RGB pixels or set `do_convert_rgb=True`.")
    if array.shape[-3] == 1:
        array = array.expand(*array.shape[:-3], 3, *array.shape[-2:])
    elif array.shape[-3] == 4:
        scale = 255.0 if not array.is_floating_point() or array.max() > 1 else 1.0
        rgb, alpha = array[..., :3, :, :].float(), array[..., 3:, :, :].float() / scale
        array = rgb * alpha + scale * (1.0 - alpha)
    return array.contiguous()


def numpy_to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    if array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise TypeError(f"{name} has dtype {array.dtype}; pass uint8 pixels in [0, 255] or floats.")
    return torch.from_numpy(np.ascontiguousarray(array))


def resize_to_grid(processor, pixels: torch.Tensor, size: SizeDict, resample, patch_size: int, max_aspect_ratio):
    """Resizes a stack `[..., C, H, W]` of same-sized images or frames with `smart_resize` (shared by the image and
    the video processor)."""
    height, width = pixels.shape[-2:]
    new_height, new_width = smart_resize(
        height, width, patch_size, size.min_pixels, size.max_pixels, max_aspect_ratio or processor.max_aspect_ratio
    )
    if (new_height, new_width) == (height, width):
        return pixels
    return TorchvisionBackend.resize(
        processor, pixels, SizeDict(height=new_height, width=new_width), resample=resample
    )


def check_size_dict(size: SizeDict, do_resize: bool):
    if do_resize and (size is None or size.min_pixels is None or size.max_pixels is None):
        raise ValueError(f"`size` must be a dict with 'min_pixels' and 'max_pixels', got {size}.")


def postprocess_pixels(pixels, mean, std, output_type: str, kind: str):
    """Maps tokenizer-range pixels back to [0, 1] and converts them; `kind` is "image" ([3, H, W] items) or "video"
    ([3, T, H, W] items)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    item_ndim = 3 if kind == "image" else 4
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels)
    if isinstance(pixels, torch.Tensor):
        if pixels.ndim == item_ndim:
            pixels = pixels.unsqueeze(0)
        if pixels.ndim != item_ndim + 1:
            raise ValueError(
                f"Expected {kind} outputs of shape {'[N, 3, H, W]' if kind == 'image' else '[N, 3, T, H, W]'}, "
                f"got {tuple(pixels.shape)}."
            )
        items = list(pixels)
    elif isinstance(pixels, (list, tuple)) and all(isinstance(p, (torch.Tensor, np.ndarray)) for p in pixels):
        items = [torch.as_tensor(p) for p in pixels]
    else:
        raise TypeError(
            f"Expected a tensor, an array or a list of them as {kind} outputs, got {describe_input(pixels)}."
        )
    mean = torch.tensor(mean, dtype=torch.float32).view(3, *([1] * (item_ndim - 1)))
    std = torch.tensor(std, dtype=torch.float32).view(3, *([1] * (item_ndim - 1)))
    outputs = []
    for item in items:
        if item.ndim != item_ndim or item.shape[0] != 3:
            raise ValueError(f"Each {kind} output must have 3 channels first, got shape {tuple(item.shape)}.")
        item = (item.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
        if kind == "video":
            item = item.permute(1, 0, 2, 3)  # [T, 3, H, W]
        if output_type == "pt":
            outputs.append(item)
            continue
        array = item.movedim(-3, -1).numpy()  # [..., H, W, 3]
        if output_type == "np":
            outputs.append(array)
        else:
            uint8 = (array * 255).round().astype(np.uint8)
            outputs.append(
                PIL.Image.fromarray(uint8) if kind == "image" else [PIL.Image.fromarray(frame) for frame in uint8]
            )
    if output_type == "pil":
        return outputs
    same_shape = len({tuple(o.shape) for o in outputs}) == 1
    if not same_shape:
        return outputs
    return torch.stack(outputs) if output_type == "pt" else np.stack(outputs)


def stack_if_uniform(tensors: list[torch.Tensor]):
    """A single batched tensor when every item has the same shape, else the list itself."""
    if len({tuple(t.shape) for t in tensors}) == 1:
        return torch.stack(tensors)
    return tensors


class HydraXImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    patch_size (`int`, *optional*, defaults to 16):
        Spatial patch size of Hydra-XTok: image sides are snapped to multiples of it and one latent token covers
        `patch_size x patch_size` pixels.
    max_aspect_ratio (`float`, *optional*, defaults to 200):
        Images more elongated than this are rejected.
    """

    patch_size: int
    max_aspect_ratio: float


class HydraXImageProcessor(TorchvisionBackend):
    r"""
    Image processor of Hydra-X. Turns images (paths, URLs, PIL images, numpy arrays, torch tensors; grayscale, RGBA
    and palette images are converted to RGB) into pixels for the Hydra-XTok visual tokenizer:

    1. resize keeping the aspect ratio so that the pixel count lies in
       `[size["min_pixels"], size["max_pixels"]]` and both sides are multiples of `patch_size` (16);
    2. rescale by 1/255 and normalise with mean 0.5 / std 0.5, i.e. to [-1, 1], the tokenizer's range.

    Returns `pixel_values` and `image_grid_thw`, the latent grid `(1, H / 16, W / 16)` of each image: one latent
    token (and one `<|image_pad|>` placeholder) per cell. Images in a batch may end up with different sizes: when they
    all share one size `pixel_values` is a tensor `[N, 3, H, W]`, otherwise it is a list of `[3, H_i, W_i]` tensors,
    because Hydra-XTok patchifies each image on its own 2D grid and padding would add tokens that do not exist.

    Example:

    ```python
    >>> import numpy as np
    >>> from processing_hydrax import HydraXImageProcessor
    >>> processor = HydraXImageProcessor()
    >>> out = processor(np.zeros((300, 400, 3), dtype=np.uint8))
    >>> out["pixel_values"].shape, out["image_grid_thw"].tolist()
    (torch.Size([1, 3, 304, 400]), [[1, 19, 25]])
    ```
    """

    resample = PILImageResampling.BICUBIC
    size = {"min_pixels": 256 * 256, "max_pixels": 1024 * 1024}
    default_to_square = False
    do_resize = True
    do_rescale = True
    do_normalize = True
    image_mean = HYDRAX_IMAGE_MEAN
    image_std = HYDRAX_IMAGE_STD
    do_convert_rgb = True
    patch_size = 16
    max_aspect_ratio = 200.0
    valid_kwargs = HydraXImageProcessorKwargs
    model_input_names = ["pixel_values", "image_grid_thw"]

    def __init__(self, **kwargs: Unpack[HydraXImageProcessorKwargs]):
        super().__init__(**kwargs)

    def fetch_images(self, image_url_or_urls):
        """Loads paths, URLs and base64 strings to PIL images (keeping their mode, so that transparency is composited
        onto white later); anything else is returned unchanged for validation."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, os.PathLike):
            image_url_or_urls = os.fspath(image_url_or_urls)
        if not isinstance(image_url_or_urls, str):
            return image_url_or_urls
        source = image_url_or_urls
        if os.path.isfile(source):
            try:
                image = PIL.Image.open(source)
                image.load()
            except (OSError, PIL.UnidentifiedImageError) as error:
                raise ValueError(
                    f"Could not read the image file {describe_input(source)} ({error}). Check that it is a valid "
                    "image (PNG, JPEG, WebP, ...) or pass the image as a PIL image or an array."
                ) from error
            return PIL.ImageOps.exif_transpose(image)
        if not source.startswith(("http://", "https://", "data:image/")):
            try:
                base64.b64decode(source, validate=True)
            except (binascii.Error, ValueError):
                raise FileNotFoundError(
                    f"Image file {describe_input(source)} does not exist. Pass an existing path, an http(s) URL, a "
                    "base64 string, a PIL image, a numpy array or a torch tensor."
                ) from None
        return load_image(source)

    def flatten_images(self, images) -> list:
        """Flattens nested lists (e.g. one list per sample) and batched 4D arrays into a list of single images,
        rejecting unsupported types with a message that names the offending input."""

        def flatten(item) -> list:
            if isinstance(item, (list, tuple)):
                return [image for sub_item in item for image in flatten(sub_item)]
            if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
                return list(item)
            if isinstance(item, (PIL.Image.Image, np.ndarray, torch.Tensor, str, os.PathLike)):
                return [item]
            raise TypeError(
                f"Unsupported image input: {describe_input(item)}. Pass a path, a URL, a PIL image, a numpy array or "
                "a torch tensor (or a list of them)."
            )

        flat = flatten(images)
        if not flat:
            raise ValueError("Received an empty list of images; pass at least one image or `images=None`.")
        return flat

    def _preprocess_image_like_inputs(self, images, *args, **kwargs) -> BatchFeature:
        images = self.fetch_images(self.flatten_images(images))
        prepared = []
        for index, image in enumerate(images):
            name = f"Image {index} ({describe_input(image)})"
            prefer_last = prefers_channels_last(image, kwargs.get("input_data_format"))
            if isinstance(image, PIL.Image.Image):
                image = pil_to_array(image)
            if isinstance(image, np.ndarray):
                image = numpy_to_tensor(image, name)
            image = to_channels_first(
                image, name, ndim=3, prefer_last=prefer_last, convert_rgb=kwargs["do_convert_rgb"]
            )
            prepared.append(image.to(kwargs["device"]) if kwargs.get("device") is not None else image)
        return self._preprocess(prepared, *args, **kwargs)

    def resize(
        self, image: torch.Tensor, size: SizeDict, resample=None, patch_size=None, max_aspect_ratio=None, **kwargs
    ):
        """Resizes an image `[3, H, W]` (or a stack of them) with `smart_resize`."""
        return resize_to_grid(self, image, size, resample, patch_size or self.patch_size, max_aspect_ratio)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        patch_size: int,
        return_tensors: str | TensorType | None = None,
        max_aspect_ratio: float | None = None,
        **kwargs,
    ) -> BatchFeature:
        check_size_dict(size, do_resize)
        pixel_values, grids = [], []
        for image in images:
            if do_resize:
                image = self.resize(
                    image, size, resample=resample, patch_size=patch_size, max_aspect_ratio=max_aspect_ratio
                )
            height, width = image.shape[-2:]
            if height % patch_size or width % patch_size:
                raise ValueError(
                    f"An image of size {height}x{width} is not a multiple of the patch size {patch_size}; "
                    "use `do_resize=True` or crop it to multiples of the patch size."
                )
            image = self.rescale_and_normalize(
                image[None], do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )[0]
            pixel_values.append(image)
            grids.append([1, height // patch_size, width // patch_size])
        data = {
            "pixel_values": stack_if_uniform(pixel_values),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
        }
        skip = ["pixel_values"] if isinstance(data["pixel_values"], list) else None
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=skip)

    def get_image_grid_thw(self, height: int, width: int, images_kwargs: dict | None = None) -> tuple[int, int, int]:
        """The latent grid `(1, h, w)` that an image of `height x width` pixels will get, without processing it."""
        images_kwargs = images_kwargs or {}
        patch_size = images_kwargs.get("patch_size") or self.patch_size
        size = images_kwargs.get("size") or self.size
        size = size if isinstance(size, SizeDict) else SizeDict(**size)
        new_height, new_width = smart_resize(
            height, width, patch_size, size.min_pixels, size.max_pixels, self.max_aspect_ratio
        )
        return 1, new_height // patch_size, new_width // patch_size

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Number of latent tokens (= `<|image_pad|>` placeholders) for an image of `height x width` pixels."""
        return math.prod(self.get_image_grid_thw(height, width, images_kwargs))

    def postprocess(self, images, output_type: str = "pil"):
        r"""
        Turns generated images in the tokenizer range [-1, 1] into `output_type`:

        - `"pil"`: a list of `PIL.Image` (RGB);
        - `"np"`: float arrays in [0, 1] of shape `[N, H, W, 3]` (a list if sizes differ);
        - `"pt"`: float tensors in [0, 1] of shape `[N, 3, H, W]` (a list if sizes differ).

        `images` is a tensor `[N, 3, H, W]` / `[3, H, W]` or a list of `[3, H, W]` tensors or arrays.

        Example:

        ```python
        >>> import torch
        >>> from processing_hydrax import HydraXImageProcessor
        >>> HydraXImageProcessor().postprocess(torch.zeros(1, 3, 32, 32))[0].getpixel((0, 0))
        (128, 128, 128)
        ```
        """
        return postprocess_pixels(images, self.image_mean, self.image_std, output_type, kind="image")


__all__ = ["HydraXImageProcessor", "smart_resize"]
