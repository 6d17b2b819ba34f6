"""Metrics shared by the evaluation scripts: Fréchet distance over feature statistics that accumulate batch by batch,
SSIM, pooled features of any transformers vision model (DINOv2, SigLIP, CLIP …) and the CLIP score of any
transformers dual encoder (CLIP, SigLIP, SigLIP 2).

Pixels are `[B, 3, H, W]` in [-1, 1] everywhere, as Hydra-XTok and the pipelines (`output_type="pt"`, rescaled)
produce them. Feature models see the images through their own image processor (resize, crop, normalisation), so a
metric means what it means for that model elsewhere.

Example:

```python
>>> import torch
>>> from metrics_hydrax import HydraXFeatureStatistics, frechet_distance
>>> a, b = HydraXFeatureStatistics(), HydraXFeatureStatistics()
>>> generator = torch.Generator().manual_seed(0)
>>> a.update(torch.randn(4000, 3, generator=generator))
>>> b.update(torch.randn(4000, 3, generator=generator) + torch.tensor([2.0, 0.0, 0.0]))
>>> round(frechet_distance(a, b))  # |Δμ|² = 4, equal covariances
4
```
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


class HydraXFeatureStatistics:
    """Running mean and covariance of feature vectors, accumulated in float64 so that sets too large to hold in memory
    (and sets split over batches) give the same statistics as one pass over everything."""

    def __init__(self):
        self.count = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features `[N, D]`."""
        if features.ndim != 2:
            raise ValueError(f"Features must be [N, D], got shape {tuple(features.shape)}.")
        features = features.detach().to("cpu", torch.float64)
        if self.total is None:
            self.total = torch.zeros(features.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64)
        elif features.shape[1] != self.total.shape[0]:
            raise ValueError(f"Features of width {features.shape[1]} added to statistics of width {len(self.total)}.")
        self.count += features.shape[0]
        self.total += features.sum(0)
        self.outer += features.T @ features

    def merge(self, other: "HydraXFeatureStatistics") -> None:
        """Add the features another set has seen (another process's share of the same evaluation)."""
        if other.total is None:
            return
        if self.total is None:
            self.total, self.outer = torch.zeros_like(other.total), torch.zeros_like(other.outer)
        elif other.total.shape != self.total.shape:
            raise ValueError(
                f"Statistics of width {len(other.total)} merged into statistics of width {len(self.total)}."
            )
        self.count += other.count
        self.total += other.total
        self.outer += other.outer

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """The unbiased sample covariance (`N - 1` in the denominator, as numpy's `cov` and the FID code use)."""
        if self.count < 2:
            raise ValueError(f"A covariance needs at least 2 samples, got {self.count}.")
        mean = self.mean
        return (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues → 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(first: HydraXFeatureStatistics, second: HydraXFeatureStatistics) -> float:
    """Fréchet distance between two Gaussians fitted to feature sets (FID's formula, on any features):
    `|μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁^½ Σ₂ Σ₁^½)^½)`.

    The trace term is computed from the eigenvalues of the symmetric matrix `Σ₁^½ Σ₂ Σ₁^½`, which has the same trace
    of square root as `Σ₁Σ₂` without the complex round-off of a general matrix square root."""
    if first.total is None or second.total is None:
        raise ValueError("Both feature sets need at least one `update` before a Fréchet distance.")
    if first.total.shape != second.total.shape:
        raise ValueError(f"Feature widths differ: {len(first.total)} and {len(second.total)}.")
    root = _psd_sqrt(first.covariance)
    middle = root @ second.covariance @ root
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (first.mean - second.mean).square().sum() + first.covariance.trace() + second.covariance.trace()
    return float((distance - 2 * cross).clamp_min(0))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coordinates = torch.arange(size, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-(coordinates**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(images: torch.Tensor, targets: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image structural similarity of `[B, 3, H, W]` images in [-1, 1] against `targets` (Wang et al. 2004: an
    11×11 Gaussian window with σ 1.5, K₁ 0.01, K₂ 0.03, the mean over valid windows and channels, data range 1 after
    mapping to [0, 1]), as scikit-image's `structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, channel_axis=0, data_range=1)` computes it."""
    if images.shape != targets.shape or images.ndim != 4:
        raise ValueError(
            f"SSIM needs two [B, C, H, W] batches of one shape, got {tuple(images.shape)} and {tuple(targets.shape)}."
        )
    if min(images.shape[-2:]) < window_size:
        raise ValueError(
            f"Images of {tuple(images.shape[-2:])} pixels are smaller than the {window_size}-pixel "
            f"SSIM window; pass a smaller `window_size`."
        )
    x, y = (images.double() + 1) / 2, (targets.double() + 1) / 2
    channels = x.shape[1]
    line = _gaussian_window(window_size, sigma, torch.float64)
    window = torch.outer(line, line).expand(channels, 1, window_size, window_size).to(x.device)

    def blur(values: torch.Tensor) -> torch.Tensor:
        return F.conv2d(values, window, groups=channels)

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    cov = blur(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(1).float()


def to_uint8(images: torch.Tensor) -> list:
    """`[B, 3, H, W]` pixels in [-1, 1] → a list of `H × W × 3` uint8 numpy arrays (what image processors take)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


def _pooled(outputs) -> torch.Tensor:
    """A model output's one vector per image: a tensor as is, else `pooler_output`, else the mean hidden state."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output
    return outputs.last_hidden_state.mean(1)


# DINO v1 as the benchmarks read it: ImageNet statistics (the Hub's DINO configs say 0.5, which DINO was not trained
# with) and each benchmark's resize: MagicBrush's Resize(256, bicubic) + CenterCrop(224), VBench's Resize(224)
# (bilinear, no crop, at the clip's aspect ratio)
DINO_TRANSFORMS = {
    "magicbrush": {"size": {"shortest_edge": 256}, "resample": 3, "crop_size": {"height": 224, "width": 224}},
    "vbench": {"size": {"shortest_edge": 224}, "resample": 2, "do_center_crop": False},
}


def dino_processor(benchmark: str):
    """The image processor that reads images for DINO v1 as `benchmark` ("magicbrush" or "vbench") does."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if benchmark not in DINO_TRANSFORMS:
        raise ValueError(f"`benchmark` must be one of {sorted(DINO_TRANSFORMS)}, got {benchmark!r}.")
    return CLIPImageProcessor(
        image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD, **DINO_TRANSFORMS[benchmark]
    )


class HydraXImageFeatures:
    """One feature vector per image from a transformers vision model, through its own image processor.

    Dual encoders (CLIP, SigLIP) give their projected image embedding (`get_image_features`); other models
    (DINOv2 for FD_DINOv2, a SigLIP vision tower …) their `pooler_output`, or the mean of the last hidden state when
    they have no pooler.

    Args:
        model: a transformers model, in eval mode.
        processor: its image processor (or a processor holding one).
        cls_token (`bool`): take the CLS token (position 0 of the last hidden state) as the feature.
    """

    def __init__(self, model, processor, cls_token: bool = False):
        self.model, self.processor, self.cls_token = model.eval(), processor, cls_token

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, dino: str | None = None
    ):
        """Load a model and its image processor by Hub id or folder. A checkpoint saved without its pooler (DINO v1's
        ViTs, converted with `add_pooling_layer=False`) would get a randomly initialised one, different in every run:
        it is dropped and the CLS token is the feature, as MagicBrush and VBench read DINO; `dino` ("magicbrush" or
        "vbench") then reads the images as that benchmark does (`dino_processor`)."""
        from transformers import AutoImageProcessor, AutoModel

        model, info = AutoModel.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
        no_pooler = hasattr(model, "pooler") and any(key.startswith("pooler.") for key in info["missing_keys"])
        if no_pooler:
            model.pooler = None
        if no_pooler and dino is not None and model.config.model_type == "vit":
            processor = dino_processor(dino)
        else:
            processor = AutoImageProcessor.from_pretrained(name_or_path)
        return cls(model.to(device), processor, cls_token=no_pooler)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` pixels in [-1, 1] → `[B, D]` float32 features. Everything the processor returns goes to
        the model (SigLIP 2's NaFlex processor adds `pixel_attention_mask` and `spatial_shapes` to the pixels)."""
        inputs = self.processor(images=to_uint8(images), return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {
            name: value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)
            for name, value in inputs.items()
        }
        if hasattr(self.model, "get_image_features"):
            return _pooled(self.model.get_image_features(**inputs)).float()
        if self.model.config.model_type == "vit":  # a resize at the image's aspect ratio (VBench's) needs it
            inputs["interpolate_pos_encoding"] = True
        outputs = self.model(**inputs)
        return (outputs.last_hidden_state[:, 0] if self.cls_token else _pooled(outputs)).float()


class HydraXClipScore:
    """Text–image agreement with a transformers dual encoder: the CLIP score of Hessel et al. (2021) as torchmetrics
    defines it, `100 · max(cos(image, text), 0)` per pair, and the cosine between two images' embeddings (CLIP-I).

    Args:
        model: a CLIP-, SigLIP- or SigLIP 2-style model with `get_image_features` / `get_text_features`.
        processor: its processor (tokenizer + image processor).
    """

    def __init__(self, model, processor):
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(
                f"{type(model).__name__} is not a dual encoder (it lacks get_image_features / "
                "get_text_features); pass a CLIP or SigLIP checkpoint."
            )
        self.model, self.processor = model.eval(), processor
        self.images = HydraXImageFeatures(model, processor)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
        """Load a dual encoder and its processor by Hub id or folder."""
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(name_or_path, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(name_or_path))

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings `[B, D]`. SigLIP models were trained on text padded to 64 tokens, so they get
        the same padding here; CLIP pads to the longest text."""
        siglip = self.model.config.model_type.startswith("siglip")
        padding = {"padding": "max_length", "max_length": 64} if siglip else {"padding": True}
        inputs = self.processor(text=texts, truncation=True, return_tensors="pt", **padding).to(self.images.device)
        return F.normalize(_pooled(self.model.get_text_features(**inputs)).float(), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings `[B, D]` of `[B, 3, H, W]` pixels in [-1, 1]."""
        return F.normalize(self.images(images), dim=-1)

    def cosine(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Per-pair cosine `[B]` of each image's embedding with its text's (MagicBrush's CLIP-T)."""
        if len(texts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(texts)} texts: the CLIP score pairs them one to one.")
        return (self.image_features(images) * self.text_features(texts)).sum(-1)

    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Per-pair CLIP score `[B]`: `100 · max(cos, 0)` of each image with its text."""
        return 100 * self.cosine(images, texts).clamp_min(0)


def eval_results(
    task_type: str,
    dataset: str | list,
    split: str | None,
    values: dict[str, float],
    config: str | None = None,
    settings: dict[str, str] | None = None,
) -> list[dict]:
    """Model-card entries for `values` (metric name → value): the fields of `huggingface_hub.EvalResult`, one entry
    per metric, as `conversion/model_card_hydrax.py --eval-results` reads them into a card's `model-index`. A
    dataset given as a local path is named by its folder or file stem (several, joined by "+"). `settings` (metric →
    how it was measured, e.g. "likelihood scoring" or the CLIP model) go into `metric_config` and the displayed
    `metric_name`, so that runs of one metric under other settings stay apart in the card."""
    sources = dataset if isinstance(dataset, (list, tuple)) else [dataset]
    name = "+".join(Path(str(source).rstrip("/")).stem if Path(source).exists() else str(source) for source in sources)
    settings = settings or {}
    return [
        {
            "task_type": task_type,
            "dataset_type": name,
            "dataset_name": name,
            "dataset_config": config,
            "dataset_split": split,
            "metric_type": metric,
            "metric_name": f"{metric} ({settings[metric]})" if settings.get(metric) else metric,
            "metric_config": settings.get(metric),
            "metric_value": round(float(value), 6),
        }
        for metric, value in values.items()
        if value is not None
    ]


def cosine_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two `[B, D]` feature batches (CLIP-I, DINO similarity)."""
    return F.cosine_similarity(first.float(), second.float(), dim=-1)


__all__ = [
    "HydraXClipScore",
    "HydraXFeatureStatistics",
    "HydraXImageFeatures",
    "cosine_similarity",
    "eval_results",
    "frechet_distance",
    "ssim",
    "to_uint8",
]
