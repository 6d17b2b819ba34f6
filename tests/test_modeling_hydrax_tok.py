"""Hydra-XTok: shapes, causality, streaming equivalence, editing mode, save/load, gradients and input checks."""

import itertools

import pytest
import torch
from conftest import tiny_tok_config
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, Qwen2Config, modeling_utils
from transformers.testing_utils import CaptureLogger

from modeling_hydrax import HydraXTokFrameCache, HydraXTokModel
from modeling_hydrax.modeling_hydrax_tok import patchify, unpatchify


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
    """Each block-sparse mode equals one dense softmax over all keys with the mode's frame mask, cached frames too;
    its weights (with `output_attentions`) are that softmax in the documented per-frame layout."""
    torch.manual_seed(0)
    attention = build(attention_mode=mode).gen_vit.encoder.layers[0].self_attn
    frames, tokens, heads, dim = 4, 3, 2, 16
    hidden = torch.randn(1, frames, tokens, 32)
    cache = (torch.randn(1, past, heads, tokens, dim), torch.randn(1, past, heads, tokens, dim)) if past else None
    if mode == "tubelet" and past:
        cache = (cache[0][:, -1:], cache[1][:, -1:])
    with torch.no_grad():
        output, no_weights, _ = attention(hidden, past_key_value=cache)
        _, weights_out, _ = attention(hidden, past_key_value=cache, output_attentions=True)
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
    assert no_weights is None, "weights are computed only when asked for"
    per_frame = weights.unflatten(2, (frames, tokens)).transpose(1, 2)  # [1, F, H, N, all keys]
    if mode == "tubelet":  # keys of [previous frame, own frame]; the anchor has no previous frame
        padded = torch.nn.functional.pad(per_frame, (tokens, 0))
        windows = [padded[:, f, ..., (seen + f) * tokens : (seen + f + 2) * tokens] for f in range(frames)]
        per_frame = torch.stack(windows, dim=1)
    torch.testing.assert_close(weights_out, per_frame, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["tubelet", "causal"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_image_is_first_latent_frame_of_video(mode, compression):
    model = build(attention_mode=mode, temporal_compression=compression)
    video = clip(9, 32, 48)
    with torch.no_grad():
        image_latent = model.encode(video[:, :, 0]).latents
        video_latents = model.encode(video).latents
    assert image_latent.shape[2] == 1
    # the spec's fp32 tolerance (as for streaming): batched matmuls of different shapes round differently (1.04e-6
    # seen on one CPU), while a later frame leaking into frame 0 would move it by orders of magnitude more
    torch.testing.assert_close(image_latent[:, :, 0], video_latents[:, :, 0], rtol=0, atol=1e-5)


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
    image_latents = torch.randn(3, 8, 2, 2)  # [B, C, h, w], the layout decode takes for images
    torch.testing.assert_close(normed.normalize_latents(image_latents), (image_latents - 0.5) / 2.0)
    torch.testing.assert_close(normed.denormalize_latents(normed.normalize_latents(image_latents)), image_latents)
    with pytest.raises(ValueError, match=r"`latents` must be \[B, 8, frames, h, w\]"):
        normed.normalize_latents(torch.randn(3, 4, 2, 2))


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


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_chunked_clips_under_checkpointing_give_the_whole_clips_gradients(use_reentrant):
    """The frame cache carries gradients from a chunk to the earlier ones; reentrant checkpointing passes them only
    through tensors given and returned at the top level (in tuples they were dropped: errors up to 12 in 225)."""
    model = build().train()
    pixels, latents = clip(9), torch.randn(1, 8, 3, 2, 2, generator=torch.Generator().manual_seed(0))

    def gradients(chunk_frames):
        model.zero_grad(set_to_none=True)
        encoded = model.encode(pixels, chunk_frames=chunk_frames).latents.pow(2).sum()
        (encoded + model.decode(latents, chunk_frames=chunk_frames).sample.pow(2).sum()).backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}

    whole = gradients(None)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    chunked = gradients(1)
    assert chunked.keys() == whole.keys()
    for name, grad in whole.items():
        torch.testing.assert_close(chunked[name], grad, rtol=1e-4, atol=1e-4, msg=name)


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
        (torch.rand(1, 3, 1, 0, 32), "positive multiples of 16, got 0×32"),
        (torch.rand(1, 3, 0, 32, 32), "at least its anchor frame; `pixel_values` has 0 frames"),
        (torch.rand(1, 4, 1, 32, 32), "4 channels"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "floating-point"),
        (torch.rand(3, 32, 32), "got shape"),
        ([[0.0]], "torch.Tensor"),
    ],
    ids=["frames", "size", "no-size", "no-frames", "channels", "dtype", "rank", "type"],
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
    with pytest.raises(ValueError, match="with B ≥ 1, at least one frame and one token, got \\(1, 8, 0, 2, 2\\)"):
        model.decode(torch.randn(1, 8, 0, 2, 2))
    with pytest.raises(ValueError, match="one frame and one token, got \\(1, 2, 8, 2\\)"):  # as passed, not unsqueezed
        model.decode(torch.randn(1, 2, 8, 2))
    for empty in (lambda: model.encode(clip(5)[:0]), lambda: model.decode(torch.randn(0, 8, 1, 2, 2))):
        with pytest.raises(ValueError, match=r"with B ≥ 1.*, got (shape )?\(0, "):
            empty()
    with pytest.raises(ValueError, match="got 15×32; resize or crop \\(e.g. to 16×32\\)"):
        model.encode(torch.zeros(1, 3, 15, 32))
    with pytest.raises(ValueError, match="1 sources for 2 targets; pass one source per target"):
        model.get_semantic_features(torch.randn(2, 8, 1, 2, 2), source_latents=torch.randn(1, 8, 1, 2, 2))
    with pytest.raises(TypeError, match=r"encode\(\) got unexpected keyword argument\(s\) \['sample_posterior'\]"):
        model.encode(clip(1), sample_posterior=True)
    source = model.get_semantic_features(torch.randn(1, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="`source_latents` or a `cache` that continues a clip .*, not both"):
        model.get_semantic_features(torch.randn(1, 8, 1, 2, 2), torch.randn(1, 8, 1, 2, 2), cache=source.cache)
    with pytest.raises(ValueError, match="stage"):
        model.set_training_stage(4)


def test_settings_that_would_silently_misbehave_are_refused():
    model = build()
    model.config.attention_mode = "casual"  # a typo set after validation would have run full attention
    with pytest.raises(ValueError, match="`attention_mode` must be one of .*, got 'casual'"):
        model.encode(clip(5))
    with pytest.raises(StrictDataclassClassValidationError, match="`latents_std` must be positive"):
        tiny_tok_config(latents_std=[1.0] * 7 + [0.0])
    with pytest.raises(
        StrictDataclassClassValidationError, match="3D RoPE needs an even head dim of at least 6 .* = 4"
    ):
        tiny_tok_config(num_attention_heads=8)  # width 32 / 8 heads: no frequency pair left for h and w
    for overrides, message in (
        ({"num_attention_heads": 0}, "`num_attention_heads` must be at least 1, got 0"),  # was a ZeroDivisionError
        ({"patch_size": 0}, "`patch_size` must be at least 1, got 0"),
        ({"latent_channels": 0}, "`latent_channels` must be at least 1, got 0"),
        ({"position_embedding_size": 0}, "`position_embedding_size` must be at least 1, got 0"),
        ({"decoder_hidden_size": 0}, "`decoder_hidden_size` must be at least 1, got 0"),  # was the encoder's width
        ({"attention_dropout": 1.5}, r"`attention_dropout` is a probability in \[0, 1\), got 1.5"),
        ({"latents_std": [float("nan")] * 8}, r"`latents_std` must be finite, got \[nan, nan"),  # NaN latents
        ({"latents_mean": [float("inf")] + [0.0] * 7}, r"`latents_mean` must be finite, got \[inf\]"),
    ):
        with pytest.raises(StrictDataclassClassValidationError, match=message):
            tiny_tok_config(**overrides)
    assert tiny_tok_config(use_abs_pos_embed=False, position_embedding_size=0).position_embedding_size == 0


def test_a_bf16_tokenizer_takes_float32_inputs():
    model = build().to(torch.bfloat16)
    with torch.no_grad():
        latents = model.encode(clip(5)).latents
        assert latents.dtype == torch.bfloat16
        assert model.decode(latents.float()).sample.dtype == torch.bfloat16
        assert model.get_semantic_features(latents.float()).last_hidden_state.dtype == torch.bfloat16


def test_frame_cache_is_immutable():
    cache = HydraXTokFrameCache()
    kv = (torch.zeros(1), torch.zeros(1))
    newer = cache.updated("encoder", {0: kv}, 2, (1, 2, 2))
    assert cache.seen("encoder") == 0 and cache.get("encoder", 0) is None
    assert newer.seen("encoder") == 2 and newer.get("encoder", 0) is kv


def test_posterior_samples_take_a_generator_per_sample_and_statistics_are_checked_when_used():
    """As diffusers' `randn_tensor`: a list of generators draws sample by sample, so each sample repeats alone. Latent
    statistics set after the config was built (as stage 3 does) are checked when the model normalises."""
    model = build()
    with torch.no_grad():
        video = clip(5, batch=2)
        generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
        both = model.encode(video, sample=True, generator=generators).latents
        alone = model.encode(video[1:], sample=True, generator=torch.Generator().manual_seed(2)).latents
        torch.testing.assert_close(both[1:], alone)
        with pytest.raises(ValueError, match="Got 3 generators for a batch of 2"):
            model.encode(video, sample=True, generator=[torch.Generator()] * 3)
        model.config.latents_std = [0.0] * model.config.latent_channels
        with pytest.raises(ValueError, match="`latents_std` must be positive"):
            model.encode(video)


def test_a_stream_continues_only_with_its_batch_and_grid():
    """A continuation of another batch size failed deep in attention, and one of a transposed grid (same token count)
    ran silently with the wrong positions: both are refused, naming the stream's layout. A continuation chunk given
    without the cache is told how to stream."""
    from modeling_hydrax.modeling_hydrax_tok import HydraXTokDiagonalGaussian

    model = build()
    with torch.no_grad():
        first = model.encode(clip(5, 32, 64, batch=2), chunk_frames=1)
        with pytest.raises(
            ValueError, match=r"encoder stream of batch 2 on a 2×4 latent grid, but this call has batch 1"
        ):
            model.encode(clip(4, 32, 64, batch=1), cache=first.cache)
        with pytest.raises(ValueError, match=r"batch 2 on a 2×4 latent grid, but this call has batch 2 on 4×2"):
            model.encode(clip(4, 64, 32, batch=2), cache=first.cache)
        decoded = model.decode(first.latents, chunk_frames=1)
        with pytest.raises(ValueError, match="decoder stream of batch 2"):
            model.decode(first.latents[:1, :, 1:], cache=decoded.cache)
        source = model.get_semantic_features(first.latents[:1, :, :1])
        with pytest.raises(ValueError, match="semantic stream of batch 1"):
            model.get_semantic_features(first.latents[:, :, 1:], cache=source.cache)
        with pytest.raises(ValueError, match=r"pass the previous call's `cache`.*HydraXTokFrameCache\(\)"):
            model.encode(clip(4, 32, 64, batch=2), cache=model.encode(clip(5, 32, 64, batch=2)).cache)
    # the KL of a large fp16 posterior is summed in fp32: ~3·10⁵ overflowed fp16 to inf
    mean, logvar = torch.full((1, 8, 5, 64, 64), 2.0, dtype=torch.float16), torch.zeros(1, 8, 5, 64, 64).half()
    kl = HydraXTokDiagonalGaussian(mean, logvar).kl()
    assert kl.dtype == torch.float32 and kl.item() == pytest.approx(0.5 * 4 * mean.numel())


# ---------------------------------------------------------------- recorded outputs (hidden states, attentions)


def test_hidden_states_count_shapes_and_values():
    """`output_hidden_states=True`: each stack's input plus one state per block, at the block's frame rate (tiny
    config: Gen-ViT 3 blocks folded after 1, Sem-ViT 2, decoder 3 un-folded after 2; 9 frames → 5 fine, 3 latent)."""
    model = build()
    pixels = clip(9)
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
        encoded = model.encode(pixels, output_hidden_states=True)
        semantic = model.get_semantic_features(encoded.latents, output_hidden_states=True)
        decoded = model.decode(encoded.latents, output_hidden_states=True)
        plain = model(pixels)
    frames = {"encoder": [5, 5, 3, 3], "semantic": [3, 3, 3], "decoder": [3, 3, 3, 5]}
    for part, counts in frames.items():
        states = getattr(out, f"{part}_hidden_states")
        assert [tuple(s.shape) for s in states] == [(1, f, 4, 32) for f in counts], part
        assert getattr(out, f"{part}_attentions") is None and getattr(plain, f"{part}_hidden_states") is None
    for part, single in (("encoder", encoded), ("semantic", semantic), ("decoder", decoded)):
        assert all(
            torch.equal(a, b) for a, b in zip(getattr(out, f"{part}_hidden_states"), single.hidden_states, strict=True)
        )
    # The recorded states are the real ones: the last feeds the bottleneck / post-layernorm (SigLIP 2 convention).
    moments = model.gen_vit.bottleneck(model.gen_vit.norm(encoded.hidden_states[-1]))[..., :8]
    torch.testing.assert_close(moments.permute(0, 3, 1, 2).unflatten(3, (2, 2)), encoded.latent_dist.mean)
    torch.testing.assert_close(model.sem_vit.post_layernorm(semantic.hidden_states[-1]).flatten(1, 2), semantic[0])
    assert torch.equal(out.reconstruction, plain.reconstruction)


@pytest.mark.parametrize("mode", MODES)
def test_attention_outputs(mode):
    """`output_attentions=True`: one weight tensor per block, `[B, F, heads, N, K]` per query frame (tubelet K = 2N:
    [previous, own]; causal and full K = all keys), rows summing to 1, no weight outside the mode's frames."""
    model = build(attention_mode=mode)
    with torch.no_grad():
        out = model(clip(9, batch=2), output_attentions=True)
    layers = {"encoder": (3, [5, 3, 3]), "semantic": (2, [3, 3]), "decoder": (3, [3, 3, 5])}
    for part, (count, frames) in layers.items():
        attentions = getattr(out, f"{part}_attentions")
        assert len(attentions) == count and getattr(out, f"{part}_hidden_states") is None, part
        for weights, f in zip(attentions, frames):
            keys = 8 if mode == "tubelet" else 4 * f
            assert weights.shape == (2, f, 2, 4, keys), (part, weights.shape)
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
            if mode == "tubelet":
                assert torch.all(weights[:, 0, ..., :4] == 0), "the anchor has no previous frame"
            if mode == "causal":
                for q in range(f):
                    assert torch.all(weights[:, q, ..., 4 * (q + 1) :] == 0), "a frame attended to a later one"


def test_recorded_outputs_refuse_a_chunk_frames_that_splits_the_clip():
    """Recorded outputs hold one entry per layer call: a chunked pass returned per-chunk pieces (9 frames with
    `chunk_frames=1`: 10 encoder states of 1–2 frames for the whole clip's 4) that map to no layer. A chunk size
    that holds the whole clip records as the plain call does."""
    model = build()
    pixels = clip(9)
    with torch.no_grad():
        latents = model.encode(pixels).latents
        for flag in ("output_hidden_states", "output_attentions"):
            with pytest.raises(ValueError, match=f"`encode` with {flag} .* chunk_frames=1 runs the layers 3 times"):
                model.encode(pixels, chunk_frames=1, **{flag: True})
            with pytest.raises(ValueError, match=f"`decode` with {flag} .* chunk_frames=2 runs the layers 2 times"):
                model.decode(latents, chunk_frames=2, **{flag: True})
        whole = model.encode(pixels, output_hidden_states=True)
        one_chunk = model.encode(pixels, chunk_frames=3, output_hidden_states=True)
        assert len(one_chunk.hidden_states) == len(whole.hidden_states) == 4
        assert all(torch.equal(a, b) for a, b in zip(one_chunk.hidden_states, whole.hidden_states))
        model.config.output_hidden_states = True  # the config's setting counts as the keyword does
        with pytest.raises(ValueError, match="`decode` with output_hidden_states"):
            model.decode(latents, chunk_frames=1)


def test_return_dict_false_gives_tuples():
    model = build()
    pixels = clip(5)
    with torch.no_grad():
        as_dict = model(pixels, output_hidden_states=True)
        as_tuple = model(pixels, output_hidden_states=True, return_dict=False)
        encoded = model.encode(pixels, return_dict=False)
        decoded = model.decode(as_dict.latents, return_dict=False, output_attentions=True)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for a, b in zip(as_tuple, as_dict.to_tuple(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else type(a) is type(b)
    assert isinstance(encoded, tuple) and torch.equal(encoded[0], as_dict.latents)
    assert isinstance(decoded, tuple) and len(decoded) == 2 and len(decoded[1]) == 3  # sample, attentions
    torch.testing.assert_close(decoded[0], as_dict.reconstruction)  # eager (for the weights) vs sdpa


def test_forward_hooks_on_blocks_and_attention_fire():
    """Plain PyTorch hooks see every block, and an attention module's output carries weights only when asked."""
    model = build()
    seen = []
    blocks = [model.gen_vit.encoder.layers[0], model.sem_vit.encoder.layers[1], model.decoder.decoder.layers[2]]
    handles = [block.register_forward_hook(lambda m, args, out: seen.append(tuple(out[0].shape))) for block in blocks]
    weights = []
    attention = model.sem_vit.encoder.layers[0].self_attn
    handles.append(attention.register_forward_hook(lambda m, args, out: weights.append(out[1])))
    with torch.no_grad():
        model(clip(5))
        assert seen == [(1, 3, 4, 32), (1, 2, 4, 32), (1, 3, 4, 32)]  # Gen-ViT before the fold, Sem-ViT, decoder
        model.get_semantic_features(model.encode(clip(5)).latents, output_attentions=True)
    for handle in handles:
        handle.remove()
    assert weights[0] is None and weights[1].shape == (1, 2, 2, 4, 8)


@pytest.mark.parametrize("mode", MODES)
def test_eager_with_weights_equals_sdpa(mode):
    """Asking for weights under sdpa falls back to eager for that call; the outputs stay those of sdpa."""
    sdpa = HydraXTokModel._from_config(tiny_tok_config(attention_mode=mode), attn_implementation="sdpa").eval()
    eager = HydraXTokModel._from_config(tiny_tok_config(attention_mode=mode), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    pixels = clip(9)
    with torch.no_grad():
        reference = sdpa(pixels)
        fallback = sdpa(pixels, output_attentions=True)
        with_weights = eager(pixels, output_attentions=True)
    assert len(fallback.encoder_attentions) == 3 and len(with_weights.semantic_attentions) == 2
    for out in (fallback, with_weights):
        torch.testing.assert_close(out.reconstruction, reference.reconstruction, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.semantic_features, reference.semantic_features, rtol=1e-4, atol=1e-5)
    for a, b in zip(fallback.decoder_attentions, with_weights.decoder_attentions, strict=True):
        torch.testing.assert_close(a, b)
    eager.config.output_attentions = True  # the config default, as in any transformers model
    with torch.no_grad():
        from_config = eager(pixels)
    assert len(from_config.encoder_attentions) == 3 and from_config.encoder_hidden_states is None


# ---------------------------------------------------------------- loading from a unified Hydra-X checkpoint


@pytest.fixture(scope="module", params=["HydraXForConditionalGeneration", "HydraXModel"])
def unified_checkpoint(tmp_path_factory, request):
    """A unified checkpoint as either public class saves it: `model.vision_tower.*` or, from `HydraXModel`,
    `vision_tower.*`."""
    from conftest import tiny_hydrax

    model = tiny_hydrax()
    saved = model if request.param == "HydraXForConditionalGeneration" else model.model
    path = tmp_path_factory.mktemp("unified")
    saved.save_pretrained(path)
    return path, model.model.vision_tower


def test_loads_the_vision_tower_of_a_unified_checkpoint_exactly(unified_checkpoint):
    path, tower = unified_checkpoint
    with CaptureLogger(modeling_utils.logger) as captured:
        loaded, info = HydraXTokModel.from_pretrained(path, output_loading_info=True)
    assert "LOAD REPORT" not in captured.out, captured.out
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    expected, state = tower.state_dict(), loaded.state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    assert loaded.config.use_decompressor is False and loaded.decompressor is None
    pixels = clip(5)
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode(pixels).latents, tower.encode(pixels).latents)


def test_a_tower_loaded_from_a_unified_checkpoint_saves_as_a_tokenizer(unified_checkpoint, tmp_path):
    """train_tokenizer.py --model <Hydra-X checkpoint> saves what it loaded: transformers used to undo the tower's
    key renaming on save, and failed (IndexError)."""
    path, tower = unified_checkpoint
    HydraXTokModel.from_pretrained(path).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        assert set(saved.keys()) == set(tower.state_dict())  # `gen_vit.*`, ...: a tokenizer checkpoint's keys
    resaved, info = HydraXTokModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = clip(5)
    with torch.no_grad():
        assert torch.equal(resaved.eval().encode(pixels).latents, tower.eval().encode(pixels).latents)


def test_from_pretrained_names_a_foreign_checkpoint(tmp_path):
    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"'qwen2' checkpoint.*HydraXTokModel.save_pretrained"):
        HydraXTokModel.from_pretrained(tmp_path)


def test_block_level_group_offloading_gives_the_same_outputs(tmp_path):
    """diffusers' block-level group offloading (to disk, every offloaded weight overwritten by NaN) brings each part
    named in `_group_offload_block_modules` in when its forward runs: encode, streamed decode and the training
    forward (with the Decompressor) equal the model in memory."""
    from diffusers.hooks import apply_group_offloading

    model = HydraXTokModel(tiny_tok_config()).eval()
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1

    @torch.no_grad()
    def run():
        latents = model.encode(video, chunk_frames=1).latent_dist.mode()
        outputs = model(video)
        return [latents, model.decode(latents, chunk_frames=1).sample, outputs.reconstruction, outputs.latents]

    expected = run()
    apply_group_offloading(
        model, torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=tmp_path
    )
    for parameter in model.parameters():
        parameter.data.fill_(float("nan"))
    for got, want in zip(run(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("temporal_patch_size", [2, 4])
@pytest.mark.parametrize("includes_anchor", [True, False])
def test_unpatchify_inverts_patchify_pixel_for_pixel(temporal_patch_size, includes_anchor):
    """The decoder's pixel layout is the patch embedding's: unpatchify(patchify(x)) == x, on a non-square grid with
    a non-square count of patches per side, so a swapped row / column or in-patch axis shows."""
    frames = (1 if includes_anchor else 0) + 2 * temporal_patch_size
    pixels = torch.randn(2, 3, frames, 3 * 4, 5 * 4)
    patches = patchify(pixels, 4, temporal_patch_size, includes_anchor)
    assert patches.shape[-1] == temporal_patch_size * 4 * 4 * 3
    restored = unpatchify(patches, (3, 5), 4, temporal_patch_size, 3, includes_anchor)
    assert torch.equal(restored, pixels)


def test_patchify_feature_order_is_time_row_column_channel():
    """A tubelet's features are ordered (t, row, column, channel), the layout of SigLIP 2's patch embedding that
    the converted weights assume, and tokens run row-major over the grid."""
    p, tp, grid = 2, 2, (2, 3)
    pixels = torch.randn(1, 3, tp, grid[0] * p, grid[1] * p)
    patches = patchify(pixels, p, tp, includes_anchor=False)
    for r, c, t, i, j, ch in itertools.product(
        range(grid[0]), range(grid[1]), range(tp), range(p), range(p), range(3)
    ):
        feature = ((t * p + i) * p + j) * 3 + ch
        assert patches[0, 0, r * grid[1] + c, feature] == pixels[0, ch, t, r * p + i, c * p + j]


def test_attention_dropout_is_off_in_eval_under_every_implementation():
    """`attention_dropout` only acts in training: sdpa (unlike eager) applies any `dropout` it is given, so eval
    outputs must not change from call to call, and equal eager's."""
    config = tiny_tok_config(attention_dropout=0.5)
    eager = HydraXTokModel._from_config(config, attn_implementation="eager").eval()
    sdpa = HydraXTokModel._from_config(tiny_tok_config(attention_dropout=0.5), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    pixels = clip(5)
    with torch.no_grad():
        first, second = sdpa.encode(pixels).latents, sdpa.encode(pixels).latents
        reference = eager.encode(pixels).latents
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, reference, rtol=1e-4, atol=1e-5)


def test_fold_and_unfold_after_the_last_layer():
    """`gen_fold_layer == num_gen_layers` and `decoder_unfold_layer == 0` / `== num_decoder_layers` are valid
    splits: the fold then runs after the last Gen-ViT block, and the clip still compresses 4× in time."""
    for unfold in (0, 3):
        model = build(gen_fold_layer=3, decoder_unfold_layer=unfold)
        with torch.no_grad():
            out = model(clip(9))
        assert out.latents.shape == (1, 8, 3, 2, 2)
        assert out.reconstruction.shape == (1, 3, 9, 32, 32)
    model = build(gen_fold_layer=3, decoder_unfold_layer=3)
    with torch.no_grad():
        whole = model.encode(clip(9)).latents
    assert whole.shape[2] == 3


def test_full_attention_returns_no_semantic_cache():
    """Under attention_mode='full' no cache can be continued (passing one is refused), so none is returned."""
    model = build(attention_mode="full")
    with torch.no_grad():
        out = model.get_semantic_features(torch.randn(1, 8, 2, 2, 2))
    assert out.cache is None
    tubelet = build()
    with torch.no_grad():
        assert tubelet.get_semantic_features(torch.randn(1, 8, 2, 2, 2)).cache.seen("semantic") == 2


def test_add_decompressor_initialises_like_the_model():
    """A Decompressor added later (stage-3 distillation of a tower without one) gets the model's `_init_weights`:
    zero biases, weights at `initializer_range`, not torch's default uniform init."""
    model = HydraXTokModel(tiny_tok_config(use_decompressor=False, hidden_size=64, intermediate_size=128))
    model.add_decompressor()
    head = model.decompressor.image_head
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    std = model.config.initializer_range
    for module in model.decompressor.modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            assert abs(module.weight.std().item() - std) < 0.3 * std
