"""HydraXProcessor outputs drive HydraXForConditionalGeneration directly: training targets marked by `target_mask`
equal the explicit `target_pixel_values` / `source_pixel_values` API."""

import numpy as np
import pytest
import torch
from conftest import tiny_hydrax

from processing_hydrax import HydraXImageProcessor, HydraXProcessor, HydraXVideoProcessor, build_tiny_qwen2_tokenizer


SIZE = {"size": {"min_pixels": 32 * 32, "max_pixels": 32 * 32}}


@pytest.fixture(scope="module")
def processor():
    return HydraXProcessor(HydraXImageProcessor(), build_tiny_qwen2_tokenizer(), HydraXVideoProcessor())


def pictures(count):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def run_both_ways(model, inputs, explicit):
    generator = torch.Generator().manual_seed(0)
    fixed = dict(timesteps=torch.rand(inputs["input_ids"].shape[0], generator=generator))
    fixed["noise"] = torch.randn(inputs["input_ids"].shape[0], 8, 1, 2, 2, generator=generator)
    with torch.no_grad():
        from_processor = model(**inputs, **fixed)
        direct = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **explicit, **fixed)
    torch.testing.assert_close(from_processor.velocity, direct.velocity)
    return from_processor


def test_text_to_image_training_sample(processor):
    model = tiny_hydrax()
    target = pictures(1)[0]
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "A cat"}]},
        {"role": "assistant", "content": [{"type": "image", "image": target}]},
    ]
    inputs = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={"images_kwargs": SIZE}
    )
    assert int(inputs["target_mask"].sum()) == 4
    out = run_both_ways(model, inputs, {"target_pixel_values": inputs["pixel_values"]})
    assert out.velocity.shape == (1, 8, 1, 2, 2)


def test_edit_training_batch(processor):
    model = tiny_hydrax()
    images = pictures(4)
    conversations = [
        [
            {"role": "user", "content": [{"type": "image", "image": images[2 * i]}, {"type": "text", "text": "Edit"}]},
            {"role": "assistant", "content": [{"type": "image", "image": images[2 * i + 1]}]},
        ]
        for i in range(2)
    ]
    inputs = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
        processor_kwargs={"images_kwargs": SIZE},
    )
    pixels = inputs["pixel_values"]
    assert pixels.shape[0] == 4
    explicit = {"target_pixel_values": pixels[1::2], "source_pixel_values": pixels[0::2]}
    run_both_ways(model, inputs, explicit)


def test_a_follow_up_question_reads_the_earlier_assistant_image(processor):
    """`generate` answers about an image the assistant drew before: the processor's target keys (training's layout)
    are dropped and the image is read as context; visual inputs passed as `None` are ignored."""
    model = tiny_hydrax().eval()

    def chat(drawn):
        conversation = [
            {"role": "user", "content": [{"type": "text", "text": "Draw it."}]},
            {"role": "assistant", "content": [{"type": "image", "image": drawn}]},
            {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]},
        ]
        return processor.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"images_kwargs": SIZE},
        )

    first, second = (chat(image) for image in pictures(2))
    assert "target_mask" in first  # the processor marks it, as for training
    as_context = {key: value for key, value in first.items() if key not in ("target_mask", "target_grid_thw")}
    with torch.no_grad():
        reference = model(**as_context).logits[:, -1]
        answers = [
            model.generate(**inputs, max_new_tokens=1, output_logits=True, return_dict_in_generate=True).logits[0]
            for inputs in (first, second)
        ]
    torch.testing.assert_close(answers[0], reference)
    assert not torch.allclose(answers[0], answers[1])  # the image is read
    text = processor(text="Hello", return_tensors="pt")
    plain = model.generate(**text, max_new_tokens=2, do_sample=False)
    with_nones = model.generate(**text, pixel_values=None, pixel_values_videos=None, max_new_tokens=2, do_sample=False)
    assert torch.equal(plain, with_nones)


@pytest.mark.parametrize("expansion", [{}, {"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}])
def test_generate_refuses_more_images_than_placeholders_before_expanding(processor, expansion):
    model = tiny_hydrax().eval()
    inputs = processor(text="<|image_pad|> What?", images=pictures(1), images_kwargs=SIZE, return_tensors="pt")
    extra = processor(images=pictures(2), images_kwargs=SIZE, return_tensors="pt")
    inputs.update(pixel_values=extra["pixel_values"], image_grid_thw=extra["image_grid_thw"])
    with pytest.raises(ValueError, match="4 image placeholder tokens but the image inputs give 8 features"):
        model.generate(**inputs, max_new_tokens=2, **expansion)


def test_a_follow_up_turn_reuses_the_first_turns_cache_with_only_its_new_image(processor):
    """A multi-turn chat keeps the first prompt's cache and passes the follow-up's image (pixels and grid) alone: the
    answer equals a fresh run over the whole chat, and passing every image says what to pass instead."""
    import copy

    model = tiny_hydrax()
    first, second = pictures(2)
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    kwargs["processor_kwargs"] = {"images_kwargs": SIZE}
    turn = [{"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "What is it?"}]}]
    earlier = processor.apply_chat_template(turn, **kwargs)
    with torch.no_grad():
        cache = model(**earlier, use_cache=True).cache
    turn += [
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "image", "image": second}, {"type": "text", "text": "And this?"}]},
    ]
    chat = processor.apply_chat_template(turn, **kwargs)
    greedy = dict(max_new_tokens=4, do_sample=False)
    fresh = model.generate(**chat, **greedy)
    follow_up = {key: chat[key] for key in ("input_ids", "attention_mask")}
    follow_up |= {"pixel_values": chat["pixel_values"][1:], "image_grid_thw": chat["image_grid_thw"][1:]}
    assert model.generate(**follow_up, cache=copy.deepcopy(cache), **greedy).equal(fresh)
    cached = earlier["input_ids"].shape[1]
    with pytest.raises(ValueError, match=f"after the cached ones .* with a cache of {cached} tokens, pass only the"):
        model.generate(**chat, cache=copy.deepcopy(cache), **greedy)
