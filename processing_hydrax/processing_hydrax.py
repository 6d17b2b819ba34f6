# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Processor for Hydra-X: images, videos, text, generation targets and chat templates in one call."""

import bisect
import math
import re
import warnings

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import (
    _MARKED_RE,
    _UNMARKED,
    MultiModalData,
    ProcessingKwargs,
    ProcessorMixin,
    Unpack,
)

from .image_processing_hydrax import describe_input
from .video_processing_hydrax import make_list_of_videos


# Understanding, text-to-image, text-to-video and editing turns, Qwen2.5 format. A visual block with data (an image,
# url, path, base64 or video key) becomes `<|vision_start|><|image_pad|><|vision_end|>` (or `<|video_pad|>`), and so
# does a data-less one outside assistant turns (its image or video is passed to the processor, as with LLaVA or
# Qwen2.5-VL); a data-less block in an assistant turn is a generation target,
# `<|vision_start|><|vision_pad|><|vision_end|>`, whose size the processor reads from the block (`height`, `width`,
# `num_frames`) or, for edits, from the source image before it. Assistant turns sit in `{% generation %}` so that
# `return_assistant_tokens_mask=True` marks them. `add_vision_id=True` labels the visual inputs "Picture N: " /
# "Video N: " as Qwen2.5-VL's template does, outside assistant turns only: an assistant's images and videos are the
# model's outputs (training targets), which the pipelines start without a label.
HYDRAX_CHAT_TEMPLATE = (
    "{%- macro render_content(content, is_assistant, counts) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for block in content -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- elif block['type'] in ['image', 'video'] -%}"
    "{%- if is_assistant and not (block.get('image') is not none or block.get('video') is not none"
    " or block.get('url') is not none or block.get('path') is not none or block.get('base64') is not none) -%}"
    "{{- '<|vision_start|><|vision_pad|><|vision_end|>' -}}"
    "{%- elif block['type'] == 'image' -%}"
    "{%- if add_vision_id and not is_assistant -%}{%- set counts.image = counts.image + 1 -%}"
    "{{- 'Picture ' + counts.image | string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- else -%}"
    "{%- if add_vision_id and not is_assistant -%}{%- set counts.video = counts.video + 1 -%}"
    "{{- 'Video ' + counts.video | string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set counts = namespace(image=0, video=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- set content = message['content'] if message['content'] is defined else '' -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- render_content(content, true, counts) + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + render_content(content, false, counts) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TARGET_SPEC_KEYS = {"type", "height", "width", "num_frames"}


class HydraXProcessor(ProcessorMixin):
    r"""
    Processor of Hydra-X: wraps a [`HydraXImageProcessor`], a [`HydraXVideoProcessor`] and a Qwen2.5 tokenizer.

    Every image or video in the text, written `<|image_pad|>` / `<|video_pad|>` (optionally already wrapped in
    `<|vision_start|>` ... `<|vision_end|>`, as the chat template writes it), becomes
    `<|vision_start|>` + one pad token per latent token (latent frames x h x w, read from the sub-processors' grids)
    + `<|vision_end|>`. A `<|vision_pad|>` marks a **generation target**: the block the model must produce, expanded
    to the size given by `visual_targets` (see `__call__`) or the chat block, with `<|image_pad|>` or `<|video_pad|>`
    tokens.
    Visual blocks inside assistant turns (`<|im_start|>assistant`) are targets too, e.g. the edited image of an
    editing sample used for training.

    Returns, as in Qwen2.5-VL: `input_ids`, `attention_mask`, `mm_token_type_ids` (0 text, 1 image, 2 video),
    `pixel_values` + `image_grid_thw`, `pixel_values_videos` + `video_grid_thw`; and when there are targets,
    `target_grid_thw` (one `(t, h, w)` per target, in order) and `target_mask` (1 on the pad tokens of target blocks).

    Example:

    ```python
    >>> import numpy as np
    >>> from processing_hydrax import HydraXImageProcessor, HydraXProcessor, HydraXVideoProcessor
    >>> from processing_hydrax import build_tiny_qwen2_tokenizer
    >>> processor = HydraXProcessor(HydraXImageProcessor(), build_tiny_qwen2_tokenizer(), HydraXVideoProcessor())
    >>> messages = [{"role": "user", "content": [{"type": "image", "image": np.zeros((256, 256, 3), np.uint8)},
    ...                                          {"type": "text", "text": "What is this?"}]}]
    >>> inputs = processor.apply_chat_template(
    ...     messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ... )
    >>> int((inputs["input_ids"] == processor.image_token_id).sum()), inputs["image_grid_thw"].tolist()
    (256, [[1, 16, 16]])
    ```
    """

    return_mm_token_type_ids = True

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, **kwargs):
        if tokenizer is None:
            raise ValueError("HydraXProcessor needs a Qwen2.5 tokenizer (or `build_tiny_qwen2_tokenizer()`).")
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
        self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
        self.target_token = "<|vision_pad|>"
        for name in ("image", "video", "vision_start", "vision_end", "target"):
            token = getattr(self, f"{name}_token")
            token_id = tokenizer.convert_tokens_to_ids(token)
            if (
                token_id is None
                or token_id == tokenizer.unk_token_id
                or tokenizer.convert_ids_to_tokens(token_id) != token
            ):
                raise ValueError(
                    f"The tokenizer has no {token!r} token; use a Qwen2.5 tokenizer (or build_tiny_qwen2_tokenizer())."
                )
            setattr(self, f"{name}_token_id", token_id)
        if chat_template is None:
            chat_template = HYDRAX_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        videos=None,
        audio=None,
        visual_targets: list | dict | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        r"""
        Processes `images`, `videos` and `text` (a string or a batch of strings) for Hydra-X; see the class docstring.
        Images and videos are matched to their placeholders in order over the whole batch; `images` and `videos`
        may be flat lists or one list per sample (each sample's list then holds the images of that sample's
        placeholders, which is checked). Processing options go to the sub-processors (e.g. `num_frames`, `fps`,
        `size`, `padding`, `padding_side`, `return_tensors`).

        `visual_targets` gives one spec per generation target (`<|vision_pad|>`) in the text, in order over the batch
        (a flat list, or one list per sample): `{"type": "image" | "video", "height": int, "width": int,
        "num_frames": int}`. A target without `height` / `width` takes the grid of the visual block before it (the
        source of an edit); `type` defaults to `"image"`.
        """
        if audio is not None:
            raise ValueError(f"{type(self).__name__} does not take audio; got {describe_input(audio)}.")
        if images is None and text is None and videos is None:
            raise ValueError(f"{type(self).__name__} needs at least one of `text`, `images` or `videos`.")
        if text is not None:
            if isinstance(text, str):
                text = [text]
            if not isinstance(text, (list, tuple)) or not all(isinstance(sample, str) for sample in text):
                raise TypeError(f"`text` must be a string or a list of strings, got {describe_input(text)}.")
            text = list(text)
        images_per_sample = None
        if images is not None:
            images = self.image_processor.fetch_images(images)
            if isinstance(images, list) and images and all(isinstance(item, list) for item in images):
                images_per_sample = [len(item) for item in images]  # one list per sample, as apply_chat_template gives
            images = make_flat_list_of_images(images)
        if videos is not None:
            videos = make_list_of_videos(videos)
        if text is not None:
            num_images, num_videos = len(images or []), len(videos or [])
            targets = self._validate_placeholders(text, num_images, num_videos, visual_targets, images_per_sample)

        merged = self._merge_kwargs(ProcessingKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        return_mm_token_type_ids = text_kwargs.pop(
            "return_mm_token_type_ids", merged.get("return_mm_token_type_ids", self.return_mm_token_type_ids)
        )
        return_offsets = text_kwargs.pop(
            "return_text_replacement_offsets", merged.get("return_text_replacement_offsets", False)
        )
        data = {}
        if images is not None:
            data.update(self.image_processor(images, **{**merged["images_kwargs"], "return_tensors": None}))
        if videos is not None:
            data.update(self.video_processor(videos, **{**merged["videos_kwargs"], "return_tensors": None}))
            if not kwargs.get("return_metadata") and not kwargs.get("videos_kwargs", {}).get("return_metadata"):
                data.pop("video_metadata", None)

        if text is not None:
            text, offsets, target_flags, target_grids = self._expand_placeholders(text, data, targets)
            text_inputs = self.tokenizer(text, **text_kwargs)
            self._check_special_mm_tokens(text, text_inputs, modalities=["image", "video"])  # truncation
            self._check_block_markers(text, text_inputs)
            data.update(text_inputs)
            if return_offsets:
                data["text_replacement_offsets"] = offsets
            if return_mm_token_type_ids:
                data["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
            if target_grids:
                data["target_grid_thw"] = torch.tensor(target_grids, dtype=torch.long)
                data["target_mask"] = self._target_mask(text_inputs["input_ids"], target_flags)

        skip = ["video_metadata", "text_replacement_offsets"]
        for key in ("pixel_values", "pixel_values_videos"):
            if isinstance(data.get(key), list):  # items of different sizes stay a list, of the asked type
                skip.append(key)
                data[key] = [item.numpy() for item in data[key]] if return_tensors == "np" else data[key]
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=skip)

    def _check_block_markers(self, text: list[str], text_inputs) -> None:
        """Truncation that cuts a visual block's `<|vision_start|>` or `<|vision_end|>` breaks it as surely as one
        that cuts its pads (which `_check_special_mm_tokens` counts): both markers must survive for every block."""
        start_id, end_id = self.tokenizer.convert_tokens_to_ids([self.vision_start_token, self.vision_end_token])
        for index, (sample, ids) in enumerate(zip(text, text_inputs["input_ids"])):
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            blocks = _MARKED_RE.sub("", sample).count(self.vision_start_token)  # not marked user text
            starts, ends = ids.count(start_id), ids.count(end_id)
            if starts != blocks or ends != blocks:
                raise ValueError(
                    f"Sample {index} has {blocks} visual block(s), but its tokens keep {starts} "
                    f"{self.vision_start_token} and {ends} {self.vision_end_token}. Likely due to truncation: raise "
                    "`max_length`, or shorten the text outside the visual blocks."
                )

    # ----------------------------------------------------------------------------------------------- placeholders

    def _block_pattern(self) -> re.Pattern:
        """A placeholder with its block markers, except where `apply_chat_template(sanitize_control_tokens=True)`
        marked it as user text (transformers' `_UNMARKED`), which stays text."""
        start, end = re.escape(self.vision_start_token), re.escape(self.vision_end_token)
        groups = [
            f"(?P<{name}>{_UNMARKED}(?:{start})?{re.escape(token)}(?:{end})?)"
            for name, token in (
                ("image", self.image_token),
                ("video", self.video_token),
                ("target", self.target_token),
            )
        ]
        return re.compile("|".join(groups))

    def _validate_placeholders(
        self, text, num_images: int, num_videos: int, visual_targets, images_per_sample: list[int] | None = None
    ) -> list[dict]:
        """Checks that placeholders and inputs match in number (sample by sample when `images` came as one list per
        sample) and returns one target spec per target placeholder."""
        counts = {"image": [], "video": [], "target": []}
        pattern = self._block_pattern()
        for sample in text:
            kinds = [match.lastgroup for match in pattern.finditer(sample)]
            for kind, per_sample in counts.items():
                per_sample.append(kinds.count(kind))
        for kind, given, token in (("image", num_images, self.image_token), ("video", num_videos, self.video_token)):
            found = sum(counts[kind])
            if found != given:
                raise ValueError(
                    f"Got {given} {kind}(s) but the text has {found} {kind} placeholder(s) {token!r} "
                    f"(per sample: {counts[kind]}). Put one {token!r} in the text for each {kind}, in the order "
                    f"the {kind}s are passed (apply_chat_template does this for {{'type': '{kind}'}} blocks)."
                )
        if images_per_sample is not None and images_per_sample != counts["image"]:
            raise ValueError(
                f"`images` holds one list per sample with {images_per_sample} image(s), but the {len(text)} sample(s) "
                f"of the text have {counts['image']} image placeholder(s) {self.image_token!r}. Give each sample's "
                "list the images of its own placeholders, in order, or pass one flat list for the whole batch."
            )
        num_targets = sum(counts["target"])
        if visual_targets is None:
            return [{}] * num_targets
        if isinstance(visual_targets, dict):
            visual_targets = [visual_targets]
        flat = []
        for item in visual_targets:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        if len(flat) != num_targets:
            raise ValueError(
                f"Got {len(flat)} `visual_targets` but the text has {num_targets} generation target placeholder(s) "
                f"{self.target_token!r} (per sample: {counts['target']}); pass one spec per target."
            )
        for spec in flat:
            if not isinstance(spec, dict) or not set(spec) <= TARGET_SPEC_KEYS:
                raise ValueError(
                    f"Each visual target must be a dict with keys among {sorted(TARGET_SPEC_KEYS)}, got {spec!r}."
                )
            if spec.get("type", "image") not in ("image", "video"):
                raise ValueError(f"A visual target's type must be 'image' or 'video', got {spec['type']!r}.")
        return flat

    def _target_grid(self, spec: dict, previous, name: str) -> tuple[str, list[int]]:
        """Latent grid of a generation target from its spec, or from the previous visual block (edits)."""
        kind = spec.get("type", "image")
        patch_size = (self.image_processor if kind == "image" else self.video_processor).patch_size
        height, width = spec.get("height"), spec.get("width")
        if (height is None) != (width is None):
            raise ValueError(f"{name} gives only one of height/width ({spec}); give both or neither.")
        if height is None:
            if previous is None:
                raise ValueError(
                    f"{name} has no size: pass visual_targets=[{{'type': '{kind}', 'height': H, 'width': W}}] (or "
                    "height/width in its chat block), or put a source image before it (editing)."
                )
            grid_h, grid_w = previous[1][1:]
        else:
            if height < 1 or width < 1:
                raise ValueError(f"{name} asks for a {height}x{width} {kind}; sizes must be positive.")
            grid_h, grid_w = max(1, round(height / patch_size)), max(1, round(width / patch_size))
            if (grid_h * patch_size, grid_w * patch_size) != (height, width):
                warnings.warn(
                    f"{name} asks for {height}x{width} pixels; using {grid_h * patch_size}x{grid_w * patch_size}, the "
                    f"nearest multiple of the patch size {patch_size}.",
                    UserWarning,
                    stacklevel=4,
                )
        if kind == "image":
            return kind, [1, grid_h, grid_w]
        step = self.video_processor.temporal_compression
        num_frames = spec.get("num_frames")
        if num_frames is None:
            if previous is None or previous[0] != "video":
                raise ValueError(f"{name} is a video without `num_frames`; pass e.g. num_frames=17 (1 + {step}k).")
            return kind, [previous[1][0], grid_h, grid_w]
        if num_frames < 1:
            raise ValueError(f"{name} asks for num_frames={num_frames}; it must be at least 1.")
        latent_frames = 1 + round((num_frames - 1) / step)
        used_frames = 1 + (latent_frames - 1) * step
        if used_frames != num_frames:
            warnings.warn(
                f"{name} asks for num_frames={num_frames}; using {used_frames} = 1 + {step}k frames.",
                UserWarning,
                stacklevel=4,
            )
        return kind, [latent_frames, grid_h, grid_w]

    def _visual_block(self, kind: str, grid) -> str:
        """`<|vision_start|>`, one pad token per latent token of `grid`, `<|vision_end|>`."""
        token = self.image_token if kind == "image" else self.video_token
        return self.vision_start_token + token * math.prod(grid) + self.vision_end_token

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The full block of image `image_idx`, sized by its `image_grid_thw` (transformers' placeholder hook)."""
        return self._visual_block("image", image_inputs["image_grid_thw"][image_idx].tolist())

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        """The full block of video `video_idx`, sized by its `video_grid_thw` (transformers' placeholder hook)."""
        return self._visual_block("video", video_inputs["video_grid_thw"][video_idx].tolist())

    def _check_edit_grid(self, source: list[int], target: list[int], sample_index: int):
        """An image right before a target image is its edit source (as the model reads it): both must share a grid."""
        if source != target:
            patch = self.image_processor.patch_size
            raise ValueError(
                f"Sample {sample_index} is an edit whose target image is {target[1] * patch}x{target[2] * patch} "
                f"pixels after resizing (latent grid {target[1]}x{target[2]}) but whose source image is "
                f"{source[1] * patch}x{source[2] * patch} (grid {source[1]}x{source[2]}); an edit keeps the source's "
                "grid. Resize the target image to the source image's size (or give the target no height / width). "
                "The image right before a target image in its sample is read as its edit source, by this processor "
                "and by the model, whatever turn it is in: give a text-to-image request that follows an earlier "
                "image a sample of its own."
            )

    def _expand_placeholders(self, text, data, targets):
        """Replaces every placeholder with its full visual block. Returns the new texts, the replacement offsets (the
        transformers format used to align assistant masks), per-sample target flags (one per visual block) and the
        grids of the targets."""
        pattern = self._block_pattern()
        turn_pattern = re.compile(re.escape("<|im_start|>") + r"(\w+)")
        indices = {"image": 0, "video": 0}
        targets = iter(targets)
        expanded, all_offsets, all_flags, target_grids = [], [], [], []
        target_index = 0
        for sample_index, sample in enumerate(text):
            turns = [(match.start(), match.group(1)) for match in turn_pattern.finditer(sample)]
            turn_starts = [start for start, _ in turns]
            pieces, offsets, flags, last, shift, previous = [], [], [], 0, 0, None
            for match in pattern.finditer(sample):
                kind = match.lastgroup
                if kind == "target":
                    name = f"Generation target {target_index} (sample {sample_index})"
                    kind, grid = self._target_grid(next(targets), previous, name)
                    replacement = self._visual_block(kind, grid)
                    target_index += 1
                    is_target = True
                else:
                    grid = data[f"{kind}_grid_thw"][indices[kind]].tolist()
                    replace = self.replace_image_token if kind == "image" else self.replace_video_token
                    replacement = replace(data, indices[kind])
                    indices[kind] += 1
                    turn = bisect.bisect_right(turn_starts, match.start()) - 1
                    is_target = turn >= 0 and turns[turn][1] == "assistant"
                if is_target and kind == "image" and previous is not None and previous[0] == "image":
                    self._check_edit_grid(previous[1], grid, sample_index)
                previous = (kind, grid)
                start, end = match.span()
                offsets.append(
                    {
                        "type": kind,
                        "span": (start, end),
                        "new_span": (start + shift, start + shift + len(replacement)),
                        "text": match.group(),
                        "replacement": replacement,
                    }
                )
                pieces += [sample[last:start], replacement]
                shift += len(replacement) - (end - start)
                last = end
                flags.append(is_target)
                if is_target:
                    target_grids.append(grid)
            pieces.append(sample[last:])
            expanded.append("".join(pieces))
            all_offsets.append(offsets)
            all_flags.append(flags)
        return expanded, all_offsets, all_flags, target_grids

    def _target_mask(self, input_ids, target_flags) -> list[list[int]]:
        """1 on the pad tokens of target blocks. The k-th run of pad tokens in a row is the k-th visual block."""
        pad_ids = {self.image_token_id, self.video_token_id}
        masks = []
        for row, flags in zip(input_ids, target_flags):
            row = row.tolist() if hasattr(row, "tolist") else list(row)
            mask, block, inside = [0] * len(row), -1, False
            for position, token_id in enumerate(row):
                is_pad = token_id in pad_ids
                if is_pad and not inside:
                    block += 1
                if is_pad and block < len(flags) and flags[block]:
                    mask[position] = 1
                inside = is_pad
            masks.append(mask)
        return masks

    # ------------------------------------------------------------------------------------------ chat templates

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        r"""
        Renders conversations with the Hydra-X chat template and, with `tokenize=True`, processes their images and
        videos. Besides understanding turns, a conversation can ask for generation: an assistant turn holding a
        visual block without data is a target, sized by the block's `height` / `width` / `num_frames`, or like the
        source image before it (editing):

        ```python
        t2i = [
            {"role": "user", "content": [{"type": "text", "text": "A red fox in the snow."}]},
            {"role": "assistant", "content": [{"type": "image", "height": 256, "width": 256}]},
        ]
        edit = [
            {
                "role": "user",
                "content": [{"type": "image", "image": source}, {"type": "text", "text": "Make it night."}],
            },
            {"role": "assistant", "content": [{"type": "image"}]},
        ]
        inputs = processor.apply_chat_template(t2i, tokenize=True, return_dict=True)
        ```
        """
        # transformers writes `return_offsets_mapping` & co. into `processor_kwargs`: work on a copy, so that the
        # caller's dict stays valid for their next `processor(...)` call.
        processor_kwargs = {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in (kwargs.pop("processor_kwargs", None) or {}).items()
        }
        if kwargs.get("tokenize"):
            conversations, _ = self._normalize_conversations(conversation)  # dicts, also from message objects
            targets = self._targets_from_conversations(conversations, kwargs.get("continue_final_message"))
            if targets:
                processor_kwargs.setdefault("visual_targets", targets)
        return super().apply_chat_template(conversation, chat_template, processor_kwargs=processor_kwargs, **kwargs)

    @staticmethod
    def _targets_from_conversations(conversations: list[list[dict]], continue_final_message=False) -> list[dict]:
        """Target specs of the data-less visual blocks of assistant turns, of a batch of (normalised) conversations, in
        template order. With `continue_final_message`, the final message renders only up to its last text block
        (transformers cuts the rest), so blocks after it are no targets."""
        data_keys = ("image", "video", "url", "path", "base64")
        targets = []
        for messages in conversations:
            for position, message in enumerate(messages):
                content = message.get("content") if message.get("role") == "assistant" else None
                if continue_final_message in (True, "content") and position == len(messages) - 1 and content:
                    texts = [
                        index for index, block in enumerate(content) if isinstance(block, dict) and "text" in block
                    ]
                    content = content[: texts[-1] + 1] if texts else content
                for block in content if isinstance(content, (list, tuple)) else []:
                    if not isinstance(block, dict) or block.get("type") not in ("image", "video"):
                        continue
                    if all(block.get(key) is None for key in data_keys):
                        spec = {
                            key: block[key] for key in ("height", "width", "num_frames") if block.get(key) is not None
                        }
                        targets.append({"type": block["type"], **spec})
        return targets

    # ---------------------------------------------------------------------------------------------- counting

    @staticmethod
    def get_num_visual_tokens(grid_thw) -> int | list[int]:
        """Number of latent tokens (= placeholder tokens) of a grid `(t, h, w)`, or of each row of a `[N, 3]` grid.

        Example:

        ```python
        >>> HydraXProcessor.get_num_visual_tokens([5, 16, 16])
        1280
        ```
        """
        grid = torch.as_tensor(grid_thw)
        if grid.ndim == 1:
            return int(grid.prod())
        return grid.prod(dim=-1).tolist()

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder counts for images `(height, width)` and videos `(num_frames, height, width)` (vLLM hook), under
        the same keyword arguments a processor call takes (e.g. `max_pixels=512 * 512`, `images_kwargs={...}`)."""
        merged = self._merge_kwargs(ProcessingKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        data = {}
        if image_sizes is not None:
            images_kwargs = merged["images_kwargs"]
            tokens = [self.image_processor.get_number_of_image_patches(*size, images_kwargs) for size in image_sizes]
            # one `pixel_values` row per image ([N, 3, H, W], as LLaVA and Gemma 3 count), not its latent tokens
            data.update(num_image_tokens=tokens, num_image_patches=[1] * len(image_sizes))
        if video_sizes is not None:
            videos_kwargs = merged["videos_kwargs"]
            data["num_video_tokens"] = [
                self.video_processor.get_num_of_video_patches(*size, videos_kwargs) for size in video_sizes
            ]
        return MultiModalData(**data)

    # -------------------------------------------------------------------------------------------- decoding

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        """Decodes generated token ids (`[batch, length]` or `[length]`) to a list of strings."""
        if hasattr(generated_outputs, "ndim") and generated_outputs.ndim == 1:
            generated_outputs = generated_outputs[None]
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    def post_process_multimodal_output(
        self, generated_outputs, skip_special_tokens=True, generation_mode=None, output_type="pil", **kwargs
    ):
        r"""
        Post-processes generated outputs by `generation_mode`: `"text"` (token ids, decoded), `"image"` (pixels in
        [-1, 1], `[N, 3, H, W]`) or `"video"` (`[N, 3, T, H, W]`), the latter two to `output_type` `"pil"`, `"np"` or
        `"pt"` (see `HydraXImageProcessor.postprocess` / `HydraXVideoProcessor.postprocess`).
        """
        if generation_mode in (None, "text"):
            return self.post_process_image_text_to_text(generated_outputs, skip_special_tokens, **kwargs)
        if generation_mode == "image":
            return self.image_processor.postprocess(generated_outputs, output_type=output_type)
        if generation_mode == "video":
            return self.video_processor.postprocess(generated_outputs, output_type=output_type)
        raise ValueError(f"`generation_mode` must be 'text', 'image' or 'video', got {generation_mode!r}.")

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names
        names += self.video_processor.model_input_names
        return list(dict.fromkeys(names + ["mm_token_type_ids", "target_grid_thw", "target_mask"]))


__all__ = ["HYDRAX_CHAT_TEMPLATE", "HydraXProcessor"]
