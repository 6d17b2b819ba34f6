"""Reference formulas: the posterior's KL and sampling, the flow head's AdaLN and per-frame times, the Decompressor's
interleave, anchor head and RoPE, Sem-ViT streaming, and text dropout in mixed batches, each against a hand-written
reference or an exact equivalence rather than a shape."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_hydrax, tiny_tok_config, visual_block
from torch import nn

from modeling_hydrax import HydraXConfig, HydraXTokFrameCache, HydraXTokModel
from modeling_hydrax.modeling_hydrax import HydraXAdaLNModulation, HydraXFlowHead
from modeling_hydrax.modeling_hydrax_tok import HydraXTokDecompressor, HydraXTokDiagonalGaussian


def posterior(shape=(2, 4, 3, 2, 2)):
    generator = torch.Generator().manual_seed(1)
    mean = torch.randn(shape, generator=generator)
    logvar = torch.randn(shape, generator=generator) * 1.5
    return mean, logvar


def test_kl_is_the_gaussian_kl_to_the_standard_normal():
    """`kl()` is KL(N(mean, exp(logvar)) ‖ N(0, 1)) summed over every non-batch dimension, per sample."""
    mean, logvar = posterior()
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    )
    kl = HydraXTokDiagonalGaussian(mean, logvar).kl()
    torch.testing.assert_close(kl, expected.flatten(1).sum(dim=1))


def test_sample_is_mean_plus_standard_deviation_times_noise():
    """A seeded draw is mean + exp(logvar / 2) · ε with ε the generator's standard normal noise (std, not variance)."""
    mean, logvar = posterior()
    sample = HydraXTokDiagonalGaussian(mean, logvar).sample(torch.Generator().manual_seed(7))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(sample, mean + torch.exp(0.5 * logvar) * noise)


@pytest.fixture
def flow_head():
    """The tiny preset's flow head with random (trained-like) AdaLN modulations, so time conditioning matters."""
    torch.manual_seed(0)
    head = HydraXFlowHead(HydraXConfig.from_preset("tiny")).eval()
    for module in head.modules():
        if isinstance(module, HydraXAdaLNModulation):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.normal_(module.bias, std=0.1)
    return head


def reference_flow_head(head, hidden_states, timesteps, latent_shape):
    """The documented AdaLN flow head, token by token: sinusoidal t features → MLP condition c; per block
    h += gate · MLP(LN(h) · (1 + scale) + shift) with (shift, scale, gate) = W(silu(c)); velocity =
    out(LN(h) · (1 + scale) + shift); frame f's tokens use the time of frame f."""
    batch, channels, frames, height, width = latent_shape
    times = timesteps[:, None].expand(batch, frames) if timesteps.ndim == 1 else timesteps
    dim = head.time_embedding.feature_dim
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2))
    args = 1000.0 * times[..., None] * freqs
    embedding = head.time_embedding
    condition = embedding.linear_2(F.silu(embedding.linear_1(torch.cat([args.cos(), args.sin()], dim=-1))))
    condition = F.silu(condition).repeat_interleave(height * width, dim=1)  # [B, F·h·w, W], frame-major tokens

    def norm(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)

    hidden = head.input_proj(hidden_states)
    for block in head.blocks:
        shift, scale, gate = block.modulation(condition).chunk(3, dim=-1)
        hidden = hidden + gate * block.mlp(norm(hidden) * (1 + scale) + shift)
    shift, scale = head.final_modulation(condition).chunk(2, dim=-1)
    velocity = head.out_proj(norm(hidden) * (1 + scale) + shift)  # [B, F·h·w, C]
    return velocity.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("timesteps", [[0.3], [[0.0, 0.7, 0.7]]], ids=["one-time", "per-frame"])
def test_flow_head_matches_the_adaln_reference(flow_head, timesteps):
    timesteps = torch.tensor(timesteps)
    shape = (1, 8, 3, 2, 2)
    hidden = torch.randn(1, 12, 64)
    with torch.no_grad():
        velocity = flow_head(hidden, timesteps, shape)
        expected = reference_flow_head(flow_head, hidden, timesteps, shape)
        other_time = reference_flow_head(flow_head, hidden, timesteps * 0.5, shape)
    torch.testing.assert_close(velocity, expected, rtol=1e-5, atol=1e-6)
    assert (velocity - other_time).abs().max() > 1e-2, "the modulations must make time matter"


def test_flow_head_frames_use_their_own_time(flow_head):
    """The head mixes no tokens (per-token LayerNorm and MLPs), so with per-frame times each latent frame's velocity
    equals the head run on that frame's tokens alone with that frame's single time."""
    times = torch.tensor([[0.0, 0.7, 0.2]])
    hidden = torch.randn(1, 12, 64)
    with torch.no_grad():
        velocity = flow_head(hidden, times, (1, 8, 3, 2, 2))
        for frame in range(3):
            alone = flow_head(hidden[:, 4 * frame : 4 * frame + 4], times[:, frame], (1, 8, 1, 2, 2))
            torch.testing.assert_close(velocity[:, :, frame : frame + 1], alone, rtol=1e-5, atol=1e-6)


def test_image_distill_features_read_the_anchor_frame():
    """Under tubelet attention a video's anchor (latent frame 0) is its first frame encoded as an image, and the image
    distillation head reads that frame: the video's `image_distill_features` equal the image's."""
    model = HydraXTokModel(tiny_tok_config()).eval()
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        from_video = model(video, decode=False).image_distill_features
        from_image = model(video[:, :, 0], decode=False).image_distill_features
    torch.testing.assert_close(from_video, from_image, rtol=0, atol=1e-5)


class PassThrough(nn.Module):
    def forward(self, hidden, position_embeddings=None):
        return (hidden,)


def test_decompressor_interleaves_channels_into_time():
    """Each stage maps latent frame f's expanded `[2D]` feature at token n to frames 2f (first half) and 2f + 1
    (second half) at token n; checked with the blocks and the video head made identities."""
    torch.manual_seed(0)
    decompressor = HydraXTokDecompressor(tiny_tok_config()).eval()
    decompressor.blocks = nn.ModuleList([PassThrough(), PassThrough()])
    decompressor.video_head = nn.Identity()
    semantic = torch.randn(2, 3, 4, 32)  # anchor + 2 latent frames of 4 tokens
    with torch.no_grad():
        _, video = decompressor(semantic, (2, 2))
        hidden = semantic[:, 1:]
        for expand in decompressor.expand:
            wide = expand(hidden)
            frames = torch.empty(2, 2 * hidden.shape[1], 4, 32)
            for f in range(hidden.shape[1]):
                for j in range(2):
                    for n in range(4):
                        frames[:, 2 * f + j, n] = wide[:, f, n, 32 * j : 32 * (j + 1)]
            hidden = frames
    assert hidden.shape[1] == 8
    torch.testing.assert_close(video, hidden.flatten(1, 2))


def test_decompressor_blocks_get_3d_rope():
    """With `use_rope` the Decompressor's blocks attend with 3D RoPE over its 2·F output frames (from 0) and the
    latent grid; a reference run that hands each block those embeddings matches, one that hands none does not."""
    torch.manual_seed(0)
    decompressor = HydraXTokDecompressor(tiny_tok_config()).eval()
    semantic = torch.randn(1, 3, 4, 32)

    def reference(with_rope):
        hidden = semantic[:, 1:]
        for expand, block in zip(decompressor.expand, decompressor.blocks):
            batch, frames, tokens, width = hidden.shape
            wide = expand(hidden).view(batch, frames, tokens, 2, width)
            hidden = wide.permute(0, 1, 3, 2, 4).reshape(batch, 2 * frames, tokens, width)
            rope = decompressor.rotary(0, 2 * frames, 2, 2, hidden.device) if with_rope else None
            hidden = block(hidden, rope)[0]
        return decompressor.video_head(hidden).flatten(1, 2)

    with torch.no_grad():
        _, video = decompressor(semantic, (2, 2))
        with_rope, without = reference(True), reference(False)
    torch.testing.assert_close(video, with_rope)
    assert (with_rope - without).abs().max() > 1e-3, "RoPE must change the blocks' attention"


def test_semantic_stream_counts_every_frame_of_a_chunk():
    """Sem-ViT features streamed 2 + 1 latent frames through the cache equal the whole clip's, and the cache has seen
    2 frames after the first chunk (the next chunk's RoPE positions start there)."""
    model = HydraXTokModel(tiny_tok_config()).eval()
    latents = torch.randn(1, 8, 3, 2, 2)
    with torch.no_grad():
        whole = model.get_semantic_features(latents).last_hidden_state
        first = model.get_semantic_features(latents[:, :, :2], cache=HydraXTokFrameCache())
        second = model.get_semantic_features(latents[:, :, 2:], cache=first.cache)
    streamed = torch.cat([first.last_hidden_state, second.last_hidden_state], dim=1)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
    assert first.cache.seen("semantic") == 2
    assert second.cache.seen("semantic") == 3


def test_text_dropout_spares_understanding_rows():
    """Text dropout (classifier-free guidance) drops only generation samples' prompts: in a batch mixing an
    understanding row (the only labelled one) and a text-to-image row, dropping with probability ≈ 1 leaves the LM
    loss exactly as without dropout, while the text-to-image row's velocity changes (its prompt was dropped)."""
    model = tiny_hydrax().train()
    config = model.config
    understanding = [5, 6, 7] + visual_block(config, 4) + [8, 9]
    text_to_image = [5, 6, 7] + visual_block(config, 4) + [10, 11]
    input_ids = torch.tensor([understanding, text_to_image])
    target_mask = torch.zeros_like(input_ids)
    target_mask[1, 4:8] = 1
    labels = input_ids.clone()
    labels[1] = -100
    inputs = dict(
        input_ids=input_ids,
        pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1,
        target_mask=target_mask,
        labels=labels,
        timesteps=torch.tensor([0.5]),
        noise=torch.randn(1, 8, 1, 2, 2),
    )
    outputs = {}
    with torch.no_grad():
        for prob in (0.0, 0.999999):
            config.text_dropout_prob = prob
            outputs[prob] = model(**inputs)
    kept, dropped = outputs[0.0], outputs[0.999999]
    assert not torch.allclose(kept.velocity, dropped.velocity), "the text-to-image prompt must have been dropped"
    torch.testing.assert_close(dropped.lm_loss, kept.lm_loss, rtol=0, atol=1e-6)
