"""Training batches for Hydra-X from chat conversations, built on the fly: images are loaded and the chat template
applied at collate time, so no pre-tokenised copy of a dataset is ever written (TRL's vision-language collators work
the same way). It lives in the package, beside the model whose `forward` it feeds, so that any training loop (Trainer,
TRL, Accelerate) can use it; it imports only torch, transformers, Pillow and the standard library.

A sample is a dict with `messages` (the conversation in the processor's chat format, as a list or a JSON string),
and optionally `origin` (where it came from, e.g. `data.jsonl:12`, named in every report about it), `root` (the
folder that relative file paths of image and video blocks are relative to: a `path`, or a file name as the block's
`image` / `video`) and `images`: TRL's vision-language dataset
layout, where image blocks carry no data (`{"type": "image"}`) and take the sample's `images` (PIL images, paths or
`datasets` `{"bytes", "path"}` dicts) in order. As in TRL, a single `image` stands for `images=[image]`, and a
conversation written as plain strings gets one image block per image at the start of its first user turn whose
content is a string. When a sample has both, a non-empty `images` wins (TRL's collators let `image` replace it, which
silently drops images).
"""

import io
import json
import os
from pathlib import Path
from urllib.parse import unquote

import torch
from PIL import Image, ImageOps
from transformers.utils import logging


logger = logging.get_logger(__name__)

VISUAL_TYPES = ("image", "video")
IMAGE_SOURCES = ("path", "image", "url", "base64")  # keys that give an image block its pixels, as the template reads
VIDEO_SOURCES = ("path", "video", "url", "base64")
# Chat-template options a training batch cannot take: the collator's own, ones that cut or extend the last turn, and
# one transformers refuses beside the assistant-token mask that the labels come from.
FIXED_TEMPLATE_OPTIONS = (
    "tokenize",
    "return_dict",
    "return_tensors",
    "return_assistant_tokens_mask",
    "processor_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "sanitize_control_tokens",
)


def normalize_messages(messages) -> list[dict]:
    """A conversation as plain dicts: parsed from JSON when it is a string, and without the `None`-valued keys that
    Arrow adds when it unifies content blocks of different shapes (a `path: None` would make a generation target
    look like an input image to the chat template)."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"a conversation is a list of messages or its JSON, got a {type(messages).__name__}")
    normalized = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            message["content"] = [{k: v for k, v in block.items() if v is not None} for block in content]
        normalized.append(message)
    return normalized


def resolve_path(path: str, root: str | None) -> Path:
    """`path` as written in the data, relative to `root` (the manifest's folder) unless absolute. A `file:` URL names
    the file after its `file://` (or `file:`); percent-encoded as `Path.as_uri` writes it (`%20`), it is decoded
    unless the name exists as written (a `#`, `?` or `%41` in a file name stays)."""

    def located(name: str) -> Path:
        name = Path(os.path.expanduser(name))
        return name if name.is_absolute() or root is None else Path(root) / name

    if not path.startswith("file:"):
        return located(path)
    written = path.removeprefix("file:").removeprefix("//")
    written = written.removeprefix("localhost") if written.startswith("localhost/") else written
    return located(written) if located(written).exists() else located(unquote(written))


def file_name(block: dict) -> str | None:
    """A visual block's file as written in the data: its `path`, a `file:` URL given as its `url` (which the
    processor cannot open), or a file name given as its `image` / `video` value (the processor takes both; a URL, a
    `data:` URI or base64, which has no ".", is not a file name)."""
    if "path" in block:
        return block["path"]
    if str(block.get("url")).startswith("file:"):
        return block["url"]
    value = block.get(block.get("type"))
    if isinstance(value, str) and not value.startswith(("http://", "https://", "data:")) and "." in value:
        return value
    return None


def find_problem(messages: list[dict], root: str | None = None) -> str | None:
    """Why a conversation cannot be a training sample (no assistant turn to learn from, a missing image or video file,
    a video block without one: TRL's `images` fills image blocks only), or `None`. Cheap: files are only looked up,
    not decoded."""
    if not any(message.get("role") == "assistant" for message in messages):
        roles = [message.get("role") for message in messages]
        return f"the conversation has no assistant turn (roles: {roles}), so nothing in it is a training target"
    for message in messages:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "video" and not any(key in block for key in VIDEO_SOURCES):
                return (
                    f"a video block in the {message.get('role')} turn has no file ({block}); give it a `path` (a "
                    "generation target too: training needs its pixels)"
                )
            name = file_name(block) if block.get("type") in VISUAL_TYPES else None
            if name is not None:
                if not isinstance(name, (str, os.PathLike)):
                    return f"{block['type']} {name!r} is not a file path ({block})"
                path = resolve_path(os.fspath(name), root)
                if not path.is_file():
                    return f"{block['type']} {path}: no such file"
    return None


def origin_of(example: dict) -> str:
    """Where a sample came from, as reports about it name it."""
    return example.get("origin") or "a sample"


def open_image(source) -> Image.Image:
    """An image file (a path or the bytes of one) decoded and turned upright by its EXIF orientation, in its own mode:
    the processor converts it, and scales 16-bit images, which an RGB conversion here would saturate."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return ImageOps.exif_transpose(image)


def image_source(image) -> dict:
    """An entry of TRL's `images` as the source of an image block: `{"path": ...}` for a path (or a `datasets` image
    without bytes), else `{"image": ...}`: bytes are opened as files are (`open_image`), a PIL image is EXIF-rotated
    too, arrays and tensors pass as they are."""
    if isinstance(image, dict) and image.get("bytes") is None:  # a `datasets.Image` read with decode=False: a path
        path = image.get("path")  # as `datasets` opens it: from the working directory, else from the dataset's folder
        image = os.path.abspath(path) if isinstance(path, str) and os.path.isfile(path) else path
    elif isinstance(image, dict):
        image = open_image(image["bytes"])
    if isinstance(image, (str, os.PathLike)):
        return {"path": image}
    if isinstance(image, Image.Image):
        return {"image": ImageOps.exif_transpose(image)}
    if hasattr(image, "__array__"):
        return {"image": image}
    raise TypeError(
        f"got a {type(image).__name__}; pass a PIL image, a path, a `datasets` image (`bytes`, `path`) or an array"
    )


class BadSampleError(ValueError):
    """A sample that cannot be trained on; the message names where it came from and why."""


def bare_image_blocks(messages: list[dict], count: int, origin: str) -> list[dict]:
    """The image blocks of TRL's layout, which take the sample's `count` images of `images` in order: those without a
    `path`, `image`, `url` or `base64`. A conversation without such blocks whose first user turn is a plain string
    gets a bare block per image before that text (changed in place), as TRL's `prepare_multimodal_messages` does (one
    with bare blocks, e.g. a text-to-image target, keeps them as they are). `BadSampleError` unless there is one
    block per image."""

    def bare_blocks() -> list[dict]:
        return [
            block
            for message in messages
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if block.get("type") == "image" and not any(key in block for key in IMAGE_SOURCES)
        ]

    plain_users = (m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str))
    first_plain_user = next(plain_users, None)
    if count and first_plain_user is not None and not bare_blocks():
        first_plain_user["content"] = [
            *({"type": "image"} for _ in range(count)),
            {"type": "text", "text": first_plain_user["content"]},
        ]
    bare = bare_blocks()
    if len(bare) != count:
        raise BadSampleError(
            f"{origin}: {len(bare)} image block(s) without a `path`, `image`, `url` or `base64`, but {count} "
            "image(s) in the sample's `images`; each bare block takes the next image of `images`."
        )
    return bare


def images_problem(messages: list[dict], images: list, root: str | None, origin: str) -> str | None:
    """Why TRL's `images` of a sample cannot fill its conversation's bare image blocks (a count that differs, an
    image file that is missing), or `None`; checked up front, cheaply: nothing is decoded."""
    try:
        bare = bare_image_blocks(messages, len(images), origin)
    except BadSampleError as error:
        return str(error).removeprefix(f"{origin}: ")
    for index, (block, image) in enumerate(zip(bare, images)):
        if isinstance(image, dict) and image.get("bytes") is not None:
            continue
        try:
            block.update(image_source(image))
        except TypeError as error:
            return f"image {index} of `images` cannot be read ({error})"
    return find_problem(messages, root)


class HydraXDataCollator:
    """Conversations → a padded Hydra-X training batch.

    Per batch: (1) each sample's conversation is checked and its image files loaded (a bad sample is reported with its
    `origin` and skipped, or raises, by `on_bad_sample`); (2) the processor's chat template renders, tokenizes and
    pads the batch and marks assistant tokens (`return_assistant_tokens_mask`) and generation targets
    (`target_mask`: the visual blocks of assistant turns); (3) `labels` are the input ids, -100 everywhere except the
    assistant's text: padding, system and user turns and every image/video placeholder are never labelled.

    Classifier-free-guidance text dropout is not applied here: the model drops a generation sample's text in `forward`
    (`config.text_dropout_prob`, training mode only) and removes the dropped tokens from the labels there, so it
    happens exactly once. Understanding, text-to-image and editing samples may share a batch, with generation targets
    of different sizes (the model runs each size as its own group).

    Args:
        processor (`HydraXProcessor`): the checkpoint's processor.
        processor_kwargs (`dict`, *optional*): passed to the processor, e.g.
            `{"images_kwargs": {"size": {"min_pixels": 256 * 256, "max_pixels": 256 * 256}}}`, or
            `{"padding": "max_length", "max_length": 2048}` for batches of one shape (default: padded to the longest
            sample, on the right; the labels and the loss do not depend on the padding).
        on_bad_sample (`str`): `"error"` raises on a bad sample, `"skip"` logs a warning naming it and leaves it out; a
            batch of bad samples only is replaced by the last good sample collated (a warning names the samples), so
            that training goes on at any batch size.
        chat_template_kwargs (`dict`, *optional*): passed to the chat template, e.g. `{"add_vision_id": True}` to train
            on Qwen2.5-VL's "Picture 1: " labels (then pass the same at inference).
    """

    def __init__(
        self,
        processor,
        processor_kwargs: dict | None = None,
        on_bad_sample: str = "error",
        chat_template_kwargs: dict | None = None,
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"`on_bad_sample` must be 'error' or 'skip', got {on_bad_sample!r}.")
        self.processor = processor
        self.processor_kwargs = dict(processor_kwargs or {})
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        fixed = sorted(set(self.chat_template_kwargs) & set(FIXED_TEMPLATE_OPTIONS))
        if fixed:
            raise ValueError(
                f"`chat_template_kwargs` cannot set {fixed}: the collator renders whole conversations and labels the "
                "assistant's tokens by transformers' assistant mask, which `sanitize_control_tokens` does not "
                "support; processing options go in the collator's `processor_kwargs`."
            )
        self.on_bad_sample = on_bad_sample
        self._last_good = None  # the last sample that loaded, stand-in for a batch of bad samples in skip mode

    def load_sample(self, example: dict) -> list[dict]:
        """The sample's conversation with its image files loaded (PIL), video paths resolved and `images` placed in
        its bare image blocks; `BadSampleError` when it cannot be trained on."""
        origin = origin_of(example)
        root = example.get("root")
        try:
            messages = normalize_messages(example.get("messages"))
        except Exception as error:
            raise BadSampleError(f"{origin}: `messages` is not a conversation ({error})") from error
        images = example.get("images")
        if images is None or isinstance(images, (list, tuple)) and not images:  # an empty `images` leaves `image`
            images = [] if example.get("image") is None else [example["image"]]
        if not isinstance(images, (list, tuple)):
            raise BadSampleError(
                f"{origin}: `images` holds one {type(images).__name__}, not a list of images; pass it as `image` or "
                "in a list"
            )
        self._place_images(messages, images, origin)
        problem = find_problem(messages, root)
        if problem is not None:
            raise BadSampleError(f"{origin}: {problem}")
        for message in messages:
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") not in VISUAL_TYPES or file_name(block) is None:
                    continue
                path = resolve_path(file_name(block), root)
                for key in ("path", block["type"], *(["url"] if str(block.get("url")).startswith("file:") else [])):
                    block.pop(key, None)
                if block["type"] == "video":
                    block["path"] = str(path)
                    continue
                try:
                    block["image"] = open_image(path)
                except Exception as error:
                    raise BadSampleError(f"{origin}: image {path} cannot be read ({error})") from error
        return messages

    @staticmethod
    def _place_images(messages: list[dict], images: list, origin: str):
        """TRL's layout: the image blocks without a `path`, `image`, `url` or `base64` (`bare_image_blocks`) take
        `images`, in order; a `datasets` image (`{"bytes", "path"}`) becomes a PIL image, a string a path."""
        for index, (block, image) in enumerate(zip(bare_image_blocks(messages, len(images), origin), images)):
            try:
                block.update(image_source(image))
            except Exception as error:
                raise BadSampleError(f"{origin}: image {index} of `images` cannot be read ({error})") from error

    def _checked(self, check, *args):
        """`check(*args)`, or `None` when it raises `BadSampleError` (raised again with `on_bad_sample="error"`, else
        logged as skipped)."""
        try:
            return check(*args)
        except BadSampleError as error:
            if self.on_bad_sample == "error":
                raise
            logger.warning(f"Skipping a bad training sample: {error}")
            return None

    def _render_alone(self, example: dict, conversation: list[dict]):
        """One sample rendered on its own; `BadSampleError` naming its origin when the processor refuses it."""
        try:
            return self._render([conversation])
        except Exception as error:  # the processor's and the video decoders' own error types
            message = f"{origin_of(example)}: the processor refuses it ({type(error).__name__}: {error})"
            raise BadSampleError(message) from error

    def _stand_in(self, examples: list[dict]) -> list[dict]:
        """The last good sample's conversation, in place of a batch of bad samples only."""
        skipped = ", ".join(origin_of(example) for example in examples)
        if self._last_good is None:
            raise BadSampleError(f"Every sample of this batch is bad ({skipped}), and no good sample came before it")
        logger.warning(
            f"Every sample of this batch is bad ({skipped}); training on the last good sample, "
            f"{origin_of(self._last_good)}, in its place"
        )
        return self.load_sample(self._last_good)

    def _render(self, conversations: list[list[dict]]):
        return self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right", **self.processor_kwargs},
            **self.chat_template_kwargs,
        )

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        # 1. Check and load every sample
        loaded = [(example, self._checked(self.load_sample, example)) for example in examples]
        loaded = [(example, conversation) for example, conversation in loaded if conversation is not None]

        # 2. Chat template, tokenization (padding) and visual preprocessing; when the processor refuses the batch
        # (an undecodable video, an extreme aspect ratio), each sample is rendered alone to find and report the bad one
        try:
            batch = self._render([conversation for _, conversation in loaded] or [self._stand_in(examples)])
        except Exception:
            loaded = [pair for pair in loaded if self._checked(self._render_alone, *pair) is not None]
            batch = self._render([conversation for _, conversation in loaded] or [self._stand_in(examples)])
        if loaded:
            self._last_good = loaded[-1][0]

        # 3. Labels on the assistant's text only
        input_ids = batch["input_ids"]
        assistant = batch.pop("assistant_masks").bool() & batch["attention_mask"].bool()
        placeholder = (input_ids == self.processor.image_token_id) | (input_ids == self.processor.video_token_id)
        batch["labels"] = input_ids.masked_fill(~assistant | placeholder, -100)
        return dict(batch)


__all__ = ["BadSampleError", "HydraXDataCollator", "find_problem", "normalize_messages"]
