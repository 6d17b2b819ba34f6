# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Training losses of the Hydra-XTok visual tokenizer.

The paper trains Hydra-XTok with L1 + LPIPS + GAN + KL on the bottleneck, plus feature distillation
towards two frozen teachers: `(1 − cos)(s_anchor, image_teacher(x_anchor))` and
`(1 − cos)(Decompressor(s[1:]), video_teacher(x[1:]))`, the video term dropped for image-only samples.
This module holds everything that is only needed for training, so that inference never imports it:

- [`HydraXTokLossConfig`]: the loss weights (defaults from HYDRA, the paper's predecessor) and the discriminator sizes.
- [`HydraXTokLPIPS`]: LPIPS (Zhang et al. 2018, VGG16 trunk) with `from_pretrained` / `save_pretrained` on safetensors.
- [`HydraXTokDiscriminator`]: a PatchGAN applied frame by frame, with [`hinge_d_loss`] / [`hinge_g_loss`].
- [`HydraXTokTeachers`]: the frozen image (SigLIP 2) and video (InternVideo-Next / V-JEPA 2) teachers, whose tokens
  are resampled onto the student's latent grid.
- [`HydraXTokLoss`]: the generator and discriminator objectives over a `HydraXTokOutput`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.vgg import cfgs as _vgg_cfgs
from torchvision.models.vgg import make_layers
from transformers.utils import logging


if TYPE_CHECKING:
    from .modeling_hydrax_tok import HydraXTokConfig, HydraXTokOutput


logger = logging.get_logger(__name__)

DEFAULT_IMAGE_TEACHER = "google/siglip2-so400m-patch16-naflex"
DEFAULT_VIDEO_TEACHER = "OpenGVLab/InternVideo-Next-L"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixel normalisation of teachers whose processor config is not at hand, by `config.model_type`.
TEACHER_NORMALIZATION = {
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "siglip2_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vjepa2": (IMAGENET_MEAN, IMAGENET_STD),
}
VGG16_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_CONFIG_NAME = "config.json"
LPIPS_WEIGHTS_NAME = "model.safetensors"


@dataclass
class HydraXTokLossConfig:
    """Weights and sizes of the Hydra-XTok training objective.

    The paper gives no loss weights; the defaults are those of its predecessor HYDRA (L1 1.0, LPIPS 0.1,
    GAN 0.075, KL 1e-4, distillation 1.0 for both teachers). Per training stage, change the weights rather than
    the code: stage 2 (decoder fine-tuning) sets the distillation weights to 0, stage 3 (Sem-ViT only) keeps
    only the distillation weights.

    Args:
        l1_weight: weight of the mean absolute pixel error.
        lpips_weight: weight of LPIPS (averaged over frames).
        gan_weight: weight of the generator's hinge loss (multiplied by the adaptive weight when enabled).
        kl_weight: weight of the bottleneck KL to N(0, 1).
        kl_reduction: `"mean"` averages the KL over latent elements, on the same per-element scale as the mean L1;
            `"sum"` sums it over a sample's latent elements (the LDM convention, meant for a summed reconstruction
            loss: next to the mean L1 it is as many times heavier as a sample has latent elements, 16,384 for a 256²
            image, which at 1e-4 holds the posterior near N(0, 1) and stalls reconstruction). Both average over the
            batch.
        distill_image_weight: weight of `1 − cos` between the anchor's distillation features and the image teacher.
        distill_video_weight: weight of `1 − cos` between the Decompressor's output and the video teacher.
        gan_start_step: training step from which the GAN terms (generator and discriminator) are switched on.
        adaptive_gan_weight: scale the GAN term by `‖∇ rec‖ / ‖∇ gan‖` at the decoder's last layer (VQGAN).
        adaptive_gan_weight_max: clamp of that adaptive factor.
        discriminator_channels: width of the discriminator's first convolution.
        discriminator_layers: stages of the PatchGAN discriminator after its first convolution (see
            [`HydraXTokDiscriminator`]); frames need H, W ≥ 3·2^layers (32 px at 3).
        discriminator_norm: `"group"` (GroupNorm) or `"spectral"` (spectral normalisation of every convolution).
        patch_size: spatial patch size of the tokenizer (16); the distillation grid is
            `(H / patch_size, W / patch_size)`.
        lpips_name_or_path: folder or Hub repo of a [`HydraXTokLPIPS`] checkpoint, loaded when no LPIPS is given.

    Example:

    ```python
    >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokLossConfig
    >>> stage3 = HydraXTokLossConfig(l1_weight=0.0, lpips_weight=0.0, gan_weight=0.0, kl_weight=0.0)
    >>> stage3.distill_image_weight, stage3.distill_video_weight
    (1.0, 1.0)
    ```
    """

    l1_weight: float = 1.0
    lpips_weight: float = 0.1
    gan_weight: float = 0.075
    kl_weight: float = 1e-4
    kl_reduction: str = "mean"
    distill_image_weight: float = 1.0
    distill_video_weight: float = 1.0
    gan_start_step: int = 0
    adaptive_gan_weight: bool = False
    adaptive_gan_weight_max: float = 1e4
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    discriminator_norm: str = "group"
    patch_size: int = 16
    lpips_name_or_path: str | None = None

    def __post_init__(self):
        for name in (
            "l1_weight",
            "lpips_weight",
            "gan_weight",
            "kl_weight",
            "distill_image_weight",
            "distill_video_weight",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}; set it to 0 to switch the term off.")
        if self.kl_reduction not in ("mean", "sum"):
            raise ValueError(f"`kl_reduction` must be 'mean' or 'sum', got {self.kl_reduction!r}.")
        if self.discriminator_norm not in ("group", "spectral"):
            raise ValueError(f"`discriminator_norm` must be 'group' or 'spectral', got {self.discriminator_norm!r}.")
        if self.discriminator_layers < 1 or self.discriminator_channels < 1:
            raise ValueError(
                f"`discriminator_layers` and `discriminator_channels` must be >= 1, got "
                f"{self.discriminator_layers} and {self.discriminator_channels}."
            )
        if self.patch_size < 1:
            raise ValueError(f"`patch_size` must be >= 1, got {self.patch_size}.")


def _as_clip(pixel_values: torch.Tensor, name: str = "pixel_values") -> torch.Tensor:
    """Returns `[B, 3, F, H, W]`, accepting an image batch `[B, 3, H, W]` as a one-frame clip."""
    if pixel_values.ndim not in (4, 5) or pixel_values.shape[1] != 3:
        raise ValueError(
            f"`{name}` must be [B, 3, 1+T, H, W] (or [B, 3, H, W] for images) with RGB channels in dim 1, got shape "
            f"{tuple(pixel_values.shape)}; permute channels-last tensors with `.permute(0, 4, 1, 2, 3)` first."
        )
    return pixel_values.unsqueeze(2) if pixel_values.ndim == 4 else pixel_values


def _fold_frames(pixel_values: torch.Tensor, name: str = "pixel_values") -> torch.Tensor:
    """`[B, 3, F, H, W]` (or `[B, 3, H, W]`) → `[B·F, 3, H, W]`, frame-major within each sample."""
    clip = _as_clip(pixel_values, name)
    return clip.transpose(1, 2).flatten(0, 1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: `½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))`.

    Zero once real logits are ≥ 1 and fake logits ≤ −1; 1 when the discriminator outputs 0 everywhere.

    Example:

    ```python
    >>> import torch
    >>> from modeling_hydrax.losses_hydrax_tok import hinge_d_loss
    >>> hinge_d_loss(torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -2.0)).item()
    0.0
    ```
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: `−mean D(x̂)`, lower when the discriminator believes the reconstruction."""
    return -logits_fake.mean()


class HydraXTokLPIPS(nn.Module):
    """LPIPS perceptual distance (Zhang et al. 2018, "vgg" variant, v0.1) for inputs in [-1, 1].

    The VGG16 trunk is torchvision's `vgg16` feature stack up to relu5_3; features at relu1_2, relu2_2, relu3_3,
    relu4_3 and relu5_3 are unit-normalised over channels, their squared difference is weighted by a 1×1 linear
    head per layer, averaged over space and summed over layers. Video frames are folded into the batch and the
    distance is averaged over frames, so the result is one value per sample.

    The weights are frozen (a loss, not a trained module) while gradients still flow to the inputs. Weights cannot
    be downloaded in every environment: build them once with [`~HydraXTokLPIPS.from_lpips_package`] (torchvision's
    ImageNet VGG16 + the `lpips` package's linear heads), `save_pretrained` them, and load them with
    [`~HydraXTokLPIPS.from_pretrained`] from a folder or a Hub repo.

    Args:
        channels: widths of the five VGG16 stages; `(64, 128, 256, 512, 512)` is the real network, smaller widths
            give a random network of the same shape for tests. Until weights are loaded, the trunk is random and each
            head weighs its channels alike (a non-negative distance between normalised random features).

    Example:

    ```python
    >>> import torch
    >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokLPIPS
    >>> lpips = HydraXTokLPIPS(channels=(4, 8, 8, 8, 8))
    >>> x = torch.rand(2, 3, 5, 32, 32) * 2 - 1  # two 5-frame clips
    >>> lpips(x, x).tolist(), lpips(x, torch.zeros_like(x)).shape
    ([0.0, 0.0], torch.Size([2]))
    ```
    """

    # Indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's VGG16 `features`.
    tap_indices = (3, 8, 15, 22, 29)

    def __init__(self, channels: tuple[int, ...] | list[int] = VGG16_CHANNELS):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5 or min(channels) < 1:
            raise ValueError(
                f"`channels` must be 5 positive VGG16 stage widths, got {channels}; the real LPIPS uses "
                f"{VGG16_CHANNELS}."
            )
        self.channels = channels
        # torchvision's VGG16 ("D") layout with the stage widths replaced, without the final max-pool.
        cfg, stage = [], 0
        for item in _vgg_cfgs["D"][:-1]:
            cfg.append("M" if item == "M" else channels[stage])
            stage += item == "M"
        self.features = make_layers(cfg, batch_norm=False)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        for head, width in zip(self.heads, channels):  # LPIPS' heads are non-negative; until loaded, weigh all alike
            nn.init.constant_(head.weight, 1.0 / width)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        # normalise in fp32 (the buffers), then cast to the trunk's dtype: bf16 under FSDP's mixed precision
        dtype = self.features[0].weight.dtype
        taps, hidden = [], ((images.float() - self.shift) / self.scale).to(dtype)
        for index, layer in enumerate(self.features):
            hidden = layer(hidden)
            if index in self.tap_indices:
                taps.append(hidden)
        return taps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS between `input` and `target` (both `[B, 3, H, W]` or `[B, 3, F, H, W]` in [-1, 1]) → `[B]`."""
        if input.shape != target.shape:
            raise ValueError(
                f"LPIPS needs inputs of the same shape, got {tuple(input.shape)} and {tuple(target.shape)}."
            )
        batch_size = input.shape[0]
        frames_input, frames_target = _fold_frames(input, "input"), _fold_frames(target, "target")
        if min(frames_input.shape[-2:]) < 16:
            raise ValueError(f"LPIPS' VGG16 trunk pools 4 times and needs H, W >= 16, got {tuple(input.shape[-2:])}.")
        both = self._taps(torch.cat([frames_input, frames_target]))
        distance = 0.0
        for head, feats in zip(self.heads, both):
            feat_input, feat_target = feats.float().chunk(2)  # normalised in fp32: 1e-10 is 0 in fp16 (0/0 = NaN)
            feat_input = feat_input / (feat_input.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            feat_target = feat_target / (feat_target.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            distance = distance + head((feat_input - feat_target).pow(2).to(feats.dtype)).mean(dim=(1, 2, 3))
        return distance.view(batch_size, -1).mean(1)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Writes `config.json` (the channel widths) and `model.safetensors` to `save_directory`."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        (save_directory / LPIPS_CONFIG_NAME).write_text(json.dumps({"channels": list(self.channels)}, indent=2))
        state_dict = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state_dict, str(save_directory / LPIPS_WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> HydraXTokLPIPS:
        """Loads a checkpoint written by [`~HydraXTokLPIPS.save_pretrained`] from a folder or a Hub repo id."""
        files = {}
        for filename in (LPIPS_CONFIG_NAME, LPIPS_WEIGHTS_NAME):
            if os.path.isdir(pretrained_model_name_or_path):
                files[filename] = os.path.join(pretrained_model_name_or_path, filename)
                if not os.path.isfile(files[filename]):
                    raise FileNotFoundError(
                        f"{files[filename]} does not exist; write the folder with `HydraXTokLPIPS.save_pretrained` "
                        f"(e.g. `HydraXTokLPIPS.from_lpips_package().save_pretrained(path)`)."
                    )
            else:
                files[filename] = hf_hub_download(
                    str(pretrained_model_name_or_path),
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                )
        config = json.loads(Path(files[LPIPS_CONFIG_NAME]).read_text())
        model = cls(channels=config["channels"])
        model.load_state_dict(load_file(files[LPIPS_WEIGHTS_NAME]), strict=True)
        return model

    @classmethod
    def from_lpips_package(
        cls, vgg_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None
    ) -> HydraXTokLPIPS:
        """Builds the real LPIPS from torchvision's ImageNet VGG16 and the `lpips` package's v0.1 linear heads.

        Args:
            vgg_weights: a torchvision `vgg16` state dict (keys `features.N.weight`…) or the path of one, e.g. a
                local copy of `vgg16-397923af.pth`; `None` takes `VGG16_Weights.IMAGENET1K_V1` through torch hub
                (downloaded once, then read from torch hub's cache).

        Example (needs `pip install lpips` and the VGG16 weights; then save once and reuse offline):

        ```python
        >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokLPIPS
        >>> HydraXTokLPIPS.from_lpips_package().save_pretrained("lpips-vgg")  # doctest: +SKIP
        >>> lpips = HydraXTokLPIPS.from_pretrained("lpips-vgg")  # doctest: +SKIP
        ```
        """
        try:
            import lpips
        except ImportError as error:
            raise ImportError(
                "`HydraXTokLPIPS.from_lpips_package` reads the linear heads shipped with the `lpips` package; "
                "install it with `pip install lpips`, or load a converted checkpoint with "
                "`HydraXTokLPIPS.from_pretrained`."
            ) from error
        heads_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        if vgg_weights is None:
            from torchvision.models import VGG16_Weights

            vgg_state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        elif isinstance(vgg_weights, Mapping):
            vgg_state = vgg_weights
        else:
            vgg_state = torch.load(vgg_weights, map_location="cpu", weights_only=True)
        model = cls()
        state_dict = {}
        for name in model.features.state_dict():
            key = f"features.{name}"
            if key not in vgg_state:
                raise KeyError(
                    f"{key!r} missing from the VGG16 weights; pass a torchvision `vgg16` state dict "
                    f"(keys 'features.N.weight')."
                )
            state_dict[key] = vgg_state[key]
        for index in range(len(model.heads)):
            state_dict[f"heads.{index}.weight"] = heads[f"lin{index}.model.1.weight"]
        model.load_state_dict(state_dict, strict=True)
        return model


class HydraXTokDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / VQGAN "NLayerDiscriminator"), applied to every frame independently.

    Frames of `[B, 3, F, H, W]` clips are folded into the batch, so images and videos share one discriminator
    and the logits come back as `[B·F, 1, h', w']` (one logit per overlapping patch).

    Args:
        channels: width of the first convolution; doubles per stage up to 8×.
        num_layers: number of stages after the first (stride-2) convolution; all but the last have stride 2.
        norm: `"group"` (GroupNorm after every inner convolution) or `"spectral"` (spectral norm on every convolution).

    Example:

    ```python
    >>> import torch
    >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokDiscriminator
    >>> disc = HydraXTokDiscriminator(channels=8, num_layers=2)
    >>> disc(torch.zeros(2, 3, 5, 32, 32)).shape  # 2 clips × 5 frames
    torch.Size([10, 1, 6, 6])
    ```
    """

    def __init__(self, channels: int = 64, num_layers: int = 3, norm: str = "group"):
        super().__init__()
        if norm not in ("group", "spectral"):
            raise ValueError(f"`norm` must be 'group' or 'spectral', got {norm!r}.")
        spectral = norm == "spectral"

        def conv(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Module:
            layer = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=stride, padding=1, bias=bias)
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral else layer

        def block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
            layers = [conv(in_channels, out_channels, stride, bias=spectral)]
            if not spectral:
                layers.append(nn.GroupNorm(math.gcd(32, out_channels), out_channels))
            return layers + [nn.LeakyReLU(0.2)]

        layers: list[nn.Module] = [conv(3, channels, 2, bias=True), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, num_layers + 1):
            next_width = channels * min(2**index, 8)
            layers += block(width, next_width, stride=2 if index < num_layers else 1)
            width = next_width
        layers.append(conv(width, 1, 1, bias=True))
        self.layers = nn.Sequential(*layers)
        self.num_layers = num_layers

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        frames = _fold_frames(pixel_values)
        min_size = 3 * 2**self.num_layers  # its 4×4 convolutions leave ⌊H / 2^num_layers⌋ − 2 rows of logits
        if min(frames.shape[-2:]) < min_size:
            raise ValueError(
                f"The PatchGAN discriminator needs frames of at least {min_size}×{min_size} pixels with its "
                f"{self.num_layers} layers, got {tuple(frames.shape[-2:])}; train at a larger resolution, or lower "
                "`discriminator_layers`."
            )
        return self.layers(frames.to(self.layers[0].weight.dtype))


@dataclass
class HydraXTokTeacherFeatures:
    """Teacher tokens resampled to the student's grid.

    Args:
        image: `[B, h·w, image_teacher_dim]`, the anchor frame's image-teacher tokens (row-major over `(h, w)`).
        video: `[B, T·h·w, video_teacher_dim]` for the `T` frames after the anchor, or `None` for image batches.
    """

    image: torch.Tensor | None = None
    video: torch.Tensor | None = None


def _hidden_states(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if getattr(outputs, "last_hidden_state", None) is not None:
        return outputs.last_hidden_state
    return outputs[0]


def _pair(value: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    return (int(value[-2]), int(value[-1]))


def _config_size(config: Any) -> tuple[int, int] | None:
    for name in ("image_size", "crop_size", "img_size"):
        if getattr(config, name, None) is not None:
            return _pair(getattr(config, name))
    return None


def _read_processor_normalization(
    name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`(image_mean, image_std)` from a checkpoint's (video) preprocessor config, or `None` where there is none."""
    for filename in ("preprocessor_config.json", "video_preprocessor_config.json"):
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, filename)
            if not os.path.isfile(path):
                continue
        else:
            try:
                path = hf_hub_download(str(name_or_path), filename, **hub_kwargs)
            except EntryNotFoundError:
                continue
        processor_config = json.loads(Path(path).read_text())
        if "image_mean" in processor_config and "image_std" in processor_config:
            return tuple(processor_config["image_mean"]), tuple(processor_config["image_std"])
    return None


class HydraXTokTeachers(nn.Module):
    """The frozen distillation teachers, with their tokens resampled onto the student's latent grid.

    - Image teacher (paper: SigLIP2-so400m-patch16-naflex): a SigLIP / SigLIP 2 vision tower (a full `SiglipModel` /
      `Siglip2Model` is reduced to its `.vision_model`) or any vision model returning `last_hidden_state` patch tokens
      (leading CLS / register tokens are dropped). SigLIP 2 NaFlex is fed the anchor at its own resolution,
      patchified to `[B, n, 3·p·p]` with `spatial_shapes` and an all-ones `pixel_attention_mask`; fixed-size models
      are fed their `config.image_size`. Tokens are reshaped to the teacher's grid and bilinearly resized to `(h, w)`.
    - Video teacher (paper: InternVideo-Next-L, remote code; transformers-native alternative: V-JEPA 2
      `facebook/vjepa2-vitl-fpc64-256`): fed the `T` frames after the anchor, resized to `config.crop_size` /
      `config.image_size`, as `pixel_values_videos` `[B, T, C, H, W]` when the model's `forward` takes that argument
      (V-JEPA 2, called with `skip_predictor=True`), otherwise as `pixel_values` in `video_layout`
      (`"BTCHW"`, the transformers convention, or `"BCTHW"`). Models with a fixed number of frames
      (`config.num_frames`) get the frames resampled to it. The token grid `(T / tubelet_size, H / patch_size,
      W / patch_size)` comes from the config; it is trilinearly resized to the student's `(T, h, w)`.

    Pixels arrive in [-1, 1] and are mapped to each teacher's normalisation (`mean`, `std` over [0, 1] pixels): passed
    explicitly, read from the checkpoint's preprocessor config by [`~HydraXTokTeachers.from_pretrained`], or known per
    `model_type` (SigLIP: 0.5 / 0.5, i.e. [-1, 1] unchanged; V-JEPA 2: ImageNet). Teachers stay in eval mode, hold no
    gradients, and run under `torch.no_grad()`.

    Example:

    ```python
    >>> import torch
    >>> from transformers import Siglip2VisionConfig, Siglip2VisionModel
    >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokTeachers
    >>> image_model = Siglip2VisionModel(Siglip2VisionConfig(
    ...     hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    ...     patch_size=8, num_patches=16))
    >>> teachers = HydraXTokTeachers.from_models(image_model=image_model)
    >>> teachers(torch.rand(2, 3, 1, 64, 64) * 2 - 1, patch_size=16).image.shape  # student grid 4 × 4
    torch.Size([2, 16, 32])
    ```
    """

    def __init__(
        self,
        image_model: nn.Module | None = None,
        video_model: nn.Module | None = None,
        *,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        video_mean: tuple[float, ...] | None = None,
        video_std: tuple[float, ...] | None = None,
        image_size: int | tuple[int, int] | None = None,
        video_size: int | tuple[int, int] | None = None,
        video_num_frames: int | None = None,
        video_layout: str = "BTCHW",
    ):
        super().__init__()
        if image_model is not None and hasattr(getattr(image_model, "config", None), "vision_config"):
            image_model = image_model.vision_model
        if video_layout not in ("BTCHW", "BCTHW"):
            raise ValueError(f"`video_layout` must be 'BTCHW' or 'BCTHW', got {video_layout!r}.")
        self.image_model = image_model
        self.video_model = video_model
        self.video_layout = video_layout
        self.requires_grad_(False)
        self.eval()

        self.image_naflex = (
            image_model is not None and "spatial_shapes" in inspect.signature(image_model.forward).parameters
        )
        image_config = getattr(image_model, "config", None)
        self.image_size = _pair(image_size) or (None if self.image_naflex else _config_size(image_config))
        video_config = getattr(video_model, "config", None)
        self.video_size = _pair(video_size) or _config_size(video_config)
        self.video_num_frames = video_num_frames or getattr(video_config, "num_frames", None)
        self.video_takes_videos = (
            video_model is not None and "pixel_values_videos" in inspect.signature(video_model.forward).parameters
        )
        self.video_skips_predictor = (
            video_model is not None and "skip_predictor" in inspect.signature(video_model.forward).parameters
        )
        for kind, model, mean, std in (
            ("image", image_model, image_mean, image_std),
            ("video", video_model, video_mean, video_std),
        ):
            if model is not None and (mean is None) != (std is None):
                raise ValueError(
                    f"Pass both `{kind}_mean` and `{kind}_std` or neither, got mean={mean} and std={std}."
                )
            if model is not None and mean is None:
                model_type = getattr(getattr(model, "config", None), "model_type", None)
                if model_type not in TEACHER_NORMALIZATION:
                    logger.warning(
                        f"No pixel normalisation known for the {kind} teacher of model_type {model_type!r}; using "
                        f"ImageNet mean/std. Pass `{kind}_mean=` and `{kind}_std=` if the teacher was trained "
                        "otherwise."
                    )
                mean, std = TEACHER_NORMALIZATION.get(model_type, (IMAGENET_MEAN, IMAGENET_STD))
            mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
            self.register_buffer(
                f"{kind}_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
            )
            self.register_buffer(
                f"{kind}_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
            )

    @classmethod
    def from_models(
        cls, image_model: nn.Module | None = None, video_model: nn.Module | None = None, **kwargs
    ) -> HydraXTokTeachers:
        """Wraps already-built teacher models (see the class docstring for `kwargs`)."""
        return cls(image_model=image_model, video_model=video_model, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        image_teacher_name: str | os.PathLike | None = DEFAULT_IMAGE_TEACHER,
        video_teacher_name: str | os.PathLike | None = DEFAULT_VIDEO_TEACHER,
        *,
        dtype: torch.dtype | str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> HydraXTokTeachers:
        """Loads both teachers with `transformers.AutoModel.from_pretrained` (a name of `None` skips that teacher).

        InternVideo-Next is not part of transformers: load it with `trust_remote_code=True`, or use the
        transformers-native V-JEPA 2 (`video_teacher_name="facebook/vjepa2-vitl-fpc64-256"`) instead.
        `model_kwargs` go to both `from_pretrained` calls (`revision`, `cache_dir`, `local_files_only`…);
        `kwargs` to the constructor. Mean/std not given in `kwargs` are read from each checkpoint's
        preprocessor config when it has one.

        Example:

        ```python
        >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokTeachers
        >>> teachers = HydraXTokTeachers.from_pretrained(  # doctest: +SKIP
        ...     video_teacher_name="facebook/vjepa2-vitl-fpc64-256", dtype="bfloat16")
        ```
        """
        from transformers import AutoModel

        model_kwargs = dict(model_kwargs or {})
        hub_kwargs = {
            key: model_kwargs[key]
            for key in ("revision", "cache_dir", "token", "local_files_only")
            if key in model_kwargs
        }
        models = {}
        for kind, name in (("image", image_teacher_name), ("video", video_teacher_name)):
            if name is None:
                models[kind] = None
                continue
            models[kind] = AutoModel.from_pretrained(
                name, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs
            )
            if f"{kind}_mean" not in kwargs:
                normalization = _read_processor_normalization(name, hub_kwargs)
                if normalization is not None:
                    kwargs[f"{kind}_mean"], kwargs[f"{kind}_std"] = normalization
        return cls(image_model=models["image"], video_model=models["video"], **kwargs)

    @classmethod
    def from_config(
        cls, config: HydraXTokConfig, load_image: bool = True, load_video: bool = True, **kwargs
    ) -> HydraXTokTeachers:
        """Loads the teachers named by a `HydraXTokConfig` (`load_image` / `load_video` False skips one) and checks
        their widths against its teacher hidden sizes."""
        names = (config.image_teacher_name if load_image else None, config.video_teacher_name if load_video else None)
        teachers = cls.from_pretrained(*names, **kwargs)
        for kind in ("image", "video"):
            expected, actual = getattr(config, f"{kind}_teacher_hidden_size"), getattr(teachers, f"{kind}_hidden_size")
            if actual is not None and actual != expected:
                raise ValueError(
                    f"The {kind} teacher {getattr(config, f'{kind}_teacher_name')!r} has hidden size {actual} but "
                    f"`{kind}_teacher_hidden_size` is {expected}; set `{kind}_teacher_hidden_size={actual}` in the "
                    "HydraXTokConfig."
                )
        return teachers

    @property
    def image_hidden_size(self) -> int | None:
        return None if self.image_model is None else self.image_model.config.hidden_size

    @property
    def video_hidden_size(self) -> int | None:
        return None if self.video_model is None else self.video_model.config.hidden_size

    def train(self, mode: bool = True) -> HydraXTokTeachers:
        """Teachers stay in eval mode whatever the caller asks (no dropout, fixed statistics)."""
        return super().train(False)

    @staticmethod
    def _patch_size(config: Any) -> tuple[int, int]:
        patch_size = getattr(config, "patch_size", None)
        if patch_size is None:
            raise ValueError(
                f"Cannot infer the teacher's token grid: its config ({type(config).__name__}) has no `patch_size`."
            )
        return _pair(patch_size)

    def _prepare(self, frames: torch.Tensor, size: tuple[int, int] | None, kind: str) -> torch.Tensor:
        """`[N, 3, H, W]` in [-1, 1] → resized and normalised for the teacher."""
        if size is not None and tuple(frames.shape[-2:]) != size:
            frames = F.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        mean, std = getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")
        return ((frames.float() + 1) / 2 - mean) / std

    @torch.no_grad()
    def image_features(self, anchor: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Image-teacher tokens of `anchor` (`[B, 3, H, W]`, [-1, 1]) resampled to `grid = (h, w)` → `[B, h·w, D]`."""
        if self.image_model is None:
            raise ValueError(
                "No image teacher: build HydraXTokTeachers with `image_model=` (or `image_teacher_name=`)."
            )
        if anchor.ndim != 4 or anchor.shape[1] != 3:
            raise ValueError(f"`anchor` must be [B, 3, H, W], got shape {tuple(anchor.shape)}.")
        config = self.image_model.config
        patch_h, patch_w = self._patch_size(config)
        size = self.image_size
        if size is None:  # NaFlex: the anchor's own resolution, cut to whole patches
            size = (
                max(patch_h, anchor.shape[-2] // patch_h * patch_h),
                max(patch_w, anchor.shape[-1] // patch_w * patch_w),
            )
        pixels = self._prepare(anchor, size, "image")
        grid_h, grid_w = size[0] // patch_h, size[1] // patch_w
        dtype = next(self.image_model.parameters()).dtype
        batch_size = pixels.shape[0]
        if self.image_naflex:
            patches = pixels.reshape(batch_size, 3, grid_h, patch_h, grid_w, patch_w).permute(0, 2, 4, 3, 5, 1)
            outputs = self.image_model(
                pixel_values=patches.reshape(batch_size, grid_h * grid_w, -1).to(dtype),
                pixel_attention_mask=torch.ones(batch_size, grid_h * grid_w, dtype=torch.int32, device=pixels.device),
                spatial_shapes=torch.tensor([[grid_h, grid_w]] * batch_size, dtype=torch.long, device=pixels.device),
            )
        else:
            outputs = self.image_model(pixel_values=pixels.to(dtype))
        tokens = _hidden_states(outputs)
        return self._resample(tokens, (grid_h, grid_w), grid, "image")

    @torch.no_grad()
    def video_features(self, frames: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Video-teacher tokens of `frames` (`[B, 3, T, H, W]`, [-1, 1]) resampled to `grid = (T, h, w)`
        → `[B, T·h·w, D]`."""
        if self.video_model is None:
            raise ValueError(
                "No video teacher: build HydraXTokTeachers with `video_model=` (or `video_teacher_name=`)."
            )
        if frames.ndim != 5 or frames.shape[1] != 3 or frames.shape[2] == 0:
            raise ValueError(f"`frames` must be [B, 3, T, H, W] with T >= 1, got shape {tuple(frames.shape)}.")
        config = self.video_model.config
        batch_size, _, num_frames, height, width = frames.shape
        if self.video_num_frames is not None and num_frames != self.video_num_frames:
            index = torch.linspace(0, num_frames - 1, self.video_num_frames, device=frames.device).round().long()
            frames, num_frames = frames.index_select(2, index), self.video_num_frames
        size = self.video_size or (height, width)
        pixels = self._prepare(_fold_frames(frames), size, "video")
        pixels = pixels.view(batch_size, num_frames, 3, *size)  # BTCHW
        dtype = next(self.video_model.parameters()).dtype
        if self.video_takes_videos:
            inputs = {"pixel_values_videos": pixels.to(dtype)}
            if self.video_skips_predictor:
                inputs["skip_predictor"] = True
        else:
            inputs = {"pixel_values": (pixels if self.video_layout == "BTCHW" else pixels.transpose(1, 2)).to(dtype)}
        tokens = _hidden_states(self.video_model(**inputs))
        patch_h, patch_w = self._patch_size(config)
        tubelet = getattr(config, "tubelet_size", 1)
        teacher_grid = (max(num_frames // tubelet, 1), size[0] // patch_h, size[1] // patch_w)
        return self._resample(tokens, teacher_grid, grid, "video")

    @staticmethod
    def _resample(
        tokens: torch.Tensor, teacher_grid: tuple[int, ...], grid: tuple[int, ...], kind: str
    ) -> torch.Tensor:
        """`[B, extra + prod(teacher_grid), D]` → `[B, prod(grid), D]` by (bi/tri)linear interpolation, leading extra
        tokens (CLS, registers) dropped."""
        num_tokens = math.prod(teacher_grid)
        if tokens.shape[1] < num_tokens:
            raise ValueError(
                f"The {kind} teacher returned {tokens.shape[1]} tokens, fewer than its inferred grid {teacher_grid} "
                f"({num_tokens}); check its config's patch_size / tubelet_size / image size."
            )
        tokens = tokens[:, tokens.shape[1] - num_tokens :].float()
        batch_size, _, dim = tokens.shape
        volume = tokens.transpose(1, 2).reshape(batch_size, dim, *teacher_grid)
        if tuple(teacher_grid) != tuple(grid):
            mode = "bilinear" if len(grid) == 2 else "trilinear"
            volume = F.interpolate(volume, size=tuple(grid), mode=mode, align_corners=False)
        return volume.flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor, patch_size: int = 16) -> HydraXTokTeacherFeatures:
        """Image-teacher tokens of the anchor and (when `T > 0` and a video teacher is set) video-teacher tokens of
        the `T` following frames, on the student grid `(h, w) = (H, W) / patch_size`."""
        clip = _as_clip(pixel_values)
        height, width = clip.shape[-2:]
        grid = (height // patch_size, width // patch_size)
        image = self.image_features(clip[:, :, 0], grid) if self.image_model is not None else None
        num_frames = clip.shape[2] - 1
        video = None
        if self.video_model is not None and num_frames > 0:
            video = self.video_features(clip[:, :, 1:], (num_frames, *grid))
        return HydraXTokTeacherFeatures(image=image, video=video)


def _cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over tokens of `1 − cos(student, teacher)` → `[B]`."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-6)).mean(dim=1)


class HydraXTokLoss(nn.Module):
    """The Hydra-XTok training objective: generator step (L1, LPIPS, GAN, KL, image / video distillation) and
    discriminator step (hinge loss).

    `forward` returns a dict of scalar tensors. Generator step: `loss` (the weighted total, with its graph) and the
    unweighted, detached terms `l1`, `lpips`, `kl`, `gan`, `distill_image`, `distill_video`, plus `gan_weight` (the
    GAN weight actually applied: 0 before `gan_start_step`, times the adaptive factor when enabled; without gradients,
    as in evaluation, the factor of the last training step, 1 before any). Discriminator
    step: `loss` (hinge loss, 0 before `gan_start_step`), `logits_real`, `logits_fake` (means, detached).

    A term is skipped (reported as 0) when its weight is 0 or its input is absent: `reconstruction is None` (stage 3,
    Sem-ViT only), `latent_dist is None`, `video_distill_features is None` (image-only batches). The video term is
    averaged over the samples flagged by `video_mask` when one is given. Teacher tokens come from `teachers` (a
    [`HydraXTokTeachers`]) or, when precomputed, from `teacher_features`.

    The generator's GAN term reaches the generator only (the discriminator's weights are detached in it), and the
    discriminator step sees detached pixels: the two losses can be summed into one backward pass, with the
    discriminator's parameters in their own optimizer (or parameter group). LPIPS is frozen.

    Example:

    ```python
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from modeling_hydrax.losses_hydrax_tok import HydraXTokLoss, HydraXTokLossConfig, HydraXTokLPIPS
    >>> config = HydraXTokLossConfig(
    ...     kl_weight=0.0, distill_image_weight=0.0, distill_video_weight=0.0, discriminator_channels=8)
    >>> loss_fn = HydraXTokLoss(config, lpips=HydraXTokLPIPS(channels=(4, 8, 8, 8, 8)))
    >>> x = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    >>> output = SimpleNamespace(reconstruction=(x + 0.1).requires_grad_(), latent_dist=None,
    ...                          image_distill_features=None, video_distill_features=None)
    >>> losses = loss_fn(x, output)
    >>> losses["loss"].backward()
    >>> round(losses["l1"].item(), 4), sorted(losses)[:3]
    (0.1, ['distill_image', 'distill_video', 'gan'])
    >>> loss_fn(x, output, mode="discriminator")["loss"].item() > 0
    True
    ```
    """

    def __init__(
        self,
        config: HydraXTokLossConfig | None = None,
        lpips: HydraXTokLPIPS | None = None,
        discriminator: HydraXTokDiscriminator | None = None,
    ):
        super().__init__()
        self.config = config = config or HydraXTokLossConfig()
        if lpips is None and config.lpips_weight > 0:
            if config.lpips_name_or_path is not None:
                lpips = HydraXTokLPIPS.from_pretrained(config.lpips_name_or_path)
            else:
                logger.warning(
                    "HydraXTokLoss builds LPIPS with random VGG16 weights because `lpips_name_or_path` is not set; "
                    "pass `lpips=HydraXTokLPIPS.from_pretrained(...)` (or convert one with "
                    "`HydraXTokLPIPS.from_lpips_package()`) for a meaningful perceptual loss."
                )
                lpips = HydraXTokLPIPS()
        self.lpips = lpips
        if discriminator is None and config.gan_weight > 0:
            discriminator = HydraXTokDiscriminator(
                config.discriminator_channels, config.discriminator_layers, config.discriminator_norm
            )
        self.discriminator = discriminator
        # the last adaptive GAN factor of a training step, applied where no gradient can set it (evaluation); not in
        # the state dict (FSDP loads sharded checkpoints strictly, and older ones lack it): train_tokenizer.py keeps
        # it beside each checkpoint
        self.register_buffer("adaptive_gan_factor", torch.ones(()), persistent=False)

    def _grid(self, clip: torch.Tensor) -> tuple[int, int]:
        height, width = clip.shape[-2:]
        patch_size = self.config.patch_size
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"Frame size {height}×{width} is not a multiple of the patch size {patch_size}; resize or crop the "
                f"input (or set `HydraXTokLossConfig.patch_size`)."
            )
        return height // patch_size, width // patch_size

    @staticmethod
    def _check_tokens(
        name: str, student: torch.Tensor, expected: tuple[int, int], teacher: torch.Tensor | None = None
    ) -> None:
        batch_size, num_tokens = expected
        if student.ndim != 3 or tuple(student.shape[:2]) != expected:
            raise ValueError(
                f"`output.{name}` must be [B, N, D] with B={batch_size} and N={num_tokens} tokens for this input, "
                f"got shape {tuple(student.shape)}."
            )
        if teacher is not None and teacher.shape != student.shape:
            raise ValueError(
                f"`output.{name}` has shape {tuple(student.shape)} but the teacher tokens have shape "
                f"{tuple(teacher.shape)}; the student's projection width must equal the teacher's hidden size "
                f"(set `image_teacher_hidden_size` / `video_teacher_hidden_size` in HydraXTokConfig)."
            )

    def _adaptive_weight(
        self, rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        if last_layer is None:
            raise ValueError(
                "`adaptive_gan_weight=True` needs `last_layer=` (the decoder's output projection weight) in the "
                "forward call."
            )
        if not rec_loss.requires_grad:
            raise ValueError(
                "`adaptive_gan_weight=True` needs an L1 or LPIPS term with a gradient, but the reconstruction has "
                "none: L1 and LPIPS are switched off, or the decoder is frozen (e.g. `set_training_stage(3)`); set "
                "`gan_weight=0` there."
            )
        rec_grads = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        gan_grads = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
        weight = rec_grads.norm() / (gan_grads.norm() + 1e-4)
        return weight.clamp(0.0, self.config.adaptive_gan_weight_max).detach()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output: HydraXTokOutput,
        step: int = 0,
        mode: str = "generator",
        teachers: HydraXTokTeachers | None = None,
        last_layer: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        teacher_features: HydraXTokTeacherFeatures | None = None,
    ) -> dict[str, torch.Tensor]:
        """Computes the generator (`mode="generator"`) or discriminator (`mode="discriminator"`) loss.

        Args:
            pixel_values: `[B, 3, 1+T, H, W]` (or `[B, 3, H, W]`) in [-1, 1], the clip the tokenizer encoded.
            output: the tokenizer's `HydraXTokOutput`.
            step: the global training step (gates the GAN terms by `gan_start_step`).
            mode: `"generator"` or `"discriminator"`.
            teachers: frozen teachers providing the distillation targets.
            last_layer: the decoder's last weight, for `adaptive_gan_weight`.
            video_mask: `[B]` bool, which samples get the video distillation term (default: all).
            teacher_features: precomputed teacher tokens on the student grid, instead of `teachers`.
        """
        clip = _as_clip(pixel_values)
        reconstruction = given = getattr(output, "reconstruction", None)
        if reconstruction is not None:
            reconstruction = _as_clip(reconstruction, "output.reconstruction")
            if reconstruction.shape != clip.shape:
                raise ValueError(
                    f"`output.reconstruction` has shape {tuple(given.shape)} but `pixel_values` has shape "
                    f"{tuple(pixel_values.shape)}; pass the pixel_values the tokenizer encoded."
                )
        gan_active = step >= self.config.gan_start_step
        if mode == "discriminator":
            return self._discriminator_loss(clip, reconstruction, gan_active)
        if mode != "generator":
            raise ValueError(f"`mode` must be 'generator' or 'discriminator', got {mode!r}.")

        config = self.config
        zero = torch.zeros((), device=clip.device, dtype=torch.float32)
        terms = dict.fromkeys(("l1", "lpips", "kl", "gan", "distill_image", "distill_video"), zero)
        total = zero
        if reconstruction is not None and config.l1_weight > 0:
            terms["l1"] = (reconstruction.float() - clip.float()).abs().mean()
        if reconstruction is not None and config.lpips_weight > 0:
            terms["lpips"] = self.lpips(reconstruction, clip).float().mean()
        rec_loss = config.l1_weight * terms["l1"] + config.lpips_weight * terms["lpips"]
        total = total + rec_loss

        latent_dist = getattr(output, "latent_dist", None)
        if latent_dist is not None and config.kl_weight > 0:
            terms["kl"] = latent_dist.kl().float().mean()
            if config.kl_reduction == "mean":
                terms["kl"] = terms["kl"] / latent_dist.mean[0].numel()
            total = total + config.kl_weight * terms["kl"]

        gan_weight = zero
        if reconstruction is not None and config.gan_weight > 0 and gan_active:
            terms["gan"] = hinge_g_loss(self._frozen_discriminator(reconstruction).float())
            gan_weight = torch.tensor(config.gan_weight, device=clip.device)
            if config.adaptive_gan_weight and torch.is_grad_enabled():
                self.adaptive_gan_factor.copy_(self._adaptive_weight(rec_loss, terms["gan"], last_layer))
            if config.adaptive_gan_weight:
                gan_weight = gan_weight * self.adaptive_gan_factor
            total = total + gan_weight * terms["gan"]

        total = total + self._distillation(clip, output, terms, teachers, teacher_features, video_mask)
        losses = {name: value.detach() for name, value in terms.items()}
        losses["gan_weight"] = gan_weight.detach()
        losses["loss"] = total
        return losses

    def _distillation(
        self,
        clip: torch.Tensor,
        output: HydraXTokOutput,
        terms: dict[str, torch.Tensor],
        teachers: HydraXTokTeachers | None,
        teacher_features: HydraXTokTeacherFeatures | None,
        video_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Fills `terms["distill_image"]` / `terms["distill_video"]` and returns their weighted sum."""
        config = self.config
        batch_size, _, num_frames_total, _, _ = clip.shape
        num_frames = num_frames_total - 1
        student_image = getattr(output, "image_distill_features", None) if config.distill_image_weight > 0 else None
        student_video = getattr(output, "video_distill_features", None) if config.distill_video_weight > 0 else None
        total = torch.zeros((), device=clip.device, dtype=torch.float32)
        if student_image is None and student_video is None:
            return total
        if teachers is None and teacher_features is None:
            raise ValueError(
                "The output carries distillation features but neither `teachers=` nor `teacher_features=` was given; "
                "pass `teachers=HydraXTokTeachers.from_config(tok_config)` or set the distill weights to 0."
            )
        grid_h, grid_w = self._grid(clip)

        if student_image is not None:
            self._check_tokens("image_distill_features", student_image, (batch_size, grid_h * grid_w))
            target = (
                teacher_features.image
                if teacher_features is not None
                else teachers.image_features(clip[:, :, 0], (grid_h, grid_w))
            )
            if target is None:
                raise ValueError("`teacher_features.image` is None but `output.image_distill_features` is set.")
            self._check_tokens("image_distill_features", student_image, (batch_size, grid_h * grid_w), target)
            terms["distill_image"] = _cosine_distance(student_image, target).mean()
            total = total + config.distill_image_weight * terms["distill_image"]

        if student_video is not None:
            if num_frames == 0:
                raise ValueError(
                    "`output.video_distill_features` is set but `pixel_values` has no frames after the anchor "
                    "(T = 0); "
                    "image-only outputs must carry `video_distill_features=None`."
                )
            expected = (batch_size, num_frames * grid_h * grid_w)
            self._check_tokens("video_distill_features", student_video, expected)
            if teacher_features is not None:
                target = teacher_features.video
            else:
                target = teachers.video_features(clip[:, :, 1:], (num_frames, grid_h, grid_w))
            if target is None:
                raise ValueError("`teacher_features.video` is None but `output.video_distill_features` is set.")
            self._check_tokens("video_distill_features", student_video, expected, target)
            per_sample = _cosine_distance(student_video, target)
            if video_mask is None:
                terms["distill_video"] = per_sample.mean()
            else:
                if video_mask.shape != (batch_size,) or video_mask.dtype != torch.bool:
                    raise ValueError(
                        f"`video_mask` must be a bool tensor of shape [{batch_size}], got dtype {video_mask.dtype} "
                        f"and shape {tuple(video_mask.shape)}."
                    )
                weights = video_mask.to(per_sample.dtype)
                terms["distill_video"] = (per_sample * weights).sum() / weights.sum().clamp(min=1.0)
            total = total + config.distill_video_weight * terms["distill_video"]
        return total

    def _frozen_discriminator(self, pixels: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits with its weights detached: the generator's GAN term trains the generator only,
        so one backward pass can carry both players' losses (the discriminator's own loss sees detached pixels)."""
        weights = {name: param.detach() for name, param in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, weights, (pixels,))

    def _discriminator_loss(
        self, clip: torch.Tensor, reconstruction: torch.Tensor | None, gan_active: bool
    ) -> dict[str, torch.Tensor]:
        if reconstruction is None:
            raise ValueError(
                "The discriminator step needs `output.reconstruction`; it is None (is the decoder switched off?)."
            )
        if self.discriminator is None:
            raise ValueError(
                "No discriminator: `gan_weight` is 0 in the HydraXTokLossConfig; pass `discriminator=` or set "
                "`gan_weight > 0`."
            )
        logits_real = self.discriminator(clip.detach()).float()
        logits_fake = self.discriminator(reconstruction.detach()).float()
        loss = hinge_d_loss(logits_real, logits_fake) * (1.0 if gan_active else 0.0)
        return {"loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}


__all__ = [
    "HydraXTokDiscriminator",
    "HydraXTokLoss",
    "HydraXTokLossConfig",
    "HydraXTokLPIPS",
    "HydraXTokTeacherFeatures",
    "HydraXTokTeachers",
    "hinge_d_loss",
    "hinge_g_loss",
]
