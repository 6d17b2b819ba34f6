"""Hydra-XTok: shapes, causality, streaming equivalence, editing mode, save/load, gradients and input checks."""

import pytest
import torch
from conftest import tiny_tok_config
from transformers import AutoConfig, AutoModel

from modeling_hydrax import HydraXTokFrameCache, HydraXTokModel


MODES = ["tubelet", "causal", "full"]
COMPRESSIONS = ["hierarchical", "single"]


def build(**overrides) -> HydraXTokModel:
    return HydraXTokModel(tiny_tok_config(**overrides)).eval()


def clip(frames, height=32, width=32, batch=1):
    return torch.rand(batch, 3, frames, height, width) * 2 - 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize(
    "shape",
    [(2, 3, 32, 32), (2, 3, 1, 48, 32), (1, 3, 5, 32, 48), (2, 3, 9, 32, 32)],
    ids=["image-square", "image-5d-nonsquare", "video-5f-nonsquare", "video-9f"],
)
def test_shapes(mode, compression, shape):
    model = build(attention_mode=mode, temporal_compression=compression)
    pixels = torch.rand(shape) * 2 - 1
    frames = 1 if len(shape) == 4 else shape[2]
    batch, height, width = shape[0], shape[-2], shape[-1]
    latent_frames, h, w = 1 + (frames - 1) // 4, height // 16, width // 16
    with torch.no_grad():
        out = model(pixels)
    assert out.latents.shape == (batch, 8, latent_frames, h, w)
    assert out.latent_dist.mean.shape == out.latents.shape
    assert out.reconstruction.shape == (batch, 3, frames, height, width)
    assert out.semantic_features.shape == (batch, latent_frames * h * w, 32)
    assert out.image_distill_features.shape == (batch, h * w, 24)
    if frames == 1:
        assert out.video_distill_features is None
    else:
        assert out.video_distill_features.shape == (batch, (frames - 1) * h * w, 20)


@pytest.mark.parametrize("mode", ["tubelet", "causal"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_causality_by_perturbation(mode, compression):
    model = build(attention_mode=mode, temporal_compression=compression)
    pixels = clip(13)
    for k in range(3):
        changed = pixels.clone()
        changed[:, :, 4 * k + 1 :] += torch.randn_like(changed[:, :, 4 * k + 1 :])
        with torch.no_grad():
            a, b = model.encode(pixels).latents, model.encode(changed).latents
            sa, sb = model.get_semantic_features(a), model.get_semantic_features(b)
            da, db = model.decode(a).sample, model.decode(b).sample
        tokens = (k + 1) * 4
        assert torch.equal(a[:, :, : k + 1], b[:, :, : k + 1]), f"latent frames 0..{k} saw later frames"
        assert not torch.allclose(a[:, :, k + 1 :], b[:, :, k + 1 :]), "later latents must change"
        assert torch.equal(sa.last_hidden_state[:, :tokens], sb.last_hidden_state[:, :tokens])
        assert torch.equal(da[:, :, : 4 * k + 1], db[:, :, : 4 * k + 1])


def test_full_attention_is_not_causal():
    model = build(attention_mode="full")
    pixels = clip(9)
    changed = pixels.clone()
    changed[:, :, 5:] += 1.0
    with torch.no_grad():
        a, b = model.encode(pixels).latents, model.encode(changed).latents
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])


@pytest.mark.parametrize("mode", ["tubelet", "causal", "full"])
@pytest.mark.parametrize("past", [0, 2])
def test_attention_modes_match_a_dense_masked_reference(mode, past):
    """Each block-sparse mode equals one dense softmax over all keys with the mode's frame mask, cached frames too."""
    torch.manual_seed(0)
    attention = build(attention_mode=mode).gen_vit.encoder.layers[0].self_attn
    frames, tokens, heads, dim = 4, 3, 2, 16
    hidden = torch.randn(1, frames, tokens, 32)
    cache = (torch.randn(1, past, heads, tokens, dim), torch.randn(1, past, heads, tokens, dim)) if past else None
    if mode == "tubelet" and past:
        cache = (cache[0][:, -1:], cache[1][:, -1:])
    with torch.no_grad():
        output, _ = attention(hidden, past_key_value=cache)
        shape = (1, frames, tokens, heads, dim)
        query, key, value = (
            proj(hidden).view(shape).transpose(2, 3) for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        if cache is not None:
            key, value = torch.cat([cache[0], key], dim=1), torch.cat([cache[1], value], dim=1)
        seen = key.shape[1] - frames
        query_frame = torch.arange(frames).repeat_interleave(tokens)[:, None] + seen
        key_frame = torch.arange(key.shape[1]).repeat_interleave(tokens)[None, :]
        allowed = {
            "full": torch.ones_like(key_frame - query_frame, dtype=torch.bool),
            "causal": key_frame <= query_frame,
            "tubelet": (key_frame <= query_frame) & (key_frame >= query_frame - 1),
        }[mode]
        flat = [t.transpose(1, 2).reshape(1, heads, -1, dim) for t in (query, key, value)]
        scores = (flat[0] @ flat[1].transpose(-1, -2)) * dim**-0.5
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        expected = attention.out_proj((weights @ flat[2]).transpose(1, 2).reshape(1, frames, tokens, -1))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["tubelet", "causal"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_image_is_first_latent_frame_of_video(mode, compression):
    model = build(attention_mode=mode, temporal_compression=compression)
    video = clip(9, 32, 48)
    with torch.no_grad():
        image_latent = model.encode(video[:, :, 0]).latents
        video_latents = model.encode(video).latents
    assert image_latent.shape[2] == 1
    torch.testing.assert_close(image_latent[:, :, 0], video_latents[:, :, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["tubelet", "causal"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("chunk_frames", [1, 2, 3, 5])
def test_chunked_encode_decode_equals_whole_clip(mode, compression, chunk_frames):
    model = build(attention_mode=mode, temporal_compression=compression)
    video = clip(17, batch=2)
    with torch.no_grad():
        whole = model.encode(video).latents
        chunked = model.encode(video, chunk_frames=chunk_frames)
        decoded = model.decode(whole).sample
        decoded_chunked = model.decode(whole, chunk_frames=chunk_frames).sample
    torch.testing.assert_close(chunked.latents, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded_chunked, decoded, rtol=0, atol=1e-5)
    assert chunked.cache.seen("encoder") == 5


def test_manual_streaming_with_cache_equals_whole_clip():
    model = build()
    video = clip(17)
    with torch.no_grad():
        whole = model.encode(video).latents
        first = model.encode(video[:, :, :5], cache=HydraXTokFrameCache())
        second = model.encode(video[:, :, 5:13], cache=first.cache)
        third = model.encode(video[:, :, 13:], cache=second.cache)
        streamed = torch.cat([first.latents, second.latents, third.latents], dim=2)
        decoded = model.decode(whole).sample
        d1 = model.decode(whole[:, :, :2], cache=HydraXTokFrameCache())
        d2 = model.decode(whole[:, :, 2:], cache=d1.cache)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([d1.sample, d2.sample], dim=2), decoded, rtol=0, atol=1e-5)
    assert d2.sample.shape[2] == 12
    assert third.cache.seen("encoder") == 5
    assert first.cache.seen("encoder") == 2, "a returned cache must not be changed by later calls"


def test_tubelet_cache_holds_one_frame():
    model = build()
    with torch.no_grad():
        out = model.encode(clip(17), chunk_frames=2)
    for key, value in out.cache.key_values.values():
        assert key.shape[1] == 1 and value.shape[1] == 1


def test_editing_mode_direction():
    model = build()
    source, target = clip(1), clip(1)
    with torch.no_grad():
        z_source = model.encode(source).latents
        z_target = model.encode(target).latents
        z_other_target = model.encode(clip(1)).latents
        z_other_source = model.encode(clip(1)).latents
        base = model.get_semantic_features(z_target, source_latents=z_source).last_hidden_state
        new_target = model.get_semantic_features(z_other_target, source_latents=z_source).last_hidden_state
        new_source = model.get_semantic_features(z_target, source_latents=z_other_source).last_hidden_state
    tokens = z_source.shape[-1] * z_source.shape[-2]
    assert base.shape == (1, 2 * tokens, 32)
    assert torch.equal(base[:, :tokens], new_target[:, :tokens]), "the source must not see the target"
    assert not torch.allclose(base[:, tokens:], new_source[:, tokens:]), "the target must see the source"


def test_editing_source_cache_reused_across_steps():
    model = build()
    with torch.no_grad():
        z_source = model.encode(clip(1)).latents
        source = model.get_semantic_features(z_source)
        for _ in range(2):
            z_noisy = torch.randn_like(z_source)
            joint = model.get_semantic_features(z_noisy, source_latents=z_source).last_hidden_state
            cached = model.get_semantic_features(z_noisy, cache=source.cache).last_hidden_state
            torch.testing.assert_close(cached, joint[:, joint.shape[1] // 2 :], rtol=0, atol=1e-5)
    assert source.cache.seen("semantic") == 1


def test_save_and_auto_load_round_trip(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hydrax_tok"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HydraXTokModel)
    pixels = clip(5)
    with torch.no_grad():
        a, b = model(pixels), loaded(pixels)
    for name in ("reconstruction", "latents", "semantic_features", "video_distill_features"):
        assert torch.equal(a[name], b[name]), name


def test_latent_bridge_starts_at_unit_scale():
    """The Linears into and out of the latent are fan-in scaled, so the posterior mean starts near unit std (it was
    ≈ 0.3 under the std-0.02 default, drowned by the posterior noise), and the decoder and Sem-ViT receive it."""
    torch.manual_seed(0)
    model = build()
    for name in ("gen_vit.bottleneck", "sem_vit.latent_proj", "decoder.latent_proj"):
        weight = model.get_submodule(name).weight
        assert weight.std().item() == pytest.approx(weight.shape[1] ** -0.5, rel=0.2), name
    assert model.get_submodule("decoder.out_proj").weight.std().item() == pytest.approx(0.02, rel=0.2)
    with torch.no_grad():
        mean = model.encode(clip(5, batch=4)).latent_dist.mean
    assert 0.5 < mean.std().item() < 2.0


@pytest.mark.parametrize("chunk_frames", [None, 1])
def test_posterior_logvar_is_clamped_in_the_shared_moments_buffer(chunk_frames):
    model = build()
    with torch.no_grad():
        model.gen_vit.bottleneck.bias[8:] = 100.0  # the logvar half: far above the clamp
        posterior = model.encode(clip(5), chunk_frames=chunk_frames).latent_dist
    assert posterior.logvar.max().item() == 20.0
    assert posterior.logvar.untyped_storage().data_ptr() == posterior.mean.untyped_storage().data_ptr()


def test_latent_normalisation_from_config(tmp_path):
    mean, std = [0.5] * 8, [2.0] * 8
    plain = build()
    normed = build(latents_mean=mean, latents_std=std)
    normed.load_state_dict(plain.state_dict())
    pixels = clip(5)
    with torch.no_grad():
        raw = plain.encode(pixels).latents
        scaled = normed.encode(pixels).latents
        torch.testing.assert_close(scaled, (raw - 0.5) / 2.0)
        torch.testing.assert_close(normed.decode(scaled).sample, plain.decode(raw).sample, rtol=1e-5, atol=1e-5)


def test_eager_matches_sdpa():
    eager = HydraXTokModel._from_config(tiny_tok_config(), attn_implementation="eager").eval()
    sdpa = HydraXTokModel._from_config(tiny_tok_config(), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    pixels = clip(9)
    for mode in MODES:
        eager.config.attention_mode = sdpa.config.attention_mode = mode
        with torch.no_grad():
            a, b = eager(pixels), sdpa(pixels)
        torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.semantic_features, b.semantic_features, rtol=1e-4, atol=1e-5)


def _stage_loss(out, stage):
    if stage == 2:
        return out.reconstruction.abs().mean()
    distill = out.image_distill_features.pow(2).mean() + out.video_distill_features.pow(2).mean()
    if stage == 3:
        return distill
    return out.reconstruction.abs().mean() + out.latent_dist.kl().mean() + distill


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_trainable_parameter_gets_a_gradient(stage):
    model = build().train()
    trainable = set(model.set_training_stage(stage))
    assert trainable
    _stage_loss(model(clip(5, batch=2)), stage).backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"stage {stage}: no gradient for {name}"
        else:
            assert param.grad is None, f"stage {stage}: frozen {name} got a gradient"


def test_gradient_checkpointing_gives_same_gradients():
    model = build().train()
    pixels = clip(5)
    model(pixels, sample_posterior=False).reconstruction.sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable()
    model(pixels, sample_posterior=False).reconstruction.sum().backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_sampling_uses_generator():
    model = build()
    pixels = clip(1)
    with torch.no_grad():
        a = model.encode(pixels, sample=True, generator=torch.Generator().manual_seed(1)).latents
        b = model.encode(pixels, sample=True, generator=torch.Generator().manual_seed(1)).latents
        mode = model.encode(pixels).latents
    assert torch.equal(a, b) and not torch.equal(a, mode)


def test_positional_switches():
    for overrides in ({"use_rope": False}, {"use_abs_pos_embed": False}):
        model = build(**overrides)
        with torch.no_grad():
            assert model(clip(5)).latents.shape == (1, 8, 2, 2, 2)
    assert not any("position_embedding" in n for n, _ in build(use_abs_pos_embed=False).named_parameters())


@pytest.mark.parametrize(
    "pixels, message",
    [
        (torch.rand(1, 3, 4, 32, 32), "1 \\+ 4·k frames"),
        (torch.rand(1, 3, 1, 30, 32), "multiples of 16"),
        (torch.rand(1, 4, 1, 32, 32), "4 channels"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "floating-point"),
        (torch.rand(3, 32, 32), "got shape"),
        ([[0.0]], "torch.Tensor"),
    ],
    ids=["frames", "size", "channels", "dtype", "rank", "type"],
)
def test_bad_input_errors(pixels, message):
    model = build()
    with pytest.raises((ValueError, TypeError), match=message):
        model.encode(pixels)


def test_bad_chunking_and_latents():
    with pytest.raises(ValueError, match="attention_mode='full'"):
        build(attention_mode="full").encode(clip(5), chunk_frames=1)
    model = build()
    with pytest.raises(ValueError, match="chunk_frames"):
        model.encode(clip(5), chunk_frames=0)
    with pytest.raises(ValueError, match="positive multiple of 4"):
        model.encode(clip(5), cache=model.encode(clip(5), chunk_frames=1).cache)
    with pytest.raises(ValueError, match="latents"):
        model.decode(torch.randn(1, 3, 1, 2, 2))
    with pytest.raises(ValueError, match="source_latents"):
        model.get_semantic_features(torch.randn(1, 8, 1, 2, 2), source_latents=torch.randn(1, 8, 1, 3, 2))
    with pytest.raises(ValueError, match="stage"):
        model.set_training_stage(4)


def test_frame_cache_is_immutable():
    cache = HydraXTokFrameCache()
    kv = (torch.zeros(1), torch.zeros(1))
    newer = cache.updated("encoder", {0: kv}, 2)
    assert cache.seen("encoder") == 0 and cache.get("encoder", 0) is None
    assert newer.seen("encoder") == 2 and newer.get("encoder", 0) is kv
