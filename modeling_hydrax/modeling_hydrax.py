"""Hydra-X: one Qwen2.5 LLM that understands, generates and edits images and videos through Hydra-XTok.

The LLM only ever sees Sem-ViT features. Understanding: clean latents → Sem-ViT → projector → placeholder tokens.
Generation: noisy latents `z_t = (1 − t)·z0 + t·ε` → Sem-ViT → projector + timestep embedding → LLM → flow head →
velocity `ε − z0` per latent token. Editing: the source and the noisy target form a 2-frame Sem-ViT clip. Text is
causal; each visual block (an image, a video, a noisy target) is bidirectional inside itself.
"""

import copy
import math
from dataclasses import dataclass
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_hydrax import HydraXConfig
from .modeling_hydrax_tok import HydraXTokFrameCache, HydraXTokModel


logger = logging.get_logger(__name__)

# Parts of the tokenizer that stay frozen in unified training: they fix the latent space the decoder reads.
HYDRAX_FROZEN_MODULES = ("model.vision_tower.gen_vit", "model.vision_tower.decoder")


@dataclass
class HydraXModelOutputWithPast(BaseModelOutputWithPast):
    """
    visual_block_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): the visual block each token belongs
        to (−1 for text), as used for the bidirectional attention pattern.
    """

    visual_block_ids: torch.LongTensor | None = None


@dataclass
class HydraXCausalLMOutputWithPast(ModelOutput):
    """
    loss (`torch.FloatTensor`): `lm_loss_weight · lm_loss + flow_loss_weight · flow_loss` over the parts present.
    lm_loss (`torch.FloatTensor`): next-token prediction loss on text labels.
    flow_loss (`torch.FloatTensor`): rectified-flow velocity MSE on the generation targets' latent tokens.
    logits (`torch.FloatTensor` of shape `(batch_size, kept_positions, vocab_size)`): next-token logits where
        `forward` computed them (see its docstring: not for labelled training batches unless asked).
    velocity (`torch.FloatTensor` of shape `(targets, latent_channels, frames, h, w)`, or a list of
        `(latent_channels, frames, h, w)` tensors when the targets differ in size): predicted velocity of the
        generation targets, in sample order.
    cache (`Cache`): the LLM key/value cache.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    flow_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    velocity: torch.FloatTensor | list[torch.FloatTensor] | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HydraXGenerationPrefix:
    """What a sampler computes once and reuses at every denoising step: the LLM cache of the prompt (and of the edit
    source's tokens), the prompt's attention mask, the next position id, the edit source's Sem-ViT frame cache, and
    whether the prompt has no padding (the target then sees every key, and the steps run without a mask). Steps only
    read it, so one prefix serves any number of steps and calls, also at once."""

    cache: DynamicCache
    attention_mask: torch.Tensor
    next_position: torch.LongTensor
    source_cache: HydraXTokFrameCache | None = None
    unpadded: bool = False

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]

    def first_rows(self, count: int) -> "HydraXGenerationPrefix":
        """The prefix of its first `count` rows, as views (nothing copied): e.g. a sampler's first guidance branches
        alone, once it stops guiding (branches are batched branch-major)."""
        if count == self.attention_mask.shape[0]:
            return self
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        for layer, full in zip(cache.layers, self.cache.layers):
            layer.keys, layer.values = full.keys[:count], full.values[:count]
        source = self.source_cache
        if source is not None:
            source = HydraXTokFrameCache(
                {name: (keys[:count], values[:count]) for name, (keys, values) in source.key_values.items()},
                source.frames_seen,
                {stack: (count, *layout[1:]) for stack, layout in source.layouts.items()},
            )
        return HydraXGenerationPrefix(
            cache, self.attention_mask[:count], self.next_position[:count], source, self.unpadded
        )


class HydraXPromptLayerView(DynamicLayer):
    """One layer of a prompt's LLM cache as a denoising step sees it: `update` returns the prompt's keys and values
    followed by the step's and stores nothing. The prompt's cache is never written, and each joined copy lives only
    while its layer attends (storing them kept every layer's copy alive until the step's end)."""

    def __init__(self, layer: DynamicLayer):
        super().__init__()
        self.keys, self.values = layer.keys, layer.values
        self.device, self.is_initialized = layer.keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@dataclass
class HydraXTargetGroup:
    """The noised generation targets of one size in a training batch.

    rows (`torch.LongTensor`): which of the batch's targets (in sample order) are in the group.
    noisy, velocity_target (`torch.Tensor` `[n, C, F, h, w]`): `z_t` and the velocity `ε − z0` it should predict.
    timesteps (`torch.Tensor` `[n]` or `[n, F]`): their flow times, per target or per latent frame (a frame at t = 0 is
        clean context, e.g. image-to-video's anchor, and out of the loss).
    source (`torch.Tensor`, *optional*): latents of the group's edit sources, one per edit.
    edit_rows (`torch.BoolTensor`, *optional*): which of the group's targets are edits (`None`: all, with `source`).
    """

    rows: torch.LongTensor
    noisy: torch.Tensor
    velocity_target: torch.Tensor
    timesteps: torch.Tensor
    source: torch.Tensor | None = None
    edit_rows: torch.BoolTensor | None = None


def check_placeholder_count(count: int, num_features: int, what: str, cached: int = 0) -> None:
    """A clear error when a prompt's `what` placeholders (after the `cached` tokens a cache already holds) and its
    `what` inputs' features differ in number."""
    if count != num_features:
        hint = (
            f"with a cache of {cached} tokens, pass only the pixels (and grids) of the {what}s after them"
            if cached
            else f"build the prompt with HydraXProcessor so every {what} expands to its latent grid"
        )
        raise ValueError(
            f"The text has {count} {what} placeholder tokens{' after the cached ones' if cached else ''} but the "
            f"{what} inputs give {num_features} features; {hint}."
        )


def visual_token_count(pixels, patch_size: int, temporal_ratio: int) -> int:
    """Placeholders that images `[N, 3, H, W]` or videos `[N, 3, 1+T, H, W]` (a batch, or a list of single items)
    fill: `(H / patch_size) · (W / patch_size)` per latent frame, `1 + T / temporal_ratio` latent frames a video."""
    items = [pixels] if isinstance(pixels, torch.Tensor) else [item[None] for item in pixels]
    total = 0
    for item in items:
        frames = 1 + (item.shape[2] - 1) // temporal_ratio if item.ndim == 5 else 1
        total += item.shape[0] * frames * (item.shape[-2] // patch_size) * (item.shape[-1] // patch_size)
    return total


def batch_or_list(items: list[torch.Tensor]):
    """Stack same-shaped tensors into a batch; keep a list when shapes differ; `None` when empty."""
    if not items:
        return None
    return torch.stack(items) if len({item.shape for item in items}) == 1 else items


def timestep_features(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features `[*t.shape, dim]` of flow times t ∈ [0, 1] (scaled by 1000, as diffusion timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = 1000.0 * timesteps.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def add_per_frame(tokens: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """`tokens` `[B, F·n, W]` (F latent frames of n tokens, frame-major) plus a condition `[B, W]` on every token, or
    `[B, F, W]` on each frame's tokens (per-frame flow times, e.g. image-to-video's clean anchor at t = 0)."""
    if condition.ndim == 2:
        return tokens + condition[:, None]
    return (tokens.unflatten(1, (condition.shape[1], -1)) + condition[:, :, None]).flatten(1, 2)


def check_timesteps(timesteps: torch.Tensor, latent_shape, name: str = "timesteps"):
    """Flow times for latents `[B, C, F, h, w]`: one per latent `[B]`, or one per latent frame `[B, F]`."""
    batch, frames = latent_shape[0], latent_shape[2]
    if tuple(timesteps.shape) not in ((batch,), (batch, frames)):
        raise ValueError(
            f"`{name}` must be [{batch}] (one flow time per target) or [{batch}, {frames}] (one per latent frame) for "
            f"latents of shape {tuple(latent_shape)}, got {tuple(timesteps.shape)}."
        )
    if not torch.compiler.is_compiling() and bool(((timesteps < 0) | (timesteps > 1)).any()):
        raise ValueError(
            f"`{name}` are flow times σ in [0, 1], got values from {timesteps.min().item()} to "
            f"{timesteps.max().item()}; with a diffusers scheduler pass `scheduler.sigmas[i]`, not "
            "`scheduler.timesteps[i]` (σ · 1000)."
        )


class HydraXProjector(nn.Module):
    """2-layer MLP from Sem-ViT width to the LLM width, in its own dtype (the LLM's; the visual tokenizer may be kept
    in float32 next to a bf16 LLM, as a VAE often is)."""

    def __init__(self, config: HydraXConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features.to(self.linear_1.weight.dtype))))


class HydraXTimestepEmbedding(nn.Module):
    """Sinusoidal features of t → MLP → `width`."""

    def __init__(self, feature_dim: int, width: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.linear_1 = nn.Linear(feature_dim, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        features = timestep_features(timesteps, self.feature_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(features)))


class HydraXAdaLNModulation(nn.Linear):
    """The Linear that turns the timestep condition into AdaLN shifts, scales and gates. It starts at zero (DiT's
    AdaLN-Zero, see `HydraXPreTrainedModel._init_weights`), so a fresh flow-head block is an identity residual."""


class HydraXFlowHeadBlock(nn.Module):
    """Residual MLP block whose LayerNorm shift/scale and residual gate are modulated by the timestep (AdaLN)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = HydraXAdaLNModulation(width, 3 * width)

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(condition)).chunk(3, dim=-1)
        return hidden + gate * self.mlp(self.norm(hidden) * (1 + scale) + shift)


class HydraXFlowHead(nn.Module):
    """LLM hidden states of the generation target's tokens + t → 64-d velocity per latent token."""

    def __init__(self, config: HydraXConfig):
        super().__init__()
        width = config.flow_head_hidden_size
        self.input_proj = nn.Linear(config.text_config.hidden_size, width)
        self.time_embedding = HydraXTimestepEmbedding(config.timestep_embedding_dim, width)
        self.blocks = nn.ModuleList([HydraXFlowHeadBlock(width) for _ in range(config.flow_head_num_layers)])
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = HydraXAdaLNModulation(width, 2 * width)
        self.out_proj = nn.Linear(width, config.vision_config.latent_channels)

    def forward(self, hidden_states: torch.Tensor, timesteps: torch.Tensor, latent_shape) -> torch.Tensor:
        """Hidden states `[B, n, H]` of a target's n = F·h·w tokens and times `[B]` (or `[B, F]`, one per latent
        frame) → velocity `latent_shape` `[B, C, F, h, w]`; each frame's tokens are modulated by their own time."""
        condition = self.time_embedding(timesteps)
        condition = condition[:, None, None] if timesteps.ndim == 1 else condition[:, :, None]
        hidden = self.input_proj(hidden_states).unflatten(1, (condition.shape[1], -1))
        for block in self.blocks:
            hidden = block(hidden, condition)
        shift, scale = self.final_modulation(F.silu(condition)).chunk(2, dim=-1)
        velocity = self.out_proj(self.final_norm(hidden) * (1 + scale) + shift).flatten(1, 2)
        return velocity.transpose(1, 2).contiguous().view(latent_shape)


class HydraXCacheLayerView:
    """One layer of a transformers `Cache`, handed straight to the decoder layer that owns it.

    A compiled decoder layer that looks itself up in the shared cache by its `layer_idx` guards on that number, so
    each of the LLM's layers would compile a graph of its own; handed its own layer, every layer runs one graph.
    """

    def __init__(self, layer):
        self.layer = layer

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layer.update(key_states, value_states, *args, **kwargs)


class HydraXCompiledLayerForward:
    """The forward of a decoder layer under `compile_repeated_blocks`: the compiled forward, given the layer's own
    cache entry; eager for a call that fills an empty entry (a prompt's prefill: once per prompt, with shapes and
    masks that vary with it) and for caches whose entries cannot be handed out (offloading, or not created yet)."""

    def __init__(self, layer: nn.Module, *compile_args, **compile_kwargs):
        self.layer_idx = layer.self_attn.layer_idx
        self.eager = MethodType(type(layer).forward, layer)
        self.compiled = torch.compile(self.eager, *compile_args, **compile_kwargs)

    def __call__(self, *args, cache=None, **kwargs):
        if cache is None:
            return self.compiled(*args, **kwargs)
        if isinstance(cache, Cache) and not cache.offloading and self.layer_idx < len(cache.layers):
            entry = cache.layers[self.layer_idx]
            if entry.is_initialized:
                return self.compiled(*args, cache=HydraXCacheLayerView(entry), **kwargs)
        return self.eager(*args, cache=cache, **kwargs)


class HydraXPreTrainedModel(PreTrainedModel):
    config: HydraXConfig
    config_class = HydraXConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HydraXTokBlock", "Qwen2DecoderLayer", "HydraXFlowHead"]
    # diffusers' block-level group offloading: the pipelines call these parts' forwards (and embed tokens) directly,
    # never `HydraXModel.forward`, so each is a block whose weights come in when its forward runs.
    _group_offload_block_modules = [
        "model",
        "vision_tower",
        *HydraXTokModel._group_offload_block_modules,
        "projector",
        "timestep_embedding",
        "language_model",
        "embed_tokens",
        "flow_head",
    ]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _repeated_blocks = ["Qwen2DecoderLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""[`PreTrainedModel.from_pretrained`], refusing another model's checkpoint up front: transformers only warns,
        then builds this class's default configuration (13 B parameters) with random weights."""
        model_type = None
        if pretrained_model_name_or_path is not None and kwargs.get("config") is None:
            try:
                model_type, architectures = HydraXTokModel._checkpoint_kind(pretrained_model_name_or_path, kwargs)
            except OSError:  # no config.json (e.g. a PEFT adapter folder): transformers finds the base model
                pass
        if model_type not in (None, cls.config_class.model_type):
            hint = (
                "load it with `HydraXTokModel.from_pretrained`, or build a Hydra-X around it with "
                "`conversion/build_hydrax.py --vision`"
                if model_type == HydraXTokModel.config_class.model_type
                else "load it with its own class (`AutoModel.from_pretrained`)"
            )
            raise ValueError(
                f"{str(pretrained_model_name_or_path)!r} holds a {model_type!r} checkpoint "
                f"({', '.join(architectures or ['no architectures listed'])}), not a Hydra-X one "
                f"({cls.config_class.model_type!r}): {hint}."
            )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def compile_repeated_blocks(self, *args, **kwargs):
        """Regional compilation, as in diffusers' `ModelMixin.compile_repeated_blocks`: `torch.compile(*args,
        **kwargs)` on each of the LLM's decoder layers rather than on the whole model.

        All layers share one compiled graph (each is handed its own cache entry, `HydraXCacheLayerView`), so the
        warm-up costs about one layer's compilation instead of the whole stack's, while the decoder layers hold ~98 %
        of a denoising step's FLOPs. The rest (masks, rotary tables, Hydra-XTok, flow head) stays eager, and so does a
        prompt's prefill (`HydraXCompiledLayerForward`): denoising steps, decoding steps and training calls run
        compiled. Calling it again compiles the layers anew with the new arguments. Offloading goes on afterwards
        (block-level group offloading wraps the compiled layers; per-module hooks inside a layer cannot be compiled).

        Example:

        ```python
        >>> from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration
        >>> model = HydraXForConditionalGeneration(HydraXConfig.from_preset("tiny")).eval()
        >>> model.compile_repeated_blocks(fullgraph=True)
        >>> sum(type(m).__name__ == "Qwen2DecoderLayer" for m in model.modules())
        2
        ```
        """
        blocks = [module for module in self.modules() if type(module).__name__ in self._repeated_blocks]
        if not blocks:
            raise ValueError(
                f"compile_repeated_blocks found none of {self._repeated_blocks} in {type(self).__name__}; compile "
                "the model as a whole with `model.compile()` instead."
            )
        hooked = [
            type(module).__name__
            for block in blocks
            for module in block.modules()
            if hasattr(module, "_hf_hook") or hasattr(module, "_diffusers_hook")
        ]
        if hooked:
            raise ValueError(
                f"compile_repeated_blocks replaces the decoder layers' forward, which would drop the offloading or "
                f"device-placement hooks on their {sorted(set(hooked))}: compile first, then enable offloading "
                "(block-level group offloading wraps the compiled layers); a model split over devices by `device_map` "
                "cannot be compiled this way."
            )
        for block in blocks:
            block.forward = HydraXCompiledLayerForward(block, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        # AdaLN-Zero (DiT): the flow head's modulations start at zero, so every block starts as an identity residual
        # (closed gate) and the output normalisation unmodulated; the head learns how much t should steer it.
        if isinstance(module, HydraXAdaLNModulation):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class HydraXModel(HydraXPreTrainedModel):
    """Hydra-XTok (no Decompressor) + projector + timestep embedding + Qwen2 + flow head, without the LM head."""

    def __init__(self, config: HydraXConfig):
        super().__init__(config)
        self.vision_tower = HydraXTokModel(config.vision_config)
        self.projector = HydraXProjector(config)
        self.timestep_embedding = HydraXTimestepEmbedding(
            config.timestep_embedding_dim, config.text_config.hidden_size
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.flow_head = HydraXFlowHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ---------------------------------------------------------------- visual features
    @torch.no_grad()
    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels → normalised latents with the frozen Gen-ViT (posterior mean)."""
        dtype = self.vision_tower.gen_vit.patch_embedding.weight.dtype
        if pixel_values.is_floating_point():  # others reach the tokenizer's check (uint8 [0, 255] is not [-1, 1])
            pixel_values = pixel_values.to(dtype)
        return self.vision_tower.encode(pixel_values).latents

    def _visual_features(self, pixel_values) -> BaseModelOutputWithPooling:
        """Clean pixels (a batched tensor or a list of differently sized ones) → Sem-ViT features `[Σ tokens, D]`
        (`last_hidden_state`) and each item's projected, LLM-ready features `[tokens_i, hidden]` (`pooler_output`, a
        tuple: the layout transformers' generation expands per sample for beams and returned sequences)."""
        items = [pixel_values] if isinstance(pixel_values, torch.Tensor) else [p[None] for p in pixel_values]
        semantic_features, projected = [], []
        for item in items:
            semantic = self.vision_tower.get_semantic_features(self.encode_latents(item)).last_hidden_state
            semantic_features.append(semantic.flatten(0, 1))
            projected.extend(self.projector(semantic).unbind(0))
        return BaseModelOutputWithPooling(
            last_hidden_state=torch.cat(semantic_features, dim=0), pooler_output=tuple(projected)
        )

    @can_return_tuple
    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs) -> BaseModelOutputWithPooling:
        """Images `[N, 3, H, W]` (or a list of `[3, H, W]`) → `pooler_output`: N LLM-ready features `[h·w, hidden]`."""
        return self._visual_features(pixel_values)

    @can_return_tuple
    def get_video_features(self, pixel_values_videos, video_grid_thw=None, **kwargs) -> BaseModelOutputWithPooling:
        """Videos `[N, 3, 1+T, H, W]` (or a list) → `pooler_output`: N LLM-ready features `[(1+T/4)·h·w, hidden]`."""
        return self._visual_features(pixel_values_videos)

    def embed_noisy_latents(self, noisy_latents, timesteps, source_latents=None, source_cache=None):
        """Noisy generation targets → (source embeddings or `None`, target embeddings), each `[B, tokens, H]`.

        `timesteps` are `[B]`, or `[B, F]` with one flow time per latent frame. With `source_latents` Sem-ViT runs
        in editing mode (source and target as a 2-frame clip); with `source_cache` (from
        `HydraXForConditionalGeneration.prepare_generation_prefix`) the source is reused.
        """
        semantic = self.vision_tower.get_semantic_features(noisy_latents, source_latents, source_cache)
        embeds = self.projector(semantic.last_hidden_state)
        target_tokens = noisy_latents[0, 0].numel()
        source_embeds = embeds[:, :-target_tokens] if source_latents is not None else None
        # `.to(embeds)`: under a `device_map` the timestep embedding may run on another device than the projector
        target_embeds = add_per_frame(embeds[:, -target_tokens:], self.timestep_embedding(timesteps).to(embeds))
        return source_embeds, target_embeds

    # ---------------------------------------------------------------- sequence structure
    def placeholder_ids(self, inputs_embeds: torch.Tensor) -> torch.LongTensor:
        """The sequence structure of `inputs_embeds` given without `input_ids`: the ids of the vision tokens
        (placeholders, `<|vision_start|>`, `<|vision_end|>`) where the embeddings are exactly theirs, as Qwen2.5-VL
        finds its placeholders, and −1 on every other (text) position."""
        config = self.config
        tokens = [
            config.image_token_id,
            config.video_token_id,
            config.vision_start_token_id,
            config.vision_end_token_id,
        ]
        rows = self.get_input_embeddings()(torch.tensor(tokens, device=inputs_embeds.device)).to(inputs_embeds.dtype)
        same = [
            (a, b)
            for i, a in enumerate(tokens)
            for j, b in enumerate(tokens)
            if i < j and torch.equal(rows[i], rows[j])
        ]
        if same:  # e.g. vision tokens a text-only Qwen2.5 never trained, still alike
            raise ValueError(
                f"Tokens {same} have identical embeddings, so `inputs_embeds` alone cannot tell them apart; pass "
                "`input_ids` along with `inputs_embeds`."
            )
        ids = torch.full(inputs_embeds.shape[:2], -1, dtype=torch.long, device=inputs_embeds.device)
        for token, row in zip(tokens, rows):
            ids = ids.masked_fill((inputs_embeds == row).all(dim=-1), token)
        return ids

    def visual_block_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Index of the visual block (counted by `<|vision_start|>`) of every placeholder token, −1 for text."""
        config = self.config
        starts = (input_ids == config.vision_start_token_id).cumsum(dim=-1) - 1
        visual = (input_ids == config.image_token_id) | (input_ids == config.video_token_id)
        return torch.where(visual, starts, torch.full_like(starts, -1))

    def _scatter(self, inputs_embeds, mask, features, what, cached: int = 0):
        check_placeholder_count(int(mask.sum()), features.shape[0], what, cached)
        return inputs_embeds.masked_scatter(mask[..., None], features.to(inputs_embeds.dtype))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        generation_embeds: torch.Tensor | None = None,
        generation_mask: torch.BoolTensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> HydraXModelOutputWithPast:
        """Embed text, scatter clean visual features and `generation_embeds` (`[B, n, H]` or `[tokens, H]`, at
        `generation_mask`) into their placeholders, and run the LLM: causal text, bidirectional visual blocks.
        `inputs_embeds` may replace (or come with) `input_ids`; the placeholders are then found by their embeddings.
        `mm_encoder_outputs` (`{"image": …, "video": …}` from `get_image_features` / `get_video_features`) replaces
        the pixels, as transformers' `generate` passes them: encoded once, then expanded per beam or sequence."""
        input_ids = self.sequence_ids(input_ids, inputs_embeds)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        block_ids = self.visual_block_ids(input_ids)
        clean = block_ids >= 0
        if generation_mask is not None:
            clean = clean & ~generation_mask
            inputs_embeds = self._scatter(
                inputs_embeds, generation_mask, generation_embeds.flatten(0, -2), "generation-target"
            )
        encoded = dict(mm_encoder_outputs or {})
        for modality, pixels, encoder in (
            ("image", pixel_values, self.get_image_features),
            ("video", pixel_values_videos, self.get_video_features),
        ):
            if pixels is not None:
                if encoded.get(modality) is not None:
                    raise ValueError(
                        f"Got both {modality} pixels and `mm_encoder_outputs[{modality!r}]`; pass one of them."
                    )
                encoded[modality] = encoder(pixels, return_dict=True)
        for modality, token in (("image", self.config.image_token_id), ("video", self.config.video_token_id)):
            if encoded.get(modality) is not None:
                features = torch.cat([f.reshape(-1, f.shape[-1]) for f in encoded[modality].pooler_output])
                cached = cache.get_seq_length() if cache is not None else 0
                inputs_embeds = self._scatter(inputs_embeds, clean & (input_ids == token), features, modality, cached)

        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = self._position_ids(attention_mask, input_ids.shape[1], past, input_ids.device)
        mask = attention_mask
        # One token (a decoding step) has no later block-mate to see: its mask is the causal one, decided without
        # reading the tokens, so compiled decoding (`cache_implementation="static"`) has no graph break here.
        if input_ids.shape[1] > 1 and bool((block_ids >= 0).any()):
            mask = self._block_attention_mask(inputs_embeds, attention_mask, cache, position_ids, block_ids, past)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return HydraXModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            visual_block_ids=block_ids,
        )

    def sequence_ids(self, input_ids, inputs_embeds) -> torch.LongTensor:
        """The ids that give the sequence its structure (text, visual blocks): `input_ids`, or without them the
        vision tokens found in `inputs_embeds` (`placeholder_ids`)."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("Pass `input_ids` (from HydraXProcessor) or `inputs_embeds` `[batch, length, hidden]`.")
        if input_ids is None:
            return self.placeholder_ids(inputs_embeds)
        if inputs_embeds is not None and input_ids.shape != inputs_embeds.shape[:2]:
            raise ValueError(
                f"`input_ids` {tuple(input_ids.shape)} and `inputs_embeds` {tuple(inputs_embeds.shape)} must have the "
                "same batch size and length."
            )
        return input_ids

    @staticmethod
    def _position_ids(attention_mask, length, past, device):
        """Positions that skip left padding, so a padded batch equals its items run one by one."""
        if attention_mask is None:
            return (torch.arange(length, device=device) + past)[None]
        positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        return positions[:, -length:]

    def _block_attention_mask(self, inputs_embeds, attention_mask, cache, position_ids, block_ids, past):
        """Causal mask with every visual block bidirectional inside itself (transformers' block overlay)."""
        text_config = self.config.text_config
        if text_config._attn_implementation.startswith("flash"):
            logger.warning_once(
                "flash_attention_2 in the LLM cannot express bidirectional visual blocks; they attend causally. "
                "Use attn_implementation={'text_config': 'sdpa'} for the paper's attention pattern."
            )
        if past:
            block_ids = torch.cat([block_ids.new_full((block_ids.shape[0], past), -1), block_ids], dim=1)
        mask = create_causal_mask(
            config=text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            block_sequence_ids=block_ids,
        )
        return {"full_attention": mask}


class HydraXForConditionalGeneration(HydraXPreTrainedModel, GenerationMixin):
    """Hydra-X: understanding (`generate`), text-to-image/video and editing training (`forward` with targets), and
    cached velocity prediction for samplers (`prepare_generation_prefix` + `predict_velocity`).

    Example:

    ```python
    >>> import torch
    >>> from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration
    >>> model = HydraXForConditionalGeneration(HydraXConfig.from_preset("tiny")).eval()
    >>> c = model.config
    >>> ids = torch.tensor([[5, 6, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id]])
    >>> out = model(input_ids=ids, target_pixel_values=torch.rand(1, 3, 32, 32) * 2 - 1)
    >>> out.flow_loss.shape, out.velocity.shape
    (torch.Size([]), torch.Size([1, 8, 1, 2, 2]))
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # `forward` takes **kwargs but averages its losses per batch: Trainer must keep dividing by the accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: HydraXConfig):
        super().__init__(config)
        self.model = HydraXModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`. A checkpoint saved with its code maps `AutoModelForImageTextToText` and
        `AutoModelForMultimodalLM` (what `pipeline("any-to-any")`, the model card's task, loads) to this class too, so
        that it loads with `trust_remote_code` as Qwen2.5-VL users load theirs (transformers records one auto class
        per model)."""
        if self._auto_class is not None:
            code = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            auto_map = getattr(self.config, "auto_map", None) or {}
            self.config.auto_map = {**auto_map, "AutoModelForImageTextToText": code, "AutoModelForMultimodalLM": code}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate` for understanding, with four differences:

        1. the processor's target keys are dropped: a prompt being answered has no target, and an image of an earlier
           assistant turn, which the processor marks as one (the training layout), is context to read;
        2. visual inputs passed as `None` (e.g. `batch.get("pixel_values")`) are dropped;
        3. placeholders (after those of a given `cache`) and image / video grids must agree before beam search or
           `num_return_sequences` expands the inputs (the expansion would silently drop images beyond the
           placeholders);
        4. `prefill_chunk_size` is refused with visual inputs: a chunk boundary inside a visual block would cut its
           bidirectional attention.
        """
        visual_keys = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs", "image_grid_thw", "video_grid_thw")
        kwargs = {
            key: value
            for key, value in kwargs.items()
            if key not in ("target_mask", "target_grid_thw") and not (key in visual_keys and value is None)
        }
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache.get_seq_length() if isinstance(cache, Cache) else 0  # a multi-turn chat's earlier prompt
        sizes = self.config.vision_config.patch_size, self.config.vision_config.temporal_compression_ratio
        for what, token_id, grids, pixels in (
            ("image", self.config.image_token_id, kwargs.get("image_grid_thw"), kwargs.get("pixel_values")),
            ("video", self.config.video_token_id, kwargs.get("video_grid_thw"), kwargs.get("pixel_values_videos")),
        ):
            if input_ids is None or grids is None and pixels is None:
                continue
            count = int((input_ids[:, cached:] == token_id).sum())
            features = int(grids.prod(-1).sum()) if grids is not None else visual_token_count(pixels, *sizes)
            check_placeholder_count(count, features, what, cached)
        config = kwargs.get("generation_config") or (args[1] if len(args) > 1 else None) or self.generation_config
        chunk_size = kwargs.get("prefill_chunk_size", getattr(config, "prefill_chunk_size", None))
        visual = [
            key for key in ("pixel_values", "pixel_values_videos", "mm_encoder_outputs") if kwargs.get(key) is not None
        ]
        if chunk_size is not None and visual:
            raise ValueError(
                f"prefill_chunk_size={chunk_size} with {visual}: chunks would split visual blocks, whose tokens "
                "attend to each other in both directions within one forward. Pass prefill_chunk_size=None."
            )
        return super().generate(*args, **kwargs)

    @staticmethod
    def create_masks_for_generate(attention_mask=None, **kwargs):
        """`generate` with a compileable cache (`cache_implementation="static"`) would build a plain causal mask here,
        without the bidirectional visual blocks only `forward` can see in its tokens: keep the 2-D padding mask, from
        which `forward` builds the block mask (and a decoding step, with no visual token, the causal one)."""
        return attention_mask

    def get_output_embeddings(self):
        return self.lm_head

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        return self.model.get_image_features(pixel_values, image_grid_thw, **kwargs)

    def get_video_features(self, pixel_values_videos, video_grid_thw=None, **kwargs):
        return self.model.get_video_features(pixel_values_videos, video_grid_thw, **kwargs)

    # ---------------------------------------------------------------- flow matching pieces
    def sample_timesteps(self, batch_size: int, num_tokens: int, device, generator=None) -> torch.Tensor:
        """Training times t ~ logit-normal, shifted towards noise for larger latents (resolution shift)."""
        config = self.config
        normal = torch.randn(batch_size, generator=generator, device=device)
        t = torch.sigmoid(config.flow_logit_mean + config.flow_logit_std * normal)
        return self.shift_timesteps(t, num_tokens)

    def flow_shift_mu(self, num_tokens: int) -> float:
        """The resolution shift `mu` for a target of `num_tokens` latent tokens (diffusers' `set_timesteps(mu=…)`),
        at most `config.flow_max_mu` (or the configured line's own base and max shifts, when those are larger)."""
        config = self.config
        slope = (config.flow_max_shift - config.flow_base_shift) / (config.flow_max_seq_len - config.flow_base_seq_len)
        mu = config.flow_base_shift + slope * (num_tokens - config.flow_base_seq_len)
        if config.flow_max_mu is None:
            return mu
        return min(mu, max(config.flow_max_mu, config.flow_base_shift, config.flow_max_shift))

    def shift_timesteps(self, t: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """t ↦ e^mu / (e^mu + 1/t − 1), mu linear in the latent token count (diffusers' dynamic shifting)."""
        shift = math.exp(self.flow_shift_mu(num_tokens))
        return shift / (shift + (1 / t.clamp(min=1e-6) - 1))

    def unconditional_input_ids(
        self, input_ids: torch.LongTensor, target_mask: torch.Tensor | None = None
    ) -> torch.LongTensor:
        """Drop the text condition for classifier-free guidance: every token before the target block that is neither a
        visual placeholder nor a vision start/end marker becomes `pad_token_id` (lengths are kept, so the conditional
        and unconditional prompts batch together). The target is the last visual block, or the block `target_mask`
        marks (a training conversation may go on after it: its later turns keep their text)."""
        config = self.config
        block_ids = self.model.visual_block_ids(input_ids)
        if target_mask is None:
            last_start = (input_ids == config.vision_start_token_id).long().cumsum(-1)
            before_target = last_start < last_start[:, -1:].clamp(min=1)
        else:
            before_target = target_mask.long().cumsum(-1) == 0
        keep = (
            (block_ids >= 0) | (input_ids == config.vision_start_token_id) | (input_ids == config.vision_end_token_id)
        )
        return torch.where(before_target & ~keep, torch.full_like(input_ids, config.pad_token_id), input_ids)

    def _generation_masks(self, input_ids, with_source, num_target_tokens=None, target_mask=None):
        """Token masks of the generation targets and of their edit sources, and the rows that hold a target.

        Without `target_mask` every sample's last visual block is its target. With it, a sample's target is the
        last block `target_mask` marks (earlier marked blocks, e.g. images of earlier assistant turns, are clean
        context) and a sample with no mark has no target. An edit's source is the block right before its target;
        `with_source` says whether the targets have one: a bool for all of them, or one bool per target.
        `num_target_tokens` (`[targets]`) are the targets' latent token counts, checked against their blocks.
        """
        block_ids = self.model.visual_block_ids(input_ids)
        marked = block_ids if target_mask is None else block_ids.masked_fill(~target_mask.bool(), -1)
        last = marked.max(dim=1, keepdim=True).values
        if target_mask is None and bool((last < 0).any()):
            raise ValueError(
                "A generation target needs a visual placeholder block (<|vision_start|> + pads) in every sample's "
                "text; build the prompt with HydraXProcessor's generation template."
            )
        rows = (last >= 0).squeeze(1)
        target = (block_ids == last) & rows[:, None]
        if not bool(rows.any()):
            raise ValueError(
                "`target_mask` marks no generation target in any sample, but generation targets were given."
            )
        source = None
        if isinstance(with_source, torch.Tensor):
            edit_rows = torch.zeros_like(rows)
            edit_rows[rows] = with_source.to(rows.device)
            source = (block_ids == last - 1) & (last >= 1) & edit_rows[:, None]
        elif with_source:
            source = (block_ids == last - 1) & (last >= 1)
        counts = target.sum(dim=1)[rows]
        if num_target_tokens is not None and num_target_tokens.numel() != counts.numel():
            raise ValueError(
                f"{num_target_tokens.numel()} generation targets were given for {counts.numel()} samples with a "
                "target block; give one target per sample that has one."
            )
        if num_target_tokens is not None and bool((counts != num_target_tokens.to(counts.device)).any()):
            sizes = num_target_tokens.unique().tolist()
            expected = sizes[0] if len(sizes) == 1 else f"its target's {num_target_tokens.tolist()}"
            raise ValueError(
                f"Each sample's generation block must hold {expected} placeholder tokens (the target's latent "
                f"frames × h × w), got {counts.tolist()}; size the block from the target's grid."
            )
        return target, source, rows

    def _split_targets(self, input_ids, target_mask, pixel_values, pixel_values_videos):
        """HydraXProcessor puts training targets among the inputs (`pixel_values` / `pixel_values_videos`, in text
        order) and marks their blocks with `target_mask`: take them out as generation targets. A sample's target is
        its last marked block (earlier ones stay clean context); a sample without a mark has none. An image right
        before a target image in the same sample is that target's edit source (HydraXProcessor's rule too); one batch
        may hold edits and text-to-image targets of any sizes (targets and sources come back as lists when their sizes
        differ). Also returns which targets are edits (`None` when none is)."""
        image_token = self.config.image_token_id
        block_ids = self.model.visual_block_ids(input_ids)
        pools = {
            True: [] if pixel_values is None else list(pixel_values),
            False: [] if pixel_values_videos is None else list(pixel_values_videos),
        }
        clean = {True: [], False: []}
        targets, sources, edited = [], [], []
        for row, blocks, marks in zip(input_ids, block_ids, target_mask.bool()):
            items = {}
            for block in blocks[blocks >= 0].unique().tolist():
                image = bool(row[blocks == block][0] == image_token)
                if not pools[image]:
                    raise ValueError("The text has more visual blocks than images and videos were given.")
                items[block] = (image, pools[image].pop(0))
            marked = blocks[marks & (blocks >= 0)]
            if marked.numel():
                target_block = int(marked.max())
                target_is_image, target = items.pop(target_block)
                targets.append(target)
                source_is_image, source = items.get(target_block - 1, (False, None))
                edited.append(target_is_image and source_is_image)
                if edited[-1]:
                    if source.shape != target.shape:
                        raise ValueError(
                            f"An edit's source {tuple(source.shape)} and target {tuple(target.shape)} differ in size; "
                            "resize the target image to the source's size (HydraXProcessor checks this up front)."
                        )
                    sources.append(items.pop(target_block - 1)[1])
            for image, item in items.values():
                clean[image].append(item)
        edit_rows = torch.tensor(edited, device=input_ids.device) if sources else None
        return (
            batch_or_list(clean[True]),
            batch_or_list(clean[False]),
            batch_or_list(targets),
            batch_or_list(sources),
            edit_rows,
        )

    def _generation_embeds(self, noisy, timesteps, source, edit_rows) -> torch.Tensor:
        """Embeddings `[tokens, H]` of every generation block in sequence order: per sample, its edit source's tokens
        (if any) then its noisy target's. Edits (`edit_rows`, `None`: all of them when `source` is given) and
        text-to-image targets run through Sem-ViT as two groups (2-frame source-target clips and single targets)."""
        if source is None:
            return self.model.embed_noisy_latents(noisy, timesteps)[1].flatten(0, 1)
        if edit_rows is None or bool(edit_rows.all()):
            return torch.cat(self.model.embed_noisy_latents(noisy, timesteps, source), dim=1).flatten(0, 1)
        source_embeds, edit_embeds = self.model.embed_noisy_latents(noisy[edit_rows], timesteps[edit_rows], source)
        _, plain_embeds = self.model.embed_noisy_latents(noisy[~edit_rows], timesteps[~edit_rows])
        edits, plains, rows = iter(zip(source_embeds, edit_embeds)), iter(plain_embeds), []
        for is_edit in edit_rows.tolist():
            rows.extend(next(edits) if is_edit else (next(plains),))
        return torch.cat(rows)

    def _noised_targets(self, targets, are_latents, sources, edit_rows, timesteps, noise) -> list:
        """Noise the generation targets, one `HydraXTargetGroup` per target size (a batched tensor is one size; a
        list may hold several, each group then runs Sem-ViT and the flow head as a batch of its own).

        `targets` are pixels or (`are_latents`) latents; `sources` the edit sources of the targets that `edit_rows`
        marks (all of them when it is `None`); `timesteps` `[targets]` and `noise` (a tensor, or a list with one per
        target) are drawn when not given: t logit-normal with each size's resolution shift. Given `timesteps` are a
        tensor `[targets]` / `[targets, F]`, or a list with one (`[]` or `[F]`) per target when frame counts differ."""
        if isinstance(targets, torch.Tensor):
            index_groups = [torch.arange(targets.shape[0])]
        else:
            shapes = {}
            for index, target in enumerate(targets):
                shapes.setdefault(tuple(target.shape), []).append(index)
            index_groups = [torch.tensor(indices) for indices in shapes.values()]
        whole = len(index_groups) == 1

        def pick(items, indices):  # a group's items as a batch; a batch that is all of one group as it is
            if whole and isinstance(items, torch.Tensor):
                return items
            return torch.stack([items[i] for i in indices.tolist()])

        edits = torch.ones(len(targets), dtype=torch.bool) if edit_rows is None else edit_rows.cpu()
        source_index = edits.long().cumsum(0) - 1
        groups = []
        for rows in index_groups:
            z0 = pick(targets, rows)
            z0 = (
                self.model.vision_tower._check_latents(z0, "target_latents")
                if are_latents
                else self.model.encode_latents(z0)
            )
            group_edits = edits[rows]
            source = None
            if sources is not None and bool(group_edits.any()):
                source = pick(sources, source_index[rows][group_edits])
                if self.training and self.config.source_dropout_prob > 0:
                    kept = torch.rand(source.shape[0], device=z0.device) >= self.config.source_dropout_prob
                    source = source * kept.view(-1, *[1] * (source.ndim - 1)).to(source.dtype)
                source = self.model.encode_latents(source)
            if timesteps is None:
                group_timesteps = self.sample_timesteps(z0.shape[0], z0[0, 0].numel(), z0.device)
                group_timesteps = self._anchor_first_frames(group_timesteps, z0.shape[2])
            else:
                group_timesteps = pick(timesteps, rows)
                check_timesteps(group_timesteps, z0.shape)
            group_noise = torch.randn_like(z0) if noise is None else pick(noise, rows)
            if group_noise.ndim == 4 and z0.shape[2] == 1:  # images' noise without a frame axis, as their latents
                group_noise = group_noise.unsqueeze(2)
            if group_noise.shape != z0.shape:
                raise ValueError(
                    f"`noise` must match the target latents: {tuple(z0.shape)} for these targets (one per target, in "
                    f"latent space), got {tuple(group_noise.shape)}."
                )
            t = group_timesteps.float()  # mixed in float32: a bf16 t would differ from the one the model is told
            t = t.view(-1, 1, 1, 1, 1) if t.ndim == 1 else t.view(t.shape[0], 1, t.shape[1], 1, 1)
            groups.append(
                HydraXTargetGroup(
                    rows=rows,
                    noisy=((1 - t) * z0.float() + t * group_noise.float()).to(z0.dtype),
                    timesteps=group_timesteps,
                    velocity_target=group_noise - z0,
                    source=source,
                    edit_rows=None if source is None or edit_rows is None else group_edits.to(edit_rows.device),
                )
            )
        return groups

    def _anchor_first_frames(self, timesteps: torch.Tensor, num_frames: int) -> torch.Tensor:
        """While training, make each video target an image-to-video sample with probability
        `config.image_to_video_prob`: its first latent frame stays clean (t = 0, per-frame times `[n, F]`), as
        `HydraXPipeline(image=...)` samples it, and is left out of the flow loss."""
        probability = self.config.image_to_video_prob
        if not (self.training and probability > 0 and num_frames > 1):
            return timesteps
        anchored = torch.rand(timesteps.shape[0], device=timesteps.device) < probability
        if not bool(anchored.any()):
            return timesteps
        per_frame = timesteps[:, None].repeat(1, num_frames)
        per_frame[:, 0] = per_frame[:, 0].masked_fill(anchored, 0.0)
        return per_frame

    @staticmethod
    def _flow_error(group: HydraXTargetGroup, velocity: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The summed squared velocity error of a target group and the number of latent elements it sums over: frames
        (or whole targets) at t = 0 are clean context (image-to-video's anchor), with nothing to predict, and are left
        out."""
        error = (velocity.float() - group.velocity_target.float()).square()
        times = group.timesteps if group.timesteps.ndim == 2 else group.timesteps[:, None]
        noisy = (times > 0)[:, None, :, None, None].expand_as(error)
        return error[noisy].sum(), int(noisy.sum())

    @staticmethod
    def _in_sample_order(groups, embeds) -> torch.Tensor:
        """Each group's generation embeddings `[tokens, H]` (per sample: source tokens, then target tokens), merged
        into the samples' order, as their blocks follow each other in the batch."""
        if len(groups) == 1:
            return embeds[0]
        chunks = {}
        for group, flat in zip(groups, embeds):
            tokens = group.velocity_target[0, 0].numel()
            if group.source is None:
                edited = [False] * len(group.rows)
            else:
                edited = [True] * len(group.rows) if group.edit_rows is None else group.edit_rows.tolist()
            sizes = [tokens * (2 if edit else 1) for edit in edited]
            chunks.update(zip(group.rows.tolist(), flat.split(sizes)))
        return torch.cat([chunks[row] for row in sorted(chunks)])

    def _flow_head_and_loss(self, groups, target_hidden, num_tokens):
        """Velocity of every target from its tokens' hidden states (`[Σ tokens, H]`, in sample order) and the flow
        loss, the mean squared error over every latent element of the noisy frames (see `_flow_error`); the velocity
        is `[targets, C, F, h, w]`, or a list in sample order when the targets differ in size."""
        if len(groups) == 1:
            group = groups[0]
            hidden = target_hidden.view(len(group.rows), int(num_tokens[0]), -1)
            velocity = self.model.flow_head(hidden, group.timesteps, group.velocity_target.shape)
            squared_error, elements = self._flow_error(group, velocity)
            return velocity, squared_error / max(elements, 1)
        chunks = target_hidden.split(num_tokens.tolist())
        velocities, squared_error, elements = [None] * len(chunks), 0, 0
        for group in groups:
            hidden = torch.stack([chunks[row] for row in group.rows.tolist()])
            velocity = self.model.flow_head(hidden, group.timesteps, group.velocity_target.shape)
            group_error, group_elements = self._flow_error(group, velocity)
            squared_error, elements = squared_error + group_error, elements + group_elements
            for row, item in zip(group.rows.tolist(), velocity):
                velocities[row] = item
        return velocities, squared_error / max(elements, 1)

    # ---------------------------------------------------------------- training / full forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        target_latents: torch.Tensor | None = None,
        source_pixel_values: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        timesteps: torch.Tensor | list[torch.Tensor] | None = None,
        noise: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        target_grid_thw: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> HydraXCausalLMOutputWithPast:
        """Text, clean visual inputs and (optionally) one generation target per sample → losses and outputs.

        Generation targets (`target_pixel_values` `[B, 3, H, W]` / `[B, 3, 1+T, H, W]`, or already-encoded
        `target_latents` `[B, C, h, w]` / `[B, C, F, h, w]`; lists of differently sized ones, with `noise` a list too
        when given) fill each sample's last visual block; an edit source
        (`source_pixel_values`, one image per sample) fills the block before it. HydraXProcessor's `target_mask`
        (1 on target placeholders) may mark the targets instead: then a sample's target is its last marked block,
        earlier marked blocks are clean context, and samples without a mark (understanding samples) have no target,
        so one batch can mix understanding, text-to-image and editing samples, with targets of different sizes
        (each size then runs Sem-ViT and the flow head as its own batch, and `velocity` is a list in sample order);
        the flow loss averages over every latent element of the targets. A training batch without targets still runs
        the generation modules (`_idle_generation_path`, weighted zero), so every data-parallel process reduces the
        same gradients.
        `mm_token_type_ids` and `target_grid_thw` are accepted from the processor and not needed: modalities and
        sizes follow from the placeholder tokens and the pixels. The target is noised with the rectified-flow
        schedule (`timesteps` and `noise` may be given; by default t is logit-normal with the resolution shift).
        `timesteps` are `[targets]`, or `[targets, F]` with one time per latent frame (a list of one `[]` or `[F]` per
        target when their frame counts differ): a frame at t = 0 is clean context (image-to-video's anchor) and out of
        the flow loss. While training, each video target becomes such an
        image-to-video sample with probability `config.image_to_video_prob` (when `timesteps` are not given), and
        each generation sample's text is dropped with probability `config.text_dropout_prob` (dropped tokens
        and visual placeholders never count in the LM loss) and, independently, each edit's source is replaced by the
        null image (zeros) with probability `config.source_dropout_prob`, the image-free branch of edit guidance.

        The LM head runs only where it is needed: with `labels`, on the positions that predict a label (`logits` is
        then `None` unless `logits_to_keep` asks for it); without labels, on every position of an understanding
        batch and on none of a batch with generation targets (1.2 GB of bf16 logits per 1024² image at Qwen2.5's
        vocabulary). `logits_to_keep` (an int: the last n positions, 0 for all; or a 1-D tensor of positions) always
        returns those logits.

        `inputs_embeds` `[B, L, hidden]` may replace `input_ids`, as in any transformers LLM: the visual placeholders
        and markers are then found where the embeddings equal theirs, so embed them with `get_input_embeddings()`.
        """
        # 1. Noise the generation targets (and encode the edit sources)
        input_ids = self.model.sequence_ids(input_ids, inputs_embeds)
        if target_mask is not None and tuple(target_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"`target_mask` must have the shape of the tokens, {tuple(input_ids.shape)}, got "
                f"{tuple(target_mask.shape)}; pass the processor's `target_mask` with its `input_ids`."
            )
        if target_latents is not None and target_pixel_values is not None:
            raise ValueError("Pass the generation targets once: `target_latents` or `target_pixel_values`, not both.")
        if target_mask is not None and not bool(target_mask.any()):
            target_mask = None  # a collated batch without generation samples
        if target_mask is not None and target_pixel_values is None and target_latents is None:
            pixel_values, pixel_values_videos, target_pixel_values, source_pixel_values, edit_rows = (
                self._split_targets(input_ids, target_mask, pixel_values, pixel_values_videos)
            )
        else:
            edit_rows = None  # with explicit sources every target is an edit
        generation_embeds = generation_mask = None
        has_target = target_pixel_values is not None or target_latents is not None
        if has_target:
            groups = self._noised_targets(
                target_latents if target_latents is not None else target_pixel_values,
                target_latents is not None,
                source_pixel_values,
                edit_rows,
                timesteps,
                noise,
            )
            num_tokens = torch.zeros(sum(len(group.rows) for group in groups), dtype=torch.long)
            for group in groups:
                num_tokens[group.rows] = group.velocity_target[0, 0].numel()
            with_source = any(group.source is not None for group in groups) if edit_rows is None else edit_rows
            target_mask, source_mask, target_rows = self._generation_masks(
                input_ids, with_source, num_tokens, target_mask
            )
            generation_mask = target_mask if source_mask is None else target_mask | source_mask
            generation_embeds = self._in_sample_order(
                groups, [self._generation_embeds(g.noisy, g.timesteps, g.source, g.edit_rows) for g in groups]
            )
            if self.training and self.config.text_dropout_prob > 0:
                drop = torch.rand(input_ids.shape[0], device=input_ids.device) < self.config.text_dropout_prob
                dropped = torch.where(
                    (drop & target_rows)[:, None], self.unconditional_input_ids(input_ids, target_mask), input_ids
                )
                changed = dropped != input_ids
                if labels is not None:  # a dropped token is no longer in the input: never a label either
                    labels = labels.masked_fill(changed, -100)
                if inputs_embeds is not None:  # given embeddings: the dropped ones become the pad token's
                    pad = self.get_input_embeddings()(torch.tensor(self.config.pad_token_id, device=input_ids.device))
                    inputs_embeds = torch.where(changed[..., None], pad.to(inputs_embeds.dtype), inputs_embeds)
                input_ids = dropped

        # 2. Run the LLM over text, clean visual blocks and the noisy target
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            generation_embeds=generation_embeds,
            generation_mask=generation_mask,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,  # whatever `config.return_dict` asks of this call's own output
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        # 3. Heads and losses: the LM head runs only where a label or `logits_to_keep` needs it
        velocity = flow_loss = lm_loss = logits = None
        if has_target:
            velocity, flow_loss = self._flow_head_and_loss(groups, hidden_states[target_mask], num_tokens)
        if logits_to_keep is None and labels is None and not has_target:
            logits_to_keep = 0
        if logits_to_keep is not None:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep])
        if labels is not None:
            labels = labels.masked_fill(outputs.visual_block_ids >= 0, -100)
            next_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]
            scored = next_labels != -100
            scored_logits = self.lm_head(hidden_states[scored])
            lm_loss = (
                self.loss_function(
                    logits=scored_logits,
                    labels=None,
                    shift_labels=next_labels[scored],
                    vocab_size=self.config.text_config.vocab_size,
                )
                if bool(scored.any())
                else scored_logits.sum()  # nothing to score (e.g. all text dropped): zero, still in the graph
            )
        parts = [(self.config.lm_loss_weight, lm_loss), (self.config.flow_loss_weight, flow_loss)]
        present = [weight * value for weight, value in parts if value is not None]
        loss = sum(present) if present else None
        if loss is not None and not has_target and self.training and torch.is_grad_enabled():
            loss = loss + self._idle_generation_path(hidden_states)
        return HydraXCausalLMOutputWithPast(
            loss=loss,
            lm_loss=lm_loss,
            flow_loss=flow_loss,
            logits=logits,
            velocity=velocity,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _idle_generation_path(self, like: torch.Tensor) -> torch.Tensor:
        """Zero, computed through Sem-ViT, the projector, the timestep embedding and the flow head on one 1×1 latent:
        in a training batch without generation targets these modules still take part in the loss (with a zero
        gradient). Data-parallel engines reduce gradients in buckets that per-parameter hooks fill (DDP without
        `find_unused_parameters`, i.e. with gradient checkpointing; DeepSpeed ZeRO-2/3), so processes whose batches
        used different modules, one an understanding sample and one a generation sample, would reduce mismatched
        buckets and fail or hang."""
        latents = like.new_zeros(1, self.config.vision_config.latent_channels, 1, 1, 1)
        timesteps = like.new_full((1,), 0.5)
        _, embeds = self.model.embed_noisy_latents(latents, timesteps)
        return 0.0 * self.model.flow_head(embeds, timesteps, latents.shape).float().sum()

    # ---------------------------------------------------------------- cached velocity prediction for samplers
    @torch.no_grad()
    def prepare_generation_prefix(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        source_pixel_values: torch.Tensor | None = None,
    ) -> HydraXGenerationPrefix:
        """Run the prompt once: `input_ids` end with the target's `<|vision_start|>`; an edit source
        (`source_pixel_values`) fills the prompt's last visual block. Returns the state `predict_velocity` reuses."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ends = input_ids[:, -1] == self.config.vision_start_token_id
        if not bool((ends & attention_mask[:, -1].bool()).all()):
            raise ValueError(
                "Every row of `input_ids` must end with the generation target's `<|vision_start|>`: cut the prompt "
                "before the target's placeholders and pad on the left (`padding_side='left'`)."
            )
        if source_pixel_values is not None and len(source_pixel_values) != len(input_ids):
            raise ValueError(
                f"`source_pixel_values` holds {len(source_pixel_values)} sources for {len(input_ids)} prompt rows: "
                "give one per row (repeat the source for each guidance branch)."
            )
        source_cache = generation_embeds = generation_mask = None
        if source_pixel_values is not None and self.config.vision_config.attention_mode == "full":
            raise ValueError(
                "Cached editing needs a temporally causal tokenizer: with attention_mode='full' the source's Sem-ViT "
                "features depend on the noisy target, so no source cache can serve every step. Use a tokenizer "
                "with attention_mode='tubelet' or 'causal' (or score edits with the model's forward)."
            )
        if source_pixel_values is not None:
            source_latents = self.model.encode_latents(source_pixel_values)
            self._check_source_block(input_ids, source_latents)
            semantic = self.model.vision_tower.get_semantic_features(source_latents)
            source_cache = semantic.cache
            generation_embeds = self.model.projector(semantic.last_hidden_state)
            generation_mask, _, _ = self._generation_masks(input_ids, with_source=False)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=DynamicCache(config=self.config.text_config),
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            generation_embeds=generation_embeds,
            generation_mask=generation_mask,
            use_cache=True,
            return_dict=True,
        )
        next_position = self.model._position_ids(attention_mask, 1, 0, input_ids.device)[:, -1] + 1
        unpadded = bool(attention_mask.all())
        return HydraXGenerationPrefix(outputs.cache, attention_mask, next_position, source_cache, unpadded)

    def _check_source_block(self, input_ids: torch.Tensor, source_latents: torch.Tensor) -> None:
        """An edit prompt's last visual block (before the target) is its source's: it must exist in every row and hold
        one placeholder per source latent token."""
        block_ids = self.model.visual_block_ids(input_ids)
        last = block_ids.max(dim=1, keepdim=True).values
        counts = ((block_ids == last) & (last >= 0)).sum(dim=1).tolist()
        tokens = source_latents[0, 0].numel()
        if any(count != tokens for count in counts):
            height, width = source_latents.shape[-2:]
            raise ValueError(
                f"The edit source gives {tokens} latent tokens ({height}×{width}), but the prompt's source blocks "
                f"(its last visual block before the target) hold {counts} placeholders: build the edit prompt with "
                "HydraXProcessor for this source image, at the size the source is passed."
            )

    @torch.no_grad()
    def predict_velocity(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, prefix: HydraXGenerationPrefix
    ) -> torch.Tensor:
        """Velocity `[B, C, F, h, w]` of noisy latents at times `timesteps` `[b]` (or `[b, F]`, one per latent frame:
        image-to-video's clean anchor at t = 0) after a cached prefix of `B` rows; the prefix (its LLM cache and
        edit-source frame cache) is left exactly as it was, ready for the next step.

        `noisy_latents` may hold `b = B / k` rows for `k` guidance branches of the prefix (branch-major, e.g. CFG's
        conditional and unconditional prompts): Sem-ViT, projector and timestep embedding then run once and their
        embeddings are shared by the branches, unless the prefix has an edit source (each branch's Sem-ViT sees its own
        source, so the latents are repeated for it)."""
        latent_shape = self.model.vision_tower._check_latents(noisy_latents).shape
        rows = prefix.attention_mask.shape[0]
        if rows % noisy_latents.shape[0]:
            raise ValueError(
                f"The prefix has {rows} rows, not a multiple of the {noisy_latents.shape[0]} noisy latents; pass one "
                "latent per prefix row or one per guidance branch's row."
            )
        branches = rows // noisy_latents.shape[0]
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(noisy_latents.shape[0])
        check_timesteps(timesteps, latent_shape)
        if prefix.source_cache is not None:
            _, height, width = prefix.source_cache.layouts["semantic"]
            if tuple(latent_shape[-2:]) != (height, width):
                raise ValueError(
                    f"An edit's target takes its source's latent grid, {height}×{width}, got noisy latents of "
                    f"{latent_shape[-2]}×{latent_shape[-1]}: sample the target at the source image's size."
                )
        if prefix.source_cache is not None and branches > 1:
            noisy_latents, timesteps, branches = (
                noisy_latents.repeat(branches, 1, 1, 1, 1),
                torch.cat([timesteps] * branches),
                1,
            )
        _, target_embeds = self.model.embed_noisy_latents(noisy_latents, timesteps, source_cache=prefix.source_cache)
        target_embeds, timesteps = target_embeds.repeat(branches, 1, 1), torch.cat([timesteps] * branches)
        batch, tokens = target_embeds.shape[:2]
        attention_mask = torch.cat([prefix.attention_mask, prefix.attention_mask.new_ones(batch, tokens)], dim=1)
        position_ids = prefix.next_position[:, None] + torch.arange(tokens, device=noisy_latents.device)
        if prefix.unpadded:  # the target's queries see every key: no mask, so SDPA keeps its fast kernels
            # flash attention cannot express the bidirectional block in training either: it stays causal here too
            flash = self.config.text_config._attn_implementation.startswith("flash")
            mask, attention_kwargs = {"full_attention": None}, ({} if flash else {"is_causal": False})
        else:
            block_ids = torch.zeros(batch, tokens, dtype=torch.long, device=noisy_latents.device)
            mask = self.model._block_attention_mask(
                target_embeds, attention_mask, prefix.cache, position_ids, block_ids, prefix.length
            )
            attention_kwargs = {}
        hidden = self.model.language_model(
            inputs_embeds=target_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            cache=Cache(layers=[HydraXPromptLayerView(layer) for layer in prefix.cache.layers]),
            use_cache=True,
            return_dict=True,
            **attention_kwargs,
        ).last_hidden_state
        velocity = self.model.flow_head(hidden, timesteps, (rows, *noisy_latents.shape[1:]))
        # on the latents' device: a `device_map` split puts the flow head, last, on another device than the latents
        # (accelerate moves outputs back only for the top-level `forward`), where the scheduler step would fail
        return velocity.to(noisy_latents.device)


__all__ = ["HydraXForConditionalGeneration", "HydraXModel", "HydraXPreTrainedModel"]
