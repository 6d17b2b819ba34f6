"""Training batches as a data mixture builds them with HydraXProcessor: multi-turn conversations whose earlier turns
hold images, and batches that mix understanding samples (no target) with text-to-image and editing samples."""

import numpy as np
import pytest
import torch
from conftest import tiny_hydrax, visual_block

from processing_hydrax import HydraXImageProcessor, HydraXProcessor, HydraXVideoProcessor, build_tiny_qwen2_tokenizer


SIZE = {"images_kwargs": {"size": {"min_pixels": 32 * 32, "max_pixels": 32 * 32}}}
TWO_SIZES = {"images_kwargs": {"size": {"min_pixels": 32 * 32, "max_pixels": 64 * 32}}}  # 32² and 64×32 stay as given


@pytest.fixture(scope="module")
def processor():
    return HydraXProcessor(HydraXImageProcessor(), build_tiny_qwen2_tokenizer(), HydraXVideoProcessor())


@pytest.fixture(scope="module")
def model():
    return tiny_hydrax()


def pictures(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def chat(processor, conversations, sizes=SIZE):
    return processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt", padding=True, processor_kwargs=sizes
    )


def fixed_flow(samples):
    generator = torch.Generator().manual_seed(0)
    return dict(timesteps=torch.rand(samples, generator=generator), noise=torch.randn(samples, 8, 1, 2, 2))


def understanding(image):
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]},
    ]


def text_to_image(image):
    return [
        {"role": "user", "content": [{"type": "text", "text": "Draw a cat"}]},
        {"role": "assistant", "content": [{"type": "image", "image": image}]},
    ]


def test_earlier_assistant_image_is_context_and_the_last_one_the_target(model, processor):
    first, second = pictures(2)
    conversation = text_to_image(first) + [
        {"role": "user", "content": [{"type": "text", "text": "Now make it darker"}]},
        {"role": "assistant", "content": [{"type": "image", "image": second}]},
    ]
    inputs = chat(processor, conversation)
    assert int(inputs["target_mask"].sum()) == 8, "the processor marks both assistant images"
    flow = fixed_flow(1)
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        out = model(**inputs, **flow)
        # The earlier image is the block right before the target and has its size: the target's edit source.
        explicit = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            target_pixel_values=pixels[1:],
            source_pixel_values=pixels[:1],
            **flow,
        )
    assert out.velocity.shape == (1, 8, 1, 2, 2)
    torch.testing.assert_close(out.velocity, explicit.velocity)
    torch.testing.assert_close(out.flow_loss, explicit.flow_loss)


def test_batch_mixing_understanding_and_generation_equals_each_sample_alone(model, processor):
    seen, drawn = pictures(2, seed=1)
    batch = chat(processor, [understanding(seen), text_to_image(drawn)])
    assert batch["target_mask"].sum(dim=1).tolist() == [0, 4]
    flow = fixed_flow(1)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        mixed = model(**batch, labels=labels, logits_to_keep=0, **flow)
        alone_understanding = model(**chat(processor, [understanding(seen)]), logits_to_keep=0)
        alone_generation = model(**chat(processor, [text_to_image(drawn)]), **flow)
    assert mixed.velocity.shape == (1, 8, 1, 2, 2), "only the generation sample has a target"
    torch.testing.assert_close(mixed.velocity, alone_generation.velocity, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.flow_loss, alone_generation.flow_loss, rtol=1e-4, atol=1e-6)
    rows = batch["attention_mask"][0].bool()
    torch.testing.assert_close(mixed.logits[0, rows], alone_understanding.logits[0], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(mixed.lm_loss)


def edit(source, result):
    return [
        {"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": "Make it red"}]},
        {"role": "assistant", "content": [{"type": "image", "image": result}]},
    ]


def test_batch_mixing_edits_text_to_image_and_understanding_equals_each_sample_alone(model, processor):
    images = pictures(6, seed=2)
    samples = [edit(images[0], images[1]), text_to_image(images[2]), understanding(images[3]), edit(*images[4:])]
    batch = chat(processor, samples)
    flow = fixed_flow(3)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        mixed = model(**batch, labels=labels, **flow)
        alone = [
            model(**chat(processor, [sample]), timesteps=flow["timesteps"][k : k + 1], noise=flow["noise"][k : k + 1])
            for k, sample in zip((0, 1, 2), (samples[0], samples[1], samples[3]))
        ]
        edits_only = model(**chat(processor, samples[::3]), timesteps=flow["timesteps"][::2], noise=flow["noise"][::2])
    assert mixed.velocity.shape == (3, 8, 1, 2, 2), "one target per generation sample, in batch order"
    for k, single in enumerate(alone):
        torch.testing.assert_close(mixed.velocity[k : k + 1], single.velocity, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.flow_loss, sum(s.flow_loss for s in alone) / 3, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mixed.velocity[::2], edits_only.velocity, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(mixed.lm_loss)
    with torch.no_grad():  # the edit's source matters: its target drawn from text alone gets another velocity
        unsourced = model(
            **chat(processor, [text_to_image(images[1])]), timesteps=flow["timesteps"][:1], noise=flow["noise"][:1]
        )
    assert not torch.allclose(mixed.velocity[:1], unsourced.velocity, atol=1e-3)


def test_a_collated_batch_without_targets_is_an_understanding_batch(model, processor):
    batch = chat(processor, [understanding(image) for image in pictures(2)])
    with torch.no_grad():
        plain = model(**batch, logits_to_keep=0)
        zeros = model(**batch, target_mask=torch.zeros_like(batch["input_ids"]), logits_to_keep=0)
    assert plain.velocity is None and zeros.velocity is None
    torch.testing.assert_close(plain.logits, zeros.logits)


def test_text_dropout_keeps_the_turns_after_the_target(processor):
    """Draw → image (the target) → a user image and a question → an answer: text dropout blanked every token up to
    the row's last visual block, the later turns' text (and its labels) too, which the causal target never sees."""
    first, second = pictures(2)
    conversation = text_to_image(first) + understanding(second)
    batch = chat(processor, [conversation])
    model = tiny_hydrax(text_dropout_prob=0.999999).train()
    seen = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    try:
        model(**batch, labels=batch["input_ids"], **fixed_flow(1))
    finally:
        handle.remove()
    ids, dropped = batch["input_ids"][0], seen[0][0]
    first_target = int(batch["target_mask"][0].nonzero()[0])
    assert not torch.equal(dropped[:first_target], ids[:first_target]), "the target's prompt is dropped"
    torch.testing.assert_close(dropped[first_target:], ids[first_target:], rtol=0, atol=0)


def test_explicit_targets_must_match_the_marked_samples(model, processor):
    batch = chat(processor, [understanding(pictures(1)[0]), text_to_image(pictures(1)[0])])
    with pytest.raises(ValueError, match="2 generation targets were given for 1 samples with a target block"):
        model(
            input_ids=batch["input_ids"],
            target_mask=batch["target_mask"],
            target_pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1,
        )


def test_an_edit_source_of_another_size_is_a_clear_error(model):
    config = model.config
    ids = [5] + visual_block(config, 8) + [6] + visual_block(config, 4)
    ids = torch.tensor([ids])
    target_mask = (model.model.visual_block_ids(ids) == 1).long()
    pixels = [torch.rand(3, 64, 32) * 2 - 1, torch.rand(3, 32, 32) * 2 - 1]
    with pytest.raises(ValueError, match=r"source \(3, 64, 32\) and target \(3, 32, 32\) differ in size; resize"):
        model(input_ids=ids, pixel_values=pixels, target_mask=target_mask)


def test_targets_of_different_sizes_share_a_batch_and_equal_each_sample_alone(model, processor):
    rng = np.random.default_rng(3)

    def picture(height):
        return rng.integers(0, 255, (height, 32, 3), dtype=np.uint8)

    samples = [
        text_to_image(picture(64)),
        understanding(picture(32)),
        edit(picture(32), picture(32)),
        edit(picture(64), picture(64)),
        text_to_image(picture(32)),
    ]
    batch = chat(processor, samples, TWO_SIZES)
    assert batch["target_mask"].sum(dim=1).tolist() == [8, 0, 4, 8, 4], "2×4 and 2×2 latent grids"
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.rand(4, generator=generator)
    noise = [torch.randn(8, 1, *grid, generator=generator) for grid in ((4, 2), (2, 2), (4, 2), (2, 2))]
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        mixed = model(**batch, labels=labels, timesteps=timesteps, noise=noise)
        alone = [
            model(**chat(processor, [sample], TWO_SIZES), timesteps=timesteps[k : k + 1], noise=noise[k][None])
            for k, sample in enumerate(samples[:1] + samples[2:])
        ]
    assert [tuple(v.shape) for v in mixed.velocity] == [(8, 1, 4, 2), (8, 1, 2, 2), (8, 1, 4, 2), (8, 1, 2, 2)]
    for k, single in enumerate(alone):
        torch.testing.assert_close(mixed.velocity[k][None], single.velocity, rtol=1e-4, atol=1e-5)
    elements = torch.tensor([n.numel() for n in noise], dtype=torch.float)
    per_element = sum(single.flow_loss * count for single, count in zip(alone, elements)) / elements.sum()
    torch.testing.assert_close(mixed.flow_loss, per_element, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(mixed.lm_loss)


def test_a_mixed_size_batch_trains_every_generation_module(processor):
    model = tiny_hydrax().train()
    rng = np.random.default_rng(4)
    samples = [
        text_to_image(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)),
        edit(*(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2))),
    ]
    model(**chat(processor, samples, TWO_SIZES)).loss.backward()
    for part in ("model.projector", "model.timestep_embedding", "model.flow_head", "model.vision_tower.sem_vit"):
        gradients = [p.grad for name, p in model.named_parameters() if name.startswith(part) and p.requires_grad]
        assert gradients and all(g is not None for g in gradients), part
        assert sum(g.abs().sum() for g in gradients) > 0, part
