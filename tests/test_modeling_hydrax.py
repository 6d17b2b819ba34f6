"""Hydra-X unified model: loading routes, attention pattern, gradients, cached sampling path, batching, presets."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import tiny_hydrax, visual_block
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageTextToText

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration
from modeling_hydrax.modeling_hydrax import HYDRAX_FROZEN_MODULES


IMAGE_TOKENS = 4  # a 32×32 image: 2×2 latent tokens


@pytest.fixture(scope="module")
def model():
    return tiny_hydrax()


def image(batch=1, frames=None, size=32):
    shape = (batch, 3, size, size) if frames is None else (batch, 3, frames, size, size)
    return torch.rand(shape) * 2 - 1


def t2i_ids(config, prompt=(5, 6, 7)):
    return torch.tensor([list(prompt) + visual_block(config, IMAGE_TOKENS)])


def edit_ids(config):
    return torch.tensor([[5] + visual_block(config, IMAGE_TOKENS) + [6, 7] + visual_block(config, IMAGE_TOKENS)])


def understanding_ids(config):
    return torch.tensor([[5] + visual_block(config, IMAGE_TOKENS) + [6, 7, 8]])


def fixed_noise(model, z_shape, batch):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, generator=generator), torch.randn(z_shape, generator=generator)


def test_understanding_generation_and_edit_outputs(model):
    config = model.config
    with torch.no_grad():
        ids = understanding_ids(config)
        out = model(input_ids=ids, pixel_values=image(), labels=ids)
        assert out.logits is None, "a labelled batch computes logits only for its loss"
        assert out.flow_loss is None and out.loss == out.lm_loss
        full = (1, ids.shape[1], config.text_config.vocab_size)
        assert model(input_ids=ids, pixel_values=image()).logits.shape == full
        assert model(input_ids=ids, pixel_values=image(), labels=ids, logits_to_keep=0).logits.shape == full
        assert model(input_ids=ids, pixel_values=image(), logits_to_keep=torch.tensor([0, 3])).logits.shape[1] == 2
        gen = model(input_ids=t2i_ids(config), target_pixel_values=image(), labels=t2i_ids(config))
        assert gen.velocity.shape == (1, 8, 1, 2, 2)
        torch.testing.assert_close(gen.loss, gen.lm_loss + gen.flow_loss)
        video_ids = torch.tensor([[5, 6] + visual_block(config, 3 * IMAGE_TOKENS, video=True)])
        video = model(input_ids=video_ids, target_pixel_values=image(frames=9))
        assert video.velocity.shape == (1, 8, 3, 2, 2)
        edit = model(input_ids=edit_ids(config), target_pixel_values=image(), source_pixel_values=image())
        assert torch.isfinite(edit.flow_loss)


def test_save_and_auto_load_round_trip(model, tmp_path):
    model = tiny_hydrax()
    with torch.no_grad():  # trained-looking flow-head modulations: loading must not re-apply AdaLN-Zero
        for block in model.model.flow_head.blocks:
            block.modulation.weight.normal_(std=0.02)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"].endswith("HydraXForConditionalGeneration")
    for name in (
        "configuration_hydrax.py",
        "configuration_hydrax_tok.py",
        "modeling_hydrax.py",
        "modeling_hydrax_tok.py",
    ):
        assert (tmp_path / name).is_file(), name
    for loader in (AutoModel, AutoModelForImageTextToText, HydraXForConditionalGeneration):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is HydraXForConditionalGeneration
        with torch.no_grad():
            t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
            kwargs = dict(input_ids=t2i_ids(model.config), timesteps=t, noise=noise, logits_to_keep=0)
            torch.manual_seed(1)
            kwargs["target_pixel_values"] = image()
            a, b = model(**kwargs), loaded(**kwargs)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.velocity, b.velocity)


def test_remote_code_route_matches_installed(model, tmp_path):
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    config = model.config
    t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
    inputs = {"input_ids": t2i_ids(config), "target_pixel_values": image(), "timesteps": t, "noise": noise}
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        expected = model(**inputs, logits_to_keep=0)
    script = textwrap.dedent(
        f"""
        import sys, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert "modeling_hydrax" not in sys.modules and "processing_hydrax" not in sys.modules
        as_vlm = AutoModelForImageTextToText.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(as_vlm).__name__ == "HydraXForConditionalGeneration"
        as_any = AutoModelForMultimodalLM.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(as_any).__name__ == "HydraXForConditionalGeneration"
        inputs = load_file({str(tmp_path / "inputs.safetensors")!r})
        preset = type(model.config).from_preset("tiny")  # presets ship with the remote code
        assert preset.text_config.vocab_size == model.config.text_config.vocab_size
        assert preset.vision_config.hidden_size == model.config.vision_config.hidden_size
        with torch.no_grad():
            out = model(**inputs, logits_to_keep=0)
        save_file({{"logits": out.logits, "velocity": out.velocity}}, {str(tmp_path / "out.safetensors")!r})
        print(type(model).__module__)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout
    remote = load_file(tmp_path / "out.safetensors")
    # Same code, but the child may run with another thread count, which reorders float reductions.
    torch.testing.assert_close(remote["logits"], expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(remote["velocity"], expected.velocity, rtol=1e-5, atol=1e-5)


def test_eager_matches_sdpa(model):
    config = HydraXConfig.from_preset("tiny")
    eager = HydraXForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    sdpa = HydraXForConditionalGeneration._from_config(HydraXConfig.from_preset("tiny"), attn_implementation="sdpa")
    sdpa.eval()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config.text_config._attn_implementation == "eager"
    assert sdpa.config.text_config._attn_implementation == "sdpa"
    t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
    pixels, source = image(), image()
    with torch.no_grad():
        for kwargs in (
            dict(input_ids=understanding_ids(config), pixel_values=pixels),
            dict(input_ids=edit_ids(config), target_pixel_values=pixels, source_pixel_values=source),
        ):
            a = eager(**kwargs, timesteps=t, noise=noise)
            b = sdpa(**kwargs, timesteps=t, noise=noise)
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)
            if a.velocity is not None:
                torch.testing.assert_close(a.velocity, b.velocity, rtol=1e-4, atol=1e-5)


def test_per_submodel_attention_implementation():
    config = HydraXConfig.from_preset("tiny")
    model = HydraXForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": "eager", "vision_config": "sdpa", "": "sdpa"}
    )
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "sdpa"


def _hidden(model, ids, embeds, mask):
    with torch.no_grad():
        return model.model(input_ids=ids, generation_embeds=embeds, generation_mask=mask).last_hidden_state


def test_attention_pattern_by_perturbation(model):
    config = model.config
    ids = torch.tensor([[5, 6] + visual_block(config, IMAGE_TOKENS) + [7, 8]])
    mask = ids == config.image_token_id
    embeds = torch.randn(1, IMAGE_TOKENS, config.text_config.hidden_size)
    base = _hidden(model, ids, embeds, mask)
    changed_last = embeds.clone()
    changed_last[:, -1] += 1.0
    after = _hidden(model, ids, changed_last, mask)
    positions = mask[0].nonzero().flatten()
    first, last = positions[0], positions[-1]
    assert torch.equal(base[:, :first], after[:, :first]), "text before a visual block must ignore it"
    assert not torch.allclose(base[:, first], after[:, first]), "the block's first token must see its last token"
    assert not torch.allclose(base[:, last + 1 :], after[:, last + 1 :]), "text after the block sees it"
    text_ids = ids.clone()
    text_ids[0, -1] = 9
    later_text = _hidden(model, text_ids, embeds, mask)
    assert torch.equal(base[:, : last + 2], later_text[:, : last + 2]), "text stays causal"


def test_noisy_target_never_leaks_into_earlier_text(model):
    config = model.config
    ids = t2i_ids(config)
    with torch.no_grad():
        a = model(input_ids=ids, target_pixel_values=image(), timesteps=torch.tensor([0.5]), logits_to_keep=0)
        b = model(input_ids=ids, target_pixel_values=image(), timesteps=torch.tensor([0.9]), logits_to_keep=0)
    start = int((ids[0] == config.vision_start_token_id).nonzero()[0])
    assert torch.equal(a.logits[:, : start + 1], b.logits[:, : start + 1])
    assert not torch.allclose(a.velocity, b.velocity)


TASKS = ["understanding", "generation", "video_generation", "editing"]


def _task_inputs(config, task):
    if task == "understanding":
        ids = understanding_ids(config)
        return dict(input_ids=ids, pixel_values=image(), labels=ids)
    if task == "generation":
        return dict(input_ids=t2i_ids(config), target_pixel_values=image(), labels=t2i_ids(config))
    if task == "video_generation":
        ids = torch.tensor([[5, 6] + visual_block(config, 3 * IMAGE_TOKENS, video=True) + [7]])
        return dict(input_ids=ids, target_pixel_values=image(frames=9), labels=ids)
    return dict(
        input_ids=edit_ids(config), target_pixel_values=image(), source_pixel_values=image(), labels=edit_ids(config)
    )


def open_adaln_gates(model):
    """A fresh flow head's AdaLN-Zero gates are closed, so its block MLPs get no gradient until the first step
    opens them; open them as training does, so every path carries gradient."""
    with torch.no_grad():
        head = model.model.flow_head
        for modulation in [*(block.modulation for block in head.blocks), head.final_modulation]:
            for param in modulation.parameters():
                param.normal_(std=0.02)


@pytest.mark.parametrize("task", TASKS)
def test_gradients_reach_every_trainable_module(task):
    model = tiny_hydrax(text_dropout_prob=0.0, source_dropout_prob=0.0).train()
    open_adaln_gates(model)
    out = model(**_task_inputs(model.config, task))
    out.loss.backward()
    unused = ("model.flow_head", "model.timestep_embedding") if task == "understanding" else ()
    for name, param in model.named_parameters():
        if name.startswith(HYDRAX_FROZEN_MODULES):
            assert param.grad is None, f"{task}: frozen {name} got a gradient"
        elif name.startswith(unused):  # zero, yet present: every process of a data-parallel run reduces it
            assert param.grad is not None and not param.grad.any(), f"{task}: {name} is not part of this task"
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{task}: no gradient for {name}"


@pytest.mark.parametrize("task", ["generation", "video_generation", "image_to_video", "editing"])
def test_cached_velocity_equals_uncached(model, task):
    config = model.config
    inputs = _task_inputs(config, "video_generation" if task == "image_to_video" else task)
    inputs.pop("labels")
    ids = inputs["input_ids"]
    with torch.no_grad():
        z0 = model.model.encode_latents(inputs.pop("target_pixel_values"))
        t, noise = fixed_noise(model, z0.shape, 1)
        frame_t = t.view(-1, 1, 1, 1, 1)
        if task == "image_to_video":  # per-frame times, the anchor clean
            t = torch.cat([torch.zeros(1, 1), t[:, None].repeat(1, z0.shape[2] - 1)], dim=1)
            frame_t = t.view(1, 1, -1, 1, 1)
        full = model(**inputs, target_latents=z0, timesteps=t, noise=noise).velocity
        start = int((ids[0] == config.vision_start_token_id).nonzero()[-1])
        prefix = model.prepare_generation_prefix(
            ids[:, : start + 1], source_pixel_values=inputs.get("source_pixel_values")
        )
        noisy = (1 - frame_t) * z0 + frame_t * noise
        first = model.predict_velocity(noisy, t, prefix)
        second = model.predict_velocity(noisy, t, prefix)
    torch.testing.assert_close(first, full, rtol=1e-4, atol=1e-5)
    assert torch.equal(first, second), "the prefix must be left unchanged by a step"
    assert prefix.cache.get_seq_length() == start + 1


def test_steps_only_read_the_prefix_so_threads_can_share_it(model):
    """A step never writes the prompt's LLM cache (it used to append and restore it, so a second thread on the same
    prefix read the first's keys); an unpadded prompt's steps run without a mask, equal to the masked ones."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    ids = t2i_ids(model.config)
    prompt = torch.cat([ids, model.unconditional_input_ids(ids)])[:, : ids.shape[1] - IMAGE_TOKENS - 1]
    with torch.no_grad():
        prefix = model.prepare_generation_prefix(prompt)
        keys = [layer.keys for layer in prefix.cache.layers]
        latents = [torch.randn(1, 8, 1, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(6)]
        t = torch.tensor([0.7])
        sequential = [model.predict_velocity(z, t, prefix) for z in latents]
        with ThreadPoolExecutor(3) as pool:
            threaded = list(pool.map(lambda z: model.predict_velocity(z, t, prefix), latents))
        masked = model.predict_velocity(latents[0], t, dataclasses.replace(prefix, unpadded=False))
    assert prefix.unpadded and all(layer.keys is key for layer, key in zip(prefix.cache.layers, keys))
    assert all(torch.equal(a, b) for a, b in zip(threaded, sequential))
    torch.testing.assert_close(masked, sequential[0], rtol=1e-5, atol=1e-6)


def _video_target(model):
    inputs = _task_inputs(model.config, "video_generation")
    inputs.pop("labels")
    with torch.no_grad():
        z0 = model.model.encode_latents(inputs.pop("target_pixel_values"))
    return inputs, z0, torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))


def test_per_frame_times_equal_one_time_per_target(model):
    inputs, z0, noise = _video_target(model)
    t = torch.tensor([0.6])
    with torch.no_grad():
        one = model(**inputs, target_latents=z0, timesteps=t, noise=noise)
        per_frame = model(**inputs, target_latents=z0, timesteps=t[:, None].repeat(1, z0.shape[2]), noise=noise)
    torch.testing.assert_close(per_frame.velocity, one.velocity, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_frame.flow_loss, one.flow_loss, rtol=1e-5, atol=1e-6)


def test_a_frame_at_time_zero_is_clean_context_out_of_the_loss(model):
    inputs, z0, noise = _video_target(model)
    other = noise.clone()
    other[:, :, 0] = torch.randn(other[:, :, 0].shape)
    anchored = torch.tensor([[0.0, 0.7, 0.7]])
    with torch.no_grad():
        out = model(**inputs, target_latents=z0, timesteps=anchored, noise=noise)
        moved = model(**inputs, target_latents=z0, timesteps=anchored, noise=other)
        noisy_first = [
            model(**inputs, target_latents=z0, timesteps=torch.tensor([[0.3, 0.7, 0.7]]), noise=n).flow_loss
            for n in (noise, other)
        ]
    assert torch.equal(out.velocity, moved.velocity) and torch.equal(out.flow_loss, moved.flow_loss)
    expected = (out.velocity - (noise - z0))[:, :, 1:].square().mean()
    torch.testing.assert_close(out.flow_loss, expected, rtol=1e-6, atol=0)
    assert not torch.equal(*noisy_first), "a noisy first frame is a target"


def test_per_frame_times_for_targets_of_different_frame_counts(model):
    """A video and an image in one batch: explicit times as a list, one per target, each `[F]` or `[]`; a target (or
    frame) at t = 0 is out of the loss however its time is shaped."""
    config = model.config
    video_ids = [5, 6] + visual_block(config, 3 * IMAGE_TOKENS, video=True)
    image_ids = [5, 6] + visual_block(config, IMAGE_TOKENS)
    pad = [config.pad_token_id] * (len(video_ids) - len(image_ids))
    ids = torch.tensor([video_ids, pad + image_ids])
    mask = (ids != config.pad_token_id).long()
    generator = torch.Generator().manual_seed(4)
    targets = [torch.randn(8, 3, 2, 2, generator=generator), torch.randn(8, 1, 2, 2, generator=generator)]
    noise = [torch.randn(target.shape, generator=generator) for target in targets]
    times = [torch.tensor([0.0, 0.4, 0.4]), torch.tensor(0.7)]
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, target_latents=targets, timesteps=times, noise=noise)
        alone = [
            model(
                input_ids=ids[i : i + 1, mask[i].argmax() :],
                target_latents=targets[i][None],
                timesteps=t[None],
                noise=noise[i][None],
            )
            for i, t in enumerate(times)
        ]
        for i in range(2):
            torch.testing.assert_close(both.velocity[i], alone[i].velocity[0], rtol=1e-4, atol=1e-5)
        clean = [
            model(input_ids=ids[1:], target_latents=targets[1][None], timesteps=t, noise=noise[1][None]).flow_loss
            for t in (torch.tensor([0.0]), torch.tensor([[0.0]]))
        ]
    assert clean == [0.0, 0.0], "a target at t = 0 has nothing to predict"
    video_elements, image_elements = 2 * 8 * 4, 8 * 4  # the video's two noisy frames, the image
    expected = (alone[0].flow_loss * video_elements + alone[1].flow_loss * image_elements) / (
        video_elements + image_elements
    )
    torch.testing.assert_close(both.flow_loss, expected, rtol=1e-4, atol=1e-6)


def test_bf16_targets_are_noised_at_the_time_the_model_is_told(model):
    z0, noise = torch.randn(1, 8, 1, 2, 2).bfloat16(), torch.randn(1, 8, 1, 2, 2).bfloat16()
    (group,) = model._noised_targets(z0, True, None, None, torch.tensor([0.7]), noise)
    expected = (0.3 * z0.float() + 0.7 * noise.float()).bfloat16()  # not with t rounded to bf16's 0.69921875
    assert group.noisy.dtype == torch.bfloat16 and torch.equal(group.noisy, expected)


def test_timesteps_of_the_wrong_shape_are_a_clear_error(model):
    inputs, z0, noise = _video_target(model)
    with pytest.raises(ValueError, match=r"`timesteps` must be \[1\] .* or \[1, 3\] .* got \(1, 2\)"):
        model(**inputs, target_latents=z0, timesteps=torch.rand(1, 2), noise=noise)
    ids = inputs["input_ids"]
    start = int((ids[0] == model.config.vision_start_token_id).nonzero()[-1])
    with torch.no_grad(), pytest.raises(ValueError, match=r"got \(2,\)"):
        model.predict_velocity(z0, torch.rand(2), model.prepare_generation_prefix(ids[:, : start + 1]))
    image_prefix = model.prepare_generation_prefix(t2i_ids(model.config)[:, : -IMAGE_TOKENS - 1])
    with torch.no_grad(), pytest.raises(ValueError, match=r"\[1, 1\] \(one per latent frame\)"):
        model.predict_velocity(torch.randn(1, 8, 2, 2), torch.rand(1, 2), image_prefix)  # [B, C, h, w]: h is no frame


def test_image_to_video_prob_anchors_video_targets_while_training():
    def losses(model, inputs, z0, noise, other):
        out = []
        for n in (noise, other):
            torch.manual_seed(0)  # the same flow times and draws for both
            out.append(model(**inputs, target_latents=z0, noise=n).flow_loss)
        return out

    for probability, anchored in ((1.0, True), (0.0, False)):
        model = tiny_hydrax(text_dropout_prob=0.0, image_to_video_prob=probability).train()
        inputs, z0, noise = _video_target(model)
        other = noise.clone()
        other[:, :, 0] = torch.randn(other[:, :, 0].shape)
        first, second = losses(model, inputs, z0, noise, other)
        assert torch.equal(first, second) == anchored, f"image_to_video_prob={probability}"
    image_inputs = dict(input_ids=t2i_ids(model.config))
    model.config.image_to_video_prob = 1.0
    z0 = torch.randn(1, 8, 1, 2, 2)
    first, second = losses(model, image_inputs, z0, torch.randn(z0.shape), torch.randn(z0.shape))
    assert not torch.equal(first, second), "an image target has no anchor to keep clean"
    with pytest.raises(StrictDataclassClassValidationError, match=r"`image_to_video_prob` must lie in \[0, 1\]"):
        HydraXConfig.from_preset("tiny", image_to_video_prob=1.5)


def test_cached_editing_needs_a_temporally_causal_tokenizer():
    model = tiny_hydrax()
    model.config.vision_config.attention_mode = "full"  # the ablation: the source's features would see the target
    ids = edit_ids(model.config)
    start = int((ids[0] == model.config.vision_start_token_id).nonzero()[-1])
    with torch.no_grad(), pytest.raises(ValueError, match="Cached editing needs a temporally causal tokenizer"):
        model.prepare_generation_prefix(ids[:, : start + 1], source_pixel_values=image())


def test_batched_cfg_prefix_matches_separate_prefixes(model):
    config = model.config
    ids = t2i_ids(config)
    uncond = model.unconditional_input_ids(ids)
    assert torch.equal(uncond[0, -1 - IMAGE_TOKENS - 1 :], ids[0, -1 - IMAGE_TOKENS - 1 :])
    assert bool((uncond[0, :3] == config.pad_token_id).all())
    prompt = torch.cat([ids, uncond])[:, : ids.shape[1] - IMAGE_TOKENS - 1]
    with torch.no_grad():
        z = torch.randn(1, 8, 1, 2, 2)
        t = torch.tensor([0.4])
        both = model.predict_velocity(z.repeat(2, 1, 1, 1, 1), t.repeat(2), model.prepare_generation_prefix(prompt))
        cond = model.predict_velocity(z, t, model.prepare_generation_prefix(prompt[:1]))
        free = model.predict_velocity(z, t, model.prepare_generation_prefix(prompt[1:]))
    torch.testing.assert_close(both, torch.cat([cond, free]), rtol=1e-4, atol=1e-5)


def test_batch_equals_items_one_by_one(model):
    config = model.config
    pad = config.pad_token_id
    short = [5, 6] + visual_block(config, IMAGE_TOKENS)
    long = [5, 6, 7, 8, 9] + visual_block(config, IMAGE_TOKENS)
    ids = torch.tensor([[pad] * 3 + short, long])
    mask = torch.tensor([[0] * 3 + [1] * len(short), [1] * len(long)])
    z0 = torch.randn(2, 8, 1, 2, 2)
    t, noise = fixed_noise(model, z0.shape, 2)
    with torch.no_grad():
        batched = model(
            input_ids=ids, attention_mask=mask, target_latents=z0, timesteps=t, noise=noise, logits_to_keep=0
        )
        for i, item in enumerate((torch.tensor([short]), torch.tensor([long]))):
            single = model(
                input_ids=item,
                target_latents=z0[i : i + 1],
                timesteps=t[i : i + 1],
                noise=noise[i : i + 1],
                logits_to_keep=0,
            )
            torch.testing.assert_close(batched.velocity[i : i + 1], single.velocity, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                batched.logits[i : i + 1, -item.shape[1] :], single.logits, rtol=1e-4, atol=1e-4
            )


def test_generate_batched_left_padding_and_repeatable(model):
    config = model.config
    pad = config.pad_token_id
    first = [5] + visual_block(config, IMAGE_TOKENS) + [6]
    second = [5, 9, 9] + visual_block(config, IMAGE_TOKENS) + [7, 8]
    ids = torch.tensor([[pad] * 3 + first, second])
    mask = torch.tensor([[0] * 3 + [1] * len(first), [1] * len(second)])
    pixels = image(2)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad)
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **kwargs)
    again = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **kwargs)
    assert torch.equal(batched, again)
    for i, item in enumerate((first, second)):
        single = model.generate(input_ids=torch.tensor([item]), pixel_values=pixels[i : i + 1], **kwargs)
        assert torch.equal(batched[i, ids.shape[1] :], single[0, len(item) :])
    video_ids = torch.tensor([[5] + visual_block(config, 3 * IMAGE_TOKENS, video=True) + [6]])
    assert model.generate(input_ids=video_ids, pixel_values_videos=image(frames=9), **kwargs).shape == (
        1,
        video_ids.shape[1] + 6,
    )


def test_placeholder_count_mismatch_is_a_clear_error(model):
    config = model.config
    with pytest.raises(ValueError, match="3 image placeholder tokens but the image inputs give 4"):
        model(input_ids=torch.tensor([[5] + visual_block(config, 3)]), pixel_values=image())
    with pytest.raises(ValueError, match="must hold 4 placeholder tokens"):
        model(input_ids=torch.tensor([[5] + visual_block(config, 6)]), target_pixel_values=image())
    with pytest.raises(ValueError, match="visual placeholder block"):
        model(input_ids=torch.tensor([[5, 6]]), target_pixel_values=image())
    with pytest.raises(ValueError, match="Unknown preset"):
        HydraXConfig.from_preset("hydrax-70b")


def test_text_dropout_while_training():
    model = tiny_hydrax(text_dropout_prob=0.999999).train()
    ids = t2i_ids(model.config)
    fixed = dict(target_pixel_values=image(), timesteps=torch.tensor([0.5]), noise=torch.zeros(1, 8, 1, 2, 2))
    dropped = model(input_ids=ids, **fixed)
    model.config.text_dropout_prob = 0.0
    kept = model(input_ids=ids, **fixed)
    expected = model(input_ids=model.unconditional_input_ids(ids), **fixed)
    torch.testing.assert_close(dropped.velocity, expected.velocity)
    assert not torch.allclose(kept.velocity, expected.velocity)


def test_timestep_shift_follows_resolution(model):
    t = torch.full((1,), 0.5)
    assert model.shift_timesteps(t, 256).item() == pytest.approx(
        1 / (1 + torch.exp(torch.tensor(-0.5)).item()), rel=1e-5
    )
    assert model.shift_timesteps(t, 4096) > model.shift_timesteps(t, 256)
    samples = model.sample_timesteps(1000, 256, "cpu", generator=torch.Generator().manual_seed(0))
    assert bool(((samples > 0) & (samples < 1)).all())


def test_the_resolution_shift_is_bounded_for_long_videos(model):
    """diffusers' `calculate_shift` line up to `flow_max_mu`: a 257×512² video (66,560 tokens) would otherwise get a
    shift of 10⁵ and train at t ≈ 1 only."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert model.flow_shift_mu(4096) == pytest.approx(calculate_shift(4096))  # Flux's constants: 1024² is 1.15
    assert model.flow_shift_mu(5 * 32 * 32) == pytest.approx(calculate_shift(5 * 32 * 32))  # 17×512²: below the cap
    assert model.flow_shift_mu(65 * 32 * 32) == model.flow_shift_mu(10**6) == model.config.flow_max_mu == 2.0
    samples = model.sample_timesteps(10_000, 65 * 32 * 32, "cpu", generator=torch.Generator().manual_seed(0))
    assert 0.01 < float((samples < 0.5).float().mean()) < 0.2
    config = HydraXConfig.from_preset("tiny", flow_max_mu=None)
    assert HydraXForConditionalGeneration(config).flow_shift_mu(65 * 32 * 32) > 11
    constant = HydraXConfig.from_preset("tiny", flow_base_shift=2.5, flow_max_shift=2.5)  # above the bound: kept
    assert HydraXForConditionalGeneration(constant).flow_shift_mu(10**6) == 2.5
    message = "must exceed `flow_base_seq_len`.*flow_base_shift =="
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        HydraXConfig.from_preset("tiny", flow_max_seq_len=256)


def _expected_7b_parameters(config: HydraXConfig) -> int:
    """Parameter count implied by the spec, from layer formulas (independent of the module code)."""
    text, vision = config.text_config, config.vision_config
    h, kv = text.hidden_size, text.hidden_size // text.num_attention_heads * text.num_key_value_heads
    qwen_layer = h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * text.intermediate_size + 2 * h
    qwen = text.vocab_size * h * 2 + text.num_hidden_layers * qwen_layer + h
    d, m, c, p = vision.hidden_size, vision.intermediate_size, vision.latent_channels, vision.patch_size
    block = 4 * d * d + 4 * d + 4 * d + 2 * d * m + m + d
    patch = 2 * p * p * 3
    gen = patch * d + d + 256 * d + 13 * block + 2 * d * d + d + 2 * d + d * 2 * c + 2 * c
    sem = c * d + d + 14 * block + 2 * d
    dec = c * d + d + 256 * d + 27 * block + d * 2 * d + 2 * d + 2 * d + d * patch + patch
    projector = d * h + h + h * h + h
    temb = lambda width: 256 * width + width + width * width + width  # noqa: E731
    flow = h * h + h + temb(h) + 3 * (2 * (h * h + h) + h * 3 * h + 3 * h) + h * 2 * h + 2 * h + h * c + c
    return qwen + gen + sem + dec + projector + temb(h) + flow


def test_hydrax_7b_preset_on_meta_has_spec_parameter_count():
    config = HydraXConfig.from_preset("hydrax-7b")
    with torch.device("meta"):
        model = HydraXForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    print(f"hydrax-7b: {total:,} parameters ({llm:,} in Qwen2.5-7B, {total - llm:,} in vision + heads)")
    assert llm == 7_615_616_512, "Qwen2.5-7B-Instruct has 7,615,616,512 parameters"
    assert total == _expected_7b_parameters(config)
    assert not model.config.vision_config.use_decompressor


def test_device_map_auto_places_tiny_model(model, tmp_path):
    pytest.importorskip("accelerate")
    model.save_pretrained(tmp_path)
    from accelerate import infer_auto_device_map

    placed = AutoModel.from_pretrained(tmp_path, device_map="auto").eval()
    assert {p.device.type for p in placed.parameters()} == {"cpu"}
    budget = {"cpu": sum(p.numel() for p in model.parameters()) * 4 // 3, "disk": 10**12}
    device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=model._no_split_modules)
    assert set(device_map.values()) == {"cpu", "disk"}
    for key in device_map:
        assert ".self_attn" not in key and ".mlp" not in key, f"{key}: a no-split block was split"
    with torch.no_grad():
        out = placed(input_ids=understanding_ids(model.config), pixel_values=image())
    assert torch.isfinite(out.logits).all()


def test_gradient_checkpointing_gives_same_gradients():
    model = tiny_hydrax(text_dropout_prob=0.0, source_dropout_prob=0.0).train()
    open_adaln_gates(model)
    inputs = _task_inputs(model.config, "editing")
    t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
    model(**inputs, timesteps=t, noise=noise).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable()
    assert model.model.language_model.layers[0].gradient_checkpointing
    assert model.model.vision_tower.sem_vit.encoder.layers[0].gradient_checkpointing
    model(**inputs, timesteps=t, noise=noise).loss.backward()
    for name, param in model.named_parameters():
        if name in reference:
            torch.testing.assert_close(param.grad, reference[name], rtol=1e-4, atol=1e-6)


def test_reentrant_checkpointing_trains_lora_on_the_sem_vit_with_input_grads_enabled():
    """The QLoRA recipe (PEFT's `prepare_model_for_kbit_training`): `enable_input_require_grads` plus reentrant
    checkpointing. The tokenizer's input layer is Sem-ViT's `latent_proj`, so the adapters there get gradients,
    although the latents reach Sem-ViT without any."""
    from peft import LoraConfig, get_peft_model

    model = tiny_hydrax(text_dropout_prob=0.0).train()
    assert model.model.vision_tower.get_input_embeddings() is model.model.vision_tower.sem_vit.latent_proj
    targets = r".*(sem_vit|language_model).*\.(q_proj|v_proj)"
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    peft_model.enable_input_require_grads()
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    ids = understanding_ids(model.config)
    peft_model(input_ids=ids, pixel_values=image(), labels=ids).loss.backward()
    adapters = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    assert sum("sem_vit" in name for name in adapters) == 4 * len(model.model.vision_tower.sem_vit.encoder.layers)
    missing = [name for name, p in adapters.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_flow_head_starts_as_adaln_zero(model):
    head = model.model.flow_head
    hidden = torch.randn(2, IMAGE_TOKENS, model.config.text_config.hidden_size)
    t = torch.tensor([0.2, 0.9])
    condition = head.time_embedding(t)[:, None]
    x = head.input_proj(hidden)
    with torch.no_grad():
        for block in head.blocks:
            assert torch.equal(block(x, condition), x), "a fresh block must be an identity residual (closed gate)"
        expected = head.out_proj(head.final_norm(x)).transpose(1, 2).reshape(2, 8, 1, 2, 2)
        torch.testing.assert_close(head(hidden, t, (2, 8, 1, 2, 2)), expected)


def test_config_never_changes_the_callers_tokenizer_config(tmp_path):
    from conftest import tiny_tok_config

    from modeling_hydrax import HydraXTokModel

    tokenizer = HydraXTokModel(tiny_tok_config(use_decompressor=True))
    config = HydraXConfig.from_preset("tiny", vision_config=tokenizer.config)
    assert not config.vision_config.use_decompressor and tokenizer.config.use_decompressor
    tokenizer.save_pretrained(tmp_path)
    reloaded = HydraXTokModel.from_pretrained(tmp_path)
    assert reloaded.decompressor is not None, "the Decompressor's weights must survive a save after HydraXConfig"
    for (name, saved), (_, loaded) in zip(tokenizer.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(saved, loaded), name


@pytest.mark.parametrize("where", ["top", "text_config"])
def test_tie_word_embeddings_is_kept_from_either_level(where, tmp_path):
    """Tied when the top level or the text config says so, as Qwen2.5-VL and LLaVA read it: the top-level setting was
    overwritten by the text config's False, silently untying the model."""
    preset = HydraXConfig.from_preset("tiny")
    text = {**preset.text_config.to_dict(), "tie_word_embeddings": where == "text_config"}
    config = HydraXConfig.from_preset("tiny", text_config=text, tie_word_embeddings=where == "top")
    assert config.tie_word_embeddings and config.text_config.tie_word_embeddings
    model = HydraXForConditionalGeneration(config)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    reloaded = HydraXForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is reloaded.model.language_model.embed_tokens.weight


def test_skip_keys_device_placement_names_whole_keys(model):
    assert model._skip_keys_device_placement == {"cache"}, "a string would become a set of its characters"


def test_target_latents_accept_images_without_a_frame_axis(model):
    ids = t2i_ids(model.config)
    z0 = torch.randn(1, 8, 1, 2, 2)
    t, noise = fixed_noise(model, z0.shape, 1)
    with torch.no_grad():
        five = model(input_ids=ids, target_latents=z0, timesteps=t, noise=noise)
        four = model(input_ids=ids, target_latents=z0[:, :, 0], timesteps=t, noise=noise)
        assert torch.equal(five.velocity, four.velocity) and torch.equal(five.flow_loss, four.flow_loss)
        with pytest.raises(ValueError, match=r"`target_latents` must be \[B, 8, frames, h, w\] .*, got \(1, 3, 2, 2"):
            model(input_ids=ids, target_latents=torch.randn(1, 3, 2, 2))


def test_text_dropout_removes_dropped_tokens_from_the_lm_loss():
    model = tiny_hydrax(text_dropout_prob=0.999999).train()
    ids = t2i_ids(model.config, prompt=(5, 6, 7, 8, 9))
    fixed = dict(target_pixel_values=image(), timesteps=torch.tensor([0.5]), noise=torch.zeros(1, 8, 1, 2, 2))
    dropped = model(input_ids=ids, labels=ids, **fixed)
    model.config.text_dropout_prob = 0.0
    uncond = model.unconditional_input_ids(ids)
    expected = model(input_ids=uncond, labels=ids.masked_fill(uncond != ids, -100), **fixed)
    leaky = model(input_ids=uncond, labels=ids, **fixed)
    torch.testing.assert_close(dropped.lm_loss, expected.lm_loss)
    assert not torch.allclose(dropped.lm_loss, leaky.lm_loss), "pads must not learn to predict the caption"
    caption_only = torch.full_like(ids, -100)
    caption_only[0, :5] = ids[0, :5]
    model.config.text_dropout_prob = 0.999999
    nothing_left = model(input_ids=ids, labels=caption_only, **fixed)
    assert nothing_left.lm_loss == 0 and torch.isfinite(nothing_left.loss)
    nothing_left.loss.backward()


def test_lm_head_runs_only_where_needed(model):
    config = model.config
    ids = t2i_ids(config)
    fixed = dict(target_pixel_values=image(), timesteps=torch.tensor([0.5]), noise=torch.randn(1, 8, 1, 2, 2))
    rows = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            labelled = model(input_ids=ids, labels=ids, **fixed)
            assert rows == [4], "3 prompt tokens predict the next one and the last target token predicts vision_end"
            model(input_ids=ids, **fixed)
            assert rows == [4], "a generation batch without labels needs no logits"
            full = model(input_ids=ids, labels=ids, logits_to_keep=0, **fixed)
    finally:
        handle.remove()
    masked = ids.masked_fill(model.model.visual_block_ids(ids) >= 0, -100)
    reference = model.loss_function(logits=full.logits, labels=masked, vocab_size=config.text_config.vocab_size)
    torch.testing.assert_close(labelled.lm_loss, reference)
    torch.testing.assert_close(full.lm_loss, reference)


def test_guidance_branches_share_one_sem_vit_pass(model):
    config = model.config
    ids = t2i_ids(config)
    prompt = torch.cat([ids, model.unconditional_input_ids(ids)])[:, : ids.shape[1] - IMAGE_TOKENS - 1]
    z, t = torch.randn(1, 8, 1, 2, 2), torch.tensor([0.4])
    passes = []
    handle = model.model.vision_tower.sem_vit.register_forward_hook(lambda *args: passes.append(1))
    try:
        with torch.no_grad():
            prefix = model.prepare_generation_prefix(prompt)
            shared = model.predict_velocity(z, t, prefix)
            assert len(passes) == 1, "one Sem-ViT pass for both branches"
            repeated = model.predict_velocity(z.repeat(2, 1, 1, 1, 1), t.repeat(2), prefix)
            with pytest.raises(ValueError, match="The prefix has 2 rows, not a multiple of the 3 noisy latents"):
                model.predict_velocity(z.repeat(3, 1, 1, 1, 1), t.repeat(3), prefix)
    finally:
        handle.remove()
    torch.testing.assert_close(shared, repeated)
    edit = edit_ids(config)[:, : -IMAGE_TOKENS - 1]
    with torch.no_grad():
        edit_prefix = model.prepare_generation_prefix(edit.repeat(2, 1), source_pixel_values=image(2))
        torch.testing.assert_close(
            model.predict_velocity(z, t, edit_prefix),
            model.predict_velocity(z.repeat(2, 1, 1, 1, 1), t.repeat(2), edit_prefix),
        )


def test_source_dropout_trains_the_null_image_branch():
    model = tiny_hydrax(text_dropout_prob=0.0, source_dropout_prob=0.999999).train()
    inputs = dict(input_ids=edit_ids(model.config), target_pixel_values=image(), timesteps=torch.tensor([0.5]))
    inputs["noise"] = torch.randn(1, 8, 1, 2, 2)
    source = image()
    dropped = model(**inputs, source_pixel_values=source)
    model.config.source_dropout_prob = 0.0
    null = model(**inputs, source_pixel_values=torch.zeros_like(source))
    kept = model(**inputs, source_pixel_values=source)
    torch.testing.assert_close(dropped.velocity, null.velocity)
    assert not torch.allclose(kept.velocity, null.velocity)
    with pytest.raises(StrictDataclassClassValidationError, match=r"`source_dropout_prob` must lie in \[0, 1\)"):
        HydraXConfig.from_preset("tiny", source_dropout_prob=1.0)


def test_trainer_keeps_dividing_by_gradient_accumulation(model):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    assert model.accepts_loss_kwargs is False and not trainer.model_accepts_loss_kwargs


# ---------------------------------------------------------------- plausible mistakes at the call boundaries
def test_bad_generation_inputs_are_named_up_front(model):
    """Each mistake gets an error naming the argument, where it used to crash deep inside, blame another argument or
    silently compute something else."""
    config, ids = model.config, t2i_ids(model.config)
    prompt = ids[:, : -IMAGE_TOKENS - 1]  # ends with the target's <|vision_start|>
    z0 = torch.randn(1, 8, 1, 2, 2)
    with torch.no_grad():
        with pytest.raises(TypeError, match="uint8"):  # [0, 255] pixels were converted to float and encoded
            model.get_image_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"σ in \[0, 1\].*scheduler.sigmas"):  # σ·1000 from a diffusers loop
            model.predict_velocity(z0, torch.tensor([667.0]), model.prepare_generation_prefix(prompt))
        with pytest.raises(ValueError, match=r"σ in \[0, 1\]"):  # t < 0 counted as clean context: flow loss 0
            model(input_ids=ids, target_latents=z0, timesteps=torch.tensor([-0.5]))
        with pytest.raises(ValueError, match=r"`noise` must match the target latents: \(1, 8, 1, 2, 2\)"):
            model(input_ids=ids, target_latents=z0, noise=torch.randn(1, 8, 2, 2, 2))
        noise = torch.randn(1, 8, 2, 2)  # an image's noise without a frame axis, as its latents may be given
        torch.testing.assert_close(
            model(input_ids=ids, target_latents=z0, timesteps=torch.tensor([0.5]), noise=noise).velocity,
            model(input_ids=ids, target_latents=z0, timesteps=torch.tensor([0.5]), noise=noise[:, :, None]).velocity,
        )
        with pytest.raises(ValueError, match="`target_mask` must have the shape of the tokens"):
            model(input_ids=ids, target_latents=z0, target_mask=torch.ones(1, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match="`target_latents` or `target_pixel_values`, not both"):
            model(input_ids=ids, target_latents=z0, target_pixel_values=image())
        for cut in (ids, ids[:, : -IMAGE_TOKENS - 2]):  # the whole prompt, or one token short of the target
            with pytest.raises(ValueError, match=r"must end with the generation target's `<\|vision_start\|>`"):
                model.prepare_generation_prefix(cut)
        right_padded = torch.cat([prompt, prompt.new_full((1, 1), config.pad_token_id)], dim=1)
        with pytest.raises(ValueError, match="pad on the left"):
            model.prepare_generation_prefix(right_padded, attention_mask=(right_padded != config.pad_token_id).long())
        edit_prompt = edit_ids(config)[:, : -IMAGE_TOKENS - 1].repeat(2, 1)  # CFG's two rows, the source once
        with pytest.raises(ValueError, match="1 sources for 2 prompt rows: give one per row"):
            model.prepare_generation_prefix(edit_prompt, source_pixel_values=image())
        source_prompt = edit_ids(config)[:, : -IMAGE_TOKENS - 1]  # its source block holds 2×2 placeholders
        with pytest.raises(ValueError, match=r"source gives 9 latent tokens \(3×3\).*hold \[4\] placeholders"):
            model.prepare_generation_prefix(source_prompt, source_pixel_values=image(size=48))
        with pytest.raises(ValueError, match=r"hold \[0\] placeholders"):  # a text-only prompt has no source block
            model.prepare_generation_prefix(prompt, source_pixel_values=image())
        edit_prefix = model.prepare_generation_prefix(source_prompt, source_pixel_values=image())
        with pytest.raises(ValueError, match="takes its source's latent grid, 2×2, got noisy latents of 3×3"):
            model.predict_velocity(torch.randn(1, 8, 1, 3, 3), torch.tensor([0.5]), edit_prefix)
        with pytest.raises(ValueError, match="latents"):  # [C, h, w]: named as latents, not as a row mismatch
            model.predict_velocity(torch.randn(8, 2, 2), torch.tensor(0.5), model.prepare_generation_prefix(prompt))
    # Without grids, beam search used to expand the inputs and silently drop the images beyond the placeholders
    beams = dict(num_beams=2, max_new_tokens=2, do_sample=False)
    with pytest.raises(ValueError, match="4 image placeholder tokens but the image inputs give 8 features"):
        model.generate(input_ids=understanding_ids(config), pixel_values=image(2), **beams)
    video_question = torch.tensor([[5] + visual_block(config, 3 * IMAGE_TOKENS, video=True) + [6]])  # 9 frames
    with pytest.raises(ValueError, match="12 video placeholder tokens but the video inputs give 24 features"):
        model.generate(input_ids=video_question, pixel_values_videos=image(2, frames=9), **beams)
    assert model.generate(input_ids=video_question, pixel_values_videos=image(1, frames=9), **beams).shape[0] == 1


def test_tokenizer_chunk_counts_and_forward_keywords(model):
    tokenizer, video = model.model.vision_tower, image(frames=9)
    with torch.no_grad():
        whole = tokenizer.encode(video).latents
        for count in (np.int64(1), torch.tensor(1)):  # integers of numpy and torch, as loops and configs give them
            torch.testing.assert_close(tokenizer.encode(video, chunk_frames=count).latents, whole, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="must be an int ≥ 1, got True"):
            tokenizer.encode(video, chunk_frames=True)
        with pytest.raises(TypeError, match=r"HydraXTokModel.forward\(\) got unexpected keyword argument\(s\)"):
            tokenizer(video, chunk_frames=1)


def test_another_models_checkpoint_is_refused_before_anything_is_built(tmp_path):
    """transformers only warned, then built the default configuration (13 B random parameters, killed for memory)."""
    from conftest import tiny_tok_config
    from transformers import Qwen2Config

    from modeling_hydrax import HydraXModel, HydraXTokModel

    HydraXTokModel(tiny_tok_config()).save_pretrained(tmp_path / "tok")
    for cls in (HydraXForConditionalGeneration, HydraXModel):
        with pytest.raises(ValueError, match=r"'hydrax_tok' checkpoint \(HydraXTokModel\), not a Hydra-X one"):
            cls.from_pretrained(tmp_path / "tok")
    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "qwen")
    with pytest.raises(ValueError, match="'qwen2' checkpoint.*its own class"):
        HydraXForConditionalGeneration.from_pretrained(tmp_path / "qwen")
    assert type(AutoModel.from_pretrained(tmp_path / "tok")) is HydraXTokModel
