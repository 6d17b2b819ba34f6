"""Hydra-XTok: one ViT that tokenizes images and videos for understanding, generation and editing.

Pipeline (paper order): spatio-temporal patchify → Gen-ViT part 1 → 2× temporal fold → Gen-ViT part 2 → Gaussian
bottleneck (64 channels) → per-channel normalisation → {Sem-ViT → semantic features, pixel decoder → pixels}.
Every ViT uses the same block class and the same tubelet attention: a latent frame attends to its own tokens and
to those of the frame just before it, computed block-sparse (frames folded into the batch), never as a dense mask;
the `causal` ablation mode is block-sparse too (each frame against its key prefix).
"""

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_hydrax_tok import ATTENTION_MODES, HydraXTokConfig


logger = logging.get_logger(__name__)

# A unified Hydra-X checkpoint (`HydraXConfig`, model_type "hydrax") keeps the tokenizer under this prefix (without
# `model.` when `HydraXModel` saved it); once the tower's keys are renamed, the rest is the LLM, projector, flow head.
UNIFIED_MODEL_TYPE = "hydrax"
UNIFIED_VISION_TOWER_PREFIX = re.compile(r"^(model\.)?vision_tower\.")
UNIFIED_OTHER_PARTS = re.compile(r"(model|lm_head|language_model|projector|timestep_embedding|flow_head)\.")
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


# Modules each training stage of the paper trains (stage 1: everything; 2: decoder with the GAN loss;
# 3: Sem-ViT with the distillation losses, Gen-ViT and decoder frozen).
HYDRAX_TOK_TRAINING_STAGES = {
    1: ("gen_vit", "bottleneck", "sem_vit", "decoder", "decompressor"),
    2: ("decoder",),
    3: ("sem_vit", "decompressor"),
}


class HydraXTokFrameCache:
    """Keys and values of the last latent frame(s) each attention layer has seen, carried from one call to the next.

    Streaming a long video in temporal chunks and keeping an edit source fixed across denoising steps are the same
    idea: a later frame attends to an earlier frame whose keys/values are already known. The cache is an explicit
    value passed in and returned (never stored on a module) and is never modified in place: `updated` returns a new
    cache, so one source cache can serve every denoising step.
    """

    def __init__(self, key_values=None, frames_seen=None, layouts=None):
        self.key_values: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = dict(key_values or {})
        self.frames_seen: dict[str, int] = dict(frames_seen or {})
        self.layouts: dict[str, tuple[int, int, int]] = dict(layouts or {})  # per stack: (batch, h, w) of its stream

    def seen(self, stack: str) -> int:
        """Latent frames that `stack` ("encoder", "semantic" or "decoder") has already processed."""
        return self.frames_seen.get(stack, 0)

    def get(self, stack: str, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.key_values.get((stack, layer_idx))

    def check_layout(self, stack: str, layout: tuple[int, int, int]) -> None:
        """A clear error when a continuation's (batch, h, w) latent layout is not its stream's: its frames would attend
        to keys of other samples or of another grid (with other positions), or fail deep inside attention."""
        seen = self.layouts.get(stack)
        if seen is not None and seen != tuple(layout):
            raise ValueError(
                f"The cache continues a {stack} stream of batch {seen[0]} on a {seen[1]}×{seen[2]} latent grid, but "
                f"this call has batch {layout[0]} on {layout[1]}×{layout[2]}; continue a stream with inputs of its "
                "batch and size, or start a new one (no `cache`)."
            )

    def updated(
        self,
        stack: str,
        presents: dict[int, tuple[torch.Tensor, torch.Tensor]],
        num_frames: int,
        layout: tuple[int, int, int],
    ):
        """A new cache holding `presents` for `stack`, which has now seen `num_frames` more latent frames of a stream
        whose latents are laid out as `layout` (batch, h, w)."""
        key_values = dict(self.key_values)
        key_values.update({(stack, idx): kv for idx, kv in presents.items()})
        frames_seen = dict(self.frames_seen)
        frames_seen[stack] = self.seen(stack) + num_frames
        return HydraXTokFrameCache(key_values, frames_seen, {**self.layouts, stack: tuple(layout)})


class HydraXTokDiagonalGaussian:
    """The bottleneck posterior N(mean, exp(logvar)) over latents `[B, C, F, h, w]`; `encode` clamps `logvar` to
    [-30, 20] chunk by chunk as it fills the output, so the posterior holds no second copy of it."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """A draw from the posterior; `generator` may be one per sample (a list), as diffusers' `randn_tensor` takes,
        and may live on another device than the latents (e.g. a CPU generator for reproducible CUDA draws)."""
        generators = generator if isinstance(generator, (list, tuple)) else [generator]
        if len(generators) not in (1, self.mean.shape[0]):
            raise ValueError(
                f"Got {len(generators)} generators for a batch of {self.mean.shape[0]}; pass one or one per sample."
            )
        shape = self.mean.shape if len(generators) == 1 else (1, *self.mean.shape[1:])
        noise = torch.cat(
            [
                torch.randn(
                    shape, generator=g, device=g.device if g is not None else self.mean.device, dtype=self.mean.dtype
                )
                for g in generators
            ]
        )
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, 1), summed over all but the batch dimension: `[B]`, in fp32 (a 17×512² clip's sum,
        ~3·10⁵, overflows fp16)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
        return kl.flatten(1).sum(dim=1)


@dataclass
class HydraXTokEncoderOutput(ModelOutput):
    """
    latents (`torch.Tensor` of shape `(batch_size, latent_channels, 1 + T/4, H/16, W/16)`): normalised latents.
    latent_dist (`HydraXTokDiagonalGaussian`): the un-normalised posterior.
    cache (`HydraXTokFrameCache`, *optional*): the cache after the last frame, to continue a stream; returned when the
        call streams (`chunk_frames` or a `cache` given: start a stream with `cache=HydraXTokFrameCache()`).
    hidden_states (`tuple[torch.Tensor]`, *optional*, with `output_hidden_states=True`): the Gen-ViT's input and
        the output of each of its blocks, `[batch_size, frames, h * w, hidden_size]` at the block's frame rate
        (before the second temporal fold: 1 + T/2 frames under hierarchical compression); with `chunk_frames`, the
        first chunk's input, then each chunk's block outputs in turn.
    attentions (`tuple[torch.Tensor]`, *optional*, with `output_attentions=True`): each Gen-ViT block's attention
        weights in the block-sparse layout described in [`HydraXTokAttention`].
    """

    latents: torch.Tensor | None = None
    latent_dist: HydraXTokDiagonalGaussian | None = None
    cache: HydraXTokFrameCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class HydraXTokDecoderOutput(ModelOutput):
    """
    sample (`torch.Tensor` of shape `(batch_size, 3, frames, H, W)`): decoded pixels in [-1, 1] (not clamped).
    cache (`HydraXTokFrameCache`, *optional*): the cache after the last frame, to continue a stream; returned when the
        call streams (`chunk_frames` or a `cache` given: start a stream with `cache=HydraXTokFrameCache()`).
    hidden_states (`tuple[torch.Tensor]`, *optional*, with `output_hidden_states=True`): the decoder's input and the
        output of each of its blocks, `[batch_size, frames, h * w, decoder_hidden_size]` at the block's frame rate.
    attentions (`tuple[torch.Tensor]`, *optional*, with `output_attentions=True`): each decoder block's attention
        weights in the block-sparse layout described in [`HydraXTokAttention`].
    """

    sample: torch.Tensor | None = None
    cache: HydraXTokFrameCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class HydraXTokSemanticOutput(ModelOutput):
    """
    last_hidden_state (`torch.Tensor` of shape `(batch_size, latent_frames * h * w, hidden_size)`): Sem-ViT features,
        frame-major; in editing mode the source's `h * w` tokens come first.
    cache (`HydraXTokFrameCache`): the cache after the last frame (e.g. the edit source, reused every step).
    hidden_states (`tuple[torch.Tensor]`, *optional*, with `output_hidden_states=True`): the Sem-ViT's input and the
        output of each of its blocks, `[batch_size, latent_frames, h * w, hidden_size]` (the last one before
        `post_layernorm`, as in SigLIP 2).
    attentions (`tuple[torch.Tensor]`, *optional*, with `output_attentions=True`): each Sem-ViT block's attention
        weights in the block-sparse layout described in [`HydraXTokAttention`].
    """

    last_hidden_state: torch.Tensor | None = None
    cache: HydraXTokFrameCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class HydraXTokOutput(ModelOutput):
    """
    reconstruction (`torch.Tensor` of shape `(batch_size, 3, 1 + T, H, W)`): decoded pixels.
    latents (`torch.Tensor` of shape `(batch_size, latent_channels, 1 + T/4, H/16, W/16)`): normalised latents.
    latent_dist (`HydraXTokDiagonalGaussian`): the posterior, for the KL loss.
    semantic_features (`torch.Tensor` of shape `(batch_size, (1 + T/4) * h * w, hidden_size)`): Sem-ViT output.
    image_distill_features (`torch.Tensor` of shape `(batch_size, h * w, image_teacher_hidden_size)`): the anchor
        frame's semantic features projected to the image teacher's width.
    video_distill_features (`torch.Tensor` of shape `(batch_size, T * h * w, video_teacher_hidden_size)`): the
        Decompressor's output for frames 1..T; `None` for images.
    encoder_hidden_states / semantic_hidden_states / decoder_hidden_states (`tuple[torch.Tensor]`, *optional*):
        with `output_hidden_states=True`, the `hidden_states` of `encode`, `get_semantic_features` and `decode`.
    encoder_attentions / semantic_attentions / decoder_attentions (`tuple[torch.Tensor]`, *optional*): with
        `output_attentions=True`, their `attentions`.
    """

    reconstruction: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    latent_dist: HydraXTokDiagonalGaussian | None = None
    semantic_features: torch.Tensor | None = None
    image_distill_features: torch.Tensor | None = None
    video_distill_features: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    semantic_hidden_states: tuple[torch.Tensor, ...] | None = None
    semantic_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class HydraXTokRotaryEmbedding(nn.Module):
    """3D RoPE: the head dim's frequency pairs are split across time, height and width."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        pairs = head_dim // 2
        self.spatial_pairs = pairs // 3
        self.temporal_pairs = pairs - 2 * self.spatial_pairs
        self.theta = theta

    def _inv_freq(self, pairs: int, device: torch.device) -> torch.Tensor:
        return 1.0 / self.theta ** (torch.arange(pairs, device=device, dtype=torch.float32) / max(pairs, 1))

    def forward(self, first_frame: int, num_frames: int, height: int, width: int, device: torch.device):
        """cos, sin of shape `[num_frames, height * width, head_dim]` for frames `first_frame…` of a clip."""
        t = torch.arange(first_frame, first_frame + num_frames, device=device, dtype=torch.float32)
        h = torch.arange(height, device=device, dtype=torch.float32)
        w = torch.arange(width, device=device, dtype=torch.float32)
        freqs_t = (t[:, None] * self._inv_freq(self.temporal_pairs, device))[:, None, None, :]
        freqs_h = (h[:, None] * self._inv_freq(self.spatial_pairs, device))[None, :, None, :]
        freqs_w = (w[:, None] * self._inv_freq(self.spatial_pairs, device))[None, None, :, :]
        shape = (num_frames, height, width, -1)
        freqs = torch.cat([freqs_t.expand(*shape), freqs_h.expand(*shape), freqs_w.expand(*shape)], dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1).reshape(num_frames, height * width, -1)
        return emb.cos(), emb.sin()


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class HydraXTokAttention(nn.Module):
    """Multi-head attention over latent frames `[B, F, N, D]` in tubelet, causal or full mode.

    Returns the output, the attention weights (only with `output_attentions=True`, else `None`) and the keys/values
    to carry to the next chunk. Weights are computed by the eager path (sdpa and flash return none, so a call that
    asks for them falls back to eager) and laid out per query frame, `[B, F, heads, N, K]`:
    `tubelet`: K = 2N, the `[previous frame, own frame]` keys (the clip's anchor has no previous frame: its first N
    columns are 0); `causal`: K = (cached + F)·N, all keys of the cached and current frames, 0 after the query's own
    frame; `full`: K = F·N, every key of the clip. Each row sums to 1.
    """

    def __init__(self, config: HydraXTokConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=config.attention_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _attend(self, query, key, value, output_attentions: bool = False):
        """`[b, H, n, d]` queries against all `[b, H, m, d]` keys (every mode's sparsity is in what it passes in)
        → (`[b, n, H, d]`, `[b, H, n, m]` weights or `None`)."""
        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once(
                f"`output_attentions=True` needs the attention weights, which attn_implementation={implementation!r} "
                "does not return: falling back to eager attention for those calls. Load the model with "
                "`attn_implementation='eager'` to silence this warning."
            )
            implementation = "eager"
        interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        dropout = self.config.attention_dropout if self.training else 0.0
        output, weights = interface(
            self, query, key, value, None, scaling=self.scaling, dropout=dropout, is_causal=False
        )
        return output, weights if output_attentions else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        batch, frames, tokens, _ = hidden_states.shape
        output_attentions = bool(kwargs.get("output_attentions", self.config.output_attentions))
        shape = (batch, frames, tokens, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(2, 3)
        key = self.k_proj(hidden_states).view(shape).transpose(2, 3)
        value = self.v_proj(hidden_states).view(shape).transpose(2, 3)
        if position_embeddings is not None:
            cos, sin = (emb[None, :, None].to(query.dtype) for emb in position_embeddings)
            query = query * cos + rotate_half(query) * sin
            key = key * cos + rotate_half(key) * sin

        mode = self.config.attention_mode
        if mode not in ATTENTION_MODES:  # set on the config after it was validated
            raise ValueError(f"`attention_mode` must be one of {ATTENTION_MODES}, got {mode!r}.")
        if mode == "tubelet":
            attn_output, attn_weights = self._tubelet(query, key, value, past_key_value, output_attentions)
            # Copies, so a carried cache holds one frame rather than keeping the whole chunk's keys/values alive.
            present = (key[:, -1:].clone(), value[:, -1:].clone())
        else:
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=1)
                value = torch.cat([past_key_value[1], value], dim=1)
            past = key.shape[1] - frames
            flat_q = query.transpose(1, 2).reshape(batch, self.num_heads, frames * tokens, self.head_dim)
            flat_k = key.transpose(1, 2).reshape(batch, self.num_heads, -1, self.head_dim)
            flat_v = value.transpose(1, 2).reshape(batch, self.num_heads, -1, self.head_dim)
            if mode == "causal":
                # Block-sparse: frame i's queries against the key prefix of frames 0..past + i (views, no mask).
                per_frame = [
                    self._attend(
                        flat_q[:, :, i * tokens : (i + 1) * tokens],
                        flat_k[:, :, : (past + i + 1) * tokens],
                        flat_v[:, :, : (past + i + 1) * tokens],
                        output_attentions,
                    )
                    for i in range(frames)
                ]
                attn_output = torch.cat([output for output, _ in per_frame], dim=1)
                attn_weights = None
                if output_attentions:
                    width = flat_k.shape[2]
                    attn_weights = torch.stack(
                        [F.pad(weights, (0, width - weights.shape[-1])) for _, weights in per_frame], dim=1
                    )
            else:
                attn_output, attn_weights = self._attend(flat_q, flat_k, flat_v, output_attentions)
                if output_attentions:
                    attn_weights = attn_weights.unflatten(2, (frames, tokens)).transpose(1, 2)
            present = (key, value) if mode == "causal" else None
        return self.out_proj(attn_output.reshape(batch, frames, tokens, -1)), attn_weights, present

    def _tubelet(self, query, key, value, past_key_value, output_attentions: bool = False):
        """Each frame's queries against `[previous frame, own frame]` keys, frames folded into the batch."""
        batch, frames, heads, tokens, dim = query.shape
        outputs, weights = [], []
        if past_key_value is None:
            # The clip's first frame (the anchor) has no previous frame: it attends to itself only.
            output, anchor_weights = self._attend(query[:, 0], key[:, 0], value[:, 0], output_attentions)
            outputs.append(output[:, None])
            if output_attentions:
                weights.append(F.pad(anchor_weights, (tokens, 0))[:, None])
            query, prev_key, prev_value = query[:, 1:], key[:, :-1], value[:, :-1]
            key, value = key[:, 1:], value[:, 1:]
        else:
            prev_key = torch.cat([past_key_value[0], key[:, :-1]], dim=1)
            prev_value = torch.cat([past_key_value[1], value[:, :-1]], dim=1)
        paired = query.shape[1]
        if paired > 0:
            pair_key = torch.cat([prev_key, key], dim=3).reshape(batch * paired, heads, 2 * tokens, dim)
            pair_value = torch.cat([prev_value, value], dim=3).reshape(batch * paired, heads, 2 * tokens, dim)
            pair_query = query.reshape(batch * paired, heads, tokens, dim)
            output, pair_weights = self._attend(pair_query, pair_key, pair_value, output_attentions)
            outputs.append(output.view(batch, paired, tokens, heads, dim))
            if output_attentions:
                weights.append(pair_weights.view(batch, paired, heads, tokens, 2 * tokens))
        attn_output = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        return attn_output, torch.cat(weights, dim=1) if output_attentions else None


class HydraXTokMLP(nn.Module):
    def __init__(self, config: HydraXTokConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class HydraXTokBlock(GradientCheckpointingLayer):
    """The one pre-norm ViT block (SigLIP 2 layout) used by the Gen-ViT, Sem-ViT, decoder and Decompressor."""

    def __init__(self, config: HydraXTokConfig, hidden_size: int, num_heads: int, intermediate_size: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.self_attn = HydraXTokAttention(config, hidden_size, num_heads)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = HydraXTokMLP(config, hidden_size, intermediate_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """`[B, F, N, D]` and the carried keys / values → (`[B, F, N, D]`, this layer's keys, values to carry to the
        next chunk, or `None`s). Tensors in and out at the top level, not in tuples: reentrant activation
        checkpointing passes gradients only through those, so a chunked clip's gradients reach its earlier chunks."""
        past = None if past_key is None else (past_key, past_value)
        attn_output, _, present = self.self_attn(self.layer_norm1(hidden_states), position_embeddings, past, **kwargs)
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, *(present if present is not None else (None, None))


class HydraXTokStack(nn.Module):
    """A run of blocks sharing 3D RoPE, with an optional 2× temporal fold or un-fold after `resample_after` blocks.

    Frame counting: latent frame `a` (a ≥ 1) holds finer frames `2a - 1` and `2a`; latent frame 0 (the anchor)
    holds one finer frame, zero-padded to a pair on the way down and dropped on the way up.
    """

    def __init__(self, config, name, num_layers, hidden_size, num_heads, intermediate_size, resample=None, after=0):
        super().__init__()
        self.name = name
        self.layers = nn.ModuleList(
            [HydraXTokBlock(config, hidden_size, num_heads, intermediate_size) for _ in range(num_layers)]
        )
        self.resample_kind = resample
        self.resample_after = after
        if resample == "fold":
            self.temporal_fold = nn.Linear(2 * hidden_size, hidden_size)
        elif resample == "unfold":
            self.temporal_unfold = nn.Linear(hidden_size, 2 * hidden_size)
        self.rotary = (
            HydraXTokRotaryEmbedding(hidden_size // num_heads, config.rope_theta) if config.use_rope else None
        )

    def _resample(self, hidden, includes_anchor):
        batch, frames, tokens, width = hidden.shape
        if self.resample_kind == "fold":
            if includes_anchor:
                hidden = torch.cat([torch.zeros_like(hidden[:, :1]), hidden], dim=1)
            pairs = hidden.view(batch, -1, 2, tokens, width).transpose(2, 3).reshape(batch, -1, tokens, 2 * width)
            return self.temporal_fold(pairs)
        hidden = self.temporal_unfold(hidden).view(batch, frames, tokens, 2, width).transpose(2, 3)
        hidden = hidden.reshape(batch, 2 * frames, tokens, width)
        return hidden[:, 1:] if includes_anchor else hidden

    def _rope(self, latent_offset, fine, frames, grid, device):
        if self.rotary is None:
            return None
        first = (2 * latent_offset - 1 if latent_offset > 0 else 0) if fine else latent_offset
        return self.rotary(first, frames, *grid, device)

    def forward(self, hidden, grid, latent_offset=0, cache=None, fine=False, **kwargs: Unpack[TransformersKwargs]):
        """Run the blocks on `[B, F, N, D]`; `fine` says whether `hidden` is at the finer (pre-fold) frame rate.

        Returns the hidden states and `{layer index: keys/values}` to carry to the next chunk.
        """
        includes_anchor = latent_offset == 0
        rope = self._rope(latent_offset, fine, hidden.shape[1], grid, hidden.device)
        presents = {}
        for idx, layer in enumerate(self.layers):
            if self.resample_kind is not None and idx == self.resample_after:
                hidden, fine = self._resample(hidden, includes_anchor), not fine
                rope = self._rope(latent_offset, fine, hidden.shape[1], grid, hidden.device)
            past = cache.get(self.name, idx) if cache is not None else None
            hidden, key, value = layer(hidden, rope, *(past or (None, None)), **kwargs)
            presents[idx] = None if key is None else (key, value)
        if self.resample_kind is not None and self.resample_after == len(self.layers):
            hidden = self._resample(hidden, includes_anchor)
        return hidden, presents


class HydraXTokPositionEmbedding(nn.Module):
    """SigLIP 2's learned 2D position grid, bilinearly interpolated to the patch grid."""

    def __init__(self, size: int, hidden_size: int):
        super().__init__()
        self.size = size
        self.position_embedding = nn.Embedding(size * size, hidden_size)

    def forward(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        # The table is read through the embedding's forward, so offloading hooks (accelerate) bring it to `device`
        table = self.position_embedding(torch.arange(self.size * self.size, device=device))
        grid = table.reshape(self.size, self.size, -1).permute(2, 0, 1)[None]
        if (height, width) != (self.size, self.size):
            grid = F.interpolate(grid.float(), size=(height, width), mode="bilinear", antialias=True)
        return grid[0].flatten(1).transpose(0, 1).to(table.dtype)


def patchify(pixel_values, patch_size, temporal_patch_size, includes_anchor):
    """`[B, C, F, H, W]` → `[B, F', N, tp·p·p·C]` tubelets; the anchor is zero-padded to a full tubelet."""
    if includes_anchor and temporal_patch_size > 1:
        pad = pixel_values.new_zeros(*pixel_values.shape[:2], temporal_patch_size - 1, *pixel_values.shape[3:])
        pixel_values = torch.cat([pad, pixel_values], dim=2)
    batch, channels, frames, height, width = pixel_values.shape
    h, w, tp = height // patch_size, width // patch_size, temporal_patch_size
    x = pixel_values.view(batch, channels, frames // tp, tp, h, patch_size, w, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(batch, frames // tp, h * w, tp * patch_size * patch_size * channels)


def unpatchify(patches, grid, patch_size, temporal_patch_size, channels, includes_anchor):
    """Inverse of `patchify`: `[B, F', N, tp·p·p·C]` → `[B, C, F, H, W]`, the anchor's padding dropped."""
    batch, frames = patches.shape[:2]
    h, w = grid
    tp = temporal_patch_size
    x = patches.view(batch, frames, h, w, tp, patch_size, patch_size, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, channels, frames * tp, h * patch_size, w * patch_size)
    return x[:, :, tp - 1 :] if includes_anchor else x


class HydraXTokGenViT(nn.Module):
    """Patch embedding + Gen-ViT (two parts around the second temporal fold) + the Gaussian bottleneck."""

    def __init__(self, config: HydraXTokConfig):
        super().__init__()
        self.config = config
        tp, p = config.first_temporal_patch_size, config.patch_size
        self.patch_embedding = nn.Linear(tp * p * p * config.num_channels, config.hidden_size)
        if config.use_abs_pos_embed:
            self.position_embedding = HydraXTokPositionEmbedding(config.position_embedding_size, config.hidden_size)
        hierarchical = config.temporal_compression == "hierarchical"
        self.encoder = HydraXTokStack(
            config,
            "encoder",
            config.num_gen_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            resample="fold" if hierarchical else None,
            after=config.gen_fold_layer,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bottleneck = nn.Linear(config.hidden_size, 2 * config.latent_channels)

    def forward(self, pixel_values, latent_offset=0, cache=None, **kwargs: Unpack[TransformersKwargs]):
        """`[B, C, F, H, W]` pixels → (posterior moments `[B, F2, N, 2C]`, keys/values per layer)."""
        config = self.config
        grid = (pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size)
        patches = patchify(pixel_values, config.patch_size, config.first_temporal_patch_size, latent_offset == 0)
        hidden = self.patch_embedding(patches.to(self.patch_embedding.weight.dtype))  # e.g. float32 pixels, bf16 model
        if config.use_abs_pos_embed:
            hidden = hidden + self.position_embedding(*grid, hidden.device)
        fine = config.temporal_compression == "hierarchical"
        hidden, presents = self.encoder(hidden, grid, latent_offset, cache, fine=fine, **kwargs)
        return self.bottleneck(self.norm(hidden)), presents


class HydraXTokSemViT(nn.Module):
    """Sem-ViT: lifts the 64-channel latent back to ViT width and produces the features the LLM sees."""

    def __init__(self, config: HydraXTokConfig):
        super().__init__()
        self.latent_proj = nn.Linear(config.latent_channels, config.hidden_size)
        self.encoder = HydraXTokStack(
            config,
            "semantic",
            config.num_sem_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, latents, latent_offset=0, cache=None, **kwargs: Unpack[TransformersKwargs]):
        grid = latents.shape[-2:]
        hidden = self.latent_proj(latents.flatten(3).permute(0, 2, 3, 1).to(self.latent_proj.weight.dtype))
        hidden, presents = self.encoder(hidden, grid, latent_offset, cache, **kwargs)
        return self.post_layernorm(hidden), presents


class HydraXTokDecoder(nn.Module):
    """Pixel decoder: the encoder's mirror (latent frames → 2× temporal un-fold → tubelets → pixels)."""

    def __init__(self, config: HydraXTokConfig):
        super().__init__()
        self.config = config
        width = config.decoder_hidden_size
        self.latent_proj = nn.Linear(config.latent_channels, width)
        if config.use_abs_pos_embed:
            self.position_embedding = HydraXTokPositionEmbedding(config.position_embedding_size, width)
        hierarchical = config.temporal_compression == "hierarchical"
        self.decoder = HydraXTokStack(
            config,
            "decoder",
            config.num_decoder_layers,
            width,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
            resample="unfold" if hierarchical else None,
            after=config.decoder_unfold_layer,
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        tp, p = config.first_temporal_patch_size, config.patch_size
        self.out_proj = nn.Linear(width, tp * p * p * config.num_channels)

    def forward(self, latents, latent_offset=0, cache=None, **kwargs: Unpack[TransformersKwargs]):
        config = self.config
        grid = tuple(latents.shape[-2:])
        hidden = self.latent_proj(latents.flatten(3).permute(0, 2, 3, 1).to(self.latent_proj.weight.dtype))
        if config.use_abs_pos_embed:
            hidden = hidden + self.position_embedding(*grid, hidden.device)
        hidden, presents = self.decoder(hidden, grid, latent_offset, cache, **kwargs)
        patches = self.out_proj(self.norm(hidden))
        pixels = unpatchify(
            patches,
            grid,
            config.patch_size,
            config.first_temporal_patch_size,
            config.num_channels,
            includes_anchor=latent_offset == 0,
        )
        return pixels, presents


class HydraXTokDecompressor(nn.Module):
    """Training-only: expands Sem-ViT features of latent frames 1.. to one feature map per video frame (2 × [Linear
    D→2D, channels→time, one block]) and projects anchor / video features to the distillation teachers' widths."""

    def __init__(self, config: HydraXTokConfig):
        super().__init__()
        width = config.hidden_size
        self.expand = nn.ModuleList([nn.Linear(width, 2 * width) for _ in range(2)])
        self.blocks = nn.ModuleList(
            [HydraXTokBlock(config, width, config.num_attention_heads, config.intermediate_size) for _ in range(2)]
        )
        self.rotary = HydraXTokRotaryEmbedding(width // config.num_attention_heads, config.rope_theta)
        self.use_rope = config.use_rope
        self.image_head = nn.Linear(width, config.image_teacher_hidden_size)
        self.video_head = nn.Linear(width, config.video_teacher_hidden_size)

    def forward(self, semantic, grid):
        """`[B, F2, N, D]` Sem-ViT features → (`[B, N, D_img]`, `[B, T·N, D_vid]` or `None` for images)."""
        image_features = self.image_head(semantic[:, 0])
        if semantic.shape[1] == 1:
            return image_features, None
        hidden = semantic[:, 1:]
        for expand, block in zip(self.expand, self.blocks):
            batch, frames, tokens, width = hidden.shape
            hidden = expand(hidden).view(batch, frames, tokens, 2, width).transpose(2, 3)
            hidden = hidden.reshape(batch, 2 * frames, tokens, width)
            rope = self.rotary(0, 2 * frames, *grid, hidden.device) if self.use_rope else None
            hidden = block(hidden, rope)[0]
        return image_features, self.video_head(hidden).flatten(1, 2)


class HydraXTokPreTrainedModel(PreTrainedModel):
    config: HydraXTokConfig
    config_class = HydraXTokConfig
    base_model_prefix = "hydrax_tok"
    main_input_name = "pixel_values"
    input_modalities = ("image", "video")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HydraXTokBlock"]
    # diffusers' block-level group offloading onloads a block's weights when the block's forward runs; `encode` and
    # `decode` call these parts' forwards, never the model's own, so each part is a block.
    _group_offload_block_modules = ["gen_vit", "sem_vit", "decoder"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": HydraXTokBlock, "attentions": HydraXTokAttention}

    def _init_weights(self, module):
        super()._init_weights(module)
        # The Linears into and out of the latent have fan-in 64 (or D → 2·64): at std 0.02 the posterior mean starts
        # at std ≈ 0.28 against the sampling noise's 1, and the latent reaches the decoder / Sem-ViT at std ≈ 0.05,
        # so reconstruction starts with almost no signal from the encoder (the quickstart fitted 2–4 dB worse).
        # Fan-in scaling (std 1/√fan_in) keeps them unit-scale.
        bridge = [getattr(self, "gen_vit", None), getattr(self, "sem_vit", None), getattr(self, "decoder", None)]
        bridge = [getattr(part, name, None) for part in bridge for name in ("bottleneck", "latent_proj")]
        if isinstance(module, nn.Linear) and any(module is layer for layer in bridge):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)


class HydraXTokModel(HydraXTokPreTrainedModel):
    """Hydra-XTok: encodes images `[B, 3, H, W]` and videos `[B, 3, 1+T, H, W]` (T % 4 == 0, pixels in [-1, 1]) to
    64-channel latents `[B, 64, 1+T/4, H/16, W/16]`, decodes them back, and turns them into the semantic features
    the LLM sees.

    Example:

    ```python
    >>> import torch
    >>> from modeling_hydrax import HydraXTokConfig, HydraXTokModel
    >>> config = HydraXTokConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_gen_layers=2,
    ...     gen_fold_layer=1, num_sem_layers=1, num_decoder_layers=2, decoder_unfold_layer=1, latent_channels=8)
    >>> model = HydraXTokModel(config).eval()
    >>> video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    >>> latents = model.encode(video).latents                       # [1, 8, 3, 4, 4]
    >>> frames = model.decode(latents, chunk_frames=1).sample       # [1, 3, 9, 64, 64]
    >>> features = model.get_semantic_features(latents).last_hidden_state  # [1, 48, 64]
    ```
    """

    def __init__(self, config: HydraXTokConfig):
        super().__init__(config)
        self.gen_vit = HydraXTokGenViT(config)
        self.sem_vit = HydraXTokSemViT(config)
        self.decoder = HydraXTokDecoder(config)
        self.decompressor = HydraXTokDecompressor(config) if config.use_decompressor else None
        self.post_init()

    def add_decompressor(self) -> None:
        """A newly initialised Decompressor, sized by the config's teacher widths, for distillation: for a tokenizer
        saved without one (the unified model's tower, or one trained without teachers), or new heads for other
        teachers."""
        self.config.use_decompressor = True
        parameter = next(self.parameters())
        self.decompressor = HydraXTokDecompressor(self.config).to(parameter.device, parameter.dtype)
        self.decompressor.apply(self._init_weights)

    def get_input_embeddings(self) -> nn.Module:
        """Sem-ViT's input layer (latent → ViT width), where the LLM's path enters the tokenizer: transformers'
        `enable_input_require_grads` hooks it, so that adapters on Sem-ViT train under reentrant gradient
        checkpointing too (the unified model encodes its latents without gradients), as Qwen2.5-VL's vision LoRA
        does through its `patch_embed`."""
        return self.sem_vit.latent_proj

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""[`PreTrainedModel.from_pretrained`] for a Hydra-XTok checkpoint, or the vision tower of a unified Hydra-X
        checkpoint: its `vision_config` and its `model.vision_tower.*` weights (`vision_tower.*` from a `HydraXModel`
        folder), exactly, the way `CLIPVisionModel`
        loads from a CLIP checkpoint (the LLM, projector and flow head are left out and not reported). The unified
        model's tower has no Decompressor, so neither has the loaded tokenizer. It saves as a tokenizer checkpoint.
        """
        unified = False
        if pretrained_model_name_or_path is not None:
            model_type, architectures = cls._checkpoint_kind(pretrained_model_name_or_path, kwargs)
            unified = model_type == UNIFIED_MODEL_TYPE
            if unified:
                key_mapping = {UNIFIED_VISION_TOWER_PREFIX.pattern: ""}
                kwargs["key_mapping"] = {**key_mapping, **(kwargs.get("key_mapping") or {})}
            elif model_type != cls.config_class.model_type:
                classes = ", ".join(architectures) if architectures else "no architectures listed"
                raise ValueError(
                    f"{str(pretrained_model_name_or_path)!r} holds a {model_type!r} checkpoint ({classes}), "
                    f"neither a Hydra-XTok tokenizer ({cls.config_class.model_type!r}) nor a unified Hydra-X model "
                    f"({UNIFIED_MODEL_TYPE!r}). Pass a folder written by `HydraXTokModel.save_pretrained` or by "
                    "`HydraXForConditionalGeneration.save_pretrained` (e.g. `conversion/build_hydrax.py`); load this "
                    "one with `AutoModel.from_pretrained(..., trust_remote_code=True)`."
                )
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if unified:  # transformers would undo the renaming on save, writing unified keys (or failing to)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            model._weight_conversions = [
                conversion
                for conversion in model._weight_conversions or []
                if UNIFIED_VISION_TOWER_PREFIX.pattern not in conversion.source_patterns
            ]
        return loaded

    @staticmethod
    def _checkpoint_kind(pretrained_model_name_or_path, kwargs) -> tuple[str | None, list[str] | None]:
        """`model_type` and `architectures` of the checkpoint's config.json (the tokenizer's own when the caller
        passes a `config` and the folder has no config.json)."""
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        try:
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        except OSError:
            if not isinstance(kwargs.get("config"), PreTrainedConfig):
                raise
            return kwargs["config"].model_type, None
        return config_dict.get("model_type"), config_dict.get("architectures")

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """From a unified checkpoint, the weights outside the vision tower belong to the unified model, so they are not
        reported as unexpected. Only this class's own loading does this: as a submodule (the unified model's vision
        tower) it adds nothing to its parent's ignore patterns."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        loading_info.unexpected_keys = {
            key for key in loading_info.unexpected_keys if not UNIFIED_OTHER_PARTS.match(key)
        }

    # ---------------------------------------------------------------- input checks
    @staticmethod
    def _check_keywords(method: str, kwargs: dict) -> None:
        """Keyword arguments beyond transformers' own are errors: `**kwargs` would swallow a typo, e.g.
        `encode(sample_posterior=True)` (`forward`'s name, as diffusers' VAEs have it) returned the posterior mean."""
        unknown = sorted(set(kwargs) - set(TransformersKwargs.__annotations__))
        if unknown:
            hint = " `encode` draws from the posterior with `sample=True`." if "sample_posterior" in unknown else ""
            raise TypeError(f"HydraXTokModel.{method}() got unexpected keyword argument(s) {unknown}.{hint}")

    def _check_pixel_values(self, pixel_values, continuing: bool) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"`pixel_values` must be a floating-point tensor in [-1, 1], got dtype {pixel_values.dtype}; "
                "convert with `pixels.float() / 127.5 - 1` or use HydraXImageProcessor."
            )
        if pixel_values.ndim not in (4, 5) or not pixel_values.shape[0]:
            raise ValueError(
                f"`pixel_values` must be [B, 3, H, W] (images) or [B, 3, 1+T, H, W] (videos) with B ≥ 1, got shape "
                f"{tuple(pixel_values.shape)}."
            )
        if pixel_values.ndim == 4:
            pixel_values = pixel_values.unsqueeze(2)
        channels, frames, height, width = pixel_values.shape[1:]
        config = self.config
        if channels != config.num_channels:
            raise ValueError(
                f"`pixel_values` has {channels} channels at dim 1 but the tokenizer expects {config.num_channels}; "
                "videos are channels-first: [B, 3, frames, H, W]."
            )
        patch = config.patch_size
        if height % patch or width % patch or not height or not width:
            nearest = [max(patch, side // patch * patch) for side in (height, width)]
            raise ValueError(
                f"Height and width must be positive multiples of {patch}, got {height}×{width}; resize or crop "
                f"(e.g. to {nearest[0]}×{nearest[1]})."
            )
        ratio = config.temporal_compression_ratio
        if continuing and (frames == 0 or frames % ratio):
            raise ValueError(f"A continuation chunk must have a positive multiple of {ratio} frames, got {frames}.")
        if not continuing and frames == 0:
            raise ValueError("A clip needs at least its anchor frame; `pixel_values` has 0 frames.")
        if not continuing and (frames - 1) % ratio:
            stream = (
                " To continue a stream, pass the previous call's `cache` (a call returns one when it streams: start "
                "with `cache=HydraXTokFrameCache()` or `chunk_frames`)."
                if frames % ratio == 0
                else ""
            )
            raise ValueError(
                f"A clip must have 1 + {ratio}·k frames (an anchor plus a multiple of {ratio}), got {frames}; "
                f"drop {(frames - 1) % ratio} frame(s) or pad to {frames + ratio - (frames - 1) % ratio}.{stream}"
            )
        return pixel_values

    def _check_latents(self, latents: torch.Tensor, name: str = "latents") -> torch.Tensor:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point torch.Tensor, got {type(latents).__name__}.")
        given = tuple(latents.shape)
        if latents.ndim == 4:
            latents = latents.unsqueeze(2)
        channels = self.config.latent_channels
        if latents.ndim != 5 or latents.shape[1] != channels or 0 in latents.shape[:1] + latents.shape[2:]:
            raise ValueError(
                f"`{name}` must be [B, {channels}, frames, h, w] (or [B, {channels}, h, w]) with B ≥ 1, at least "
                f"one frame and one token, got {given}."
            )
        return latents

    def _check_chunking(self, chunk_frames, cache) -> int | None:
        """`chunk_frames` as an int (numpy and 0-d tensor integers too), or a clear error."""
        if chunk_frames is not None:
            try:
                count = None if isinstance(chunk_frames, bool) else operator.index(chunk_frames)
            except TypeError:
                count = None
            if count is None or count < 1:
                raise ValueError(
                    f"`chunk_frames` counts latent frames per chunk and must be an int ≥ 1, got {chunk_frames!r}."
                )
            chunk_frames = count
        if self.config.attention_mode == "full" and (chunk_frames is not None or cache is not None):
            raise ValueError(
                "`chunk_frames` and `cache` need temporally causal attention, but attention_mode='full' lets every "
                "frame see the future; use attention_mode='tubelet' or 'causal', or encode the whole clip."
            )
        return chunk_frames

    def _check_one_pass(self, method: str, kwargs: dict, chunk_frames: int | None, num_latent: int) -> None:
        """`output_hidden_states` / `output_attentions` record one entry per layer call, so they need the layers run
        once: several chunks would return a list of per-chunk pieces that no longer maps to the layers."""
        recorded = [
            name
            for name in ("output_hidden_states", "output_attentions")
            if kwargs.get(name, getattr(self.config, name, False))
        ]
        if recorded and chunk_frames is not None and chunk_frames < num_latent:
            raise ValueError(
                f"`{method}` with {' and '.join(recorded)} records one entry per layer call, but chunk_frames="
                f"{chunk_frames} runs the layers {math.ceil(num_latent / chunk_frames)} times for {num_latent} latent "
                "frames; leave `chunk_frames` unset, or pass each chunk in its own call with the returned `cache`."
            )

    # ---------------------------------------------------------------- latent normalisation
    def _latent_stats(self, reference: torch.Tensor):
        """The config's per-channel mean and std, shaped to broadcast over `reference` (`[B, C, F, h, w]` latents,
        or `[B, C, h, w]` image latents)."""
        self._check_latents(reference)
        config, shape = self.config, (1, -1) + (1,) * (reference.ndim - 2)
        config.check_latent_statistics()
        mean = config.latents_mean or [0.0] * config.latent_channels
        std = config.latents_std or [1.0] * config.latent_channels
        kwargs = {"device": reference.device, "dtype": reference.dtype}
        return torch.tensor(mean, **kwargs).view(shape), torch.tensor(std, **kwargs).view(shape)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, C, F, h, w]` or `[B, C, h, w]` in the config's normalised scale (`(z - latents_mean) /
        latents_std`; unchanged while the statistics are None), the scale `encode` returns and `decode` takes."""
        mean, std = self._latent_stats(latents)
        return (latents - mean) / std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize_latents`, for latents of either layout."""
        mean, std = self._latent_stats(latents)
        return latents * std + mean

    # ---------------------------------------------------------------- public API
    @capture_outputs(tie_last_hidden_states=False)
    def encode(
        self,
        pixel_values: torch.Tensor,
        sample: bool = False,
        chunk_frames: int | None = None,
        generator: torch.Generator | None = None,
        cache: HydraXTokFrameCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HydraXTokEncoderOutput:
        """Pixels `[B, 3, 1+T, H, W]` (or `[B, 3, H, W]`) in [-1, 1] → normalised latents `[B, C, 1+T/4, h, w]`.

        `sample` draws from the posterior instead of taking its mean. `chunk_frames` encodes `chunk_frames` latent
        frames at a time, carrying each layer's last-frame keys/values, so memory stays flat with length and the
        result equals the whole clip. Pass the returned `cache` back to continue a stream with the next 4·k frames
        (a call returns one when it streams: with `chunk_frames`, or `cache=HydraXTokFrameCache()` to start).
        `output_hidden_states` / `output_attentions` / `return_dict` behave as in any transformers model (the first two
        need the layers run once: not with a `chunk_frames` that splits the clip).
        """
        self._check_keywords("encode", kwargs)
        chunk_frames = self._check_chunking(chunk_frames, cache)
        offset = cache.seen("encoder") if cache is not None else 0
        pixel_values = self._check_pixel_values(pixel_values, continuing=offset > 0)
        ratio = self.config.temporal_compression_ratio
        num_latent = pixel_values.shape[2] // ratio + (1 if offset == 0 else 0)
        self._check_one_pass("encode", kwargs, chunk_frames, num_latent)
        step = chunk_frames or num_latent
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        layout = (pixel_values.shape[0], *grid)
        if cache is not None:
            cache.check_layout("encoder", layout)
        moments = None
        for start in range(0, num_latent, step):
            stop = min(start + step, num_latent)
            first = offset + start
            pixel_start = 0 if first == 0 else ratio * first - ratio + 1
            pixel_stop = ratio * (offset + stop) - ratio + 1
            pixel_base = 0 if offset == 0 else ratio * offset - ratio + 1
            chunk = pixel_values[:, :, pixel_start - pixel_base : pixel_stop - pixel_base]
            chunk_moments, presents = self.gen_vit(chunk, first, cache, **kwargs)
            chunk_moments = chunk_moments.permute(0, 3, 1, 2).unflatten(3, grid)
            if moments is None:
                moments = chunk_moments.new_empty(*chunk_moments.shape[:2], num_latent, *grid)
            channels = self.config.latent_channels
            moments[:, :channels, start:stop] = chunk_moments[:, :channels]
            moments[:, channels:, start:stop] = chunk_moments[:, channels:].clamp(-30.0, 20.0)
            if chunk_frames is not None or cache is not None:
                cache = (cache or HydraXTokFrameCache()).updated("encoder", presents, stop - start, layout)
        mean, logvar = moments.chunk(2, dim=1)
        latent_dist = HydraXTokDiagonalGaussian(mean, logvar)
        latents = latent_dist.sample(generator) if sample else latent_dist.mode()
        return HydraXTokEncoderOutput(self.normalize_latents(latents), latent_dist, cache)

    @capture_outputs(tie_last_hidden_states=False)
    def decode(
        self,
        latents: torch.Tensor,
        chunk_frames: int | None = None,
        cache: HydraXTokFrameCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HydraXTokDecoderOutput:
        """Normalised latents `[B, C, F, h, w]` → pixels `[B, 3, 1 + 4·(F-1), 16·h, 16·w]` (continuation chunks of a
        stream decode to 4·F frames). `chunk_frames` decodes that many latent frames at a time (same result), each
        chunk written into the preallocated output, so working memory does not grow with the clip."""
        self._check_keywords("decode", kwargs)
        chunk_frames = self._check_chunking(chunk_frames, cache)
        latents = self.denormalize_latents(self._check_latents(latents))
        layout = (latents.shape[0], *latents.shape[-2:])
        if cache is not None:
            cache.check_layout("decoder", layout)
        offset = cache.seen("decoder") if cache is not None else 0
        num_latent = latents.shape[2]
        self._check_one_pass("decode", kwargs, chunk_frames, num_latent)
        step = chunk_frames or num_latent
        frames = written = None
        for start in range(0, num_latent, step):
            stop = min(start + step, num_latent)
            pixels, presents = self.decoder(latents[:, :, start:stop], offset + start, cache, **kwargs)
            if frames is None:  # later latent frames decode to `temporal_compression_ratio` frames each
                total = pixels.shape[2] + (num_latent - stop) * self.config.temporal_compression_ratio
                frames, written = pixels.new_empty(*pixels.shape[:2], total, *pixels.shape[3:]), 0
            frames[:, :, written : written + pixels.shape[2]] = pixels
            written += pixels.shape[2]
            if chunk_frames is not None or cache is not None:
                cache = (cache or HydraXTokFrameCache()).updated("decoder", presents, stop - start, layout)
        return HydraXTokDecoderOutput(frames, cache)

    @capture_outputs(tie_last_hidden_states=False)
    def get_semantic_features(
        self,
        latents: torch.Tensor,
        source_latents: torch.Tensor | None = None,
        cache: HydraXTokFrameCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HydraXTokSemanticOutput:
        """Sem-ViT features `[B, F·h·w, D]` of normalised latents `[B, C, F, h, w]` (or `[B, C, h, w]`).

        Editing mode: with `source_latents` (an image latent `[B, C, h, w]`, encoded on its own) the source and the
        target form a 2-frame latent clip; under tubelet attention the target sees the source, never the reverse.
        The output then holds the source's tokens first. With `cache` (e.g. a source's returned cache) the latents
        continue that clip: this is how a fixed edit source is computed once for all denoising steps.
        """
        self._check_keywords("get_semantic_features", kwargs)
        self._check_chunking(None, cache)
        latents = self._check_latents(latents)
        if source_latents is not None and cache is not None:
            raise ValueError(
                "Pass an edit's `source_latents` or a `cache` that continues a clip (e.g. the source's own returned "
                "cache), not both: the source would follow the cached frames and attend to them."
            )
        if source_latents is not None:
            source_latents = self._check_latents(source_latents, "source_latents")
            if source_latents.shape[2] != 1 or source_latents.shape[-2:] != latents.shape[-2:]:
                raise ValueError(
                    f"`source_latents` must be one latent frame on the target's grid {tuple(latents.shape[-2:])}, "
                    f"got {tuple(source_latents.shape)}."
                )
            if source_latents.shape[0] != latents.shape[0]:
                raise ValueError(
                    f"`source_latents` hold {source_latents.shape[0]} sources for {latents.shape[0]} targets; pass "
                    "one source per target (e.g. `source_latents.repeat_interleave(n, 0)` for n targets per source)."
                )
            latents = torch.cat([source_latents, latents], dim=2)
        layout = (latents.shape[0], *latents.shape[-2:])
        if cache is not None:
            cache.check_layout("semantic", layout)
        offset = cache.seen("semantic") if cache is not None else 0
        hidden, presents = self.sem_vit(latents, offset, cache, **kwargs)
        if self.config.attention_mode != "full":
            cache = (cache or HydraXTokFrameCache()).updated("semantic", presents, latents.shape[2], layout)
        return HydraXTokSemanticOutput(hidden.flatten(1, 2), cache)

    def set_training_stage(self, stage: int) -> list[str]:
        """Freeze everything except what the paper's training `stage` (1, 2 or 3) trains; returns those names."""
        if stage not in HYDRAX_TOK_TRAINING_STAGES:
            raise ValueError(f"`stage` must be one of {sorted(HYDRAX_TOK_TRAINING_STAGES)}, got {stage!r}.")
        prefixes = HYDRAX_TOK_TRAINING_STAGES[stage]
        trainable = []
        for name, param in self.named_parameters():
            param.requires_grad_(name.split(".")[0] in prefixes)
            if param.requires_grad:
                trainable.append(name)
        return trainable

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        sample_posterior: bool | None = None,
        generator: torch.Generator | None = None,
        decode: bool = True,
        semantic: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HydraXTokOutput | tuple:
        """Full training pass: encode, (sample), Sem-ViT, decode and, with the Decompressor, distillation features.

        `sample_posterior` defaults to `self.training`. `decode=False` skips the pixel decoder and `semantic=False`
        the Sem-ViT and Decompressor (their fields are then None): training stages that do not use an output need
        not pay for it. `output_hidden_states` / `output_attentions` fill the `encoder_*`, `semantic_*` and
        `decoder_*` fields (the training-only Decompressor's blocks are not recorded).
        """
        self._check_keywords("forward", kwargs)
        sample = self.training if sample_posterior is None else sample_posterior
        encoded = self.encode(pixel_values, sample=sample, generator=generator, return_dict=True, **kwargs)
        latents = encoded.latents
        semantic_output = decoded = None
        image_features = video_features = None
        if semantic:
            semantic_output = self.get_semantic_features(latents, return_dict=True, **kwargs)
            if self.decompressor is not None:
                grid = tuple(latents.shape[-2:])
                features = semantic_output.last_hidden_state
                per_frame = features.view(latents.shape[0], latents.shape[2], grid[0] * grid[1], -1)
                image_features, video_features = self.decompressor(per_frame, grid)
        if decode:
            decoded = self.decode(latents, return_dict=True, **kwargs)
        return HydraXTokOutput(
            reconstruction=decoded.sample if decoded is not None else None,
            latents=latents,
            latent_dist=encoded.latent_dist,
            semantic_features=semantic_output.last_hidden_state if semantic_output is not None else None,
            image_distill_features=image_features,
            video_distill_features=video_features,
            encoder_hidden_states=encoded.hidden_states,
            encoder_attentions=encoded.attentions,
            semantic_hidden_states=semantic_output.hidden_states if semantic_output is not None else None,
            semantic_attentions=semantic_output.attentions if semantic_output is not None else None,
            decoder_hidden_states=decoded.hidden_states if decoded is not None else None,
            decoder_attentions=decoded.attentions if decoded is not None else None,
        )


__all__ = ["HydraXTokFrameCache", "HydraXTokModel", "HydraXTokPreTrainedModel"]
