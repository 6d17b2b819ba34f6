"""Image-to-video is trained, not only sampled: video targets whose first latent frame stays clean
(`HydraXConfig.image_to_video_prob`) teach the model to continue its anchor, and sampling with the anchor at flow
time 0 (as `HydraXPipeline(image=...)` does, tests/test_pipelines.py) then follows the given image.

The task: every clip repeats its first latent frame, and the anchors are random, so a model that ignores its anchor
scores chance (mean squared error ≈ 2 between two independent N(0, 1) frames)."""

import torch
from conftest import tiny_hydrax, visual_block

from modeling_hydrax.modeling_hydrax import HYDRAX_FROZEN_MODULES


CHANNELS, FRAMES, SIDE = 8, 2, 2  # the tiny preset's latents: 2 latent frames (5 video frames) of 2×2 tokens


def prompt_ids(config) -> torch.Tensor:
    return torch.tensor([[5, 6] + visual_block(config, FRAMES * SIDE * SIDE, video=True) + [7]])


def trained(image_to_video_prob: float, steps: int = 400, batch: int = 16):
    model = tiny_hydrax(text_dropout_prob=0.0, image_to_video_prob=image_to_video_prob).train()
    ids = prompt_ids(model.config).expand(batch, -1)
    params = [param for name, param in model.named_parameters() if not name.startswith(HYDRAX_FROZEN_MODULES)]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        anchors = torch.randn(batch, CHANNELS, 1, SIDE, SIDE, generator=generator)
        loss = model(input_ids=ids, target_latents=anchors.repeat(1, 1, FRAMES, 1, 1)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def continue_anchors(model, anchors: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Image-to-video's Euler loop: the anchor clean at flow time 0 in every step, the next frame from noise."""
    ids = prompt_ids(model.config)
    cut = -FRAMES * SIDE * SIDE - 2  # the prompt up to the target's <|vision_start|> (placeholders, end marker, 7 off)
    prefix = model.prepare_generation_prefix(ids[:, :cut].expand(anchors.shape[0], -1))
    latents = torch.randn(anchors.shape[0], CHANNELS, FRAMES, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    sigmas = torch.linspace(1, 0, steps + 1)
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
        latents[:, :, :1] = anchors
        times = torch.cat([torch.zeros(anchors.shape[0], 1), sigma.expand(anchors.shape[0], FRAMES - 1)], dim=1)
        latents = latents + (next_sigma - sigma) * model.predict_velocity(latents, times, prefix)
    return latents[:, :, 1:]


def test_image_to_video_training_teaches_the_model_to_follow_its_anchor():
    anchors = torch.randn(64, CHANNELS, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    errors = {p: (continue_anchors(trained(p), anchors) - anchors).square().mean().item() for p in (0.5, 0.0)}
    # Measured over 4 training seeds, 400 steps: 0.12–0.32 with image_to_video_prob=0.5; 1.78–2.07 (chance) with 0,
    # the text-to-video-only training a model had before image-to-video samples existed.
    assert errors[0.5] < 0.6, errors
    assert errors[0.0] > 1.4, errors
