"""`compile_repeated_blocks`: the LLM's decoder layers share one compiled graph (inductor, CPU), and compiled
sampling, decoding and training equal eager runs."""

import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_compile import main as bench_main  # noqa: E402
from build_hydrax import build_processor  # noqa: E402

from modeling_hydrax import HydraXConfig, HydraXEditPipeline, HydraXForConditionalGeneration, HydraXPipeline  # noqa: E402
from modeling_hydrax.configuration_hydrax_presets import preset_kwargs  # noqa: E402
from modeling_hydrax.modeling_hydrax import HydraXCompiledLayerForward  # noqa: E402
from modeling_hydrax.pipeline_hydrax import default_scheduler  # noqa: E402


LAYERS = 6


def tiny_deep_pipeline() -> HydraXPipeline:
    """The tiny preset with a 6-layer LLM, so that one graph per layer would show."""
    torch.manual_seed(0)
    text_config = {**preset_kwargs("tiny")["text_config"], "num_hidden_layers": LAYERS}
    config = HydraXConfig.from_preset("tiny", text_config=text_config)
    model = HydraXForConditionalGeneration(config).eval()
    pipe = HydraXPipeline(model=model, processor=build_processor(config, None), scheduler=default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, edit, seed=0, size=32):
    generator = torch.Generator().manual_seed(seed)
    common = dict(num_inference_steps=2, guidance_scale=4.0, output_type="pt")
    image = pipe("a red fox", height=size, width=size, generator=generator, **common).images
    source = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    edited = edit(source, "make it blue", image_guidance_scale=1.5, generator=generator, **common).images
    return image, edited


@pytest.fixture(scope="module")
def compiled():
    """(pipeline, edit pipeline, eager results) with the layers compiled after the eager results were taken."""
    pipe = tiny_deep_pipeline()
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    ids = torch.tensor([[5, 17, 250, 31, 9]])
    with torch.no_grad():
        eager = {
            "seed 0": sample(pipe, edit, seed=0),
            "seed 1, 48²": sample(pipe, edit, seed=1, size=48),
            "generate": pipe.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, min_new_tokens=6),
        }
    torch._dynamo.reset()
    counters.clear()
    pipe.model.compile_repeated_blocks(fullgraph=True)
    return pipe, edit, ids, eager


def test_compiled_sampling_equals_eager_with_one_graph_for_all_layers(compiled):
    pipe, edit, _, eager = compiled
    with torch.no_grad():
        image, edited = sample(pipe, edit, seed=0)
    torch.testing.assert_close(image, eager["seed 0"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edited, eager["seed 0"][1], rtol=1e-4, atol=1e-4)
    # One graph for the 6 layers' denoising steps, one more when the edit's 3 guidance branches make the batch dynamic
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        again = sample(pipe, edit, seed=0)
    torch.testing.assert_close(again[0], image, rtol=0, atol=0)


def test_compiled_sampling_follows_new_sizes_and_seeds(compiled):
    pipe, edit, _, eager = compiled
    with torch.no_grad():
        image, edited = sample(pipe, edit, seed=1, size=48)
    torch.testing.assert_close(image, eager["seed 1, 48²"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edited, eager["seed 1, 48²"][1], rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_sampling_on_cuda_equals_eager():
    pipe = tiny_deep_pipeline().to("cuda")
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    with torch.no_grad():
        eager = sample(pipe, edit)
        torch._dynamo.reset()
        counters.clear()
        pipe.model.compile_repeated_blocks(fullgraph=True)
        compiled = sample(pipe, edit)
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_compiled_decoding_equals_eager(compiled):
    pipe, _, ids, eager = compiled
    tokens = pipe.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(tokens, eager["generate"])


def test_compiled_training_step_equals_eager():
    pipe = tiny_deep_pipeline()
    model = pipe.model.train()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))

    def loss_and_gradient():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), model.model.language_model.layers[2].mlp.up_proj.weight.grad.clone()

    eager_loss, eager_gradient = loss_and_gradient()
    model.compile_repeated_blocks()
    loss, gradient = loss_and_gradient()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient, eager_gradient, rtol=1e-4, atol=1e-6)


def test_compiling_again_replaces_the_compiled_forward():
    model = tiny_deep_pipeline().model
    model.compile_repeated_blocks()
    model.compile_repeated_blocks(dynamic=True)
    layers = [module for module in model.modules() if isinstance(module, Qwen2DecoderLayer)]
    assert len(layers) == LAYERS
    for index, layer in enumerate(layers):
        assert isinstance(layer.forward, HydraXCompiledLayerForward)
        assert layer.forward.eager.__func__ is Qwen2DecoderLayer.forward and layer.forward.layer_idx == index


def test_block_level_group_offloading_goes_on_after_compilation(tmp_path):
    """Group offloading wraps the compiled layers (offloaded to disk, every weight overwritten by NaN: the same images
    as eager in memory); compiling layers that already carry offloading hooks is refused, as it would drop them."""
    pipe = tiny_deep_pipeline()
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    with torch.no_grad():
        eager = sample(pipe, edit)
    pipe.model.compile_repeated_blocks(fullgraph=True)
    pipe.enable_group_offload(
        torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=tmp_path
    )
    for parameter in pipe.model.parameters():
        parameter.data.fill_(float("nan"))
    with torch.no_grad():
        for got, want in zip(sample(pipe, edit), eager, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"drop the offloading or device-placement hooks on their \['Qwen2Decoder"):
        pipe.model.compile_repeated_blocks()


def test_compile_repeated_blocks_without_blocks_names_the_classes():
    model = tiny_deep_pipeline().model
    model._repeated_blocks = ["NoSuchLayer"]
    with pytest.raises(ValueError, match=r"none of \['NoSuchLayer'\] in HydraXForConditionalGeneration"):
        model.compile_repeated_blocks()


def test_a_denoising_step_hands_the_prompt_cache_back_unchanged():
    model = tiny_deep_pipeline().model
    config = model.config
    ids = torch.tensor([[5, 17, 250, config.vision_start_token_id]])
    with torch.no_grad():
        prefix = model.prepare_generation_prefix(ids)
        before = [(entry.keys, entry.values) for entry in prefix.cache.layers]
        latents = torch.randn(1, config.vision_config.latent_channels, 1, 2, 2)
        model.predict_velocity(latents, torch.tensor([0.5]), prefix)
    for entry, (keys, values) in zip(prefix.cache.layers, before):
        assert entry.keys is keys and entry.values is values


def test_bench_compile_runs_every_variant(capsys):
    bench_main(["--layers", "3", "--grid", "2", "--steps", "3", "--backend", "aot_eager"])
    out = capsys.readouterr().out
    for row in ("eager", "whole LLM, language_model.compile()", "decoder layers, compile_repeated_blocks()"):
        assert row in out
    assert "(1 graph(s) against 2)" in out


def test_static_cache_generation_compiles_its_decoding_steps_in_one_graph():
    """`generate(cache_implementation="static")` compiles the forward of its decoding steps (transformers does so on
    GPUs; `_compile_all_devices` here on CPU): with `fullgraph=True` any graph break in that path fails, and the
    compiled tokens equal eager ones."""
    from conftest import tiny_hydrax, visual_block
    from transformers import CompileConfig

    model = tiny_hydrax()
    config = model.config
    ids = torch.tensor([[5] + visual_block(config, 4) + [6, 7, 8]])
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    greedy = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
    eager = model.generate(**greedy)
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True
    counters.clear()
    compiled = model.generate(**greedy, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled, eager)
    assert counters["stats"]["unique_graphs"] >= 1, "no decoding step ran compiled"
