"""evaluation/metrics_hydrax.py: each metric against a reference implementation or its definition."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_docstring_examples, tiny_clip, tiny_dinov2
from PIL import Image
from scipy import linalg
from skimage.metrics import structural_similarity


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))

import metrics_hydrax  # noqa: E402
from metrics_hydrax import (  # noqa: E402
    HydraXClipScore,
    HydraXFeatureStatistics,
    HydraXImageFeatures,
    frechet_distance,
    ssim,
)


def statistics(features: torch.Tensor, batch: int | None = None) -> HydraXFeatureStatistics:
    stats = HydraXFeatureStatistics()
    for chunk in features.split(batch or len(features)):
        stats.update(chunk)
    return stats


def test_frechet_distance_equals_scipy_and_does_not_depend_on_batching():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(300, 6, generator=generator, dtype=torch.float64)
    second = torch.randn(200, 6, generator=generator, dtype=torch.float64) @ torch.randn(
        6, 6, generator=generator, dtype=torch.float64
    )
    second = second + 0.5
    mean_1, mean_2 = first.mean(0).numpy(), second.mean(0).numpy()
    cov_1, cov_2 = np.cov(first.numpy(), rowvar=False), np.cov(second.numpy(), rowvar=False)
    reference = (
        ((mean_1 - mean_2) ** 2).sum() + np.trace(cov_1 + cov_2) - 2 * np.trace(linalg.sqrtm(cov_1 @ cov_2).real)
    )
    assert frechet_distance(statistics(first), statistics(second)) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(statistics(first, 7), statistics(second, 64)) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(statistics(second), statistics(first)) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(statistics(first), statistics(first, 11)) == pytest.approx(0, abs=1e-9)


def test_merged_statistics_equal_one_pass():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 4, generator=generator)
    merged = HydraXFeatureStatistics()
    for share in (statistics(features[:20]), HydraXFeatureStatistics(), statistics(features[20:])):
        merged.merge(share)
    whole = statistics(features)
    assert merged.count == 50 and torch.allclose(merged.covariance, whole.covariance, atol=1e-12)
    with pytest.raises(ValueError, match="width 3 merged into statistics of width 4"):
        merged.merge(statistics(torch.zeros(2, 3)))


def test_feature_statistics_refuse_what_has_no_distance():
    stats = HydraXFeatureStatistics()
    with pytest.raises(ValueError, match="at least one `update`"):
        frechet_distance(stats, stats)
    stats.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        stats.covariance
    with pytest.raises(ValueError, match="width 3 added to statistics of width 4"):
        stats.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[N, D\], got shape \(4,\)"):
        stats.update(torch.zeros(4))


def test_ssim_equals_scikit_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 40, 52, generator=generator) * 2 - 1
    targets = (images + 0.4 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
    ours = ssim(images, targets)
    options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0, data_range=1)
    for value, image, target in zip(ours, images, targets):
        reference = structural_similarity(
            ((image + 1) / 2).double().numpy(), ((target + 1) / 2).double().numpy(), **options
        )
        assert float(value) == pytest.approx(reference, abs=1e-6)
    assert torch.allclose(ssim(images, images), torch.ones(3))
    with pytest.raises(ValueError, match="smaller than the 11-pixel SSIM window"):
        ssim(images[..., :8, :8], targets[..., :8, :8])


def test_clip_score_equals_a_manual_forward(tmp_path):
    scorer = HydraXClipScore.from_pretrained(tiny_clip(tmp_path / "clip"))
    images = torch.rand(2, 3, 48, 40) * 2 - 1
    texts = ["a cat on a mat", "two dogs"]
    inputs = scorer.processor(
        text=texts, images=list(metrics_hydrax.to_uint8(images)), padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = scorer.model(**inputs)
    cosine = torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds)
    assert torch.allclose(scorer.score(images, texts), 100 * cosine.clamp_min(0), atol=1e-4)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer.score(images, texts[:1])


def test_image_features_pool_through_the_models_own_processor(tmp_path):
    features = HydraXImageFeatures.from_pretrained(tiny_dinov2(tmp_path / "dinov2"))
    images = torch.rand(2, 3, 40, 36) * 2 - 1
    pixel_values = features.processor(images=metrics_hydrax.to_uint8(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = features.model(pixel_values=pixel_values).pooler_output
    assert torch.allclose(features(images), expected, atol=1e-6)
    with pytest.raises(ValueError, match="not a dual encoder"):
        HydraXClipScore(features.model, features.processor)


def test_a_checkpoint_saved_without_its_pooler_gives_its_cls_token(tmp_path):
    """DINO v1's ViTs were converted with `add_pooling_layer=False`: loading them adds a random pooler (a new one each
    run), so the feature is the CLS token, as MagicBrush and VBench read DINO."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dino")
    features = HydraXImageFeatures.from_pretrained(str(tmp_path / "dino"))
    assert features.cls_token and features.model.pooler is None
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    pixel_values = features.processor(images=metrics_hydrax.to_uint8(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = features.model(pixel_values=pixel_values).last_hidden_state[:, 0]
    assert torch.equal(features(images), expected)
    assert torch.equal(HydraXImageFeatures.from_pretrained(str(tmp_path / "dino"))(images), expected)


@pytest.mark.parametrize("reading", ["magicbrush", "vbench"])
def test_dino_v1_reads_images_as_the_benchmark_does(tmp_path, reading):
    """The Hub's DINO v1 configs normalise with 0.5 / 0.5 and squash to 224²: DINO was trained (and MagicBrush and
    VBench read it) with ImageNet statistics, MagicBrush after Resize(256, bicubic) + CenterCrop(224), VBench after
    Resize(224) at the frame's aspect ratio. Equal to torchvision's transforms but for one uint8 step of rounding."""
    from torchvision import transforms
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=16)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path / "dino")  # the Hub's
    features = HydraXImageFeatures.from_pretrained(str(tmp_path / "dino"), dino=reading)
    images = torch.rand(2, 3, 300, 400) * 2 - 1
    pixels = metrics_hydrax.to_uint8(images)
    resize = {
        "magicbrush": transforms.Compose(
            [transforms.Resize(256, transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224)]
        ),
        "vbench": transforms.Resize(224),
    }[reading]
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = torch.stack(
        [normalize(transforms.functional.to_tensor(resize(Image.fromarray(np.asarray(p))))) for p in pixels]
    )
    actual = features.processor(images=pixels, return_tensors="pt")["pixel_values"]
    assert actual.shape == expected.shape == ((2, 3, 224, 224) if reading == "magicbrush" else (2, 3, 224, 298))
    assert (actual - expected).abs().max() < 1.01 / 255 / 0.224 and (actual - expected).abs().mean() < 1e-3
    with torch.no_grad():
        cls = features.model(pixel_values=actual, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    assert torch.equal(features(images), cls)
    with pytest.raises(ValueError, match="`benchmark` must be one of"):
        metrics_hydrax.dino_processor("geneval")


def test_image_features_of_siglip2_get_every_processor_output():
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    torch.manual_seed(0)
    tower = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    model = Siglip2Model(
        Siglip2Config(text_config=dict(tower, vocab_size=100), vision_config=dict(tower, num_patches=16))
    ).eval()
    features = HydraXImageFeatures(model, Siglip2ImageProcessor(max_num_patches=16))
    images = torch.rand(2, 3, 64, 48) * 2 - 1
    inputs = features.processor(images=metrics_hydrax.to_uint8(images), return_tensors="pt")
    assert {"pixel_attention_mask", "spatial_shapes"} <= set(inputs)  # NaFlex: what the pixels alone do not say
    with torch.no_grad():
        expected = model.get_image_features(**inputs).pooler_output
    assert torch.allclose(features(images), expected, atol=1e-6)


def test_docstring_examples_run():
    runner = run_docstring_examples(metrics_hydrax)
    assert runner.tries > 0 and runner.failures == 0
