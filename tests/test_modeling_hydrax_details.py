"""Behaviours of the unified model, its config and presets that a mutation review found untested (each test fails on
the code mutant it was written for): positions after a cache, unconditional ids, prefix padding, loss weights,
flow-head settings, training defaults, presets."""

import re

import pytest
import torch
from conftest import tiny_hydrax, visual_block
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import DynamicCache

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration
from modeling_hydrax.configuration_hydrax_presets import HYDRAX_PRESETS, preset_kwargs


IMAGE_TOKENS = 4  # a 32×32 image: 2×2 latent tokens


@pytest.fixture(scope="module")
def model():
    return tiny_hydrax()


def t2i_ids(config, prompt=(5, 6, 7)):
    return torch.tensor([list(prompt) + visual_block(config, IMAGE_TOKENS)])


def test_forward_with_a_cache_and_no_attention_mask_continues_the_positions(model):
    """Without an attention mask, a call after a cache places its tokens after the cached ones (positions + past)."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        full = model(input_ids=ids, logits_to_keep=0).logits
        cache = DynamicCache(config=model.config.text_config)
        model(input_ids=ids[:, :4], cache=cache, use_cache=True)
        continued = model(input_ids=ids[:, 4:], cache=cache, use_cache=True, logits_to_keep=0).logits
    torch.testing.assert_close(continued, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_unconditional_ids_keep_the_text_after_the_target_block(model):
    """Only the text before the last visual block is dropped: tokens after the target (e.g. <|im_end|>) stay."""
    config = model.config
    ids = torch.tensor([[5, 6, 7] + visual_block(config, IMAGE_TOKENS) + [8, 9]])
    uncond = model.unconditional_input_ids(ids)
    assert bool((uncond[0, :3] == config.pad_token_id).all())
    assert torch.equal(uncond[0, 3:], ids[0, 3:])


def test_unconditional_ids_keep_the_markers_of_earlier_visual_blocks(model):
    """An edit prompt's source block keeps its <|vision_start|>, placeholders and <|vision_end|>; its text goes."""
    config = model.config
    source = visual_block(config, IMAGE_TOKENS)
    ids = torch.tensor([[5] + source + [6, 7] + visual_block(config, IMAGE_TOKENS)])
    uncond = model.unconditional_input_ids(ids)
    pad = config.pad_token_id
    expected = torch.tensor([[pad] + source + [pad, pad] + visual_block(config, IMAGE_TOKENS)])
    assert torch.equal(uncond, expected)


def test_fewer_targets_than_target_blocks_is_a_clear_error(model):
    """Two samples with a target block but one target latent: the error names the target count, not a scatter."""
    ids = t2i_ids(model.config).repeat(2, 1)
    with torch.no_grad(), pytest.raises(ValueError, match="1 generation targets were given for 2 samples"):
        model(input_ids=ids, target_latents=torch.randn(1, 8, 1, 2, 2), timesteps=torch.tensor([0.5]))


def test_loss_weights_scale_their_own_loss():
    """`loss` is `lm_loss_weight · lm_loss + flow_loss_weight · flow_loss`, each weight on its own loss."""
    model = tiny_hydrax(lm_loss_weight=0.25, flow_loss_weight=3.0)
    ids = t2i_ids(model.config)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            labels=ids,
            target_latents=torch.randn(1, 8, 1, 2, 2),
            timesteps=torch.tensor([0.5]),
            noise=torch.randn(1, 8, 1, 2, 2),
        )
    torch.testing.assert_close(out.loss, 0.25 * out.lm_loss + 3.0 * out.flow_loss)


def test_left_padded_prefix_steps_ignore_the_padding(model):
    """A cached step on a left-padded prompt batch equals the step on each prompt alone (the pads stay masked)."""
    config = model.config
    short = [5, 6, config.vision_start_token_id]
    long = [5, 6, 7, 8, 9, config.vision_start_token_id]
    ids = torch.tensor([[config.pad_token_id] * 3 + short, long])
    mask = torch.tensor([[0] * 3 + [1] * len(short), [1] * len(long)])
    z = torch.randn(2, 8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.4, 0.8])
    with torch.no_grad():
        prefix = model.prepare_generation_prefix(ids, attention_mask=mask)
        assert not prefix.unpadded
        batched = model.predict_velocity(z, t, prefix)
        for i, item in enumerate((short, long)):
            alone = model.predict_velocity(
                z[i : i + 1], t[i : i + 1], model.prepare_generation_prefix(torch.tensor([item]))
            )
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_prefix_refuses_a_last_token_the_attention_mask_hides(model):
    """A row whose final `<|vision_start|>` is masked out (padding) is refused, as right padding is."""
    prompt = t2i_ids(model.config)[:, : -IMAGE_TOKENS - 1]
    mask = torch.ones_like(prompt)
    mask[0, -1] = 0
    with torch.no_grad(), pytest.raises(ValueError, match="pad on the left"):
        model.prepare_generation_prefix(prompt, attention_mask=mask)


def test_flow_head_needs_at_least_one_layer():
    """`flow_head_num_layers=0` is refused by the config's validation."""
    with pytest.raises(StrictDataclassClassValidationError, match="`flow_head_num_layers` must be ≥ 1, got 0"):
        HydraXConfig.from_preset("tiny", flow_head_num_layers=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pad_token_id": None}, "`pad_token_id` is required: it replaces dropped text"),
        ({"timestep_embedding_dim": 255}, "must be even and ≥ 2 (cosine and sine features), got 255"),
        ({"timestep_embedding_dim": 0}, "`timestep_embedding_dim` must be even and ≥ 2"),
        ({"flow_head_hidden_size": 0}, "`flow_head_hidden_size` must be ≥ 1 (or None: the LLM width), got 0"),
        ({"flow_head_hidden_size": -5}, "`flow_head_hidden_size` must be ≥ 1"),
        ({"projector_hidden_act": "bogus"}, "`projector_hidden_act` 'bogus' is not an activation transformers knows"),
        ({"image_token_id": 5000}, "`image_token_id` must be a token id in [0, 1024)"),
        ({"pad_token_id": -1}, "`pad_token_id` must be a token id in [0, 1024)"),
        ({"video_token_id": 1014}, "The special token ids must be distinct"),
        ({"flow_logit_mean": float("nan")}, "`flow_logit_mean` must be a finite number, got nan"),  # trained NaNs
        ({"flow_logit_std": 0.0}, "`flow_logit_std` must be > 0 (the logit-normal's spread), got 0.0"),
        ({"flow_max_shift": float("inf")}, "`flow_max_shift` must be a finite number, got inf"),
        ({"flow_max_mu": float("nan")}, "`flow_max_mu` must be a finite number, got nan"),
        ({"lm_loss_weight": -1.0}, "`lm_loss_weight` must be a finite number ≥ 0, got -1.0"),
        ({"flow_loss_weight": float("inf")}, "`flow_loss_weight` must be a finite number ≥ 0, got inf"),
    ],
)  # fmt: skip
def test_config_refuses_values_that_would_fail_later(overrides, message):
    """Values that only failed inside `forward` or the model's construction (or silently, as a zero width did) are
    refused with the config, naming the field."""
    with pytest.raises(StrictDataclassClassValidationError, match=re.escape(message)):
        HydraXConfig.from_preset("tiny", **overrides)


def test_flow_head_hidden_size_is_kept_when_given():
    """A given `flow_head_hidden_size` sets the flow head's width; without it the head takes the LLM's width."""
    config = HydraXConfig.from_preset("tiny", flow_head_hidden_size=48)
    assert config.flow_head_hidden_size == 48
    head = HydraXForConditionalGeneration(config).model.flow_head
    assert head.input_proj.out_features == 48 and head.out_proj.in_features == 48
    assert HydraXConfig.from_preset("tiny").flow_head_hidden_size == 64


def test_training_defaults_of_the_config():
    """The default training mix: 10 % text dropout, 5 % source dropout, image-to-video half the time, 1 : 1 losses."""
    config = HydraXConfig.from_preset("tiny")
    assert (config.text_dropout_prob, config.source_dropout_prob, config.image_to_video_prob) == (0.1, 0.05, 0.5)
    assert (config.lm_loss_weight, config.flow_loss_weight) == (1.0, 1.0)


def test_hydrax_1_5b_preset_text_config_is_qwen2_5_1_5b():
    """The 1.5B preset's LLM has Qwen2.5-1.5B's context (131,072 positions), heads and rope θ."""
    text = HydraXConfig.from_preset("hydrax-1.5b").text_config
    assert text.max_position_embeddings == 131072
    assert (text.num_attention_heads, text.num_key_value_heads, text.num_hidden_layers) == (12, 2, 28)
    assert text.rope_parameters["rope_theta"] == 1000000.0
    assert HydraXConfig.from_preset("hydrax-7b").text_config.max_position_embeddings == 32768


def test_preset_kwargs_are_a_deep_copy():
    """Changing the nested dicts `preset_kwargs` returns never changes the presets."""
    kwargs = preset_kwargs("tiny")
    kwargs["text_config"]["vocab_size"] = 7
    kwargs["vision_config"]["hidden_size"] = 7
    assert HYDRAX_PRESETS["tiny"]["text_config"]["vocab_size"] == 1024
    assert HydraXConfig.from_preset("tiny").vision_config.hidden_size == 32


def test_a_masked_call_after_an_unmasked_cached_call_continues_the_positions(model):
    """Positions from an attention mask are 0-based, as those without one: a masked continuation of an unmasked cached
    call equals the whole sequence at once."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        full = model(input_ids=ids, logits_to_keep=0).logits
        cache = DynamicCache(config=model.config.text_config)
        model(input_ids=ids[:, :4], cache=cache, use_cache=True)
        continued = model(
            input_ids=ids[:, 4:], attention_mask=torch.ones_like(ids), cache=cache, use_cache=True, logits_to_keep=0
        ).logits
    torch.testing.assert_close(continued, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_predict_velocity_accepts_one_scalar_time(model):
    """A 0-d flow time (as a diffusers loop's `sigma`) serves every row, like `[t] * rows`."""
    prompt = t2i_ids(model.config)[:, : -IMAGE_TOKENS - 1].repeat(2, 1)
    z = torch.randn(2, 8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prefix = model.prepare_generation_prefix(prompt)
        scalar = model.predict_velocity(z, torch.tensor(0.3), prefix)
        rows = model.predict_velocity(z, torch.tensor([0.3, 0.3]), prefix)
    assert torch.equal(scalar, rows)


def test_targets_of_interleaved_sizes_keep_their_samples_order(model):
    """Targets sized A, B, A in one batch (two size groups) give each sample its own velocity, as one by one."""
    config = model.config
    blocks = [[5, 6] + visual_block(config, tokens) for tokens in (IMAGE_TOKENS, 9, IMAGE_TOKENS)]
    length = max(len(block) for block in blocks)
    ids = torch.tensor([[config.pad_token_id] * (length - len(b)) + b for b in blocks])
    mask = (ids != config.pad_token_id).long()
    generator = torch.Generator().manual_seed(5)
    targets = [torch.randn(8, 1, *size, generator=generator) for size in ((2, 2), (3, 3), (2, 2))]
    noise = [torch.randn(target.shape, generator=generator) for target in targets]
    times = torch.tensor([0.3, 0.5, 0.7])
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, target_latents=targets, timesteps=times, noise=noise)
        for i, block in enumerate(blocks):
            alone = model(
                input_ids=torch.tensor([block]),
                target_latents=targets[i][None],
                timesteps=times[i : i + 1],
                noise=noise[i][None],
            )
            torch.testing.assert_close(both.velocity[i], alone.velocity[0], rtol=1e-4, atol=1e-5)


def test_image_to_video_anchoring_is_for_training_only():
    """In eval mode (validation losses), `image_to_video_prob` anchors no frame: the first frame stays a target."""
    model = tiny_hydrax(image_to_video_prob=1.0)
    ids = torch.tensor([[5, 6] + visual_block(model.config, 3 * IMAGE_TOKENS, video=True)])
    z0 = torch.randn(1, 8, 3, 2, 2)
    noise = torch.randn(z0.shape)
    other = noise.clone()
    other[:, :, 0] = torch.randn(other[:, :, 0].shape)
    losses = []
    with torch.no_grad():
        for n in (noise, other):
            torch.manual_seed(0)  # the same flow time for both
            losses.append(model(input_ids=ids, target_latents=z0, noise=n).flow_loss)
    assert not torch.equal(*losses)
