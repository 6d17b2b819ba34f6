# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for Hydra-X: resize to a 16-pixel grid, normalise to the Hydra-XTok range [-1, 1]."""

import base64
import binascii
import io
import math
import os
import urllib.request
import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict, is_valid_image
from transformers.processing_utils import ImagesKwargs, Unpack


HYDRAX_IMAGE_MEAN = (0.5, 0.5, 0.5)
HYDRAX_IMAGE_STD = (0.5, 0.5, 0.5)
OUTPUT_TYPES = ("pil", "np", "pt")
# Seconds a download of an image or a video may stall before it fails (transformers' `load_image` waits forever).
URL_TIMEOUT = 30.0


def smart_resize(
    height: int,
    width: int,
    factor: int = 16,
    min_pixels: int = 256 * 256,
    max_pixels: int = 1024 * 1024,
    max_aspect_ratio: float = 200.0,
) -> tuple[int, int]:
    """Returns the `(height, width)` closest to the input that keeps its aspect ratio, has both sides divisible by
    `factor` (the tokenizer's patch size) and, as far as that grid allows, `min_pixels <= height * width <=
    max_pixels`: a side is never below one patch (a very elongated image can then exceed `max_pixels`), and rounding
    up to reach `min_pixels` can pass `max_pixels` by up to a row and a column of patches when the bounds lie close.

    Example:

    ```python
    >>> smart_resize(480, 640, factor=16, min_pixels=256 * 256, max_pixels=512 * 512)
    (432, 576)
    ```
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"Cannot resize an image of zero size {height}x{width}; it needs at least 1x1 pixels.")
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


def pixel_bounds(default, size=None, min_pixels=None, max_pixels=None):
    """`size` with `min_pixels` / `max_pixels` folded in (the shorthands Qwen2-VL's processors take) and a bound it
    lacks taken from `default`, as `{"min_pixels", "max_pixels"}`; `None` when nothing is given. A single bound given
    (a shorthand, else in `size`) moves the other one where they would cross. A `size` in another format is returned
    unchanged for transformers to check.

    Example:

    ```python
    >>> pixel_bounds({"min_pixels": 65536, "max_pixels": 1048576}, max_pixels=512 * 512)
    {'min_pixels': 65536, 'max_pixels': 262144}
    >>> pixel_bounds({"min_pixels": 65536, "max_pixels": 1048576}, max_pixels=128 * 128)
    {'min_pixels': 16384, 'max_pixels': 16384}
    ```
    """
    given = {key: value for key, value in dict(size or {}).items() if value is not None}
    shorthands = {
        key: value for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if value is not None
    }
    if not set(given) <= {"min_pixels", "max_pixels"}:
        if shorthands:
            raise ValueError(
                f"`min_pixels` / `max_pixels` bound a pixel-count `size`, but size={given}; pass one or the other."
            )
        return size
    if size is None and not shorthands:
        return None
    bounds = {"min_pixels": default["min_pixels"], "max_pixels": default["max_pixels"], **given, **shorthands}
    stated = list(shorthands or given)  # the most specific bounds given: a single one overrides the other
    if bounds["min_pixels"] > bounds["max_pixels"] and len(stated) == 1:
        other = "max_pixels" if stated[0] == "min_pixels" else "min_pixels"
        bounds[other] = bounds[stated[0]]
    return bounds


def describe_input(value) -> str:
    """A short description of an input, for error messages."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return repr(text if len(text) <= 120 else text[:117] + "...")
    if isinstance(value, PIL.Image.Image):
        return f"PIL.Image(mode={value.mode}, size={value.size})"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    return f"an object of type {type(value).__name__}"


def to_8_bit(image):
    """A 16-bit image (PIL mode `I;16*` or `I`, a uint16 array or tensor) scaled to 8 bits; anything else as it is,
    except that arrays in the other byte order (big-endian FITS or raw data), which torch cannot read, are turned to
    the machine's. Pillow's RGB conversion clips 16-bit values at 255 and transformers rescales by 1/255, either of
    which turns a 16-bit PNG or TIFF white."""
    if isinstance(image, np.ndarray) and not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    if isinstance(image, PIL.Image.Image):
        if not (image.mode == "I" or image.mode.startswith("I;16")):
            return image
        return PIL.Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
    if isinstance(image, np.ndarray) and image.dtype == np.uint16:
        return (image / 257).round().astype(np.uint8)
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint16:
        return (image.double() / 257).round().to(torch.uint8)
    return image


def rgb_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """An image's pixels as Hydra-X reads them everywhere (processor, pipelines, training and evaluation data): 16-bit
    scaled to 8 bits (`to_8_bit`), transparency composited onto white (transformers' `convert_to_rgb`), any other
    mode converted to RGB. A plain `.convert("RGB")` drops alpha and shows what transparent pixels hide."""
    return PIL.Image.fromarray(convert_to_rgb(to_8_bit(image), return_numpy=True))


def load_image_source(source: str) -> PIL.Image.Image:
    """The image at a path, an http(s) URL (downloaded with a timeout) or in a base64 string, turned upright by its
    EXIF orientation and in its own mode (the processor composites transparency onto white; transformers'
    `load_image` converts to RGB first, which turns it black). Errors name the source: a missing file is reported as
    such rather than as invalid base64, and an unreadable one as a `ValueError`."""
    if not source.startswith(("http://", "https://", "data:image/")) and not os.path.isfile(source):
        try:
            base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError):
            raise FileNotFoundError(
                f"Image file {describe_input(source)} does not exist. Pass an existing path, an http(s) URL, a "
                "base64 string, a PIL image, a numpy array or a torch tensor."
            ) from None
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=URL_TIMEOUT) as response:
                data = io.BytesIO(response.read())
        elif os.path.isfile(source):
            data = source
        else:
            data = io.BytesIO(base64.b64decode(source.split(",", 1)[-1] if source.startswith("data:") else source))
        with PIL.Image.open(data) as image:
            return to_8_bit(PIL.ImageOps.exif_transpose(image))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not read the image {describe_input(source)} ({error}). Check that it is a valid image (PNG, JPEG, "
            "WebP, ...) or pass it as a PIL image or an array."
        ) from error


def to_grid(
    processor, pixels: torch.Tensor, size: SizeDict, resample, patch_size: int, max_aspect_ratio, do_resize, name: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resizes a stack `[..., 3, H, W]` of same-sized images or frames with `smart_resize` (shared by the image and
    the video processor); returns it and its latent grid `(H / patch_size, W / patch_size)`."""
    height, width = pixels.shape[-2:]
    if not height or not width:
        raise ValueError(f"{name} has zero size {height}x{width}; every image needs at least 1x1 pixels.")
    if do_resize:
        if size is None or size.min_pixels is None or size.max_pixels is None:
            raise ValueError(f"`size` must be a dict with 'min_pixels' and 'max_pixels', got {size}.")
        new_size = smart_resize(height, width, patch_size, size.min_pixels, size.max_pixels, max_aspect_ratio)
        if new_size != (height, width):
            height, width = new_size
            pixels = processor.resize(pixels, SizeDict(height=height, width=width), resample=resample)
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"{name} of size {height}x{width} is not a multiple of the patch size {patch_size}; use "
            "`do_resize=True` or crop it to multiples of the patch size."
        )
    return pixels, (height // patch_size, width // patch_size)


def warn_if_unit_range(items: list[torch.Tensor], do_rescale: bool, kind: str) -> None:
    """Warns when `do_rescale` is about to divide pixels that are already in [0, 1] by 255 (float images such as a
    pipeline's `output_type="pt"` / `"np"` output), which would turn them near black; transformers' slow image
    processors give the same warning (`is_scaled_image`)."""
    if not do_rescale:
        return
    for index, item in enumerate(items):
        if item.is_floating_point() and item.numel() and item.min() >= 0 and item.max() <= 1:
            warnings.warn(
                f"{kind} {index} is a float {kind.lower()} with every pixel in [0, 1], but the processor rescales by "
                "1/255 (`do_rescale=True`), which would make it near black. Pass `do_rescale=False` for pixels in "
                "[0, 1] (a pipeline's `output_type='pt'` or `'np'` output), or uint8 / PIL pixels in [0, 255].",
                UserWarning,
                stacklevel=2,
            )
            return


def grid_batch(key: str, pixels: list[torch.Tensor], grid_key: str, grids: list, return_tensors) -> BatchFeature:
    """`pixels` as one tensor when every item has the same shape, else as a list: Hydra-XTok patchifies each item on
    its own grid, so padding would add latent tokens that do not exist."""
    uniform = len({tuple(item.shape) for item in pixels}) == 1
    if not uniform and return_tensors == "np":
        pixels = [item.numpy() for item in pixels]
    data = {key: torch.stack(pixels) if uniform else pixels, grid_key: torch.tensor(grids, dtype=torch.long)}
    return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=None if uniform else [key])


def stack_if_uniform(items: list):
    """One stacked tensor or array when every item has the same shape, else the list itself."""
    if len({tuple(item.shape) for item in items}) > 1:
        return items
    return torch.stack(items) if isinstance(items[0], torch.Tensor) else np.stack(items)


def postprocess_pixels(pixels, mean, std, output_type: str, video: bool = False):
    """Maps generated pixels in the tokenizer range back to [0, 1] as `output_type`. Items are images `[3, H, W]` or
    videos `[3, T, H, W]` (returned frame-first, `[T, 3, H, W]` or `[T, H, W, 3]`, the diffusers layouts)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    item_ndim = 4 if video else 3
    if isinstance(pixels, (np.ndarray, torch.Tensor)) and pixels.ndim == item_ndim:
        pixels = pixels[None]
    shape = (3, *[1] * (item_ndim - 1))
    mean, std = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    outputs = []
    for item in pixels:
        item = torch.as_tensor(item)
        if item.ndim != item_ndim or item.shape[0] != 3:
            layout = "[3, T, H, W]" if video else "[3, H, W]"
            raise ValueError(f"Each output must be {layout} with 3 channels first, got shape {tuple(item.shape)}.")
        item = (item.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
        outputs.append(item.transpose(0, 1) if video else item)
    if output_type == "pt":
        return stack_if_uniform(outputs)
    arrays = [item.movedim(-3, -1).numpy() for item in outputs]
    if output_type == "np":
        return stack_if_uniform(arrays)
    uint8 = [(array * 255).round().astype(np.uint8) for array in arrays]
    return [[PIL.Image.fromarray(frame) for frame in item] if video else PIL.Image.fromarray(item) for item in uint8]


class HydraXImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    patch_size (`int`, *optional*, defaults to 16):
        Spatial patch size of Hydra-XTok: image sides are snapped to multiples of it and one latent token covers
        `patch_size x patch_size` pixels.
    max_aspect_ratio (`float`, *optional*, defaults to 200):
        Images more elongated than this are rejected.
    min_pixels (`int`, *optional*), max_pixels (`int`, *optional*):
        Shorthands for the bounds of `size` (as Qwen2-VL's processors take them); the other bound keeps its value.
    """

    patch_size: int
    max_aspect_ratio: float
    min_pixels: int
    max_pixels: int


class HydraXImageProcessor(TorchvisionBackend):
    r"""
    Image processor of Hydra-X. Turns images (paths, URLs, base64 strings, PIL images, numpy arrays, torch tensors;
    grayscale, RGBA and palette images are converted to RGB) into pixels for the Hydra-XTok visual tokenizer:

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
        bounds = [kwargs.pop(name, None) for name in ("size", "min_pixels", "max_pixels")]
        size = pixel_bounds(self.size, *bounds)
        super().__init__(**kwargs, **({} if size is None else {"size": size}))

    def _standardize_kwargs(self, size=None, min_pixels=None, max_pixels=None, **kwargs) -> dict:
        """`min_pixels` / `max_pixels` folded into `size` (`pixel_bounds`), then transformers' standardisation."""
        return super()._standardize_kwargs(size=pixel_bounds(self.size, size, min_pixels, max_pixels), **kwargs)

    @staticmethod
    def rgb_input(image):
        """`image`'s colours as this processor reads them, with nothing else done (no resize, no normalisation): a
        PIL image through `rgb_image`, 16-bit arrays and tensors scaled to 8 bits (`to_8_bit`), anything else as it
        is. For callers that resize and normalise themselves, such as the pipelines."""
        return rgb_image(image) if isinstance(image, PIL.Image.Image) else to_8_bit(image)

    def fetch_images(self, image_url_or_urls):
        """Loads paths, URLs and base64 strings (`load_image_source`), gives grayscale `(H, W)` arrays the channel axis
        that `make_flat_list_of_images` expects, and rejects anything else that is not an image, naming it."""
        image = image_url_or_urls
        if isinstance(image, (list, tuple)):
            return [self.fetch_images(item) for item in image]
        if isinstance(image, (str, os.PathLike)):
            return load_image_source(os.fspath(image))
        if not is_valid_image(image):
            raise TypeError(
                f"Unsupported image input: {describe_input(image)}. Pass a path, a URL, a PIL image, a numpy array or "
                "a torch tensor (or a list of them)."
            )
        if not isinstance(image, PIL.Image.Image) and image.ndim == 2:  # numpy is channels-last, torch channels-first
            return image[..., None] if isinstance(image, np.ndarray) else image[None]
        return image

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
        """`TorchvisionBackend.process_image`, except that numpy arrays are read as `(H, W, C)` when their last axis
        can hold channels (transformers assumes `(C, H, W)` when both fit), read-only arrays are copied (torch cannot
        share them), 16-bit images are scaled to 8 bits (`to_8_bit`), and an array without a channel axis is rejected
        with its shape."""
        image = to_8_bit(image)
        if isinstance(image, np.ndarray):
            image = np.require(image, requirements="W")
            if input_data_format is None and image.shape[-1] in (1, 3, 4):
                input_data_format = ChannelDimension.LAST
        if input_data_format is None and not isinstance(image, PIL.Image.Image):
            if not {image.shape[0], image.shape[-1]} & {1, 3, 4}:
                raise ValueError(
                    f"An image of shape {tuple(image.shape)} has no axis of 1, 3 or 4 channels. Pass RGB, grayscale "
                    "or RGBA pixels laid out as (H, W, C) or (C, H, W)."
                )
        return super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device, **kwargs
        )

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
        max_aspect_ratio: float,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        if not images:
            raise ValueError("Received an empty list of images; pass at least one image or `images=None`.")
        warn_if_unit_range(images, do_rescale, "Image")
        pixel_values, grids = [], []
        for index, image in enumerate(images):
            image, grid = to_grid(
                self, image, size, resample, patch_size, max_aspect_ratio, do_resize, name=f"Image {index}"
            )
            pixel_values.append(
                self.rescale_and_normalize(image, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            )
            grids.append([1, *grid])
        return grid_batch("pixel_values", pixel_values, "image_grid_thw", grids, return_tensors)

    def get_image_grid_thw(self, height: int, width: int, images_kwargs: dict | None = None) -> tuple[int, int, int]:
        """The latent grid `(1, h, w)` that an image of `height x width` pixels will get, without processing it."""
        images_kwargs = images_kwargs or {}
        patch_size = images_kwargs.get("patch_size") or self.patch_size
        size = self._standardize_kwargs(**images_kwargs)["size"] or self.size
        max_aspect_ratio = images_kwargs.get("max_aspect_ratio") or self.max_aspect_ratio
        new_height, new_width = smart_resize(
            height, width, patch_size, size.min_pixels, size.max_pixels, max_aspect_ratio
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
        return postprocess_pixels(images, self.image_mean, self.image_std, output_type)


__all__ = ["HydraXImageProcessor", "pixel_bounds", "smart_resize"]
