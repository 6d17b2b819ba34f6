"""LoRA adapters on the Hydra-X pipelines (`HydraXLoraLoaderMixin`): a loaded PEFT adapter samples as the model it
merges into, weights scale the low-rank updates, adapters combine, switch off and on, fuse, unload and delete, and
bad uses say what to do and leave the model as it was. Tiny checkpoint, 32² images, 2 steps, CPU."""

import io
import logging
import shutil
from pathlib import Path

import accelerate
import pytest
import torch
from conftest import load_script, run_docstring_examples
from diffusers.utils import logging as diffusers_logging
from peft import LoHaConfig, LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from modeling_hydrax import HydraXEditPipeline, HydraXForConditionalGeneration, HydraXPipeline, lora_loading_hydrax


ROOT = Path(__file__).resolve().parents[1]
TARGETS = load_script(ROOT / "examples" / "train_hydrax.py").DEFAULT_LORA_TARGETS
PROMPT = "A red fox in the snow"


def write_adapter(checkpoint: Path, folder: Path, seed: int, modules_to_save=None):
    """A LoRA of `checkpoint` with random non-zero updates (rank 4, alpha 8) and, for `modules_to_save`, perturbed full
    copies, saved as train_hydrax.py saves its adapter. Returns the folder and the model it merges into."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=modules_to_save, init_lora_weights=False
    )
    adapted = get_peft_model(AutoModel.from_pretrained(checkpoint), config)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if ".modules_to_save." in name:
                param.add_(0.5 * torch.randn_like(param))
    adapted.save_pretrained(folder)
    return folder, adapted.merge_and_unload().eval()


def merged(checkpoint: Path, *adapters: Path):
    """`checkpoint` with each adapter merged in turn, by PEFT itself."""
    model = AutoModel.from_pretrained(checkpoint)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


@pytest.fixture(scope="module")
def adapters(checkpoint, tmp_path_factory):
    """`a`: LoRA + a full copy of the flow head; `b`: LoRA only; `c`: another flow-head copy (clashes with `a`)."""
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "a": write_adapter(checkpoint, folder / "a", seed=1, modules_to_save=["flow_head"]),
        "b": write_adapter(checkpoint, folder / "b", seed=2),
        "c": write_adapter(checkpoint, folder / "c", seed=3, modules_to_save=["flow_head"]),
    }


@pytest.fixture
def pipe(checkpoint):
    pipe = HydraXPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **call) -> torch.Tensor:
    kwargs = dict(height=32, width=32, num_inference_steps=2, output_type="pt", generator=torch.Generator(), **call)
    kwargs["generator"].manual_seed(0)
    if isinstance(pipe, HydraXEditPipeline):
        return pipe(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)), "Make it dark", **kwargs).images
    return pipe(None if "prompt_embeds" in call else PROMPT, **kwargs).images


def reference(checkpoint: Path, model, edit: bool = False) -> torch.Tensor:
    """What a pipeline built on `model` (a plain, merged model) samples."""
    pipe = HydraXPipeline.from_pretrained(checkpoint, model=model)
    pipe.set_progress_bar_config(disable=True)
    return sample(HydraXEditPipeline.from_pipe(pipe) if edit else pipe)


def peft_modules(model) -> list[str]:
    return [
        name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper)
    ]


@pytest.fixture(scope="module")
def base_sample(checkpoint):
    return reference(checkpoint, AutoModel.from_pretrained(checkpoint).eval())


def test_a_loaded_adapter_samples_as_the_model_it_merges_into(pipe, adapters, checkpoint, base_sample):
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    assert pipe.get_list_adapters() == {"model": ["a"]} and pipe.get_active_adapters() == ["a"]
    adapted = sample(pipe)
    torch.testing.assert_close(adapted, reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)
    assert (adapted - base_sample).abs().max() > 1e-2, "the adapter must change the samples"
    edit = HydraXEditPipeline.from_pipe(pipe)  # shares the adapted model
    edit.set_progress_bar_config(disable=True)
    torch.testing.assert_close(sample(edit), reference(checkpoint, adapters["a"][1], edit=True), rtol=0, atol=1e-5)


def test_disable_and_enable_switch_between_the_base_model_and_the_adapter(pipe, adapters, base_sample):
    pipe.load_lora_weights(adapters["a"][0])
    adapted = sample(pipe)
    pipe.disable_lora()
    assert pipe.get_active_adapters() == []
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=1e-6)
    pipe.enable_lora()
    assert pipe.get_active_adapters() == ["default_0"]
    torch.testing.assert_close(sample(pipe), adapted, rtol=0, atol=1e-6)


def test_weights_scale_the_low_rank_updates(pipe, adapters, checkpoint, base_sample):
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.set_adapters("b", 0.0)
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=1e-6)
    pipe.set_adapters("b", 1.0)
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["b"][1]), rtol=0, atol=1e-5)

    # weight 0.5 fused with lora_scale 2: W0 + 2 · 0.5 · (alpha / r) · B A, i.e. the whole adapter again
    pipe.set_adapters("b", 0.5)
    half = sample(pipe)
    layer = pipe.model.model.language_model.layers[0].self_attn.q_proj
    initial = layer.base_layer.weight.detach().clone()
    expected = initial + 2 * 0.5 * (8 / 4) * layer.lora_B["b"].weight @ layer.lora_A["b"].weight
    pipe.fuse_lora(lora_scale=2.0)
    torch.testing.assert_close(layer.base_layer.weight, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["b"][1]), rtol=0, atol=1e-5)
    pipe.unfuse_lora()
    torch.testing.assert_close(layer.base_layer.weight, initial, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample(pipe), half, rtol=0, atol=1e-6)


def test_two_adapters_combine_as_both_merged(pipe, adapters, checkpoint):
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    assert pipe.get_active_adapters() == ["b"], "a newly loaded adapter is the only active one"
    pipe.set_adapters(["a", "b"])
    both = merged(checkpoint, adapters["a"][0], adapters["b"][0])
    torch.testing.assert_close(sample(pipe), reference(checkpoint, both), rtol=0, atol=1e-5)

    pipe.delete_adapters("a")
    assert pipe.get_list_adapters() == {"model": ["b"]} and pipe.get_active_adapters() == ["b"]
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["b"][1]), rtol=0, atol=1e-5)


def test_fused_and_unloaded_adapters_stay_in_the_saved_model(pipe, adapters, checkpoint, tmp_path):
    pipe.load_lora_weights(adapters["a"][0])
    adapted = sample(pipe)
    with pytest.raises(ValueError, match=r"fuse_lora\(\)` then `unload_lora_weights\(\)"):
        pipe.save_pretrained(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    pipe.fuse_lora()
    torch.testing.assert_close(sample(pipe), adapted, rtol=0, atol=1e-5)
    pipe.unload_lora_weights()
    assert peft_modules(pipe.model) == [] and pipe.get_list_adapters() == {"model": []}
    torch.testing.assert_close(sample(pipe), adapted, rtol=0, atol=1e-5)
    pipe.save_pretrained(tmp_path / "fused")
    loaded = HydraXPipeline.from_pretrained(tmp_path / "fused")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(sample(loaded), sample(pipe), rtol=0, atol=0)


def test_unloading_unfused_adapters_restores_the_base_model(pipe, adapters, checkpoint, base_sample):
    pipe.load_lora_weights(adapters["a"][0])
    pipe.load_lora_weights(adapters["b"][0])
    pipe.unload_lora_weights()
    assert peft_modules(pipe.model) == []
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=0)
    base = AutoModel.from_pretrained(checkpoint).state_dict()
    assert pipe.model.state_dict().keys() == base.keys()


def test_bad_uses_say_what_to_do(pipe, adapters, tmp_path):
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_lora_weights(adapters["b"][0], adapter_name="a")
    with pytest.raises(ValueError, match=r"Unknown adapter\(s\) \['x'\]; the loaded ones are \['a'\]"):
        pipe.set_adapters(["a", "x"])
    with pytest.raises(ValueError, match="Got 3 adapter weights for 1 adapters"):
        pipe.set_adapters("a", [1.0, 0.5, 0.2])
    pipe.load_lora_weights(adapters["c"][0], adapter_name="c")
    with pytest.raises(ValueError, match=r"Adapters \['a', 'c'\] each carry a full copy of `model.flow_head`"):
        pipe.set_adapters(["a", "c"])
    with pytest.raises(ValueError, match="No PEFT adapter at"):
        pipe.load_lora_weights(tmp_path / "missing")
    with pytest.raises(ValueError, match="must be non-zero"):
        pipe.fuse_lora(lora_scale=0)
    # a NaN or infinite strength would turn every sampled pixel into NaN
    active = pipe.get_active_adapters()
    with pytest.raises(
        ValueError, match=r"`adapter_weights\['a'\]` \(the LoRA strength\) must be a finite number, got nan"
    ):
        pipe.set_adapters("a", float("nan"))
    with pytest.raises(ValueError, match=r"`adapter_weights\['a'\]` .* must be a finite number, got inf"):
        pipe.set_adapters(["a"], [float("inf")])
    for bad in (float("inf"), float("nan"), True):
        with pytest.raises(
            ValueError, match=f"`lora_scale` \\(the LoRA strength\\) must be a finite number, got {bad!r}"
        ):
            pipe.fuse_lora(lora_scale=bad)
    assert pipe.get_active_adapters() == active and not any(
        getattr(module, "merged", False) for module in pipe.model.modules()
    )
    pipe.fuse_lora()
    with pytest.raises(ValueError, match="already fused"):
        pipe.fuse_lora()
    with pytest.raises(ValueError, match="unfuse_lora"):
        pipe.disable_lora()


def other_model(checkpoint: Path, **text_config):
    """A model of another architecture: the checkpoint's config with `text_config` fields changed."""
    config = AutoConfig.from_pretrained(checkpoint)
    for name, value in text_config.items():
        setattr(config.text_config, name, value)
    torch.manual_seed(0)
    return HydraXForConditionalGeneration(config)


@pytest.mark.parametrize(
    "text_config, error, message",
    [
        ({"hidden_size": 32, "intermediate_size": 64}, ValueError, "does not fit this model: size mismatch for"),
        (
            {"num_hidden_layers": 3, "layer_types": ["full_attention"] * 3},
            ValueError,
            "not found in the base model",
        ),  # the adapter targets layer 2 only
    ],
)
def test_an_adapter_of_another_model_is_refused_and_leaves_the_model_as_it_was(
    text_config, error, message, pipe, adapters, checkpoint, tmp_path, base_sample
):
    targets = r"model\.language_model\.layers\.2\.self_attn\.q_proj" if "num_hidden_layers" in text_config else TARGETS
    config = LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
    get_peft_model(other_model(checkpoint, **text_config), config).save_pretrained(tmp_path / "other")
    with pytest.raises(error, match=message):
        pipe.load_lora_weights(tmp_path / "other")
    assert peft_modules(pipe.model) == [] and pipe.get_list_adapters() == {"model": []}
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=0)

    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")  # a failed second adapter leaves the first in place
    adapted = sample(pipe)
    with pytest.raises(error, match=message):
        pipe.load_lora_weights(tmp_path / "other")
    assert pipe.get_list_adapters() == {"model": ["a"]} and pipe.get_active_adapters() == ["a"]
    torch.testing.assert_close(sample(pipe), adapted, rtol=0, atol=0)


def test_the_docstring_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    runner = run_docstring_examples(lora_loading_hydrax)
    assert runner.tries >= 15 and runner.failures == 0


def edited(adapter: Path, folder: Path, edit) -> Path:
    """A copy of `adapter` in `folder` whose weights `edit` (given them as a dict) has changed in place."""
    shutil.copytree(adapter, folder)
    weights = load_file(folder / "adapter_model.safetensors")
    edit(weights)
    save_file(weights, folder / "adapter_model.safetensors")
    return folder


def test_an_adapter_missing_weights_is_refused(pipe, adapters, tmp_path, base_sample):
    partial = edited(adapters["b"][0], tmp_path / "partial", lambda weights: weights.pop(sorted(weights)[0]))
    with pytest.raises(ValueError, match=r"does not fit this model: .*modules without weights \[.*lora_A"):
        pipe.load_lora_weights(partial)
    assert peft_modules(pipe.model) == []
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=0)


def test_an_adapter_with_weights_for_no_module_is_refused(pipe, adapters, tmp_path, base_sample):
    """Weights that fit no module of the model (here a layer 7 the tiny LLM lacks) make the load fail, leaving the
    base model."""

    def add_layer_7(weights):
        name = next(name for name in sorted(weights) if ".layers.0." in name)
        weights[name.replace(".layers.0.", ".layers.7.")] = weights[name].clone()

    with pytest.raises(ValueError, match=r"does not fit this model: weights for no module of it \[.*layers\.7\."):
        pipe.load_lora_weights(edited(adapters["b"][0], tmp_path / "extra", add_layer_7))
    assert peft_modules(pipe.model) == []
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=0)


def test_a_bf16_pipeline_takes_the_adapter_in_bf16(checkpoint, adapters):
    pipe = HydraXPipeline.from_pretrained(checkpoint, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(adapters["a"][0])
    assert {param.dtype for param in pipe.model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(sample(pipe)).all()


def test_pipelines_sharing_a_model_share_its_fused_state(pipe, adapters):
    pipe.load_lora_weights(adapters["a"][0])
    edit = HydraXEditPipeline.from_pipe(pipe)
    pipe.fuse_lora()
    with pytest.raises(ValueError, match="fused into the model; call `unfuse_lora"):
        edit.set_adapters("default_0", 0.5)
    edit.unfuse_lora()
    pipe.set_adapters("default_0", 0.5)


def test_fusing_names_only_the_active_adapters_and_state_dicts_are_refused(pipe, adapters):
    """PEFT scales and runs the active adapters, so fusing others dropped some or misweighted them silently; and a bare
    state dict has no LoRA config to load it with."""
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.set_adapters(["a", "b"])
    with pytest.raises(ValueError, match=r"`adapter_names` \['a'\] are not the active adapters \['a', 'b'\]"):
        pipe.fuse_lora(adapter_names=["a"])
    with pytest.raises(ValueError, match=r"\['typo'\] are not the active adapters"):
        pipe.fuse_lora(adapter_names=["typo"])
    pipe.set_adapters("a")  # nothing was fused by the refused calls: adapters can still change
    pipe.fuse_lora(adapter_names="a")
    pipe.unfuse_lora()
    with pytest.raises(ValueError, match="a bare LoRA state dict lacks the adapter's config"):
        pipe.load_lora_weights(load_file(adapters["a"][0] / "adapter_model.safetensors"))


def test_an_adapter_loaded_while_disabled_stays_off_until_enabled(pipe, adapters, checkpoint, base_sample):
    """The new adapter's layers (here a flow-head copy no earlier adapter had) start enabled in PEFT."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.disable_lora()
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    assert pipe.get_active_adapters() == []
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=1e-6)
    pipe.enable_lora()
    assert pipe.get_active_adapters() == ["a"]
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)


def test_deleting_the_active_adapter_activates_one_remaining_adapter_whole(pipe, adapters, checkpoint):
    """PEFT falls back layer by layer, which left `a`'s LoRA layers on but its flow-head copy off."""
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.delete_adapters("b")
    assert pipe.get_active_adapters() == ["a"]
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)


def test_a_pipeline_on_a_peft_model_samples_and_saves_as_the_merged_model(adapters, checkpoint, tmp_path):
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(checkpoint), adapters["a"][0])
    pipe = HydraXPipeline.from_pretrained(checkpoint, model=adapted)
    pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "fused")
    reloaded = HydraXPipeline.from_pretrained(tmp_path / "fused")
    reloaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(sample(reloaded), reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)


def test_unloading_clears_transformers_adapter_flag_so_the_fused_model_saves_whole(pipe, adapters, tmp_path):
    pipe.model.load_adapter(str(adapters["b"][0]), adapter_name="b")  # transformers' own PEFT integration
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert not getattr(pipe.model, "_hf_peft_config_loaded", False)
    pipe.save_pretrained(tmp_path / "fused")
    assert (tmp_path / "fused" / "config.json").is_file() and not (tmp_path / "fused" / "adapter_config.json").exists()


def test_loader_options_it_cannot_honour_and_adapters_inside_a_copy_are_named(pipe, adapters, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="`weight_name='pytorch_lora_weights.safetensors'`: a PEFT adapter's"):
        pipe.load_lora_weights(adapters["b"][0], weight_name="pytorch_lora_weights.safetensors")
    with pytest.raises(ValueError, match="`hotswap=True` is not supported"):
        pipe.load_lora_weights(adapters["b"][0], hotswap=True)
    config = LoraConfig(r=4, target_modules=r"model\.flow_head\..*(input_proj|out_proj)", init_lora_weights=False)
    get_peft_model(AutoModel.from_pretrained(checkpoint), config).save_pretrained(tmp_path / "head")
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")  # carries a full copy of the flow head
    with pytest.raises(ValueError, match="inside `model.flow_head`, which adapter\\(s\\) \\['a'\\] replace"):
        pipe.load_lora_weights(tmp_path / "head", adapter_name="head")
    assert pipe.get_list_adapters() == {"model": ["a"]} and pipe.get_active_adapters() == ["a"]


def test_each_adapter_takes_its_own_weight(pipe, adapters, checkpoint):
    """`set_adapters([a, b], [1.0, 0.0])` is `a` alone (`b` carries no module copy)."""
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.set_adapters(["a", "b"], [1.0, 0.0])
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)
    pipe.set_adapters(["b", "a"], [0.0, 1.0])
    torch.testing.assert_close(sample(pipe), reference(checkpoint, adapters["a"][1]), rtol=0, atol=1e-5)


def test_attention_kwargs_scale_is_a_per_call_lora_strength(pipe, adapters, checkpoint, base_sample):
    """diffusers' `attention_kwargs={"scale": s}`: the call samples as `set_adapters(name, weight · s)` would, in the
    prompt (or `encode_prompt(lora_scale=s)`) and at every step, for both pipelines; afterwards the weights are the
    `set_adapters` ones exactly, also after a scale of 0 (where diffusers' `unscale_lora_layers` resets them to 1)."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    whole = sample(pipe)
    pipe.set_adapters("b", 0.25)
    quarter, quarter_edit = sample(pipe), sample(edit)
    pipe.set_adapters("b", 0.5)
    half = sample(pipe)
    scaled = dict(attention_kwargs={"scale": 0.5})
    torch.testing.assert_close(sample(pipe, **scaled), quarter, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample(edit, **scaled), quarter_edit, rtol=0, atol=1e-6)
    embeds = pipe.encode_prompt(PROMPT, lora_scale=0.5)
    torch.testing.assert_close(sample(pipe, prompt_embeds=embeds, **scaled), quarter, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample(pipe, attention_kwargs={"scale": 0.0}), base_sample, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample(pipe), half, rtol=0, atol=0)
    torch.testing.assert_close(sample(pipe, attention_kwargs={"scale": 2.0}), whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(sample(pipe, attention_kwargs={"scale": None}), half, rtol=0, atol=0)

    for bad, message in (
        ({"scale": 0.5, "ip_adapter_masks": None}, r"holds \['ip_adapter_masks'\], which Hydra-X does not take"),
        ({"scale": float("nan")}, r"`attention_kwargs\['scale'\]` \(the LoRA strength\) must be a finite number"),
        ({"scale": torch.tensor(0.5)}, r"must be a finite number, got tensor\(0.5000\)"),
        ([("scale", 0.5)], "must be a dict such as"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            sample(pipe, attention_kwargs=bad)
    for bad in (float("inf"), "0.5", True):
        with pytest.raises(
            ValueError, match=f"`lora_scale` \\(the LoRA strength\\) must be a finite number, got {bad!r}"
        ):
            pipe.encode_prompt(PROMPT, lora_scale=bad)
    pipe.fuse_lora()
    with pytest.raises(ValueError, match=r"fused into the weights \(at lora_scale=1.0\), where a per-call scale"):
        sample(pipe, **scaled)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    torch.testing.assert_close(sample(pipe, **scaled), base_sample, rtol=0, atol=1e-6)


def test_the_peft_weight_file_name_is_accepted_as_weight_name(pipe, adapters):
    """`weight_name="adapter_model.safetensors"` (the PEFT file itself) loads; only other file names are refused."""
    pipe.load_lora_weights(adapters["b"][0], weight_name="adapter_model.safetensors", adapter_name="b")
    assert pipe.get_list_adapters() == {"model": ["b"]} and pipe.get_active_adapters() == ["b"]


def test_an_adapter_cannot_be_loaded_or_deleted_while_adapters_are_fused(pipe, adapters):
    """Loading or deleting an adapter while others are fused is refused (the fused weights would go stale)."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.fuse_lora()
    with pytest.raises(ValueError, match=r"fused into the model; call `unfuse_lora\(\)` before loading another one"):
        pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    with pytest.raises(ValueError, match=r"fused into the model; call `unfuse_lora\(\)` before deleting one"):
        pipe.delete_adapters("b")
    assert pipe.get_list_adapters() == {"model": ["b"]}


def test_a_non_lora_peft_adapter_is_refused_and_leaves_the_model_as_it_was(pipe, checkpoint, tmp_path):
    """A LoHa adapter is a clear ValueError ("load LoRA only"), not a crash, and injects nothing."""
    config = LoHaConfig(r=4, target_modules=["q_proj"])
    get_peft_model(AutoModel.from_pretrained(checkpoint), config).save_pretrained(tmp_path / "loha")
    with pytest.raises(ValueError, match="holds a LOHA adapter; the Hydra-X pipelines load LoRA only"):
        pipe.load_lora_weights(tmp_path / "loha")
    assert peft_modules(pipe.model) == [] and pipe.get_list_adapters() == {"model": []}


def test_an_adapter_with_dropout_loads_in_the_pipelines_eval_mode(pipe, checkpoint, tmp_path):
    """A LoRA trained with dropout adds dropout layers that must follow the model's eval mode: sampling stays
    deterministic."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.5, init_lora_weights=False)
    get_peft_model(AutoModel.from_pretrained(checkpoint), config).save_pretrained(tmp_path / "dropout")
    pipe.load_lora_weights(tmp_path / "dropout")
    assert not any(module.training for module in pipe.model.modules())
    torch.testing.assert_close(sample(pipe), sample(pipe), rtol=0, atol=0)


def test_empty_adapter_lists_are_refused(pipe, adapters):
    """`set_adapters([])` and `fuse_lora()` with no adapter loaded say so instead of acting on nothing."""
    with pytest.raises(ValueError, match=r"No adapter to fuse: none is active \(loaded: \[\]\)"):
        pipe.fuse_lora()
    assert pipe._lora_fuse_scale is None
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    with pytest.raises(ValueError, match=r"Unknown adapter\(s\) \[\]; the loaded ones are \['b'\]"):
        pipe.set_adapters([])
    assert pipe.get_active_adapters() == ["b"]


def test_deleting_an_unknown_adapter_is_refused(pipe, adapters):
    """`delete_adapters` names unknown adapters and deletes nothing."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    with pytest.raises(ValueError, match=r"Unknown adapter\(s\) \['x'\]; the loaded ones are \['b'\]"):
        pipe.delete_adapters(["b", "x"])
    assert pipe.get_list_adapters() == {"model": ["b"]} and pipe.get_active_adapters() == ["b"]


def test_deleting_the_active_adapter_activates_the_first_remaining_one(pipe, adapters):
    """With no active adapter left, the first remaining adapter (in loading order) becomes active."""
    for name in ("x", "y", "z"):
        pipe.load_lora_weights(adapters["b"][0], adapter_name=name)
    pipe.delete_adapters("z")
    assert pipe.get_list_adapters() == {"model": ["x", "y"]} and pipe.get_active_adapters() == ["x"]


def test_deleting_one_of_several_active_adapters_keeps_the_others_active(pipe, adapters):
    """The active adapters that remain stay active; the first loaded adapter is only the fallback."""
    for name in ("x", "y", "z"):
        pipe.load_lora_weights(adapters["b"][0], adapter_name=name)
    pipe.set_adapters(["y", "z"], [0.5, 1.0])
    pipe.delete_adapters("z")
    assert pipe.get_active_adapters() == ["y"]


def test_safe_fusing_refuses_an_adapter_holding_nans(pipe, adapters):
    """`fuse_lora(safe_fusing=True)` raises on NaN updates instead of writing NaNs into the weights."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")  # weight 1.0
    named = [(path, module) for path, module in pipe.model.named_modules() if isinstance(module, BaseTunerLayer)]
    path, last = named[-1]  # the last layer merged: PEFT's own check came after merging all the others
    with torch.no_grad():
        last.lora_B["b"].weight.fill_(float("nan"))
    pipe.disable_lora()
    before = sample(pipe)
    pipe.enable_lora()
    scaling = [dict(layer.scaling) for _, layer in named]
    message = f"Adapter 'b' holds non-finite values \\(NaN or inf\\) in its update of `{path}`; nothing was fused"
    with pytest.raises(ValueError, match=message):
        pipe.fuse_lora(lora_scale=2.0, safe_fusing=True)
    assert pipe._lora_fuse_scale is None
    assert not any(layer.merged_adapters for _, layer in named)
    assert [dict(layer.scaling) for _, layer in named] == scaling
    pipe.disable_lora()
    assert torch.equal(sample(pipe), before)


def test_after_fusing_and_unloading_new_adapters_load(pipe, adapters):
    """`fuse_lora()` + `unload_lora_weights()` leaves a plain model that takes further adapters."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    pipe.set_adapters("a", 0.5)
    assert pipe.get_list_adapters() == {"model": ["a"]} and pipe.get_active_adapters() == ["a"]


def test_unloading_an_unfused_adapter_drops_its_module_copy(pipe, adapters, base_sample):
    """Without fusing, `unload_lora_weights()` restores the original flow head even while `a`'s copy is active."""
    pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    pipe.unload_lora_weights()
    assert peft_modules(pipe.model) == []
    torch.testing.assert_close(sample(pipe), base_sample, rtol=0, atol=0)


def test_safe_fusing_refuses_an_adapter_holding_infinities(pipe, adapters):
    """`fuse_lora(safe_fusing=True)` refuses inf updates too (not only NaN), fusing nothing."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    named = [(p, m) for p, m in pipe.model.named_modules() if isinstance(m, BaseTunerLayer)]
    path, last = named[-1]
    with torch.no_grad():
        last.lora_B["b"].weight.zero_()
        last.lora_B["b"].weight[0, 0] = float("inf")  # one row of ±inf updates, no NaN (A has no exact zeros)
    with pytest.raises(ValueError, match=f"non-finite values \\(NaN or inf\\) in its update of `{path}`"):
        pipe.fuse_lora(safe_fusing=True)
    assert pipe._lora_fuse_scale is None and not any(m.merged_adapters for _, m in named)


def test_a_merge_failing_part_way_leaves_no_layer_merged_and_the_weights_as_they_were(pipe, adapters):
    """Should PEFT refuse a layer mid-fuse, the layers merged before it are unmerged and every scaling restored."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.set_adapters("b", 0.5)
    named = [(p, m) for p, m in pipe.model.named_modules() if isinstance(m, BaseTunerLayer)]
    weights = {p: m.base_layer.weight.clone() for p, m in named}
    scaling = [dict(m.scaling) for _, m in named]

    def refuse(*args, **kwargs):
        raise ValueError("refused by PEFT")

    named[-1][1].merge = refuse
    with pytest.raises(ValueError, match="refused by PEFT"):
        pipe.fuse_lora(lora_scale=2.0)
    assert pipe._lora_fuse_scale is None and not any(m.merged for _, m in named)
    assert [dict(m.scaling) for _, m in named] == scaling
    for p, m in named:
        torch.testing.assert_close(m.base_layer.weight, weights[p], rtol=0, atol=1e-6)


def test_a_scale_of_one_runs_on_fused_adapters_and_warns_of_nothing_without_adapters(pipe, adapters):
    """`attention_kwargs={"scale": 1}` changes nothing: it samples on fused adapters, and logs nothing without any."""
    kwargs = dict(height=32, width=32, num_inference_steps=1, output_type="latent")
    stream, logger = io.StringIO(), diffusers_logging.get_logger(lora_loading_hydrax.__name__)
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        pipe("a fox", attention_kwargs={"scale": 1.0}, **kwargs)
        pipe("a fox", attention_kwargs={"scale": 0.5}, **kwargs)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().count("no effect") == 1, "only the scale of 0.5 warns that no adapter is loaded"
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    pipe.fuse_lora()
    fused = pipe("a fox", generator=torch.Generator().manual_seed(0), **kwargs).images
    scaled = pipe("a fox", generator=torch.Generator().manual_seed(0), attention_kwargs={"scale": 1}, **kwargs)
    assert torch.equal(scaled.images, fused)


def test_edit_encode_prompt_lora_scale_reads_the_prompt_at_that_strength(pipe, adapters):
    """`HydraXEditPipeline.encode_prompt(lora_scale=s)` encodes as a call with `attention_kwargs={"scale": s}` does."""
    pipe.load_lora_weights(adapters["b"][0], adapter_name="b")
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    source = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    kwargs = dict(num_inference_steps=2, output_type="pt", attention_kwargs={"scale": 0.5})
    embeds = edit.encode_prompt(source, "Make it dark", lora_scale=0.5)
    encoded = edit(prompt_embeds=embeds, generator=torch.Generator().manual_seed(0), **kwargs).images
    plain = edit(source, "Make it dark", generator=torch.Generator().manual_seed(0), **kwargs).images
    torch.testing.assert_close(encoded, plain, rtol=0, atol=1e-6)


def test_an_unnamed_adapter_takes_the_first_unused_default_name(pipe, adapters):
    """`default_<number of adapters>` named an adapter still loaded once an earlier one was deleted."""
    pipe.load_lora_weights(adapters["b"][0])
    pipe.load_lora_weights(adapters["a"][0])
    pipe.delete_adapters("default_0")
    pipe.load_lora_weights(adapters["b"][0])
    assert pipe.get_list_adapters() == {"model": ["default_1", "default_0"]}


def test_a_corrupted_adapter_file_is_named(pipe, adapters, tmp_path):
    shutil.copytree(adapters["b"][0], tmp_path / "broken")
    weights = tmp_path / "broken" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"No PEFT adapter at '{tmp_path / 'broken'}'"):
        pipe.load_lora_weights(tmp_path / "broken")
    assert peft_modules(pipe.model) == []


@pytest.mark.parametrize("offload", ["sequential", "group", "device_map"])
def test_adapters_are_loaded_and_fused_before_offloading_not_after(offload, checkpoint, adapters, tmp_path):
    """Offloaded weights are placeholders on meta (sequential, a device_map to disk: an adapter loaded there stayed
    empty and sampled NaN) or restored from group offloading's own copies (a fuse was undone at the next step, a
    full module copy failed to deepcopy): refused, with the order that works."""
    budget = {
        "cpu": sum(p.numel() for p in AutoModel.from_pretrained(checkpoint).parameters()) * 4 // 3,
        "disk": 10**12,
    }
    placement = dict(device_map="auto", max_memory=budget, offload_folder=tmp_path) if offload == "device_map" else {}
    pipe = HydraXPipeline.from_pretrained(checkpoint, **placement)
    if offload == "group":
        pipe.load_lora_weights(adapters["b"][0], adapter_name="b")  # before offloading: fine
        pipe.enable_group_offload(torch.device("cpu"), offload_type="leaf_level")
        with pytest.raises(ValueError, match="Cannot fuse LoRA adapters on a model with group offloading"):
            pipe.fuse_lora()
    elif offload == "sequential":
        accelerate.cpu_offload(pipe.model, torch.device("cpu"))
    with pytest.raises(ValueError, match="Cannot load a LoRA adapter on a model with .*Load a LoRA adapter first"):
        pipe.load_lora_weights(adapters["a"][0], adapter_name="a")
    assert "a" not in pipe.get_list_adapters()["model"]
