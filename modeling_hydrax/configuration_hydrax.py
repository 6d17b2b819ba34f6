"""Configuration of Hydra-X, the unified model: a Qwen2.5 LLM over Hydra-XTok semantic features, with a flow head."""

import copy
import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .configuration_hydrax_presets import HYDRAX_PRESETS, preset_kwargs
from .configuration_hydrax_tok import HydraXTokConfig


@strict
class HydraXConfig(PreTrainedConfig):
    r"""
    Configuration of [`HydraXForConditionalGeneration`].

    Args:
        text_config (`Qwen2Config` or `dict`): the language model (Qwen2.5).
        vision_config (`HydraXTokConfig` or `dict`): the visual tokenizer (without the training-only Decompressor).
        projector_hidden_act (`str`): activation of the 2-layer MLP projector (Sem-ViT width → LLM width).
        timestep_embedding_dim (`int`): width of the sinusoidal timestep features.
        flow_head_num_layers (`int`): AdaLN-modulated MLP blocks of the flow head.
        flow_head_hidden_size (`int`, *optional*): the flow head's width; defaults to the LLM width.
        text_dropout_prob (`float`): probability of dropping a generation sample's text, for classifier-free guidance.
        source_dropout_prob (`float`): probability of replacing an edit's source image by the null image (all zeros
            in [-1, 1], mid-gray), independently of the text, so the edit pipeline's image guidance has a trained
            image-free branch (InstructPix2Pix's condition dropout).
        image_to_video_prob (`float`): probability that a video generation target trains as image-to-video: its first
            latent frame stays clean (flow time 0, per-frame times) and out of the loss, as `HydraXPipeline(image=...)`
            samples it. 0 trains text-to-video only; 1 image-to-video only.
        flow_logit_mean / flow_logit_std (`float`): logit-normal training distribution of the flow time t.
        flow_base_seq_len / flow_max_seq_len / flow_base_shift / flow_max_shift: resolution-dependent time shift:
            `mu` is interpolated linearly in the number of latent tokens and t ↦ e^mu / (e^mu + 1/t − 1), the
            convention of diffusers' `FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)`. For a constant
            shift, set `flow_base_shift == flow_max_shift`.
        flow_max_mu (`float`, *optional*): upper bound of `mu` (default 2.0: a shift of e² ≈ 7.4, about
            HunyuanVideo's fixed shift of 7). The linear rule, extrapolated past `flow_max_seq_len` (Flux's 1024²),
            grows without bound in the token count of a video (F·h·w): a 17×1024² clip would get a shift of 51 and a
            257×512² one 10⁵, every sampling step at σ ≈ 1. It bounds the extrapolation only: `flow_base_shift` and
            `flow_max_shift` above it (e.g. a constant shift of 2.5) are kept. `None`: no bound.
        lm_loss_weight / flow_loss_weight (`float`): the paper's NTP : flow weights (1 : 1).
        image_token_id / video_token_id / vision_start_token_id / vision_end_token_id (`int`): Qwen2.5 special tokens.
        pad_token_id (`int`): the token that replaces dropped text (required). The five token ids are distinct and
            below the text config's `vocab_size`.
        tie_word_embeddings (`bool`): share the LM head with the input embeddings; tied when either this or the text
            config says so (pre-v5 checkpoints kept it in the text config), so untie a tied preset in `text_config`.

    Example:

    ```python
    >>> from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration
    >>> config = HydraXConfig.from_preset("tiny")
    >>> model = HydraXForConditionalGeneration(config)
    ```
    """

    model_type = "hydrax"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "vision_config": HydraXTokConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projector_hidden_act: str = "gelu"
    timestep_embedding_dim: int = 256
    flow_head_num_layers: int = 3
    flow_head_hidden_size: int | None = None
    text_dropout_prob: float = 0.1
    source_dropout_prob: float = 0.05
    image_to_video_prob: float = 0.5
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0
    flow_base_seq_len: int = 256
    flow_max_seq_len: int = 4096
    flow_base_shift: float = 0.5
    flow_max_shift: float = 1.15
    flow_max_mu: float | None = 2.0
    lm_loss_weight: float = 1.0
    flow_loss_weight: float = 1.0
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    pad_token_id: int | None = 151643
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # Work on copies: the caller's sub-configs (e.g. a tokenizer config still used to save that tokenizer) must
        # keep their values, such as `use_decompressor`, which the unified model turns off.
        self.text_config = copy.deepcopy(self.text_config)
        self.vision_config = copy.deepcopy(self.vision_config)
        super().__post_init__(**kwargs)
        if self.vision_config.use_decompressor:
            self.vision_config.use_decompressor = False
        if self.flow_head_hidden_size is None:
            self.flow_head_hidden_size = self.text_config.hidden_size
        # Tied when either says so, as Qwen2.5-VL and LLaVA read it (pre-v5 checkpoints kept it in the text config)
        self.tie_word_embeddings = self.tie_word_embeddings or self.text_config.tie_word_embeddings
        self.text_config.tie_word_embeddings = self.tie_word_embeddings

    def validate_architecture(self):
        """Part of `@strict`-powered validation."""
        for name in ("text_dropout_prob", "source_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1), got {getattr(self, name)}.")
        if not 0.0 <= self.image_to_video_prob <= 1.0:
            raise ValueError(f"`image_to_video_prob` must lie in [0, 1], got {self.image_to_video_prob}.")
        self._validate_flow_numbers()
        if self.flow_head_num_layers < 1:
            raise ValueError(f"`flow_head_num_layers` must be ≥ 1, got {self.flow_head_num_layers}.")
        if self.flow_head_hidden_size < 1:
            raise ValueError(
                f"`flow_head_hidden_size` must be ≥ 1 (or None: the LLM width), got {self.flow_head_hidden_size}."
            )
        if self.timestep_embedding_dim < 2 or self.timestep_embedding_dim % 2:
            raise ValueError(
                f"`timestep_embedding_dim` must be even and ≥ 2 (cosine and sine features), got "
                f"{self.timestep_embedding_dim}."
            )
        if self.projector_hidden_act not in ACT2FN:
            raise ValueError(
                f"`projector_hidden_act` {self.projector_hidden_act!r} is not an activation transformers knows; pick "
                f"one of {sorted(ACT2FN)}."
            )
        self._validate_token_ids()
        if self.flow_max_seq_len <= self.flow_base_seq_len:
            raise ValueError(
                f"`flow_max_seq_len` ({self.flow_max_seq_len}) must exceed `flow_base_seq_len` "
                f"({self.flow_base_seq_len}): `mu` is interpolated between them. For a constant shift, set "
                "`flow_base_shift == flow_max_shift`."
            )

    def _validate_flow_numbers(self):
        """The flow-time distribution, the resolution shift and the loss weights are finite (a NaN mean trained a
        NaN model while the Trainer logged a loss of 0); the std is > 0 and the weights ≥ 0."""
        for name in ("flow_logit_mean", "flow_logit_std", "flow_base_shift", "flow_max_shift", "flow_max_mu"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value}.")
        if self.flow_logit_std <= 0:
            raise ValueError(f"`flow_logit_std` must be > 0 (the logit-normal's spread), got {self.flow_logit_std}.")
        for name in ("lm_loss_weight", "flow_loss_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number ≥ 0, got {value}.")

    def _validate_token_ids(self):
        """The special tokens are distinct rows of the LLM's vocabulary; `pad_token_id` is one of them, required: it
        replaces dropped text in training and builds the unconditional prompt of guidance."""
        names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "pad_token_id")
        ids = {name: getattr(self, name) for name in names}
        if ids["pad_token_id"] is None:
            raise ValueError(
                "`pad_token_id` is required: it replaces dropped text (`text_dropout_prob`) and builds the "
                "unconditional prompt of classifier-free guidance; pass the tokenizer's `pad_token_id`."
            )
        vocab_size = self.text_config.vocab_size
        for name, token_id in ids.items():
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"`{name}` must be a token id in [0, {vocab_size}) (the text config's `vocab_size`), got "
                    f"{token_id!r}."
                )
        if len(set(ids.values())) < len(ids):
            raise ValueError(f"The special token ids must be distinct, got {ids}.")

    @classmethod
    def available_presets(cls) -> list[str]:
        return sorted(HYDRAX_PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HydraXConfig":
        """The configuration of a named preset: `hydrax-7b`, `hydrax-1.5b` or `tiny` (for tests)."""
        return cls(**{**preset_kwargs(name), **overrides})


__all__ = ["HydraXConfig"]
