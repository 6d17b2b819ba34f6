"""Tests of the Hydra-XTok training losses: LPIPS, discriminator, teachers, distillation and the total objective.

Everything is tiny, random and offline: the teachers are random SigLIP 2 / SigLIP / V-JEPA 2 models built from
transformers config classes, the tokenizer output is a stand-in with plain tensors.
"""

import json
import logging
import math
import os
from dataclasses import dataclass, fields
from types import SimpleNamespace


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import conftest
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    SiglipConfig,
    SiglipModel,
    SiglipVisionModel,
)
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from modeling_hydrax import losses_hydrax_tok
from modeling_hydrax.losses_hydrax_tok import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HydraXTokDiscriminator,
    HydraXTokLoss,
    HydraXTokLossConfig,
    HydraXTokLPIPS,
    HydraXTokTeacherFeatures,
    HydraXTokTeachers,
    hinge_d_loss,
    hinge_g_loss,
)


IMAGE_DIM, VIDEO_DIM = 24, 20
TINY_LPIPS = (4, 8, 8, 8, 8)


class StandInGaussian:
    """The interface of the tokenizer's posterior: `.mean`, `.logvar`, `.kl()` → `[B]`."""

    def __init__(self, mean, logvar):
        self.mean, self.logvar = mean, logvar

    def kl(self):
        return (0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)).flatten(1).sum(1)


@dataclass
class StandInOutput:
    reconstruction: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    latent_dist: StandInGaussian | None = None
    semantic_features: torch.Tensor | None = None
    image_distill_features: torch.Tensor | None = None
    video_distill_features: torch.Tensor | None = None


def tiny_siglip2(patch_size=8):
    return conftest.tiny_siglip2(IMAGE_DIM, patch_size)


def tiny_vjepa2(tubelet_size=2, patch_size=16, crop_size=32):
    return conftest.tiny_vjepa2(VIDEO_DIM, tubelet_size, patch_size, crop_size)


@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(0)
    return HydraXTokTeachers.from_models(image_model=tiny_siglip2(), video_model=tiny_vjepa2())


@pytest.fixture(scope="module")
def tiny_lpips():
    torch.manual_seed(0)
    return HydraXTokLPIPS(channels=TINY_LPIPS)


def make_loss(tiny_lpips, **overrides):
    config = HydraXTokLossConfig(discriminator_channels=8, discriminator_layers=2, **overrides)
    return HydraXTokLoss(config, lpips=tiny_lpips)


def make_output(clip, video=True, requires_grad=True):
    """A stand-in HydraXTokOutput for `clip` [B, 3, 1+T, 32, 32] (student grid 2 × 2), all tensors leaves."""
    batch_size, _, frames, height, width = clip.shape
    num_frames, h, w = frames - 1, height // 16, width // 16
    latent_shape = (batch_size, 8, 1 + num_frames // 4, h, w)
    leaves = dict(
        reconstruction=(clip + 0.1 * torch.randn_like(clip)).clamp(-1, 1),
        mean=torch.randn(latent_shape),
        logvar=0.1 * torch.randn(latent_shape),
        image=torch.randn(batch_size, h * w, IMAGE_DIM),
        video=torch.randn(batch_size, num_frames * h * w, VIDEO_DIM) if video and num_frames else None,
    )
    leaves = {k: (v.requires_grad_(requires_grad) if v is not None else None) for k, v in leaves.items()}
    output = StandInOutput(
        reconstruction=leaves["reconstruction"],
        latents=leaves["mean"],
        latent_dist=StandInGaussian(leaves["mean"], leaves["logvar"]),
        image_distill_features=leaves["image"],
        video_distill_features=leaves["video"],
    )
    return output, leaves


def random_clip(batch_size=2, num_frames=4, size=32, width=None):
    """A clip [B, 3, 1+T, size, width] in [-1, 1]; `width` defaults to `size` (square frames)."""
    return torch.rand(batch_size, 3, 1 + num_frames, size, width or size) * 2 - 1


# ----------------------------------------------------------------------------------------------------- LPIPS


def test_lpips_zero_for_identical_positive_for_different_and_differentiable(tiny_lpips):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_()
    assert torch.equal(tiny_lpips(x, x), torch.zeros(2))
    distance = tiny_lpips(y, x)
    assert distance.shape == (2,) and (distance > 0).all()
    distance.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in tiny_lpips.parameters())


def test_an_unloaded_lpips_is_a_non_negative_distance_for_any_seed():
    # its heads weigh every channel alike until weights are loaded: random heads gave negative "distances" that a
    # training loss drove to minus infinity
    for seed in range(5):
        torch.manual_seed(seed)
        lpips = HydraXTokLPIPS(channels=(4, 8, 8, 8, 8))
        x, y = torch.rand(2, 4, 3, 32, 32) * 2 - 1
        assert (lpips(x, y) > 0).all()
        assert all(
            torch.equal(head.weight, torch.full_like(head.weight, 1 / c))
            for head, c in zip(lpips.heads, lpips.channels)
        )


def test_an_fp16_lpips_is_finite_and_matches_fp32(tiny_lpips):
    """Features are normalised in fp32: in fp16 the 1e-10 guard is 0, and a zero feature vector gave 0/0 = NaN."""
    import copy

    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    half = copy.deepcopy(tiny_lpips).half()
    distance = half(x.half(), y.half())
    assert torch.isfinite(distance).all()
    torch.testing.assert_close(distance.float(), tiny_lpips(x, y), rtol=2e-2, atol=2e-3)


def test_lpips_folds_video_frames_into_the_batch(tiny_lpips):
    x, y = random_clip(2, 2), random_clip(2, 2)
    per_frame = torch.stack([tiny_lpips(x[:, :, f], y[:, :, f]) for f in range(3)], dim=1)
    torch.testing.assert_close(tiny_lpips(x, y), per_frame.mean(1))


def test_lpips_default_trunk_is_torchvision_vgg16():
    import torchvision

    reference = torchvision.models.vgg16().features[:30].state_dict()
    ours = HydraXTokLPIPS().features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}
    assert [h.weight.shape[1] for h in HydraXTokLPIPS().heads] == [64, 128, 256, 512, 512]


def test_lpips_save_and_from_pretrained_round_trip(tiny_lpips, tmp_path):
    tiny_lpips.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = HydraXTokLPIPS.from_pretrained(tmp_path)
    assert loaded.channels == TINY_LPIPS
    for (name, ours), (_, theirs) in zip(tiny_lpips.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(ours, theirs), name
    x, y = random_clip(1, 0), random_clip(1, 0)
    assert torch.equal(tiny_lpips(x, y), loaded(x, y))


def test_lpips_from_pretrained_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        HydraXTokLPIPS.from_pretrained(tmp_path)


def test_lpips_matches_the_lpips_package():
    lpips = pytest.importorskip("lpips")
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    trunk = {}
    for index in range(1, 6):
        for name, tensor in getattr(reference.net, f"slice{index}").state_dict().items():
            trunk[f"features.{name}"] = tensor
    ours = HydraXTokLPIPS.from_lpips_package(vgg_weights=trunk)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(x, y), reference(x, y).flatten(), rtol=1e-4, atol=1e-6)


def test_lpips_rejects_bad_input(tiny_lpips):
    with pytest.raises(ValueError, match="same shape"):
        tiny_lpips(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match="RGB channels"):
        tiny_lpips(torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="H, W >= 16"):
        tiny_lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="5 positive"):
        HydraXTokLPIPS(channels=(4, 8))


# ------------------------------------------------------------------------------------------- discriminator


def test_hinge_losses_on_hand_made_logits():
    ones = torch.ones(2, 1, 3, 3)
    assert hinge_d_loss(2 * ones, -2 * ones).item() == 0.0  # confident and right: no loss
    assert hinge_d_loss(0 * ones, 0 * ones).item() == 1.0  # undecided
    assert hinge_d_loss(-ones, ones).item() == 2.0  # confident and wrong: 0.5 * (2 + 2)
    assert hinge_d_loss(0.5 * ones, -2 * ones).item() == 0.25  # only the real side inside the margin
    assert hinge_g_loss(3 * ones).item() == -3.0
    assert hinge_g_loss(-ones).item() == 1.0


@pytest.mark.parametrize("norm", ["group", "spectral"])
def test_discriminator_is_applied_per_frame(norm):
    disc = HydraXTokDiscriminator(channels=8, num_layers=2, norm=norm).eval()
    clip = random_clip(2, 4)
    logits = disc(clip)
    assert logits.shape == (10, 1, 6, 6)
    torch.testing.assert_close(logits.view(2, 5, 1, 6, 6)[:, 3], disc(clip[:, :, 3]))
    with pytest.raises(ValueError, match="RGB channels"):
        disc(torch.zeros(1, 1, 32, 32))
    three = HydraXTokDiscriminator(channels=8, num_layers=3).eval()
    assert three(torch.zeros(1, 3, 24, 24)).shape == (1, 1, 1, 1)  # 3·2³: the smallest frame with a logit
    with pytest.raises(ValueError, match=r"at least 24×24 pixels with its 3 layers, got \(16, 512\)"):
        three(torch.zeros(1, 3, 16, 512))


# ---------------------------------------------------------------------------------------------- teachers


def test_siglip2_naflex_teacher_tokens_on_student_grid(teachers):
    anchor = torch.rand(2, 3, 32, 32) * 2 - 1
    features = teachers.image_features(anchor, (2, 2))
    assert features.shape == (2, 4, IMAGE_DIM)
    # Reference: the SigLIP 2 image processor's own patch order, then a bilinear resize of the 4 × 4 token grid.
    patches = torch.stack([convert_image_to_patches(image, 8) for image in anchor])
    tokens = teachers.image_model(
        pixel_values=patches,
        pixel_attention_mask=torch.ones(2, 16, dtype=torch.int32),
        spatial_shapes=torch.tensor([[4, 4], [4, 4]]),
    ).last_hidden_state
    expected = F.interpolate(tokens.transpose(1, 2).reshape(2, IMAGE_DIM, 4, 4), size=(2, 2), mode="bilinear")
    torch.testing.assert_close(features, expected.flatten(2).transpose(1, 2))


def test_full_siglip_model_is_reduced_to_its_vision_tower_and_resized():
    config = SiglipConfig(
        text_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
        ),
        vision_config=dict(
            hidden_size=IMAGE_DIM,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            patch_size=8,
            image_size=16,
        ),
    )
    teachers = HydraXTokTeachers.from_models(image_model=SiglipModel(config))
    assert isinstance(teachers.image_model, SiglipVisionModel)
    assert teachers.image_size == (16, 16) and teachers.image_hidden_size == IMAGE_DIM
    clip = random_clip(2, 0, size=64)
    features = teachers(clip).image  # teacher grid 2 × 2 (16 px / 8), student grid 4 × 4 (64 px / 16)
    assert features.shape == (2, 16, IMAGE_DIM)
    resized = F.interpolate(clip[:, :, 0], size=(16, 16), mode="bilinear", antialias=True)
    tokens = teachers.image_model(pixel_values=resized).last_hidden_state
    # SigLIP's normalisation (mean = std = 0.5) leaves [-1, 1] pixels unchanged; corner tokens survive the resize.
    torch.testing.assert_close(features[:, 0], tokens[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features[:, -1], tokens[:, -1], rtol=1e-4, atol=1e-5)


def test_vjepa2_teacher_input_layout_normalisation_and_token_order():
    video_model = tiny_vjepa2(tubelet_size=1)  # teacher grid (4, 2, 2) == student grid: no resampling
    teachers = HydraXTokTeachers.from_models(video_model=video_model)
    clip = random_clip(2, 4)
    features = teachers(clip).video
    assert features.shape == (2, 16, VIDEO_DIM)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    videos = ((clip[:, :, 1:].transpose(1, 2) + 1) / 2 - mean) / std  # [B, T, C, H, W], ImageNet statistics
    expected = video_model(pixel_values_videos=videos, skip_predictor=True).last_hidden_state
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_vjepa2_tubelet_tokens_are_trilinearly_resampled_to_every_frame(teachers):
    clip = random_clip(2, 4)
    features = teachers.video_features(clip[:, :, 1:], (4, 2, 2))
    assert features.shape == (2, 4 * 2 * 2, VIDEO_DIM)
    tokens = teachers.video_model(
        pixel_values_videos=((clip[:, :, 1:].transpose(1, 2) + 1) / 2 - teachers.video_mean.unsqueeze(1))
        / teachers.video_std.unsqueeze(1),
        skip_predictor=True,
    ).last_hidden_state.view(2, 2, 4, VIDEO_DIM)  # 2 tubelets × 4 tokens
    frames = features.view(2, 4, 4, VIDEO_DIM)
    torch.testing.assert_close(frames[:, 0], tokens[:, 0], rtol=1e-4, atol=1e-5)  # edges clamp to the tubelets
    torch.testing.assert_close(frames[:, 3], tokens[:, 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(frames[:, 1], 0.75 * tokens[:, 0] + 0.25 * tokens[:, 1], rtol=1e-4, atol=1e-5)


def test_teachers_are_frozen_in_eval_mode_and_get_no_gradient(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips).train()
    assert not teachers.training
    teachers.train()
    assert not teachers.training and not teachers.image_model.training and not teachers.video_model.training
    clip = random_clip(2, 4)
    output, _ = make_output(clip)
    loss_fn(clip, output, teachers=teachers)["loss"].backward()
    for parameter in teachers.parameters():
        assert not parameter.requires_grad and parameter.grad is None


def test_teachers_from_pretrained_local_folders_read_processor_normalisation(tmp_path, teachers):
    image_dir, video_dir = tmp_path / "image", tmp_path / "video"
    teachers.image_model.save_pretrained(image_dir)
    teachers.video_model.save_pretrained(video_dir)
    (image_dir / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    loaded = HydraXTokTeachers.from_pretrained(str(image_dir), str(video_dir))
    assert loaded.image_mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert loaded.image_std.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    assert loaded.video_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])  # V-JEPA 2 default
    clip = random_clip(1, 4)
    torch.testing.assert_close(loaded(clip).video, teachers(clip).video)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())

    @dataclass
    class TokConfig:  # the fields HydraXTokConfig carries for the teachers
        image_teacher_name: str
        video_teacher_name: str
        image_teacher_hidden_size: int = IMAGE_DIM
        video_teacher_hidden_size: int = VIDEO_DIM

    assert HydraXTokTeachers.from_config(TokConfig(str(image_dir), str(video_dir))).video_hidden_size == VIDEO_DIM
    with pytest.raises(ValueError, match="image_teacher_hidden_size=24"):
        HydraXTokTeachers.from_config(TokConfig(str(image_dir), str(video_dir), image_teacher_hidden_size=1152))


REMOTE_VIDEO_CONFIG = """
from transformers import PreTrainedConfig


class TinyRemoteVideoConfig(PreTrainedConfig):
    model_type = "tiny_remote_video"

    def __init__(self, hidden_size=20, patch_size=16, tubelet_size=2, num_frames=4, image_size=32, **kwargs):
        self.hidden_size, self.patch_size, self.tubelet_size = hidden_size, patch_size, tubelet_size
        self.num_frames, self.image_size = num_frames, image_size
        super().__init__(**kwargs)
"""

REMOTE_VIDEO_MODEL = """
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_tiny_remote_video import TinyRemoteVideoConfig


class TinyRemoteVideoModel(PreTrainedModel):
    config_class = TinyRemoteVideoConfig

    def __init__(self, config):
        super().__init__(config)
        patch = (config.tubelet_size, config.patch_size, config.patch_size)
        self.embed = torch.nn.Conv3d(3, config.hidden_size, kernel_size=patch, stride=patch)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.post_init()

    def forward(self, pixel_values):  # [B, C, T, H, W], the InternVideo layout
        tokens = self.embed(pixel_values).flatten(2).transpose(1, 2)
        return BaseModelOutput(last_hidden_state=torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1))
"""


def test_remote_code_video_teacher_in_bcthw_layout(tmp_path):
    """The InternVideo-Next route: a remote-code `AutoModel` fed `pixel_values` as `[B, C, T, H, W]`, its leading
    CLS token dropped and its tubelet grid resampled to every student frame."""
    folder = tmp_path / "tiny-remote-video"
    folder.mkdir()
    (folder / "configuration_tiny_remote_video.py").write_text(REMOTE_VIDEO_CONFIG)
    (folder / "modeling_tiny_remote_video.py").write_text(REMOTE_VIDEO_MODEL)
    config = {
        "model_type": "tiny_remote_video",
        "hidden_size": VIDEO_DIM,
        "auto_map": {
            "AutoConfig": "configuration_tiny_remote_video.TinyRemoteVideoConfig",
            "AutoModel": "modeling_tiny_remote_video.TinyRemoteVideoModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    weights = {"embed.weight": torch.randn(VIDEO_DIM, 3, 2, 16, 16), "embed.bias": torch.randn(VIDEO_DIM)}
    weights["cls_token"] = torch.randn(1, 1, VIDEO_DIM)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match="trust_remote_code"):
        HydraXTokTeachers.from_pretrained(None, str(folder))
    teachers = HydraXTokTeachers.from_pretrained(
        None, str(folder), trust_remote_code=True, video_layout="BCTHW", video_mean=(0.5,) * 3, video_std=(0.5,) * 3
    )
    assert teachers.video_num_frames == 4 and teachers.video_hidden_size == VIDEO_DIM
    clip = random_clip(2, 8)  # 8 frames, resampled to the teacher's 4
    features = teachers(clip).video
    assert features.shape == (2, 8 * 2 * 2, VIDEO_DIM)
    evenly_spaced = clip[:, :, 1:][:, :, [0, 2, 5, 7]]  # linspace(0, 7, 4), rounded
    direct = teachers.video_model(pixel_values=evenly_spaced).last_hidden_state[:, 1:]  # mean = std = 0.5: as is
    tubelets = direct.reshape(2, 2, 4, VIDEO_DIM)
    frames = features.view(2, 8, 4, VIDEO_DIM)
    torch.testing.assert_close(frames[:, 0], tubelets[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(frames[:, -1], tubelets[:, 1], rtol=1e-4, atol=1e-5)


def test_teachers_reject_bad_arguments():
    with pytest.raises(ValueError, match="video_layout"):
        HydraXTokTeachers(video_layout="TBCHW")
    with pytest.raises(ValueError, match="image_std"):
        HydraXTokTeachers(image_model=tiny_siglip2(), image_mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="No video teacher"):
        HydraXTokTeachers(image_model=tiny_siglip2()).video_features(random_clip(1, 4)[:, :, 1:], (4, 2, 2))


# ------------------------------------------------------------------------------------------- distillation


def test_distillation_is_zero_for_teacher_features_and_one_for_orthogonal_ones(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 4)
    target = teachers(clip)
    same = StandInOutput(image_distill_features=target.image.clone(), video_distill_features=target.video.clone())
    losses = loss_fn(clip, same, teachers=teachers)
    assert losses["distill_image"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["distill_video"].item() == pytest.approx(0.0, abs=1e-6)

    def orthogonal(t):
        r = torch.randn_like(t)
        return r - (r * t).sum(-1, keepdim=True) / t.pow(2).sum(-1, keepdim=True) * t

    ortho = StandInOutput(
        image_distill_features=orthogonal(target.image), video_distill_features=orthogonal(target.video)
    )
    losses = loss_fn(clip, ortho, teachers=teachers)
    assert losses["distill_image"].item() == pytest.approx(1.0, abs=1e-5)
    assert losses["distill_video"].item() == pytest.approx(1.0, abs=1e-5)
    assert losses["loss"].item() == pytest.approx(2.0, abs=1e-5)  # no reconstruction: distillation only
    opposite = StandInOutput(image_distill_features=-target.image)
    assert loss_fn(clip, opposite, teachers=teachers)["distill_image"].item() == pytest.approx(2.0, abs=1e-5)


def test_precomputed_teacher_features_give_the_same_loss(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 4)
    output, _ = make_output(clip)
    from_teachers = loss_fn(clip, output, teachers=teachers)
    precomputed = loss_fn(clip, output, teacher_features=teachers(clip))
    for name in ("loss", "distill_image", "distill_video"):
        torch.testing.assert_close(from_teachers[name], precomputed[name])


def test_video_term_is_exactly_zero_for_an_image_only_output(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    calls = []
    handle = teachers.video_model.register_forward_hook(lambda *args: calls.append(1))
    image = torch.rand(2, 3, 32, 32) * 2 - 1  # [B, 3, H, W] is accepted for images
    output, _ = make_output(image.unsqueeze(2))
    assert output.video_distill_features is None
    losses = loss_fn(image, output, teachers=teachers)
    handle.remove()
    assert calls == []
    assert losses["distill_video"].item() == 0.0
    config = loss_fn.config
    expected = (
        config.l1_weight * losses["l1"]
        + config.lpips_weight * losses["lpips"]
        + config.kl_weight * losses["kl"]
        + config.gan_weight * losses["gan"]
        + config.distill_image_weight * losses["distill_image"]
    )
    torch.testing.assert_close(losses["loss"].detach(), expected)


def test_video_mask_weights_samples(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 4)
    target = teachers(clip)
    student = target.video.clone()
    student[1] = -student[1]  # sample 0: distance 0, sample 1: distance 2
    output = StandInOutput(video_distill_features=student)

    def distill(mask):
        return loss_fn(clip, output, teacher_features=target, video_mask=mask)["distill_video"].item()

    assert distill(None) == pytest.approx(1.0, abs=1e-5)
    assert distill(torch.tensor([True, False])) == pytest.approx(0.0, abs=1e-5)
    assert distill(torch.tensor([False, True])) == pytest.approx(2.0, abs=1e-5)
    assert distill(torch.tensor([False, False])) == 0.0
    with pytest.raises(ValueError, match="bool tensor of shape \\[2\\]"):
        distill(torch.tensor([1, 0]))


# ------------------------------------------------------------------------------------------ total objective


def test_total_loss_reaches_reconstruction_posterior_and_distillation_features(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 4)
    output, leaves = make_output(clip)
    losses = loss_fn(clip, output, step=0, teachers=teachers)
    assert set(losses) == {"loss", "l1", "lpips", "kl", "gan", "distill_image", "distill_video", "gan_weight"}
    assert all(v.ndim == 0 for v in losses.values())
    assert all(losses[k].item() > 0 for k in ("l1", "lpips", "kl", "distill_image", "distill_video"))
    assert losses["gan"].item() != 0.0 and losses["gan_weight"].item() == pytest.approx(0.075)
    losses["loss"].backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, name
    # the generator's GAN term trains the generator only; the discriminator learns from its own step
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    loss_fn(clip, output, step=0, mode="discriminator")["loss"].backward()
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())


def test_summed_generator_and_discriminator_losses_equal_separate_steps(tiny_lpips):
    # one backward of (generator + discriminator) gives each player exactly the gradient of its own loss
    loss_fn = make_loss(tiny_lpips, distill_image_weight=0.0, distill_video_weight=0.0, kl_weight=0.0)
    clip = random_clip(2, 0)
    reconstruction = (clip + 0.1 * torch.randn_like(clip)).requires_grad_()
    output = StandInOutput(reconstruction=reconstruction)
    generator = loss_fn(clip, output)["loss"]
    (expected_pixels,) = torch.autograd.grad(generator, reconstruction)
    discriminator = loss_fn(clip, output, mode="discriminator")["loss"]
    expected_weights = torch.autograd.grad(discriminator, list(loss_fn.discriminator.parameters()))
    (loss_fn(clip, output)["loss"] + loss_fn(clip, output, mode="discriminator")["loss"]).backward()
    torch.testing.assert_close(reconstruction.grad, expected_pixels)
    for param, expected in zip(loss_fn.discriminator.parameters(), expected_weights):
        torch.testing.assert_close(param.grad, expected)


def test_gan_terms_wait_for_gan_start_step(tiny_lpips):
    loss_fn = make_loss(tiny_lpips, gan_start_step=100, distill_image_weight=0.0, distill_video_weight=0.0)
    clip = random_clip(2, 0)
    output, _ = make_output(clip)
    before = loss_fn(clip, output, step=99)
    assert before["gan"].item() == 0.0 and before["gan_weight"].item() == 0.0
    after = loss_fn(clip, output, step=100)
    assert after["gan"].item() != 0.0
    assert loss_fn(clip, output, step=99, mode="discriminator")["loss"].item() == 0.0
    assert loss_fn(clip, output, step=100, mode="discriminator")["loss"].item() > 0.0


@pytest.mark.parametrize("norm", ["group", "spectral"])
def test_discriminator_step_trains_only_the_discriminator(tiny_lpips, norm):
    loss_fn = make_loss(
        tiny_lpips, discriminator_norm=norm
    ).eval()  # eval: spectral norm's power iteration holds still
    clip = random_clip(2, 4)
    output, leaves = make_output(clip)
    losses = loss_fn(clip, output, mode="discriminator")
    assert set(losses) == {"loss", "logits_real", "logits_fake"}
    logits_real = loss_fn.discriminator(clip)
    logits_fake = loss_fn.discriminator(output.reconstruction)
    torch.testing.assert_close(losses["loss"], hinge_d_loss(logits_real, logits_fake))
    torch.testing.assert_close(losses["logits_real"], logits_real.mean())
    losses["loss"].backward()
    assert leaves["reconstruction"].grad is None
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
    loss_fn.train()  # and both steps run in training mode
    loss_fn(clip, output, mode="discriminator")["loss"].backward()
    loss_fn(
        clip,
        output,
        mode="generator",
        teacher_features=HydraXTokTeacherFeatures(
            image=torch.randn(2, 4, IMAGE_DIM), video=torch.randn(2, 16, VIDEO_DIM)
        ),
    )["loss"].backward()
    assert leaves["reconstruction"].grad is not None


def adaptive_setup(tiny_lpips, **overrides):
    """An adaptive-GAN-weight loss (KL and distillation off) and a one-frame clip reconstructed through a 3 × 3
    `last_layer`: returns (loss_fn, clip, last_layer, output)."""
    loss_fn = make_loss(
        tiny_lpips,
        adaptive_gan_weight=True,
        kl_weight=0.0,
        distill_image_weight=0.0,
        distill_video_weight=0.0,
        **overrides,
    )
    clip = random_clip(1, 0)
    last_layer = torch.nn.Parameter(torch.randn(3, 3) * 0.1 + torch.eye(3))
    reconstruction = torch.einsum("ij,bjfhw->bifhw", last_layer, clip)
    return loss_fn, clip, last_layer, StandInOutput(reconstruction=reconstruction)


def test_adaptive_gan_weight_balances_gradients_at_the_last_layer(tiny_lpips):
    loss_fn, clip, last_layer, output = adaptive_setup(tiny_lpips)
    reconstruction = output.reconstruction
    losses = loss_fn(clip, output, last_layer=last_layer)
    rec = loss_fn.config.l1_weight * losses["l1"] + loss_fn.config.lpips_weight * losses["lpips"]
    rec_grad = torch.autograd.grad(
        (reconstruction - clip).abs().mean() + 0.1 * tiny_lpips(reconstruction, clip).mean(),
        last_layer,
        retain_graph=True,
    )[0]
    gan_grad = torch.autograd.grad(-loss_fn.discriminator(reconstruction).mean(), last_layer, retain_graph=True)[0]
    expected = 0.075 * rec_grad.norm() / (gan_grad.norm() + 1e-4)
    assert losses["gan_weight"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert rec.item() > 0
    losses["loss"].backward()
    assert last_layer.grad is not None
    with pytest.raises(ValueError, match="last_layer="):
        loss_fn(clip, output)


def test_stage_three_output_without_reconstruction(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 4)
    output, leaves = make_output(clip)
    output.reconstruction = None
    output.latent_dist = None
    losses = loss_fn(clip, output, teachers=teachers)
    assert losses["l1"].item() == losses["lpips"].item() == losses["gan"].item() == losses["kl"].item() == 0.0
    torch.testing.assert_close(losses["loss"].detach(), losses["distill_image"] + losses["distill_video"])
    losses["loss"].backward()
    assert leaves["image"].grad is not None and leaves["video"].grad is not None
    with pytest.raises(ValueError, match="needs `output.reconstruction`"):
        loss_fn(clip, output, mode="discriminator")


def test_zero_weights_switch_parts_off(tiny_lpips):
    loss_fn = HydraXTokLoss(
        HydraXTokLossConfig(lpips_weight=0.0, gan_weight=0.0, distill_image_weight=0.0, distill_video_weight=0.0)
    )
    assert loss_fn.lpips is None and loss_fn.discriminator is None
    clip = random_clip(1, 4)
    output, _ = make_output(clip)
    losses = loss_fn(clip, output)  # no teachers needed: distillation is off
    torch.testing.assert_close(losses["loss"].detach(), losses["l1"] + 1e-4 * losses["kl"])
    with pytest.raises(ValueError, match="No discriminator"):
        loss_fn(clip, output, mode="discriminator")


def test_kl_reduction_scales_by_latent_elements():
    clip = random_clip(2, 4)
    output, _ = make_output(clip)
    per_sample = output.latent_dist.kl().mean()
    elements = output.latent_dist.mean[0].numel()
    for reduction, expected in (("mean", per_sample / elements), ("sum", per_sample)):
        only_kl = dict.fromkeys(("l1_weight", "lpips_weight", "gan_weight", "distill_image_weight"), 0.0)
        config = HydraXTokLossConfig(kl_reduction=reduction, distill_video_weight=0.0, **only_kl)
        losses = HydraXTokLoss(config)(clip, output)
        torch.testing.assert_close(losses["kl"], expected.detach())
        torch.testing.assert_close(losses["loss"].detach(), 1e-4 * expected.detach())
    with pytest.raises(ValueError, match="`kl_reduction` must be 'mean' or 'sum', got 'max'"):
        HydraXTokLossConfig(kl_reduction="max")


def test_loss_config_loads_lpips_from_a_folder(tiny_lpips, tmp_path):
    tiny_lpips.save_pretrained(tmp_path)
    loss_fn = HydraXTokLoss(HydraXTokLossConfig(lpips_name_or_path=str(tmp_path), discriminator_channels=8))
    assert loss_fn.lpips.channels == TINY_LPIPS


def test_bad_inputs_give_clear_errors(teachers, tiny_lpips):
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 4)
    output, _ = make_output(clip)
    with pytest.raises(ValueError, match="RGB channels in dim 1"):
        loss_fn(torch.zeros(2, 4, 5, 32, 32), output, teachers=teachers)
    with pytest.raises(ValueError, match=r"RGB channels in dim 1, got shape \(2, 1, 32, 32\);"):
        loss_fn.lpips(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))  # as given, not with a frame axis added
    with pytest.raises(
        ValueError, match=r"reconstruction` has shape \(2, 3, 5, 32, 32\) but `pixel_values` has shape"
    ):
        loss_fn(random_clip(2, 8), output, teachers=teachers)
    with pytest.raises(
        ValueError, match=r"has shape \(2, 3, 5, 32, 32\) but `pixel_values` has shape \(2, 3, 32, 32\);"
    ):
        loss_fn(torch.zeros(2, 3, 32, 32), output, teachers=teachers)  # an image batch: its shape as given
    with pytest.raises(ValueError, match="neither `teachers=` nor `teacher_features=`"):
        loss_fn(clip, output)
    with pytest.raises(ValueError, match="mode"):
        loss_fn(clip, output, mode="critic", teachers=teachers)

    wrong_tokens = StandInOutput(image_distill_features=torch.randn(2, 9, IMAGE_DIM))
    with pytest.raises(ValueError, match="N=4 tokens"):
        loss_fn(clip, wrong_tokens, teachers=teachers)
    wrong_width = StandInOutput(image_distill_features=torch.randn(2, 4, IMAGE_DIM + 1))
    with pytest.raises(ValueError, match="image_teacher_hidden_size"):
        loss_fn(clip, wrong_width, teachers=teachers)
    video_for_image = StandInOutput(video_distill_features=torch.randn(2, 4, VIDEO_DIM))
    with pytest.raises(ValueError, match="T = 0"):
        loss_fn(random_clip(2, 0), video_for_image, teachers=teachers)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        loss_fn(
            random_clip(2, 0, size=40),
            StandInOutput(image_distill_features=torch.randn(2, 4, IMAGE_DIM)),
            teachers=teachers,
        )

    with pytest.raises(ValueError, match="`kl_weight` must be >= 0, got -1"):
        HydraXTokLossConfig(kl_weight=-1)
    with pytest.raises(ValueError, match="'group' or 'spectral', got 'batch'"):
        HydraXTokLossConfig(discriminator_norm="batch")


def test_with_the_real_tokenizer_output(teachers, tiny_lpips):
    from conftest import tiny_tok_config

    from modeling_hydrax import HydraXTokModel

    model = HydraXTokModel(
        tiny_tok_config(image_teacher_hidden_size=IMAGE_DIM, video_teacher_hidden_size=VIDEO_DIM)
    ).train()
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(1, 4)
    losses = loss_fn(clip, model(clip), teachers=teachers)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["distill_video"].item() > 0
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.9 * len(grads)


# ------------------------------------------------------------------------ pinned behaviours (mutation review)


def test_docstring_examples_run():
    runner = conftest.run_docstring_examples(losses_hydrax_tok)
    assert runner.tries > 0 and runner.failures == 0


def test_loss_config_defaults_are_hydras():
    """The documented defaults (HYDRA's weights, VQGAN's adaptive clamp, a 3-layer 64-wide PatchGAN) stay put."""
    config = HydraXTokLossConfig()
    assert {f.name: getattr(config, f.name) for f in fields(config)} == {
        "l1_weight": 1.0,
        "lpips_weight": 0.1,
        "gan_weight": 0.075,
        "kl_weight": 1e-4,
        "kl_reduction": "mean",
        "distill_image_weight": 1.0,
        "distill_video_weight": 1.0,
        "gan_start_step": 0,
        "adaptive_gan_weight": False,
        "adaptive_gan_weight_max": 1e4,
        "discriminator_channels": 64,
        "discriminator_layers": 3,
        "discriminator_norm": "group",
        "patch_size": 16,
        "lpips_name_or_path": None,
    }


@pytest.mark.parametrize(
    "name",
    ["l1_weight", "lpips_weight", "gan_weight", "kl_weight", "distill_image_weight", "distill_video_weight"],
)
def test_every_loss_weight_rejects_negative_values(name):
    """Each of the six loss weights is validated as >= 0, not only `kl_weight`."""
    with pytest.raises(ValueError, match=f"`{name}` must be >= 0, got -0.5"):
        HydraXTokLossConfig(**{name: -0.5})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(discriminator_layers=0),
            "`discriminator_layers` and `discriminator_channels` must be >= 1, got 0 and 64",
        ),
        (dict(discriminator_channels=0), "must be >= 1, got 3 and 0"),
        (dict(patch_size=0), "`patch_size` must be >= 1, got 0"),
    ],
)
def test_loss_config_rejects_empty_discriminator_and_patch_size(overrides, message):
    """A zero-layer / zero-width discriminator or a zero patch size is refused at config time."""
    with pytest.raises(ValueError, match=message):
        HydraXTokLossConfig(**overrides)


def reference_lpips(lpips, x, y):
    """LPIPS v0.1 written out: the lpips package's scaling layer, its five VGG16 slices, unit-normalised features,
    squared difference weighted by the 1x1 heads, spatial mean, sum over layers."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy = (x - shift) / scale, (y - shift) / scale
    total = torch.zeros(x.shape[0])
    for (start, stop), head in zip(((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), lpips.heads):
        hx, hy = lpips.features[start:stop](hx), lpips.features[start:stop](hy)
        nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (head.weight.view(1, -1, 1, 1) * (nx - ny).pow(2)).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_the_written_out_formula():
    """Without the `lpips` package, LPIPS still equals its formula: ImageNet scaling, relu1_2…relu5_3 taps, squared
    difference of unit-normalised features, per-channel head weights."""
    lpips = HydraXTokLPIPS(channels=TINY_LPIPS)
    for head in lpips.heads:  # non-uniform, non-negative heads, as the real ones
        head.weight.copy_(torch.rand_like(head.weight))
    x, y = random_clip(2, 0)[:, :, 0], random_clip(2, 0)[:, :, 0]
    torch.testing.assert_close(lpips(x, y), reference_lpips(lpips, x, y), rtol=1e-5, atol=1e-6)


def test_lpips_from_pretrained_refuses_a_checkpoint_with_missing_weights(tiny_lpips, tmp_path):
    """A checkpoint lacking a tensor is an error, not a silently half-random LPIPS."""
    tiny_lpips.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["heads.4.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="heads.4.weight"):
        HydraXTokLPIPS.from_pretrained(tmp_path)


def test_hinge_d_loss_averages_the_hinge_per_logit():
    """The hinge is applied per logit, then averaged (not applied to the mean logit)."""
    real = torch.tensor([0.0, 2.0]).view(2, 1, 1, 1)  # relu(1 - 0) = 1, relu(1 - 2) = 0
    fake = torch.tensor([-2.0, 0.0]).view(2, 1, 1, 1)  # relu(1 - 2) = 0, relu(1 + 0) = 1
    assert hinge_d_loss(real, fake).item() == 0.5


def reference_patchgan(state, x, widths):
    """VQGAN's NLayerDiscriminator with GroupNorm: 4x4 convs, stride 2 but the last stage's, bias-free inner convs,
    GroupNorm(gcd(32, width)), LeakyReLU(0.2)."""
    h = F.leaky_relu(F.conv2d(x, state["layers.0.weight"], state["layers.0.bias"], stride=2, padding=1), 0.2)
    index, num_layers = 2, len(widths) - 1
    for stage in range(1, num_layers + 1):
        assert state[f"layers.{index}.weight"].shape == (widths[stage], widths[stage - 1], 4, 4)
        assert f"layers.{index}.bias" not in state  # GroupNorm follows: the conv carries no bias
        h = F.conv2d(h, state[f"layers.{index}.weight"], stride=2 if stage < num_layers else 1, padding=1)
        h = F.group_norm(
            h, math.gcd(32, widths[stage]), state[f"layers.{index + 1}.weight"], state[f"layers.{index + 1}.bias"]
        )
        h = F.leaky_relu(h, 0.2)
        index += 3
    return F.conv2d(h, state[f"layers.{index}.weight"], state[f"layers.{index}.bias"], stride=1, padding=1)


def test_group_norm_discriminator_matches_vqgans_patchgan():
    """Widths double per stage and cap at 8x, GroupNorm uses gcd(32, width) groups, LeakyReLU slope 0.2."""
    disc = HydraXTokDiscriminator(channels=4, num_layers=4).eval()
    with torch.no_grad():
        for parameter in disc.parameters():  # away from the init (unit GroupNorm, zero biases)
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    x = random_clip(2, 0, size=64)[:, :, 0]
    expected = reference_patchgan(disc.state_dict(), x, widths=[4, 8, 16, 32, 32])
    torch.testing.assert_close(disc(x), expected, rtol=1e-5, atol=1e-5)


def test_discriminator_convolutions_start_from_vqgans_init():
    """Conv weights start from N(0, 0.02) and conv biases from 0 (VQGAN's `weights_init`)."""
    disc = HydraXTokDiscriminator()
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs[1:-1]])  # the wide inner convolutions
    assert 0.018 < weights.std().item() < 0.022
    assert all(m.bias is None or torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs)


def test_discriminator_step_reports_the_mean_fake_logit(tiny_lpips):
    """`logits_fake` is the discriminator's mean logit on the reconstruction (and differs from `logits_real`)."""
    loss_fn = make_loss(tiny_lpips).eval()
    clip = random_clip(2, 0)
    losses = loss_fn(clip, StandInOutput(reconstruction=-clip), mode="discriminator")
    torch.testing.assert_close(losses["logits_fake"], loss_fn.discriminator(-clip).mean())
    assert losses["logits_fake"].item() != losses["logits_real"].item()


def test_l1_is_the_mean_absolute_error_over_the_batch(tiny_lpips):
    """`l1` is the mean over every element, batch included (not summed over samples)."""
    loss_fn = make_loss(tiny_lpips, kl_weight=0.0, gan_weight=0.0, distill_image_weight=0.0, distill_video_weight=0.0)
    clip = 0.9 * random_clip(3, 1)
    losses = loss_fn(clip, StandInOutput(reconstruction=clip + 0.1))
    assert losses["l1"].item() == pytest.approx(0.1, abs=1e-6)


def test_a_zero_kl_weight_reports_kl_as_zero(tiny_lpips):
    """A term whose weight is 0 is skipped and reported as 0, the KL included."""
    loss_fn = make_loss(tiny_lpips, kl_weight=0.0, gan_weight=0.0, distill_image_weight=0.0, distill_video_weight=0.0)
    clip = random_clip(1, 0)
    posterior = StandInGaussian(torch.randn(1, 8, 1, 2, 2), torch.randn(1, 8, 1, 2, 2))
    losses = loss_fn(clip, StandInOutput(reconstruction=clip.clone(), latent_dist=posterior))
    assert losses["kl"].item() == 0.0


def test_each_distillation_term_takes_its_own_weight(tiny_lpips):
    """`distill_image_weight` scales the image term and `distill_video_weight` the video term."""
    loss_fn = make_loss(tiny_lpips, distill_image_weight=0.3, distill_video_weight=0.7)
    clip = random_clip(2, 4)
    target = HydraXTokTeacherFeatures(image=torch.randn(2, 4, IMAGE_DIM), video=torch.randn(2, 16, VIDEO_DIM))
    output = StandInOutput(
        image_distill_features=torch.randn(2, 4, IMAGE_DIM), video_distill_features=torch.randn(2, 16, VIDEO_DIM)
    )
    losses = loss_fn(clip, output, teacher_features=target)
    expected = 0.3 * losses["distill_image"] + 0.7 * losses["distill_video"]
    torch.testing.assert_close(losses["loss"], expected)


def test_a_frame_width_off_the_patch_grid_is_refused(tiny_lpips):
    """The width, not only the height, must be a multiple of the patch size for distillation."""
    loss_fn = make_loss(tiny_lpips)
    clip = random_clip(2, 0, width=40)
    output = StandInOutput(image_distill_features=torch.randn(2, 4, IMAGE_DIM))
    with pytest.raises(ValueError, match=r"Frame size 32×40 is not a multiple of the patch size 16"):
        loss_fn(clip, output, teacher_features=HydraXTokTeacherFeatures(image=torch.randn(2, 4, IMAGE_DIM)))


def test_adaptive_gan_weight_is_clamped_at_its_max(tiny_lpips):
    """The adaptive factor is clamped to `adaptive_gan_weight_max`."""
    loss_fn, clip, last_layer, output = adaptive_setup(tiny_lpips, adaptive_gan_weight_max=1e-6)
    losses = loss_fn(clip, output, last_layer=last_layer)
    assert losses["gan_weight"].item() == pytest.approx(0.075 * 1e-6, rel=1e-5)


def test_adaptive_gan_weight_under_no_grad_takes_the_last_training_factor(tiny_lpips):
    """Evaluation under `torch.no_grad()` needs no `last_layer` and weighs the GAN term as the last training step did
    (the plain `gan_weight` before any): the eval loss was the training objective with another GAN weight."""
    loss_fn, clip, last_layer, output = adaptive_setup(tiny_lpips)
    detached = StandInOutput(reconstruction=output.reconstruction.detach())
    with torch.no_grad():
        assert loss_fn(clip, detached)["gan_weight"].item() == pytest.approx(0.075)
    trained = loss_fn(clip, output, last_layer=last_layer)
    assert trained["gan_weight"].item() != pytest.approx(0.075)
    with torch.no_grad():
        losses = loss_fn(clip, detached)
    assert losses["gan_weight"].item() == pytest.approx(trained["gan_weight"].item())
    torch.testing.assert_close(losses["loss"], trained["loss"].detach())


def test_adaptive_gan_weight_without_a_reconstruction_gradient_says_why(tiny_lpips):
    """With L1 and LPIPS off, the adaptive weight raises a ValueError that says to set `gan_weight=0`."""
    loss_fn, clip, last_layer, output = adaptive_setup(tiny_lpips, l1_weight=0.0, lpips_weight=0.0)
    with pytest.raises(ValueError, match="set `gan_weight=0` there"):
        loss_fn(clip, output, last_layer=last_layer)


def test_teachers_put_non_square_frames_on_a_non_square_grid(teachers):
    """`teachers(clip)` uses (H / p, W / p) as the student grid, so a 32×64 frame gives 2 × 4 tokens."""
    clip = random_clip(2, 0, width=64)
    features = teachers(clip).image
    assert features.shape == (2, 8, IMAGE_DIM)
    torch.testing.assert_close(features, teachers.image_features(clip[:, :, 0], (2, 4)))


def test_naflex_teacher_takes_an_anchor_smaller_than_its_patch(teachers):
    """A NaFlex anchor smaller than the teacher's patch is upsampled to one whole patch, not cut to zero."""
    features = teachers.image_features(torch.rand(2, 3, 4, 4) * 2 - 1, (1, 1))
    assert features.shape == (2, 1, IMAGE_DIM) and torch.isfinite(features).all()


def test_one_frame_video_with_a_two_frame_tubelet_gets_one_token_layer(teachers):
    """A clip with a single frame after the anchor still gets video tokens when the tubelet is 2 frames long."""
    assert teachers.video_model.config.tubelet_size == 2
    features = teachers(random_clip(2, 1)).video
    assert features.shape == (2, 4, VIDEO_DIM) and torch.isfinite(features).all()


def test_unknown_teacher_type_warns_and_uses_imagenet_statistics(caplog):
    """A teacher of unknown `model_type` falls back to ImageNet mean / std with a warning saying so."""

    class Mystery(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(model_type="mystery", hidden_size=4, patch_size=16)
            self.proj = torch.nn.Linear(3, 4)

        def forward(self, pixel_values):
            return pixel_values

    with caplog.at_level(logging.WARNING):
        teachers = HydraXTokTeachers.from_models(image_model=Mystery())
    assert "No pixel normalisation known for the image teacher of model_type 'mystery'" in caplog.text
    assert teachers.image_mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert teachers.image_std.flatten().tolist() == pytest.approx(IMAGENET_STD)


def test_explicit_mean_std_beat_the_preprocessor_config(tmp_path, teachers):
    """`from_pretrained(image_mean=…, image_std=…)` keeps the given statistics over the checkpoint's preprocessor
    config; a preprocessor config with only `image_mean` is ignored (the model type's statistics apply)."""
    teachers.image_model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    loaded = HydraXTokTeachers.from_pretrained(
        str(tmp_path), None, image_mean=(0.7, 0.7, 0.7), image_std=(0.2, 0.2, 0.2)
    )
    assert loaded.image_mean.flatten().tolist() == pytest.approx([0.7, 0.7, 0.7])
    assert loaded.image_std.flatten().tolist() == pytest.approx([0.2, 0.2, 0.2])
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3]}))
    loaded = HydraXTokTeachers.from_pretrained(str(tmp_path), None)
    assert loaded.image_mean.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])  # SigLIP 2's own


def test_from_config_skips_the_width_check_of_a_teacher_it_does_not_load(tmp_path, teachers):
    """`from_config(load_video=False)` loads the image teacher only and does not compare the absent video width."""
    teachers.image_model.save_pretrained(tmp_path)
    config = SimpleNamespace(
        image_teacher_name=str(tmp_path),
        video_teacher_name="not/needed",
        image_teacher_hidden_size=IMAGE_DIM,
        video_teacher_hidden_size=1024,
    )
    loaded = HydraXTokTeachers.from_config(config, load_video=False)
    assert loaded.video_model is None and loaded.image_hidden_size == IMAGE_DIM
