"""Hydra-X instruction-based image editing pipeline (the sampler is `pipeline_hydrax.HydraXSamplerMixin`'s)."""

from typing import Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import replace_example_docstring

# diffusers copies only the direct relative imports of a local folder's custom pipeline file: the two unused ones make
# it copy the modules `pipeline_hydrax.py` needs when this pipeline is the first one loaded (a fresh module cache)
from .lora_loading_hydrax import HydraXLoraLoaderMixin  # noqa: F401
from .pipeline_hydrax import HydraXEncodedPrompt, HydraXPipelineOutput, HydraXSamplerMixin, plain_ints
from .pipeline_loading_hydrax import HydraXRootModel  # noqa: F401


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import sys, tempfile
        >>> import PIL.Image
        >>> sys.path.insert(0, "conversion")  # run from the repository root; a trained checkpoint needs none of this
        >>> from build_hydrax import build_checkpoint
        >>> from modeling_hydrax import HydraXEditPipeline

        >>> folder = build_checkpoint("tiny", f"{tempfile.mkdtemp()}/hydrax-tiny")  # random weights
        >>> pipe = HydraXEditPipeline.from_pretrained(folder)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> source = PIL.Image.new("RGB", (48, 32), "white")
        >>> edited = pipe(source, "Paint the wall blue", num_inference_steps=2).images[0]
        >>> edited.size
        (48, 32)
        ```
"""


class HydraXEditPipeline(HydraXSamplerMixin, DiffusionPipeline):
    r"""
    Instruction-based image editing with Hydra-X.

    The source image and the noisy target form a 2-frame Sem-ViT clip (Hydra-XTok's source–target interaction: the
    target sees the source, never the reverse), and the source's tokens also sit in the LLM prompt. Both are computed
    once: the prompt with the source through the LLM, and the source's Sem-ViT frame cache, reused at every step.

    Guidance is dual classifier-free guidance over three branches in one batched forward, with `s_txt =
    guidance_scale` and `s_img = image_guidance_scale`:
    `v = v_uncond + s_img · (v_img − v_uncond) + s_txt · (v_cond − v_img)`, where `v_cond` sees the instruction and
    the source, `v_img` the source without the instruction (its text dropped as in training, or the negative prompt),
    and `v_uncond` neither. The image-free branch keeps the prompt's length (so the branches batch) and replaces the
    source by a **null image**: mid-gray, zeros in Hydra-XTok's [-1, 1] pixel range, both in the LLM prompt and in the
    Sem-ViT clip. That is the pixel-space form of InstructPix2Pix's zero image condition; a model trained to drop the
    source drops it the same way (zero `source_pixel_values`). A scale ≤ 1 turns its term off: with
    `image_guidance_scale ≤ 1` only the text term runs (two branches), with both ≤ 1 a single branch.
    """

    _encodes_sources = True

    @property
    def image_guidance_scale(self):
        return self._image_guidance_scale

    @torch.no_grad()
    def encode_prompt(
        self,
        image,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = 4.0,
        image_guidance_scale: float = 1.5,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        max_area: int | None = None,
        max_sequence_length: int | None = None,
        lora_scale: float | None = None,
    ) -> HydraXEncodedPrompt:
        r"""
        Run the instructions with their sources through the LLM, and the sources through Sem-ViT, once, for
        `prompt_embeds=` in later calls: a seed sweep, or other guidance scales that run the same branches, then skip
        that work. The encoding fixes the output size (the sources' frame cache is at it).

        Args:
            image, prompt, negative_prompt, height, width, max_area, max_sequence_length:
                As in [`~HydraXEditPipeline.__call__`].
            guidance_scale (`float`, defaults to 4.0), image_guidance_scale (`float`, defaults to 1.5):
                Which guidance branches to encode: the text-free one when either scale is above 1, the source-free
                one when `image_guidance_scale` is. Calls using the encoding must run the same branches.
            num_images_per_prompt (`int`, defaults to 1):
                Outputs per prompt of the calls using the encoding.
            lora_scale (`float`, *optional*):
                Strength of the loaded LoRA adapters while the prompts are read (a call's `attention_kwargs["scale"]`).

        Returns:
            [`HydraXEncodedPrompt`]: pass it as `pipe(prompt_embeds=...)`, without `image` or `prompt`.
        """
        num_images_per_prompt, height, width, max_area, max_sequence_length = plain_ints(
            num_images_per_prompt, height, width, max_area, max_sequence_length
        )
        scales = {"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale}
        prompts, negative_prompts = self._prompts(prompt, negative_prompt, max_sequence_length, **scales)
        if image is None:
            raise ValueError("Pass `image`: the source image(s) to edit, one for all prompts or one per prompt.")
        self._check_images(image, len(prompts))
        self._check_images_per_prompt(num_images_per_prompt)
        height, width = self._output_size(height, width, image, max_area)
        self._check_size(height, width)
        sources = self._preprocess_images(image, height, width, len(prompts))
        target = {"type": "image"}  # takes the source's grid
        conditional, text_free = self._encode_prompts(
            [self._conversation(text, target, source) for text, source in zip(prompts, sources)],
            None
            if negative_prompts is None
            else [self._conversation(text, target, source) for text, source in zip(negative_prompts, sources)],
        )
        count = len(self._guidance_weights(**scales))
        branches = [conditional, text_free, text_free][:count]
        branch_sources = [sources, sources, torch.zeros_like(sources)][:count]  # the null image: zeros in [-1, 1]
        with self._scaled_lora(lora_scale, "lora_scale"):
            prefix = self._prepare_prefix(branches, num_images_per_prompt, torch.cat(branch_sources))
        return HydraXEncodedPrompt(prefix, len(prompts), num_images_per_prompt, count, (height, width))

    @staticmethod
    def _guidance_weights(guidance_scale: float, image_guidance_scale: float) -> list[float]:
        """Dual guidance (the class docstring) as a sum over the branches `[conditional, text-free, source-free]`: all
        three with image guidance on, the first two with text guidance alone, the conditional one without either."""
        text_scale, image_scale = max(guidance_scale, 1.0), max(image_guidance_scale, 1.0)
        if image_scale > 1:
            return [text_scale, image_scale - text_scale, 1 - image_scale]
        if text_scale > 1:
            return [text_scale, 1 - text_scale]
        return [1.0]

    def _guidance_scales(self) -> dict[str, float]:
        return {"guidance_scale": self._guidance_scale, "image_guidance_scale": self._image_guidance_scale}

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image=None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        sigmas: list[float] | None = None,
        guidance_scale: float = 4.0,
        image_guidance_scale: float = 1.5,
        guidance_rescale: float = 0.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_area: int | None = None,
        prompt_embeds: HydraXEncodedPrompt | None = None,
        attention_kwargs: dict | None = None,
        max_sequence_length: int | None = None,
    ):
        r"""
        Edit `image` following the instruction `prompt`.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list):
                The source image(s) (arrays `[H, W, C]` / tensors `[C, H, W]` in [0, 1]): one for all prompts or one
                per prompt. Not needed with `prompt_embeds`.
            prompt (`str` or `list[str]`):
                The editing instruction(s). Not needed with `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*):
                Replaces the instruction in the two branches without it; needs a guidance scale above 1.
            height (`int`, *optional*), width (`int`, *optional*):
                Output size, multiples of the patch size (16). Default: the source's size, snapped to the nearest
                multiples of 16, or scaled down to `max_area` with its aspect ratio kept when the source is larger;
                the source is resized to the output size, and any resize is logged.
            num_inference_steps (`int`, defaults to 50):
                Euler steps.
            sigmas (`list[float]`, *optional*):
                Custom noise levels in [0, 1], falling (σ = 1 is noise), instead of `linspace(1, 1/N, N)`; a
                scheduler with `use_dynamic_shifting` (the default) still applies the model's resolution shift to them.
            guidance_scale (`float`, defaults to 4.0):
                Text guidance `s_txt` (see the class docstring); off at ≤ 1.
            image_guidance_scale (`float`, defaults to 1.5):
                Image guidance `s_img`: how closely the output follows the source; off at ≤ 1.
            guidance_rescale (`float`, defaults to 0.0):
                Rescales each guided velocity toward the standard deviation of the branch with both instruction and
                source by this fraction (diffusers' `guidance_rescale`, as its SDXL InstructPix2Pix pipeline applies
                it), against the over-saturation of large guidance scales. 0: plain guidance.
            num_images_per_prompt (`int`, defaults to 1):
                Outputs per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                For reproducible noise (one per output when a list).
            latents (`torch.Tensor`, *optional*):
                Initial noise `[B, C, 1, height / 16, width / 16]`.
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
                The most pixels the size taken from the source may have (default: the processor's `max_pixels`,
                1024²), so a 12-megapixel photo is edited at about 1 megapixel, not at 47k latent tokens. Explicit
                `height` and `width` are used as given.
            prompt_embeds ([`HydraXEncodedPrompt`], *optional*):
                Instructions and sources already encoded by [`~HydraXEditPipeline.encode_prompt`], in place of `image`,
                `prompt` and `negative_prompt`; encoded with this call's `num_images_per_prompt` and guidance branches.
                The output takes their size.
            attention_kwargs (`dict`, *optional*):
                `{"scale": s}` multiplies the active LoRA adapters' updates by `s` for this call (diffusers' per-call
                LoRA strength; their `set_adapters` weights are restored afterwards). `prompt_embeds` keep the strength
                they were encoded with (`encode_prompt(lora_scale=...)`).
            max_sequence_length (`int`, *optional*):
                Text tokens kept per instruction (and negative prompt); longer ones are cut, with a warning naming
                what is cut. Default: no limit.

        Examples:

        Returns:
            [`HydraXPipelineOutput`] with `images`, or a one-element tuple of them.
        """
        # 1. Check inputs
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        num_inference_steps, num_images_per_prompt, max_area, max_sequence_length = plain_ints(
            num_inference_steps, num_images_per_prompt, max_area, max_sequence_length
        )
        scales = {"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale}
        encoded = {"image": image, "max_area": max_area, "max_sequence_length": max_sequence_length}
        num_prompts = self._num_prompts(
            prompt, negative_prompt, prompt_embeds, num_images_per_prompt, encoded, **scales
        )
        if prompt_embeds is None:
            if image is None:
                raise ValueError("Pass `image` (the source to edit), or `prompt_embeds` from `pipe.encode_prompt`.")
            self._check_images(image, num_prompts)
            height, width = self._output_size(height, width, image, max_area)
        elif height not in (None, prompt_embeds.size[0]) or width not in (None, prompt_embeds.size[1]):
            raise ValueError(
                f"`prompt_embeds` hold sources encoded at {prompt_embeds.size[0]}x{prompt_embeds.size[1]}, the size "
                f"of the output; got height={height}, width={width}. Drop them, or encode at that size."
            )
        else:
            height, width = prompt_embeds.size
        lora_scale = self._lora_scale(attention_kwargs)
        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        self._set_guidance_rescale(guidance_rescale, **scales)
        self._check_inputs(
            height,
            width,
            num_inference_steps,
            sigmas,
            num_images_per_prompt,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        shape = self._latent_shape(num_prompts * num_images_per_prompt, 1, height, width, generator, latents)
        self._interrupt = False
        self._current_timestep = None

        with self._scaled_lora(
            lora_scale, "attention_kwargs['scale']"
        ):  # steps 2–4 run the LLM: LoRA at the call's strength
            # 2. Run the instructions with their sources (resized to the output size) through the LLM, and the sources
            # through Sem-ViT, once, for every guidance branch (unless given encoded)
            if prompt_embeds is None:
                prompt_embeds = self.encode_prompt(
                    image,
                    prompt,
                    negative_prompt,
                    num_images_per_prompt=num_images_per_prompt,
                    height=height,
                    width=width,
                    max_sequence_length=max_sequence_length,
                    **scales,
                )
            else:
                self._onload_model()  # the call's first use of the model (see `_prepare_prefix`)

            # 3. Prepare the noisy target latents and timesteps with the model's resolution shift
            latents = self._prepare_latents(shape, generator, latents)
            self._set_timesteps(num_inference_steps, sigmas, latents[0, 0].numel())

            # 4. Denoising loop
            latents = self._denoise(
                prompt_embeds.prefix,
                latents,
                None,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs,
                generator,
            )

        # 5. Decode
        images = self._postprocess(latents, output_type, video=False)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return HydraXPipelineOutput(images=images)
