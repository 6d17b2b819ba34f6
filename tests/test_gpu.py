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


def test_a_lora_adapter_on_a_bf16_cuda_pipeline_samples_as_its_merged_model(checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoProcessor

    from modeling_hydrax import HydraXPipeline

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["flow_head"], init_lora_weights=False)
    adapted = get_peft_model(AutoModel.from_pretrained(checkpoint), lora)
    adapted.save_pretrained(tmp_path / "adapter")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(checkpoint).save_pretrained(tmp_path / "merged")  # a pipeline folder needs it
    samples = []
    for folder, adapter in ((checkpoint, tmp_path / "adapter"), (tmp_path / "merged", None)):
        pipe = HydraXPipeline.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda")
        pipe.set_progress_bar_config(disable=True)
        if adapter is not None:
            pipe.load_lora_weights(adapter)
            lora_weight = pipe.model.model.language_model.layers[0].self_attn.q_proj.lora_A["default_0"].weight
            assert lora_weight.device.type == "cuda" and lora_weight.dtype == torch.bfloat16
        generator = torch.Generator().manual_seed(0)
        output = pipe("a cat", height=32, width=32, num_inference_steps=2, generator=generator, output_type="pt")
        samples.append(output.images.float())
    assert torch.isfinite(samples[0]).all()
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=0.05)  # bf16: fused vs separate rounding


OFFLOADS = {
    "model": lambda pipe: pipe.enable_model_cpu_offload(),
    "sequential": lambda pipe: pipe.enable_sequential_cpu_offload(),
    "group, block level, streamed": lambda pipe: pipe.enable_group_offload(
        torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1, use_stream=True
    ),
    "group, leaf level": lambda pipe: pipe.enable_group_offload(torch.device("cuda"), offload_type="leaf_level"),
}


@pytest.mark.parametrize("offload", OFFLOADS)
def test_cpu_offload_on_cuda_samples_as_the_pipeline_on_cuda(checkpoint, offload):
    from modeling_hydrax import HydraXPipeline

    samples = []
    for offloaded in (False, True):
        pipe = HydraXPipeline.from_pretrained(checkpoint, device_map=None if offloaded else "cuda")
        pipe.set_progress_bar_config(disable=True)
        if offloaded:
            OFFLOADS[offload](pipe)
        generator = torch.Generator().manual_seed(0)
        output = pipe("a cat", height=32, width=32, num_inference_steps=2, generator=generator, output_type="pt")
        samples.append(output.images.cpu())
    torch.testing.assert_close(samples[0], samples[1])


def test_a_device_map_split_samples_as_the_pipeline_on_one_device(checkpoint):
    """With the flow head and timestep embedding on another device than the rest (as `device_map="auto"` places
    the modules after the LLM over several GPUs), text-to-image, image-to-video and editing sample as on one GPU:
    the velocity came back on the flow head's device, and the scheduler step mixed devices."""
    from modeling_hydrax import HydraXEditPipeline, HydraXPipeline

    split = {"model.vision_tower": 0, "model.projector": 0, "model.language_model": 0, "lm_head": 0}
    split |= {"model.timestep_embedding": "cpu", "model.flow_head": "cpu"}
    image = torch.rand(3, 32, 32)
    samples = []
    for device_map in ("cuda", split):
        pipe = HydraXPipeline.from_pretrained(checkpoint, device_map=device_map)
        pipe.set_progress_bar_config(disable=True)
        edit = HydraXEditPipeline.from_pipe(pipe)
        options = dict(height=32, width=32, num_inference_steps=2, output_type="pt")
        seed = torch.Generator().manual_seed
        samples.append(
            [
                pipe("a cat", generator=seed(0), **options).images.cpu(),
                pipe("a cat", image=image, num_frames=5, generator=seed(0), **options).frames.cpu(),
                edit(image, "make it red", generator=seed(0), **options).images.cpu(),
            ]
        )
    for one_device, split_devices in zip(*samples):
        torch.testing.assert_close(split_devices, one_device, atol=1e-4, rtol=1e-4)
