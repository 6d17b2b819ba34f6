"""Hydra-X text-to-image, text-to-video and image-to-video pipeline, and the sampler every Hydra-X pipeline shares.

One loop (`HydraXSamplerMixin._denoise`) serves every task. The prompt (with an edit's source) runs through the LLM
once (`HydraXForConditionalGeneration.prepare_generation_prefix`); each Euler step of diffusers'
`FlowMatchEulerDiscreteScheduler` then predicts the velocity of the noisy target after that cached prefix
(`predict_velocity`, which computes no LM-head logits), with every guidance branch in one batched forward. The tasks
differ only in what is cached, what is noisy and what is clean:

| task           | cached prefix                                    | noisy                 | clean                 |
|----------------|--------------------------------------------------|-----------------------|-----------------------|
| text-to-image  | prompt                                           | the image latent      | -                     |
| text-to-video  | prompt                                           | all latent frames     | -                     |
| image-to-video | prompt                                           | latent frames 1, 2, … | latent frame 0, image |
| edit           | prompt + source tokens; source's Sem-ViT cache   | the target latent     | -                     |

This file imports only torch, diffusers, transformers and its siblings `pipeline_loading_hydrax` and
`lora_loading_hydrax`: a checkpoint folder carries them as pipeline code for
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
"""

import contextvars
import inspect
import json
import math
import numbers
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers import __version__ as diffusers_version
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.guiders.guider_utils import rescale_noise_cfg
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import AutoModel, AutoProcessor, PreTrainedModel, ProcessorMixin

from .lora_loading_hydrax import HydraXLoraLoaderMixin
from .pipeline_loading_hydrax import HydraXRootModel, HydraXRootProcessor


logger = logging.get_logger(__name__)
# Set while `from_pipe` builds a pipeline that was given no dtype: the components keep theirs (see `from_pipe`).
_KEEP_DTYPES = contextvars.ContextVar("hydrax_keep_dtypes", default=False)

# Files a pipeline folder carries (copied from beside this module): the pipeline code at the root, and the loader that
# diffusers' generic `from_pretrained` finds in the `model/` and `processor/` component folders (and that the pipeline
# code imports).
LOADER_FILE = "pipeline_loading_hydrax.py"
# `model/root_weights.{variant}.json`: diffusers looks for a weights variant in the component's subfolder only, and
# Hydra-X keeps its weights at the folder root; this file says the root holds that variant
VARIANT_MARKER = "root_weights.{variant}.json"
PIPELINE_FILES = ("pipeline_hydrax.py", "pipeline_hydrax_edit.py", "lora_loading_hydrax.py", LOADER_FILE)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The guidance branches an encoded prompt can hold, in their batch order: a prefix holds the first one, two or three.
GUIDANCE_BRANCHES = ("conditional", "text-free", "source-free")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import sys, tempfile
        >>> sys.path.insert(0, "conversion")  # run from the repository root; a trained checkpoint needs none of this
        >>> from build_hydrax import build_checkpoint
        >>> from modeling_hydrax import HydraXPipeline

        >>> folder = build_checkpoint("tiny", f"{tempfile.mkdtemp()}/hydrax-tiny")  # random weights, 32² = 2×2 latents
        >>> pipe = HydraXPipeline.from_pretrained(folder)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> image = pipe("A red fox in the snow", height=32, width=32, num_inference_steps=2).images[0]
        >>> image.size
        (32, 32)
        >>> video = pipe("A red fox running", height=32, width=32, num_frames=5, num_inference_steps=2).frames[0]
        >>> len(video), video[0].size
        (5, (32, 32))
        >>> animated = pipe("The fox runs off", image=image, num_frames=5, num_inference_steps=2).frames[0]
        >>> len(animated)
        5
        ```

        Save a video with `diffusers.utils.export_to_video(video, "fox.mp4", fps=8)` (needs `imageio-ffmpeg`).
"""


@dataclass
class HydraXPipelineOutput(BaseOutput):
    """
    Output of the Hydra-X pipelines.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` `[B, H, W, 3]` or `torch.Tensor` `[B, 3, H, W]`, in [0, 1]):
            Generated or edited images (`num_frames=1`); normalised latents `[B, C, 1, h, w]` for
            `output_type="latent"`.
        frames (`list[list[PIL.Image.Image]]`, `np.ndarray` `[B, F, H, W, 3]` or `torch.Tensor` `[B, F, 3, H, W]`):
            Generated videos (`num_frames > 1`); normalised latents `[B, C, 1 + (F - 1) / 4, h, w]` for
            `output_type="latent"`.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | None = None


@dataclass
class HydraXEncodedPrompt:
    """
    Prompts run through the LLM once by [`HydraXPipeline.encode_prompt`] (or, with their source images,
    [`HydraXEditPipeline.encode_prompt`]), for `prompt_embeds=` in any number of calls.

    Hydra-X has no separate text encoder: the LLM that reads the prompt also predicts every denoising step, so the
    encoded prompt is that LLM's cached prefix (keys and values of every layer) rather than embedding tensors. A text
    prompt's prefix ends where the generation target starts, so one encoding serves any size, frame count, seed or
    image-to-video anchor; an edit's also holds its source's Sem-ViT frame cache, which fixes the output size.

    Args:
        prefix (`HydraXGenerationPrefix`): the cached prefix of every guidance branch, branch-major, each prompt
            repeated `num_images_per_prompt` times.
        num_prompts (`int`): prompts encoded.
        num_images_per_prompt (`int`): outputs per prompt the prefix has rows for.
        num_branches (`int`): the guidance branches the prefix holds, the first of `GUIDANCE_BRANCHES`: 1, the
            conditional one (guidance off); 2, also the text-free (or negative) one of classifier-free guidance; 3,
            also an edit's source-free one of image guidance. It serves the calls whose guidance scales run as many.
        size (`tuple[int, int]`, *optional*): an edit's output `(height, width)`, the size its sources were encoded at.
    """

    prefix: object
    num_prompts: int
    num_images_per_prompt: int
    num_branches: int
    size: tuple[int, int] | None = None


def default_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The rectified-flow scheduler Hydra-X samples with: Euler steps, σ = 1 is noise, and the resolution shift `mu`
    that the pipelines take from `HydraXForConditionalGeneration.flow_shift_mu`."""
    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)


def pipeline_code_folder(model) -> Path:
    """Where the pipeline files to save come from: this package, or, for a pipeline loaded as remote code, the
    checkpoint folder its model came from. diffusers' module cache, where remote pipeline code runs, is shared by
    every checkpoint and holds only the modules loaded so far: a copy from there could miss a file or bring another
    checkpoint's."""
    origin = Path(getattr(model, "hydrax_pipeline_folder", None) or str(getattr(model, "name_or_path", "") or "."))
    if __name__.startswith("diffusers_modules") and all((origin / name).is_file() for name in PIPELINE_FILES):
        return origin
    return Path(__file__).resolve().parent


def copy_code(source: Path, target: Path) -> None:
    """`shutil.copyfile`, except onto itself (a remote-code pipeline saved back into the folder it came from), which
    is already in place and which `copyfile` refuses."""
    if not (target.exists() and os.path.samefile(source, target)):
        shutil.copyfile(source, target)


def write_pipeline_files(
    folder,
    scheduler: FlowMatchEulerDiscreteScheduler | None = None,
    pipeline_class=None,
    code_folder: Path | None = None,
    variant: str | None = None,
):
    """Turn a Hydra-X checkpoint folder (the model's and processor's transformers files, as `save_pretrained` and
    `conversion/build_hydrax.py` write them) into a diffusers pipeline folder as well, with no second copy of the
    weights: `model_index.json`, `scheduler/`, the pipeline code (from `code_folder`, default this package's), and the
    root-component loader in `model/` and `processor/` (see `pipeline_loading_hydrax.py`). `pipeline_class` (default
    `HydraXPipeline`) is the class that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` builds;
    with a weights `variant` at the root (`model.{variant}.safetensors`), `model/` marks it (`VARIANT_MARKER`), so that
    diffusers' `from_pretrained(folder, variant=...)` finds it and passes it on."""
    folder = Path(folder)
    code = Path(code_folder) if code_folder is not None else Path(__file__).resolve().parent
    missing = [name for name in PIPELINE_FILES if not (code / name).is_file()]
    if missing:
        raise ValueError(
            f"Cannot write the pipeline code: {missing} are not in {code}. Save a pipeline loaded from its checkpoint "
            "folder (or with the hydrax package installed), so that every pipeline file can be copied."
        )
    pipeline_class = pipeline_class or HydraXPipeline
    scheduler = scheduler if scheduler is not None else default_scheduler()
    scheduler.save_pretrained(folder / "scheduler")
    for name in PIPELINE_FILES:
        copy_code(code / name, folder / name)
    for component in ("model", "processor"):
        (folder / component).mkdir(exist_ok=True)
        copy_code(code / LOADER_FILE, folder / component / LOADER_FILE)
    if variant is not None:
        marker = {"variant": variant, "weights": f"the checkpoint root's model.{variant}.safetensors"}
        (folder / "model" / VARIANT_MARKER.format(variant=variant)).write_text(json.dumps(marker, indent=2) + "\n")
    loader = Path(LOADER_FILE).stem
    index = {
        "_class_name": [pipeline_class.__module__.rsplit(".", 1)[-1], pipeline_class.__name__],
        "_diffusers_version": diffusers_version,
        "model": [loader, HydraXRootModel.__name__],
        "processor": [loader, HydraXRootProcessor.__name__],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def image_count(image) -> int:
    """How many images `image` holds: one PIL image / `[C, H, W]` tensor / `[H, W, C]` array, a batch, or a list of
    them (a batch in a list counts its images, as the list is concatenated)."""
    if isinstance(image, (list, tuple)):
        return sum(image_count(item) for item in image)
    if isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4:
        return image.shape[0]
    return 1


def unit_range(image):
    """uint8 pixels (`np.asarray(pil_image)`, a `read_image` tensor) scaled to [0, 1], the range diffusers' image
    processor takes arrays and tensors in; anything else as it is."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        return image.float() / 255
    return image


def plain_ints(*values):
    """numpy integers (e.g. `np.int64` from an array of settings) as Python ints, as diffusers pipelines take them;
    anything else, bools included, as it is, for the checks to judge."""
    return [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in values]


def image_size(image) -> tuple[int, int]:
    """`(height, width)` of a PIL image, a `[(B,) C, H, W]` tensor, a `[(B,) H, W, C]` array or a list's first item."""
    if isinstance(image, (list, tuple)):
        return image_size(image[0])
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, torch.Tensor):
        return tuple(image.shape[-2:])
    return tuple(image.shape[-3:-1])


class HydraXSamplerMixin(HydraXLoraLoaderMixin):
    r"""
    What the Hydra-X pipelines share: components, checks, prompt and image preparation, the sampling loop, decoding,
    loading from / saving to a Hydra-X checkpoint folder, and LoRA adapters ([`HydraXLoraLoaderMixin`]). Mixed into
    `DiffusionPipeline`.

    Args:
        model ([`HydraXForConditionalGeneration`]):
            The unified model: Hydra-XTok (encode / decode, Sem-ViT) + Qwen2.5 LLM + flow head.
        processor ([`HydraXProcessor`]):
            Builds the chat prompts and their visual placeholders.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]):
            Rectified-flow Euler scheduler; with `use_dynamic_shifting=True` it takes the model's resolution shift.
    """

    model_cpu_offload_seq = "model"
    _callback_tensor_inputs = ["latents"]
    _encodes_sources = False  # whether `encode_prompt` takes source images (the edit pipeline's)

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        if hasattr(model, "get_base_model"):  # a `PeftModel`: its model, adapters in place, for the LoRA methods
            model = model.get_base_model()
        self.register_modules(model=model, processor=processor, scheduler=scheduler)
        self.patch_size = model.config.vision_config.patch_size
        self.temporal_compression = model.config.vision_config.temporal_compression_ratio
        self.video_processor = VideoProcessor(vae_scale_factor=self.patch_size, do_convert_rgb=True)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def guidance_rescale(self):
        return self._guidance_rescale

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt

    # ------------------------------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""
        Load the pipeline from a Hydra-X checkpoint folder or Hub repo: the model and processor from its root (the
        transformers files, one copy shared with `AutoModel` / `AutoProcessor`), the scheduler from `scheduler/`, or
        [`default_scheduler`] when there is none (e.g. a folder from `conversion/build_hydrax.py`).

        `dtype` (or `torch_dtype`; a per-component dict as diffusers takes it, `{"model": torch.bfloat16}`, with
        `"default"` for the rest and float32 without one), `device_map`, `attn_implementation`, `trust_remote_code`
        and the Hub arguments (`cache_dir`, `revision`, `token`, `local_files_only`, ...) go to the model's
        `from_pretrained`. Components passed by name (`model=`, `processor=`, `scheduler=`) are used as they are.
        """
        path = os.fspath(pretrained_model_name_or_path)
        components = {name: kwargs.pop(name) for name in ("model", "processor", "scheduler") if name in kwargs}
        if "torch_dtype" in kwargs:
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        if isinstance(kwargs.get("dtype"), dict):  # diffusers' per-component dtypes: the model's entry, else "default"
            kwargs["dtype"] = kwargs["dtype"].get("model", kwargs["dtype"].get("default", torch.float32))
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        if "model" not in components:
            components["model"] = AutoModel.from_pretrained(path, **kwargs)
        if "processor" not in components:
            remote = {"trust_remote_code": kwargs["trust_remote_code"]} if "trust_remote_code" in kwargs else {}
            components["processor"] = AutoProcessor.from_pretrained(path, **hub_kwargs, **remote)
        if "scheduler" not in components:
            try:  # the class `save_pretrained` recorded, as `DiffusionPipeline.from_pretrained` restores it
                config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", **hub_kwargs)
                scheduler_class = getattr(diffusers, config.get("_class_name", ""), FlowMatchEulerDiscreteScheduler)
                components["scheduler"] = scheduler_class.from_config(config)
            except OSError:
                logger.info(f"{path} has no scheduler/ folder; using `default_scheduler()`.")
                components["scheduler"] = default_scheduler()
        pipeline = cls(**components)
        pipeline.register_to_config(_name_or_path=path)
        return pipeline

    def push_to_hub(self, *args, **kwargs):
        """Refused: diffusers' upload writes its blank model card (`library_name: diffusers`, no remote-code
        snippet). Save the folder, then upload it (`conversion/build_hydrax.py --push-to-hub` writes the Hydra-X
        card; `conversion/model_card_hydrax.py` writes one for any folder)."""
        raise ValueError(
            "push_to_hub is not supported by Hydra-X pipelines: save_pretrained(folder), write its card with "
            "conversion/model_card_hydrax.py --model folder --model-id REPO_ID, then upload the folder with "
            "huggingface_hub.upload_folder."
        )

    def save_pretrained(
        self, save_directory, max_shard_size: int | str = "50GB", variant: str | None = None, **kwargs
    ):
        """Save a folder that both routes load: the model and processor at the root (transformers' files, with their
        remote code), plus `model_index.json`, `scheduler/`, the pipeline code and the root-component loaders (see
        [`write_pipeline_files`]). Other keyword arguments go to the model's `save_pretrained`."""
        if kwargs.get("push_to_hub"):
            self.push_to_hub()
        self._check_no_lora("save_pretrained")
        self.model.save_pretrained(save_directory, max_shard_size=max_shard_size, variant=variant, **kwargs)
        self.processor.save_pretrained(save_directory)
        write_pipeline_files(save_directory, self.scheduler, type(self), pipeline_code_folder(self.model), variant)

    def enable_group_offload(self, *args, **kwargs):
        """diffusers' group offloading (`DiffusionPipeline.enable_group_offload`), refused for a model whose LM head
        shares the token embeddings' weight (`tie_word_embeddings`, e.g. the 1.5B preset): the two sit in different
        groups, and offloading one takes the shared weight from the other. `enable_sequential_cpu_offload` and
        `device_map` keep shared weights together."""
        if self.model.get_output_embeddings().weight is self.model.get_input_embeddings().weight:
            raise ValueError(
                "This model's LM head shares the token embeddings' weight (tie_word_embeddings=True), which group "
                "offloading cannot keep in one group; use enable_sequential_cpu_offload() or "
                "from_pretrained(..., device_map='auto', max_memory=...) instead."
            )
        return super().enable_group_offload(*args, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' `from_pipe`: a pipeline sharing `pipeline`'s components. Without `dtype` (or `torch_dtype`) the
        shared components keep their dtypes (a bf16 LLM beside a float32 visual tokenizer too); diffusers would cast
        every one to float32, in place, under both pipelines."""
        if kwargs.get("dtype") is not None or kwargs.get("torch_dtype") is not None:
            return super().from_pipe(pipeline, **kwargs)
        token = _KEEP_DTYPES.set(True)
        try:
            return super().from_pipe(pipeline, **kwargs)
        finally:
            _KEEP_DTYPES.reset(token)

    def to(self, *args, **kwargs):
        """diffusers' `to`, except that the dtype-only call that closes a `from_pipe` without a dtype is skipped, and
        that a call asking for no change leaves a model that `device_map` spread or offloaded where it is (accelerate
        refuses to move an offloaded model even to where it is)."""
        if _KEEP_DTYPES.get() and not args and set(kwargs) == {"dtype"}:
            return self
        requested = [*args, kwargs.get("device"), kwargs.get("dtype")]
        if getattr(self.model, "hf_device_map", None) and all(
            value in (None, self.model.dtype) for value in requested
        ):
            return self
        return super().to(*args, **kwargs)

    # --------------------------------------------------------------------------------------------- checks
    def _prompt_list(self, prompt, name: str = "prompt") -> list[str]:
        """`prompt` as a list of texts, none of which holds the processor's visual-block markers (they would be read
        as image structure: a target placeholder, an image without pixels)."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(item, str) for item in prompts):
            raise TypeError(
                f"`{name}` must be a string or a list of strings, got {type(prompt).__name__}: {prompt!r}."
            )
        if not prompts:
            raise ValueError(f"`{name}` is an empty list; pass at least one prompt.")
        processor = self.processor
        markers = (processor.image_token, processor.video_token, processor.target_token)
        markers += (processor.vision_start_token, processor.vision_end_token)
        for index, text in enumerate(prompts):
            found = [marker for marker in markers if marker in text]
            if found:
                raise ValueError(
                    f"`{name}` {index} holds {found}, which mark visual blocks for the model and would be read as "
                    "image structure, not as text; remove them from the prompt."
                )
        return list(prompts)

    @staticmethod
    def _check_guidance(**scales) -> None:
        """Each guidance scale (by name) is a finite number: NaN would turn guidance off silently (or give NaN
        latents), infinity NaN latents."""
        for name, scale in scales.items():
            if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
                raise ValueError(f"`{name}` must be a finite number (guidance is off at ≤ 1), got {scale!r}.")

    def _set_guidance_rescale(self, guidance_rescale, **scales: float) -> None:
        """Checks `guidance_rescale` (a number in [0, 1]) and keeps it for the steps; it acts only on guided steps, so
        a call whose guidance `scales` (by name) are all ≤ 1 logs that it has no effect."""
        if (
            isinstance(guidance_rescale, bool)
            or not isinstance(guidance_rescale, numbers.Real)
            or not 0 <= guidance_rescale <= 1
        ):
            raise ValueError(
                f"`guidance_rescale` must be a number in [0, 1] (0: plain guidance, 0.7: the paper's suggestion), got "
                f"{guidance_rescale!r}."
            )
        if guidance_rescale > 0 and all(scale <= 1 for scale in scales.values()):
            settings = ", ".join(f"{name}={scale}" for name, scale in scales.items())
            logger.warning(
                f"guidance_rescale={guidance_rescale} has no effect: it rescales classifier-free guidance, which is "
                f"off at {settings}."
            )
        self._guidance_rescale = guidance_rescale

    def _negative_prompt_list(self, negative_prompt, num_prompts: int, **scales: float) -> list[str] | None:
        """The negative prompts, one per prompt; they act only through guidance, so one of the guidance `scales`
        (by name, checked to be finite) must exceed 1."""
        self._check_guidance(**scales)
        if negative_prompt is None:
            return None
        if all(scale <= 1 for scale in scales.values()):
            settings = ", ".join(f"{name}={scale}" for name, scale in scales.items())
            raise ValueError(
                f"`negative_prompt` only acts through classifier-free guidance, which is off at {settings}; raise the "
                "guidance scale above 1 or drop `negative_prompt`."
            )
        negatives = self._prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            return negatives * num_prompts
        if len(negatives) != num_prompts:
            raise ValueError(
                f"Got {len(negatives)} negative prompts for {num_prompts} prompts; pass one negative prompt or "
                "one per prompt."
            )
        return negatives

    def _prompts(self, prompt, negative_prompt, max_sequence_length, **scales: float):
        """The prompts and negative prompts (`None` without) of a call, checked, and cut to `max_sequence_length`."""
        prompts = self._truncated(self._prompt_list(prompt), max_sequence_length)
        negatives = self._negative_prompt_list(negative_prompt, len(prompts), **scales)
        return prompts, None if negatives is None else self._truncated(negatives, max_sequence_length)

    def _truncated(self, prompts: list[str], max_sequence_length: int | None) -> list[str]:
        """`prompts` cut after their first `max_sequence_length` tokens, with what is cut logged, as diffusers'
        pipelines cut long prompts; `None` keeps them whole (the LLM reads any length its positions allow)."""
        limit = max_sequence_length
        if limit is None:
            return prompts
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(
                f"`max_sequence_length` must be an int ≥ 1 (text tokens per prompt) or None (no limit), got {limit!r}."
            )
        tokenizer = self.processor.tokenizer
        texts = list(dict.fromkeys(prompts))  # each text once: one negative prompt serves every prompt
        offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        cut = {}
        for text, spans in zip(texts, offsets):
            if len(spans) <= limit:
                continue
            # Byte-level tokens of one character (emoji, CJK, accents) share its span: cut before a character whose
            # tokens straddle the limit, and step back further should the kept text tokenize longer than the limit
            end = min(spans[limit - 1][1], spans[limit][0])
            while end and len(tokenizer(text[:end], add_special_tokens=False).input_ids) > limit:
                end = max((start for start, _ in spans if start < end), default=0)
            cut[text] = text[:end]
            logger.warning(
                f"The following part of your input was truncated because `max_sequence_length` is set to {limit} "
                f"tokens: {text[end:]!r}"
            )
        return [cut.get(text, text) for text in prompts]

    @staticmethod
    def _lora_scale(attention_kwargs) -> float | None:
        """The LoRA strength in diffusers' `attention_kwargs={"scale": s}` (checked by `_scaled_lora`), the one key
        Hydra-X takes there: its attention runs through transformers' attention interface, which takes no per-call
        arguments."""
        if attention_kwargs is None:
            return None
        if not isinstance(attention_kwargs, dict):
            raise TypeError(
                f"`attention_kwargs` must be a dict such as {{'scale': 0.5}}, got {type(attention_kwargs).__name__}."
            )
        unknown = sorted(set(attention_kwargs) - {"scale"}, key=str)
        if unknown:
            raise ValueError(
                f"`attention_kwargs` holds {unknown}, which Hydra-X does not take: its one key is `scale`, the "
                "strength of the loaded LoRA adapters, e.g. {'scale': 0.5}."
            )
        return attention_kwargs.get("scale")

    def _num_prompts(self, prompt, negative_prompt, prompt_embeds, num_images_per_prompt, encoded: dict, **scales):
        """How many prompts a call has, from `prompt` or from `prompt_embeds`, which must suit the call: made by
        `encode_prompt`, not passed beside the inputs it already holds (`encoded`, by name), with the guidance
        branches the call's `scales` run, its outputs per prompt, and the pipeline's current dtype and device."""
        self._check_guidance(**scales)
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("Pass `prompt`, or `prompt_embeds` from `pipe.encode_prompt(prompt, ...)`.")
            prompts = self._prompt_list(prompt)
            self._negative_prompt_list(negative_prompt, len(prompts), **scales)
            return len(prompts)
        if not isinstance(prompt_embeds, HydraXEncodedPrompt):
            raise TypeError(
                f"`prompt_embeds` must come from `pipe.encode_prompt(...)`, got {type(prompt_embeds).__name__}."
            )
        if (prompt_embeds.size is not None) != self._encodes_sources:
            made = "an edit's instructions with their sources" if prompt_embeds.size else "text prompts"
            raise ValueError(
                f"`prompt_embeds` hold {made}, which {type(self).__name__} cannot sample from; encode with this "
                "pipeline's own `encode_prompt`."
            )
        passed = {"prompt": prompt, "negative_prompt": negative_prompt, **encoded}
        passed = [name for name, value in passed.items() if value is not None]
        if passed:
            raise ValueError(
                f"`prompt_embeds` already hold the prompts and negative prompts (an edit's, its sources at their "
                f"size); pass {passed} to `encode_prompt`, and `prompt_embeds` alone here."
            )
        held, needed = prompt_embeds.num_branches, len(self._guidance_weights(**scales))
        if held != needed:
            settings = ", ".join(f"{name}={scale}" for name, scale in scales.items())
            raise ValueError(
                f"`prompt_embeds` hold {held} guidance branch(es) ({', '.join(GUIDANCE_BRANCHES[:held])}), but this "
                f"call ({settings}) runs {needed} ({', '.join(GUIDANCE_BRANCHES[:needed])}); encode the prompts with "
                "this call's guidance scales."
            )
        if prompt_embeds.num_images_per_prompt != num_images_per_prompt:
            raise ValueError(
                f"`prompt_embeds` were encoded for num_images_per_prompt={prompt_embeds.num_images_per_prompt}, but "
                f"this call asks for {num_images_per_prompt}; encode with the call's num_images_per_prompt."
            )
        keys = prompt_embeds.prefix.cache.layers[0].keys
        dtype, device = self.model.get_input_embeddings().weight.dtype, self._execution_device
        if keys.dtype != dtype or keys.device.type != device.type:
            raise ValueError(
                f"`prompt_embeds` were encoded in {keys.dtype} on {keys.device.type}, but the pipeline now runs in "
                f"{dtype} on {device.type}: encode the prompts again after `pipe.to(...)`."
            )
        return prompt_embeds.num_prompts

    def _check_size(self, height, width):
        patch = self.patch_size
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < patch or value % patch:
                nearest = max(patch, round(value / patch) * patch) if isinstance(value, numbers.Real) else 16 * patch
                raise ValueError(
                    f"`{name}` must be a positive multiple of the tokenizer's patch size {patch}, got {value!r}; "
                    f"use e.g. {nearest}."
                )

    def _check_inputs(
        self,
        height,
        width,
        num_inference_steps,
        sigmas,
        num_images_per_prompt,
        output_type,
        callback_on_step_end_tensor_inputs,
    ):
        self._check_size(height, width)
        if sigmas is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps` must be an int ≥ 1, got {num_inference_steps!r}.")
        if sigmas is not None:
            try:
                levels = torch.as_tensor(sigmas, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                levels = None
            if levels is None or levels.ndim != 1 or not levels.numel() or not bool(levels.isfinite().all()):
                raise ValueError(
                    f"`sigmas` must be a non-empty 1-D sequence of finite noise levels (σ = 1 is noise), one per "
                    f"step, e.g. [1.0, 0.75, 0.5, 0.25]; got {sigmas!r}."
                )
            if bool((levels < 0).any() or (levels > 1).any() or (levels[1:] > levels[:-1]).any()):
                raise ValueError(
                    f"`sigmas` are noise levels falling from 1 (noise) toward 0 (the image), within [0, 1], e.g. "
                    f"[1.0, 0.75, 0.5, 0.25]; got {sigmas!r}."
                )
        self._check_images_per_prompt(num_images_per_prompt)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [
            name for name in callback_on_step_end_tensor_inputs or [] if name not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` names {unknown}, which this pipeline does not have; choose "
                f"from {self._callback_tensor_inputs}."
            )

    @staticmethod
    def _check_images_per_prompt(num_images_per_prompt):
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an int ≥ 1, got {num_images_per_prompt!r}.")

    def _check_images(self, image, num_prompts: int, name: str = "image"):
        items = image if isinstance(image, (list, tuple)) else [image]
        for item in items:
            if not isinstance(item, (PIL.Image.Image, np.ndarray, torch.Tensor)):
                raise TypeError(
                    f"`{name}` must be a PIL image, a numpy array `[H, W, C]` or a torch tensor `[C, H, W]` in [0, 1] "
                    f"(or a batch or list of them), got {type(item).__name__}."
                )
            channels = None
            if isinstance(item, np.ndarray):
                channels = item.shape[-1] if item.ndim in (3, 4) else None
            elif isinstance(item, torch.Tensor):
                channels = item.shape[-3] if item.ndim in (3, 4) else None
            if isinstance(item, (np.ndarray, torch.Tensor)) and channels != 3:
                layout = "[H, W, 3] arrays" if isinstance(item, np.ndarray) else "[3, H, W] tensors"
                raise ValueError(
                    f"`{name}` as an array or tensor holds RGB pixels ({layout}, or batches of them), got shape "
                    f"{tuple(item.shape)}; convert it first, or pass a PIL image (any mode, e.g. grayscale or RGBA, "
                    "is converted to RGB)."
                )
            integer = (np.uint8, np.uint16, torch.uint8, torch.uint16)
            dtype = item.dtype.newbyteorder("=") if isinstance(item, np.ndarray) else getattr(item, "dtype", None)
            is_float = isinstance(item, (np.ndarray, torch.Tensor)) and dtype not in integer
            if is_float and not (item.is_floating_point() if isinstance(item, torch.Tensor) else dtype.kind == "f"):
                raise ValueError(
                    f"`{name}` arrays and tensors hold uint8 (0–255) or uint16 pixels, or floats in [0, 1]; got dtype "
                    f"{item.dtype}: convert it first (e.g. `.astype(np.uint8)` for 0–255 integers)."
                )
            if is_float and math.prod(item.shape) and not 0 <= float(item.min()) <= float(item.max()) <= 1:
                raise ValueError(
                    f"A float `{name}` array or tensor must hold values in [0, 1], got [{float(item.min())}, "
                    f"{float(item.max())}]; divide 0–255 pixels by 255, or pass uint8 or uint16 pixels or a PIL image."
                )
        count = image_count(image)
        if count not in (1, num_prompts):
            raise ValueError(
                f"Got {count} images for {num_prompts} prompts; pass one image for all prompts or one per prompt."
            )

    # ----------------------------------------------------------------------------------- inputs to tensors
    def _output_size(self, height, width, image=None, max_area=None, video: bool = False) -> tuple[int, int]:
        """`height` and `width`. By default: the size of `image` snapped to multiples of the patch size (its latent
        grid), scaled down to at most `max_area` pixels with its aspect ratio kept when it is larger (logged; the
        processor's own `smart_resize` rule); with only one side given, the other from the image's aspect ratio;
        without an image, the side of the processor's `max_pixels`. The budget is the image processor's, or for a
        `video` the video processor's per frame (448² by default: the sizes videos train at)."""
        patch = self.patch_size
        height, width = (int(side) if isinstance(side, numbers.Integral) else side for side in (height, width))
        image_processor = self.processor.image_processor
        sizes = (self.processor.video_processor if video else image_processor).size
        budget = sizes["max_pixels"] if max_area is None else max_area
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < patch * patch:
            raise ValueError(
                f"`max_area` must be an int ≥ {patch * patch} pixels (one {patch}×{patch} patch), got {budget!r}; "
                "e.g. 1024 * 1024."
            )
        if image is None:
            side = int(sizes["max_pixels"] ** 0.5)
            default = [max(patch, side - side % patch)] * 2
            return default[0] if height is None else height, default[1] if width is None else width
        source = image_size(image)
        if height is not None or width is not None:  # one side given: the other keeps the image's aspect ratio
            ratio = source[1] / source[0]
            height = height if height is not None else max(patch, round(width / ratio / patch) * patch)
            return height, width if width is not None else max(patch, round(height * ratio / patch) * patch)
        bounds = {"size": {"min_pixels": patch * patch, "max_pixels": budget}, "patch_size": patch}
        default = [side * patch for side in image_processor.get_image_grid_thw(*source, bounds)[1:]]
        snapped = [max(patch, round(side / patch) * patch) for side in source]
        if default != snapped:
            logger.warning(
                f"The input image is {source[0]}x{source[1]} (height x width), {snapped[0]}x{snapped[1]} on the "
                f"{patch}-pixel grid: more than max_area={budget} pixels, so the output defaults to "
                f"{default[0]}x{default[1]}, its aspect ratio as far as the grid allows. Pass `height` and `width`, "
                "or a larger `max_area`, for another size."
            )
        return default[0], default[1]

    def _preprocess_images(self, image, height: int, width: int, num_prompts: int) -> torch.Tensor:
        """Images → pixels `[num_prompts, 3, height, width]` in [-1, 1]; a resize is logged."""
        items = image if isinstance(image, (list, tuple)) else [image]
        sizes = sorted({image_size(item) for item in items} - {(height, width)})
        if sizes:
            logger.warning(f"Resizing the input image(s) of size(s) {sizes} (height, width) to {height}x{width}.")
        image_processor = self.processor.image_processor  # its colours: 16-bit scaled, transparency onto white
        pixels = [self._resized(unit_range(image_processor.rgb_input(item)), height, width) for item in items]
        pixels = torch.cat(pixels)  # one by one: items of different sizes are resized before they meet
        return pixels.expand(num_prompts, -1, -1, -1) if pixels.shape[0] == 1 else pixels

    def _resized(self, image, height: int, width: int) -> torch.Tensor:
        """One `image` item (PIL, array or tensor) → pixels `[N, 3, height, width]` in [-1, 1]. diffusers resizes
        PIL images with Lanczos but arrays and tensors with `F.interpolate`'s nearest neighbour (no averaging: a
        fine pattern aliased, and the same pixels edited differently by type), so those go through PIL when resized."""
        if not isinstance(image, PIL.Image.Image) and image_size(image) != (height, width):
            whole = self.video_processor.preprocess(image, *image_size(image))  # no resize: its own size
            image = self.video_processor.postprocess(whole, output_type="pil")
        return self.video_processor.preprocess(image, height, width).float()

    @staticmethod
    def _conversation(text: str, target: dict, source: torch.Tensor | None = None) -> list[dict]:
        """A one-turn chat: the user's text, then the edit source if any (the spec's `[instruction, source, target]`:
        the source's LLM states see the instruction), then the data-less target block."""
        content = [{"type": "text", "text": text}]
        if source is not None:
            content.append({"type": "image", "image": source})
        return [{"role": "user", "content": content}, {"role": "assistant", "content": [target]}]

    def _tokenize(self, conversations: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat conversations whose last turn is the data-less target block → the prompt prefix up to and including
        the target's `<|vision_start|>`, left-padded to one length (`input_ids`, `attention_mask`)."""
        images_kwargs = {"do_resize": False, "do_rescale": False, "do_normalize": False}  # sources come in [-1, 1]
        inputs = self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left", "images_kwargs": images_kwargs},
        )
        starts = inputs["target_mask"].int().argmax(dim=1)
        if bool((starts != starts[0]).any()):
            raise ValueError(f"The prompts' generation targets start at different positions {starts.tolist()}.")
        start = int(starts[0])
        return inputs["input_ids"][:, :start], inputs["attention_mask"][:, :start]

    def _encode_prompts(self, conversations: list, negative_conversations: list | None):
        """`(ids, mask)` of the conditional prefixes and of the text-free ones: the negative prompts, or else the
        prompts with their text dropped as in training (`unconditional_input_ids`); tokenized together, so every
        guidance branch has one length and they batch."""
        ids, mask = self._tokenize(conversations + (negative_conversations or []))
        if negative_conversations:
            count = len(conversations)
            return (ids[:count], mask[:count]), (ids[count:], mask[count:])
        return (ids, mask), (self.model.unconditional_input_ids(ids), mask)

    def _prepare_prefix(self, branches: list, num_images_per_prompt: int, source_pixel_values=None):
        """Run the guidance branches' prompts (branch-major, each prompt repeated per image) through the LLM once: the
        call's first use of the model, which brings it to the device under `enable_model_cpu_offload`."""
        self._onload_model()
        device = self._execution_device
        ids = torch.cat([branch[0] for branch in branches]).repeat_interleave(num_images_per_prompt, 0).to(device)
        mask = torch.cat([branch[1] for branch in branches]).repeat_interleave(num_images_per_prompt, 0).to(device)
        if source_pixel_values is not None:
            source_pixel_values = source_pixel_values.repeat_interleave(num_images_per_prompt, 0)
            source_pixel_values = source_pixel_values.to(device, self.model.dtype)
        return self.model.prepare_generation_prefix(ids, mask, source_pixel_values=source_pixel_values)

    def _onload_model(self):
        """Run the model's offloading hook as its `forward` would (diffusers' `apply_forward_hook` does the same for a
        VAE's `encode` / `decode`): the pipelines call the model's other methods, and `enable_model_cpu_offload`'s
        hook moves the model to the device only when its hook runs."""
        hook = getattr(self.model, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.model)

    def _latent_shape(self, batch_size, num_frames, height, width, generator, latents) -> tuple[int, ...]:
        """The shape of the noisy latents, with `generator` and `latents` checked against it before any model runs."""
        shape = (
            batch_size,
            self.model.config.vision_config.latent_channels,
            (num_frames - 1) // self.temporal_compression + 1,
            height // self.patch_size,
            width // self.patch_size,
        )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"Got {len(generator)} generators for {batch_size} outputs (prompts × num_images_per_prompt); pass "
                "one generator, or one per output."
            )
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(
                f"`latents` must have shape {shape} (batch × num_images_per_prompt, channels, latent frames, "
                f"height / {self.patch_size}, width / {self.patch_size}), got {tuple(latents.shape)}."
            )
        return shape

    def _prepare_latents(self, shape, generator, latents) -> torch.Tensor:
        device = self._execution_device
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return latents.to(device, torch.float32)

    def _set_timesteps(self, num_inference_steps, sigmas, num_tokens: int):
        """Timesteps from σ = 1 down to 1/N (Flux's and QwenImage's schedule; the scheduler's own ends at 1/1000 and
        spends its last step between σ ≈ 0.002 and 0) unless `sigmas` are given, with the model's resolution shift
        for a target of `num_tokens` latent tokens. Like diffusers' `retrieve_timesteps`, a scheduler gets only the
        arguments it takes (DPM-Solver++ with flow sigmas takes no `sigmas`: it gets the step count alone)."""
        accepted = inspect.signature(self.scheduler.set_timesteps).parameters
        steps = len(sigmas) if sigmas is not None else num_inference_steps
        kwargs = {}
        if "sigmas" in accepted:  # a numpy array, as Flux and QwenImage pass it (UniPC's flow sigmas need one)
            given = sigmas is not None
            kwargs["sigmas"] = (
                torch.as_tensor(sigmas).detach().float().cpu().numpy() if given else np.linspace(1.0, 1 / steps, steps)
            )
        elif sigmas is not None:
            raise ValueError(
                f"{type(self.scheduler).__name__}.set_timesteps takes no custom `sigmas`; pass `num_inference_steps` "
                "instead, or use FlowMatchEulerDiscreteScheduler."
            )
        if getattr(self.scheduler.config, "use_dynamic_shifting", False) and "mu" in accepted:
            kwargs["mu"] = self.model.flow_shift_mu(num_tokens)
        self.scheduler.set_timesteps(steps, device=self._execution_device, **kwargs)
        self.scheduler.set_begin_index(0)

    # ------------------------------------------------------------------------------------------- sampling
    def _step_guidance(self, held: int) -> list[float]:
        """This step's guidance weights, from the pipeline's scales as they are now: a step callback may change them
        (`pipe._guidance_scale = 1.0` stops classifier-free guidance, as diffusers' CFG-cutoff callbacks do), and the
        step then runs only the branches they weigh, the first of the `held` ones the prefix has."""
        scales = self._guidance_scales()
        self._check_guidance(**scales)
        weights = self._guidance_weights(**scales)
        if len(weights) > held:
            settings = ", ".join(f"{name}={scale}" for name, scale in scales.items())
            raise ValueError(
                f"A step callback set {settings}, which runs {len(weights)} guidance branches, but the call encoded "
                f"{held} ({', '.join(GUIDANCE_BRANCHES[:held])}); start the call with that guidance on to turn it off "
                "later, not the reverse."
            )
        return weights

    def _denoise(
        self,
        prefix,
        latents: torch.Tensor,
        clean_latents: torch.Tensor | None,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
        generator=None,
    ) -> torch.Tensor:
        """The sampling loop of every Hydra-X task.

        `prefix` (from `prepare_generation_prefix`) holds one batch of guidance branches; each step predicts the
        branches its guidance weighs (`_step_guidance`: all of them unless a callback turned guidance off) in one
        forward after it and combines them as `Σ weight · velocity` (CFG and dual CFG are such sums).
        `clean_latents` (image-to-video's anchor) replace the first latent frames at every step, at flow time 0
        (per-frame times, as the model trains image-to-video with `config.image_to_video_prob`).
        `generator` also drives the noise of stochastic schedulers (`FlowMatchLCMScheduler`, Euler with
        `stochastic_sampling`), which would otherwise draw from the global RNG.
        """
        target_tokens, limit = latents[0, 0].numel(), self.model.config.text_config.max_position_embeddings
        if prefix.length + target_tokens > limit:
            logger.warning(
                f"The prompt ({prefix.length} tokens) and the target ({target_tokens} latent tokens) take more "
                f"positions than the LLM's max_position_embeddings={limit}; expect worse results, or pass a smaller "
                "size (or fewer frames)."
            )
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        dtype, held = self.model.dtype, prefix.attention_mask.shape[0] // latents.shape[0]
        prefixes = {held: prefix}  # by branch count: the prefix's first branches, once guidance drops some
        num_clean = 0 if clean_latents is None else clean_latents.shape[2]
        latents = self._anchored(latents, clean_latents)
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        )
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                sigma = self.scheduler.sigmas[i].to(latents.device).expand(latents.shape[0])
                if num_clean:
                    sigma = sigma[:, None].repeat(1, latents.shape[2])
                    sigma[:, :num_clean] = 0.0
                weights = self._step_guidance(held)
                if len(weights) not in prefixes:
                    prefixes[len(weights)] = prefix.first_rows(len(weights) * latents.shape[0])
                # One latent per output: the branches share its Sem-ViT embedding (see `predict_velocity`)
                velocities = self.model.predict_velocity(latents.to(dtype), sigma, prefixes[len(weights)]).float()
                branches = velocities.chunk(len(weights))
                velocity = sum(weight * branch for weight, branch in zip(weights, branches))
                if len(weights) > 1 and self._guidance_rescale > 0:
                    velocity = self._rescaled(velocity, branches[0], num_clean)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False, **step_kwargs)[0]
                latents = self._anchored(latents, clean_latents)  # the callback, next step and output see the anchor

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = self._anchored(callback_outputs.pop("latents", latents), clean_latents)

                progress_bar.update()
        self._current_timestep = None
        return latents

    def _rescaled(self, velocity: torch.Tensor, conditional: torch.Tensor, num_clean: int) -> torch.Tensor:
        """The guided velocity rescaled toward the conditional branch's standard deviation per output, by
        `guidance_rescale` (diffusers' `rescale_noise_cfg`: guidance at large scales otherwise over-saturates). The
        first `num_clean` latent frames, image-to-video's anchor that each step replaces, are left out of the
        deviations."""
        noisy = (slice(None), slice(None), slice(num_clean, None))
        velocity[noisy] = rescale_noise_cfg(velocity[noisy], conditional[noisy], self._guidance_rescale)
        return velocity

    @staticmethod
    def _anchored(latents: torch.Tensor, clean_latents: torch.Tensor | None) -> torch.Tensor:
        """Image-to-video: `latents` with their first frames replaced by the clean anchor's (`None`: as they are)."""
        if clean_latents is None:
            return latents
        return torch.cat([clean_latents, latents[:, :, clean_latents.shape[2] :]], dim=2)

    def _decode_chunk_frames(self, value) -> int | None:
        """`decode_chunk_frames` checked before sampling: `"auto"` resolved, an explicit chunk size refused for a
        tokenizer whose attention is not temporally causal."""
        causal = self.model.config.vision_config.attention_mode != "full"
        if value == "auto":
            return 2 if causal else None
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(
                f"`decode_chunk_frames` must be an int ≥ 1 (latent frames decoded at a time), 'auto' or None (the "
                f"whole clip at once), got {value!r}."
            )
        if value is not None and not causal:
            raise ValueError(
                f"decode_chunk_frames={value} streams the decoder, which needs a temporally causal tokenizer; this "
                "one has attention_mode='full'. Pass decode_chunk_frames=None or 'auto'."
            )
        return value

    def _postprocess(self, latents: torch.Tensor, output_type: str, video: bool, chunk_frames: int | None = None):
        """Decode normalised latents with Hydra-XTok (`chunk_frames` latent frames at a time when given, streamed with
        its frame cache: the same frames in memory that does not grow with the clip) and convert to `output_type`
        (`"latent"` returns them as they are)."""
        if output_type == "latent":
            return latents
        # only the pixels are used: a tokenizer configured to record hidden states would refuse the chunks
        unrecorded = {"output_hidden_states": False, "output_attentions": False}
        decoded = self.model.model.vision_tower.decode(
            latents.to(self.model.dtype), chunk_frames=chunk_frames, **unrecorded
        )
        pixels = decoded.sample.float().clamp(-1, 1)
        if video:
            return self.video_processor.postprocess_video(pixels, output_type=output_type)
        return self.video_processor.postprocess(pixels[:, :, 0], output_type=output_type)


class HydraXPipeline(HydraXSamplerMixin, DiffusionPipeline):
    r"""
    Text-to-image, text-to-video and image-to-video with Hydra-X.

    The prompt runs through the LLM once and its key/value cache is reused at every denoising step; the conditional
    and unconditional branches of classifier-free guidance share one batched forward. The unconditional branch is the
    negative prompt, or the prompt with its text dropped exactly as in training (same length, so no padding between
    branches). Image-to-video keeps the clean latent of `image` as the anchor frame, at flow time 0, at every step (the
    model trains such samples, `HydraXConfig.image_to_video_prob`): Hydra-XTok is causal in time, so the first decoded
    frame is the tokenizer's reconstruction of `image`.

    Load it from a Hydra-X checkpoint folder with `HydraXPipeline.from_pretrained(folder)` (see
    [`~HydraXSamplerMixin.from_pretrained`]), or without this package, from a folder written by `save_pretrained`,
    with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
    """

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        max_sequence_length: int | None = None,
        lora_scale: float | None = None,
    ) -> HydraXEncodedPrompt:
        r"""
        Run prompts through the LLM once, for `prompt_embeds=` in later calls: a seed or guidance sweep, other sizes,
        frame counts or image-to-video anchors then skip that work (see [`HydraXEncodedPrompt`]).

        Args:
            prompt (`str` or `list[str]`):
                What to generate.
            negative_prompt (`str` or `list[str]`, *optional*):
                Replaces the text-free branch of classifier-free guidance; needs `guidance_scale > 1`.
            guidance_scale (`float`, defaults to 4.0):
                Above 1, the text-free (or negative) branch is encoded too; calls using the encoding must then guide,
                at any scale above 1.
            num_images_per_prompt (`int`, defaults to 1):
                Outputs per prompt of the calls using the encoding.
            max_sequence_length (`int`, *optional*):
                Text tokens kept per prompt (and negative prompt); longer ones are cut, with a warning naming what is
                cut. Default: no limit.
            lora_scale (`float`, *optional*):
                Strength of the loaded LoRA adapters while the prompts are read (a call's `attention_kwargs["scale"]`).

        Returns:
            [`HydraXEncodedPrompt`]: pass it as `pipe(prompt_embeds=...)`, e.g. once per seed of a sweep.
        """
        num_images_per_prompt, max_sequence_length = plain_ints(num_images_per_prompt, max_sequence_length)
        prompts, negative_prompts = self._prompts(
            prompt, negative_prompt, max_sequence_length, guidance_scale=guidance_scale
        )
        self._check_images_per_prompt(num_images_per_prompt)
        target = {"type": "image", "height": self.patch_size, "width": self.patch_size}  # the prefix ends before it
        conditional, text_free = self._encode_prompts(
            [self._conversation(text, target) for text in prompts],
            None if negative_prompts is None else [self._conversation(text, target) for text in negative_prompts],
        )
        branches = [conditional, text_free][: len(self._guidance_weights(guidance_scale))]
        with self._scaled_lora(lora_scale, "lora_scale"):
            prefix = self._prepare_prefix(branches, num_images_per_prompt)
        return HydraXEncodedPrompt(prefix, len(prompts), num_images_per_prompt, len(branches))

    @staticmethod
    def _guidance_weights(guidance_scale: float) -> list[float]:
        """Classifier-free guidance as a sum over the branches `[conditional, text-free]`: `s·v_c + (1 − s)·v_u`."""
        return [guidance_scale, 1 - guidance_scale] if guidance_scale > 1 else [1.0]

    def _guidance_scales(self) -> dict[str, float]:
        return {"guidance_scale": self._guidance_scale}

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 1,
        image=None,
        num_inference_steps: int = 50,
        sigmas: list[float] | None = None,
        guidance_scale: float = 4.0,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_area: int | None = None,
        decode_chunk_frames: int | str | None = "auto",
        prompt_embeds: HydraXEncodedPrompt | None = None,
        attention_kwargs: dict | None = None,
        max_sequence_length: int | None = None,
    ):
        r"""
        Generate images (`num_frames=1`) or videos (`num_frames = 1 + 4k`) from text, or animate `image`.

        Args:
            prompt (`str` or `list[str]`):
                What to generate; one output (or `num_images_per_prompt`) per prompt. Not needed with
                `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*):
                Replaces the text-free branch of classifier-free guidance; needs `guidance_scale > 1`.
            height (`int`, *optional*), width (`int`, *optional*):
                Output size in pixels, multiples of the tokenizer's patch size (16). Default: the size of `image`
                (snapped to the grid; scaled down to `max_area` when larger; logged), else the side of the
                processor's `max_pixels`: the image processor's (1024) for an image, the video processor's (448) for
                a video.
            num_frames (`int`, defaults to 1):
                1 for an image; `1 + 4k` frames for a video (other counts from 5 on are rounded to that form, with a
                warning).
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                Image-to-video: the first frame, one for all prompts or one per prompt (needs `num_frames > 1`).
            num_inference_steps (`int`, defaults to 50):
                Euler steps.
            sigmas (`list[float]`, *optional*):
                Custom noise levels in [0, 1], falling (σ = 1 is noise), instead of `linspace(1, 1/N, N)`; a
                scheduler with `use_dynamic_shifting` (the default) still applies the model's resolution shift to them.
            guidance_scale (`float`, defaults to 4.0):
                Classifier-free guidance scale; off at ≤ 1.
            guidance_rescale (`float`, defaults to 0.0):
                Rescales each guided velocity toward the conditional one's standard deviation by this fraction
                (diffusers' `guidance_rescale`, from [Common Diffusion Noise Schedules and Sample Steps are
                Flawed](https://huggingface.co/papers/2305.08891); 0.7 there), against the over-saturation of large
                guidance scales. 0: plain guidance.
            num_images_per_prompt (`int`, defaults to 1):
                Outputs per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                For reproducible noise (one per output when a list).
            latents (`torch.Tensor`, *optional*):
                Initial noise `[B, C, 1 + (num_frames - 1) / 4, height / 16, width / 16]`.
            output_type (`str`, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"` (normalised Hydra-XTok latents, not decoded).
            return_dict (`bool`, defaults to `True`):
                Return a [`HydraXPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; may return
                replacements for the tensors in `callback_kwargs`.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                Tensors passed to the callback, among `_callback_tensor_inputs`.
            max_area (`int`, *optional*):
                Image-to-video: the most pixels per frame the size taken from `image` may have (default: the video
                processor's `max_pixels`, 448²); a larger image sets a smaller size of the same aspect ratio. Explicit
                `height` and `width` are used as given.
            decode_chunk_frames (`int`, `"auto"` or `None`, defaults to `"auto"`):
                Videos: latent frames Hydra-XTok decodes at a time, streamed with its frame cache, as Wan's VAE decodes
                frame by frame. The frames equal a whole-clip decode; with tubelet attention (the default) decoding
                memory stays flat with the clip's length (≈15–19× less at 257 frames, `bench/bench_tokenizer.py
                --part decode`), while `attention_mode="causal"` carries every earlier frame's keys, so its cache
                grows with the clip. `"auto"`: 2, or the whole clip for a tokenizer with `attention_mode="full"`
                (which cannot stream); `None`: the whole clip.
            prompt_embeds ([`HydraXEncodedPrompt`], *optional*):
                Prompts already run through the LLM by [`~HydraXPipeline.encode_prompt`], in place of `prompt` and
                `negative_prompt`; encoded with this call's `num_images_per_prompt` and with guidance on (> 1) or off
                as this call has it.
            attention_kwargs (`dict`, *optional*):
                `{"scale": s}` multiplies the active LoRA adapters' updates by `s` for this call (diffusers' per-call
                LoRA strength; their `set_adapters` weights are restored afterwards). Prompts given as
                `prompt_embeds` keep the strength they were encoded with (`encode_prompt(lora_scale=...)`).
            max_sequence_length (`int`, *optional*):
                Text tokens kept per prompt (and negative prompt); longer ones are cut, with a warning naming what is
                cut. Default: no limit.

        Examples:

        Returns:
            [`HydraXPipelineOutput`] with `images` (`num_frames=1`) or `frames`, or a one-element tuple of them.
        """
        # 1. Check inputs
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        settings = (num_frames, num_inference_steps, num_images_per_prompt, max_area, decode_chunk_frames)
        num_frames, num_inference_steps, num_images_per_prompt, max_area, decode_chunk_frames = plain_ints(*settings)
        (max_sequence_length,) = plain_ints(max_sequence_length)
        num_prompts = self._num_prompts(
            prompt,
            negative_prompt,
            prompt_embeds,
            num_images_per_prompt,
            {"max_sequence_length": max_sequence_length},
            guidance_scale=guidance_scale,
        )
        lora_scale = self._lora_scale(attention_kwargs)
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(
                f"`num_frames` must be an int ≥ 1 (1 for an image, 1 + 4k for a video), got {num_frames!r}."
            )
        step = self.temporal_compression
        if 1 < num_frames <= step:
            raise ValueError(
                f"num_frames={num_frames} is too few for a video, whose frame count is 1 + {step}k: pass 1 for an "
                f"image or at least {step + 1} frames."
            )
        if (num_frames - 1) % step:  # as Wan rounds: 16 → 17, 7 → 5 (the processor's video targets round so too)
            snapped = num_frames // step * step + 1
            logger.warning(f"`num_frames - 1` has to be divisible by {step}; rounding {num_frames} to {snapped}.")
            num_frames = snapped
        if image is not None:
            self._check_images(image, num_prompts)
            if num_frames == 1:
                raise ValueError(
                    "`image` is the first frame of image-to-video and needs num_frames = 1 + 4k > 1 (e.g. 17); to "
                    "edit an image use HydraXEditPipeline."
                )
        height, width = self._output_size(height, width, image, max_area, video=num_frames > 1)
        decode_chunk_frames = self._decode_chunk_frames(decode_chunk_frames)
        self._guidance_scale = guidance_scale
        self._set_guidance_rescale(guidance_rescale, guidance_scale=guidance_scale)
        self._check_inputs(
            height,
            width,
            num_inference_steps,
            sigmas,
            num_images_per_prompt,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        batch_size = num_prompts * num_images_per_prompt
        shape = self._latent_shape(batch_size, num_frames, height, width, generator, latents)
        self._interrupt = False
        self._current_timestep = None

        with self._scaled_lora(
            lora_scale, "attention_kwargs['scale']"
        ):  # steps 2–5 run the LLM: LoRA at the call's strength
            # 2. Run the prompt once (unless given encoded): conditional and unconditional branches in one cached batch
            if prompt_embeds is None:
                prompt_embeds = self.encode_prompt(
                    prompt, negative_prompt, guidance_scale, num_images_per_prompt, max_sequence_length
                )
            else:
                self._onload_model()  # the call's first use of the model (see `_prepare_prefix`)

            # 3. Prepare the noisy latents and, for image-to-video, the clean anchor
            video = num_frames > 1
            latents = self._prepare_latents(shape, generator, latents)
            clean_latents = None
            if image is not None:
                pixels = self._preprocess_images(image, height, width, num_prompts)
                pixels = pixels.repeat_interleave(num_images_per_prompt, 0).to(latents.device, self.model.dtype)
                clean_latents = self.model.model.encode_latents(pixels).float()

            # 4. Prepare timesteps with the model's resolution shift
            self._set_timesteps(num_inference_steps, sigmas, latents[0, 0].numel())

            # 5. Denoising loop
            latents = self._denoise(
                prompt_embeds.prefix,
                latents,
                clean_latents,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs,
                generator,
            )

        # 6. Decode
        output = self._postprocess(latents, output_type, video, decode_chunk_frames if video else None)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return HydraXPipelineOutput(frames=output) if video else HydraXPipelineOutput(images=output)
