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
