"""Configuration of Hydra-XTok, the holistic image + video tokenizer of Hydra-X."""

import math

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig


ATTENTION_MODES = ("tubelet", "causal", "full")
TEMPORAL_COMPRESSIONS = ("hierarchical", "single")
HEAD_SIZES = ("hidden_size", "num_attention_heads", "intermediate_size")  # the encoder's, and the decoder's own


@strict
class HydraXTokConfig(PreTrainedConfig):
    r"""
    Configuration of [`HydraXTokModel`]. The defaults are the paper's so400m-sized tokenizer: a SigLIP 2 so400m
    width ViT whose 27 encoder layers are split into a Gen-ViT (13 layers, second temporal fold after layer 6) and a
    Sem-ViT (14 layers), a 64-channel Gaussian bottleneck and a 27-layer ViT pixel decoder.

    Args:
        hidden_size (`int`): width of the Gen-ViT, Sem-ViT and Decompressor.
        num_attention_heads (`int`): attention heads of those ViTs.
        intermediate_size (`int`): MLP width of those ViTs.
        patch_size (`int`): spatial patch size (pixels).
        latent_channels (`int`): channels of the bottleneck latent `z`.
        num_gen_layers (`int`): Gen-ViT layers, both parts together.
        gen_fold_layer (`int`): with hierarchical compression, the second 2× temporal fold runs after this many
            Gen-ViT layers.
        num_sem_layers (`int`): Sem-ViT layers.
        num_decoder_layers (`int`): pixel decoder layers.
        decoder_unfold_layer (`int`): with hierarchical compression, the decoder's 2× temporal un-fold runs after
            this many decoder layers (mirror of `gen_fold_layer`).
        decoder_hidden_size / decoder_num_attention_heads / decoder_intermediate_size (`int`, *optional*): decoder
            sizes; default to the encoder's.
        attention_mode (`str`): `"tubelet"` (a latent frame attends to itself and the frame before it; paper
            default), `"causal"` (to itself and every earlier frame) or `"full"` (bidirectional over the clip).
        temporal_compression (`str`): `"hierarchical"` (2-frame tubelets, then a second 2× fold inside the Gen-ViT;
            paper default) or `"single"` (4-frame tubelets at the patch embedding).
        use_rope (`bool`): 3D RoPE over (t, h, w) on queries and keys.
        rope_theta (`float`): RoPE base.
        use_abs_pos_embed (`bool`): SigLIP 2's learned 2D position embedding, interpolated to the patch grid.
        position_embedding_size (`int`): side of the learned position grid (16 for SigLIP 2 naflex: 256 positions).
        latents_mean / latents_std (`list[float]`, *optional*): per-channel statistics used to normalise `z`
            (training stage 3 computes them); `None` means 0 / 1.
        use_decompressor (`bool`): build the training-only Decompressor and distillation heads.
        image_teacher_name / video_teacher_name (`str`): Hub ids of the distillation teachers.
        image_teacher_hidden_size / video_teacher_hidden_size (`int`): widths the distillation heads project to.

    Example:

    ```python
    >>> from modeling_hydrax import HydraXTokConfig, HydraXTokModel
    >>> config = HydraXTokConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_gen_layers=2,
    ...     gen_fold_layer=1, num_sem_layers=1, num_decoder_layers=2, decoder_unfold_layer=1, latent_channels=8)
    >>> model = HydraXTokModel(config)
    ```
    """

    model_type = "hydrax_tok"
    base_config_key = "vision_config"

    hidden_size: int = 1152
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_bias: bool = True
    attention_dropout: float | int = 0.0
    num_channels: int = 3
    patch_size: int = 16
    latent_channels: int = 64
    num_gen_layers: int = 13
    gen_fold_layer: int = 6
    num_sem_layers: int = 14
    num_decoder_layers: int = 27
    decoder_unfold_layer: int = 14
    decoder_hidden_size: int | None = None
    decoder_num_attention_heads: int | None = None
    decoder_intermediate_size: int | None = None
    attention_mode: str = "tubelet"
    temporal_compression: str = "hierarchical"
    use_rope: bool = True
    rope_theta: float = 10000.0
    use_abs_pos_embed: bool = True
    position_embedding_size: int = 16
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    use_decompressor: bool = True
    image_teacher_name: str = "google/siglip2-so400m-patch16-naflex"
    video_teacher_name: str = "OpenGVLab/InternVideo-Next-L"
    image_teacher_hidden_size: int = 1152
    video_teacher_hidden_size: int = 1024
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for name in HEAD_SIZES:  # a decoder size left None is the encoder's
            if getattr(self, f"decoder_{name}") is None:
                setattr(self, f"decoder_{name}", getattr(self, name))
        super().__post_init__(**kwargs)

    @property
    def temporal_compression_ratio(self) -> int:
        """Pixel frames per latent frame (after the anchor)."""
        return 4

    @property
    def first_temporal_patch_size(self) -> int:
        """Frames per tubelet at the patch embedding."""
        return 2 if self.temporal_compression == "hierarchical" else 4

    def validate_architecture(self):
        """Part of `@strict`-powered validation: the choices and splits must be consistent."""
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"`attention_mode` must be one of {ATTENTION_MODES}, got {self.attention_mode!r}.")
        if self.temporal_compression not in TEMPORAL_COMPRESSIONS:
            raise ValueError(
                f"`temporal_compression` must be one of {TEMPORAL_COMPRESSIONS}, got {self.temporal_compression!r}."
            )
        sizes = [f"{prefix}{name}" for prefix in ("", "decoder_") for name in HEAD_SIZES]
        sizes += ["num_channels", "patch_size", "latent_channels", "image_teacher_hidden_size"]
        sizes += ["video_teacher_hidden_size"] + (["position_embedding_size"] if self.use_abs_pos_embed else [])
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"`attention_dropout` is a probability in [0, 1), got {self.attention_dropout}.")
        for width, heads, name in (
            (self.hidden_size, self.num_attention_heads, "hidden_size"),
            (self.decoder_hidden_size, self.decoder_num_attention_heads, "decoder_hidden_size"),
        ):
            if width % heads != 0:
                raise ValueError(f"`{name}` ({width}) must be a multiple of the number of attention heads ({heads}).")
            if self.use_rope and ((width // heads) % 2 != 0 or width // heads < 6):
                raise ValueError(
                    f"3D RoPE needs an even head dim of at least 6 (a frequency pair each for t, h and w); `{name}` "
                    f"// heads = {width // heads}."
                )
        if not 0 <= self.gen_fold_layer <= self.num_gen_layers:
            raise ValueError(
                f"`gen_fold_layer` ({self.gen_fold_layer}) must lie in [0, num_gen_layers={self.num_gen_layers}]."
            )
        if not 0 <= self.decoder_unfold_layer <= self.num_decoder_layers:
            raise ValueError(
                f"`decoder_unfold_layer` ({self.decoder_unfold_layer}) must lie in "
                f"[0, num_decoder_layers={self.num_decoder_layers}]."
            )
        self.check_latent_statistics()

    def check_latent_statistics(self):
        """`latents_mean` / `latents_std` hold one value per latent channel, and the std is positive; also run by
        the model whenever it normalises, as the statistics are usually set after the config is built."""
        for name in ("latents_mean", "latents_std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.latent_channels:
                raise ValueError(
                    f"`{name}` has {len(values)} values but `latent_channels` is {self.latent_channels}; "
                    "give one value per channel or None."
                )
            if values is not None and not all(map(math.isfinite, values)):
                raise ValueError(
                    f"`{name}` must be finite, got {[value for value in values if not math.isfinite(value)]}; "
                    "recompute the statistics or pass None."
                )
        if self.latents_std is not None and min(self.latents_std) <= 0:
            raise ValueError(
                f"`latents_std` must be positive (latents are divided by it), got {min(self.latents_std)}; recompute "
                "the statistics or pass None."
            )


__all__ = ["HydraXTokConfig"]
