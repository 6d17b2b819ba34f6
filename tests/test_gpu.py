"""CUDA checks of the tiny model; skipped cleanly on machines without a GPU (CI has none)."""

import pytest
import torch
from conftest import tiny_hydrax, visual_block


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_tiny_model_bf16_on_cuda(tmp_path):
    from modeling_hydrax import HydraXForConditionalGeneration

    tiny_hydrax().save_pretrained(tmp_path)
    model = HydraXForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cuda").eval()
    config = model.config
    ids = torch.tensor([[5] + visual_block(config, 4) + [6]], device="cuda")
    pixels = torch.rand(1, 3, 32, 32, device="cuda", dtype=torch.bfloat16) * 2 - 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=False)
        gen = model(input_ids=ids, target_pixel_values=pixels)
    assert out.shape == (1, ids.shape[1] + 4)
    assert gen.velocity.dtype == torch.bfloat16 and torch.isfinite(gen.flow_loss)
