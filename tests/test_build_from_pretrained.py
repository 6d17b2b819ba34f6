"""conversion/build_hydrax.py from pretrained parts: a Hydra-XTok checkpoint + a Qwen2.5 checkpoint → a Hydra-X folder
whose LLM and vision tower equal their sources, tensor for tensor and in outputs; and the same mapping, planned on
meta tensors, for Qwen2.5-7B-Instruct's real sizes."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image
from test_remote_code_tok import BLOCK_OUR_PACKAGES
from transformers import AutoModel, AutoProcessor, Qwen2Config, Qwen2ForCausalLM

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration, HydraXTokConfig, HydraXTokModel
from modeling_hydrax.configuration_hydrax_presets import QWEN2_5_SPECIAL_TOKEN_IDS
from processing_hydrax import build_tiny_qwen2_tokenizer
from processing_hydrax.processing_hydrax import HYDRAX_CHAT_TEMPLATE


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))

from build_hydrax import (  # noqa: E402
    NEW_MODULES,
    REPORT_FILE,
    build_from_pretrained,
    derive_config,
    main,
    plan_weights,
    target_layout,
)


# Qwen/Qwen2.5-7B-Instruct's config.json, as published on the Hub.
QWEN2_5_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}
CHECKPOINT_KEYS = ("architectures", "dtype", "transformers_version", "model_type")
QWEN_TEMPLATE = (  # Qwen2.5-Instruct's default system prompt, without its tool calling
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are "
    "Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>"
    "{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_sources(folder: Path, tied: bool = False) -> dict[str, Path]:
    """A tiny Qwen2ForCausalLM (the tiny preset's sizes, transformers' own class) with the tiny Qwen2.5-style
    tokenizer (and a chat template of its own, as Qwen2.5-Instruct has), and a Hydra-XTok with the tiny preset's
    vision config but 8-pixel patches and its Decompressor, saved as checkpoints."""
    preset = HydraXConfig.from_preset("tiny")
    text = {key: value for key, value in preset.text_config.to_dict().items() if key not in CHECKPOINT_KEYS}
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**{**text, "tie_word_embeddings": tied}))
    qwen.generation_config.update(do_sample=True, temperature=0.7, top_p=0.8)  # as Qwen2.5-Instruct's
    qwen.save_pretrained(folder / "qwen")
    tokenizer = build_tiny_qwen2_tokenizer(vocab_size=text["vocab_size"])
    tokenizer.chat_template = QWEN_TEMPLATE
    tokenizer.save_pretrained(folder / "qwen")
    vision = {key: value for key, value in preset.vision_config.to_dict().items() if key not in CHECKPOINT_KEYS}
    HydraXTokModel(HydraXTokConfig(**{**vision, "patch_size": 8, "use_decompressor": True})).save_pretrained(
        folder / "tok"
    )
    return {"llm": folder / "qwen", "vision": folder / "tok"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    return build_from_pretrained(sources["vision"], sources["llm"], tmp_path_factory.mktemp("built") / "hydrax")


def test_report_accounts_for_every_source_tensor(built, sources):
    folder, report = built
    assert json.loads((folder / REPORT_FILE).read_text()) == report
    llm = Qwen2ForCausalLM.from_pretrained(sources["llm"]).state_dict()
    vision = HydraXTokModel.from_pretrained(sources["vision"]).state_dict()
    accounted = set(report["copied"].values()) | set(report["dropped"])
    assert accounted == {f"llm:{name}" for name in llm} | {f"vision:{name}" for name in vision}
    assert report["copied"]["model.language_model.embed_tokens.weight"] == "llm:model.embed_tokens.weight"
    assert report["copied"]["lm_head.weight"] == "llm:lm_head.weight" and report["tied"] == {}
    assert all(name.startswith("vision:decompressor.") for name in report["dropped"])
    assert report["initialised"] and all(name.startswith(NEW_MODULES) for name in report["initialised"])
    assert report["checks"]["text_logits_max_abs_diff"] == 0.0
    assert report["checks"]["vision_encode_max_abs_diff"] == 0.0
    assert report["checks"]["image_question_tokens"] > 0  # the saved processor's image question ran through the model
    assert report["chat_template"].endswith("it replaces the language model's own template")
    # the report and the card are uploaded by --push-to-hub: local sources go by folder name, not this machine's path
    assert report["sources"] == {"llm": f"local folder {sources['llm'].name}", "vision": report["sources"]["vision"]}
    assert report["sources"]["vision"].startswith(f"local folder {sources['vision'].name}")
    assert str(sources["vision"].parent) not in (folder / "README.md").read_text()


def test_built_model_equals_its_sources(built, sources):
    folder, _ = built
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model) is HydraXForConditionalGeneration and type(processor).__name__ == "HydraXProcessor"
    assert model.config.image_token_id == processor.image_token_id == HydraXConfig.from_preset("tiny").image_token_id
    assert model.config.text_config.vocab_size == len(processor.tokenizer) == 1024
    assert processor.chat_template == HYDRAX_CHAT_TEMPLATE
    # the processor cuts images into the vision tower's patches (8 pixels here, not the processors' default 16)
    assert processor.image_processor.patch_size == processor.video_processor.patch_size == 8
    assert processor.tokenizer.padding_side == "left"  # saved generation-ready; the training collator pads right
    question = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 48))}]}]
    inputs = processor.apply_chat_template(question, tokenize=True, return_dict=True, return_tensors="pt")
    (_, rows, columns), height_width = inputs["image_grid_thw"][0].tolist(), inputs["pixel_values"].shape[-2:]
    assert list(height_width) == [8 * rows, 8 * columns]
    with torch.no_grad():  # one placeholder per 8-pixel patch, as the model's vision tower counts them
        assert model(**inputs, logits_to_keep=1).logits.shape == (1, 1, model.config.text_config.vocab_size)
    assert model.generation_config.do_sample and model.generation_config.top_p == 0.8
    ids = processor.tokenizer("A fox jumps over the lazy dog.", return_tensors="pt").input_ids
    pixels = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        expected_logits = Qwen2ForCausalLM.from_pretrained(sources["llm"]).eval()(input_ids=ids).logits
        expected_latents = HydraXTokModel.from_pretrained(sources["vision"]).eval().encode(pixels).latents
        logits = model(input_ids=ids, logits_to_keep=0).logits
        latents = model.model.vision_tower.encode(pixels).latents
    assert torch.equal(logits, expected_logits)
    assert torch.equal(latents, expected_latents)


def test_tied_embeddings_become_the_lm_head(tmp_path):
    parts = write_sources(tmp_path, tied=True)
    folder, report = build_from_pretrained(parts["vision"], parts["llm"], tmp_path / "hydrax", dtype="bfloat16")
    assert report["tied"] == {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    assert "lm_head.weight" not in report["copied"] and report["checks"]["text_logits_max_abs_diff"] == 0.0
    model = HydraXForConditionalGeneration.from_pretrained(folder)
    assert model.config.tie_word_embeddings and model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_remote_code_loads_without_our_packages(built, tmp_path):
    folder, _ = built
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = BLOCK_OUR_PACKAGES + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        import sys  # the model's remote code imports only torch, transformers and its siblings: no diffusers
        assert "diffusers" not in sys.modules, "the remote-code model imported diffusers"
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        ids = processor.tokenizer("Hello there", return_tensors="pt").input_ids
        assert model(input_ids=ids, logits_to_keep=0).logits.shape == (1, ids.shape[1], 1024)
        print("ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(outside)}
    result = subprocess.run([sys.executable, "-c", script], cwd=outside, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def copy_without(folder: Path, destination: Path, *names: str) -> Path:
    shutil.copytree(folder, destination, ignore=shutil.ignore_patterns(*names))
    return destination


def test_bad_sources_stop_with_clear_errors(sources, tmp_path):
    output = tmp_path / "hydrax"
    cases = [
        (
            sources["vision"],
            copy_without(sources["llm"], tmp_path / "no-tok", "tokenizer*", "vocab.json"),
            "no tokeniz",
        ),
        (sources["vision"], sources["vision"], "--llm .* holds a 'hydrax_tok' checkpoint \\(HydraXTokModel\\)"),
        (sources["llm"], sources["llm"], "--vision .* holds a 'qwen2' checkpoint \\(Qwen2ForCausalLM\\)"),
        (sources["vision"], tmp_path / "missing" / "qwen", "--llm .*not a folder"),
    ]
    truncated = copy_without(sources["llm"], tmp_path / "truncated")
    shard = truncated / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    cases.append((sources["vision"], truncated, "model.safetensors is not a readable safetensors file.*truncated"))
    for vision, llm, message in cases:
        with pytest.raises(ValueError, match=message):
            build_from_pretrained(vision, llm, output)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["no-tok", "truncated"], "output or staging left"


def test_tokenizer_without_vision_tokens_is_refused(sources, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    llm = copy_without(sources["llm"], tmp_path / "plain-tok", "tokenizer*", "vocab.json", "merges.txt", "chat*")
    backend = Tokenizer(models.WordLevel({"hello": 0, "<unk>": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(llm)
    with pytest.raises(ValueError, match="has no '<\\|image_pad\\|>' token.*Qwen2.5's vision tokens"):
        build_from_pretrained(sources["vision"], llm, tmp_path / "hydrax")


def test_cli_force_report_and_push_to_hub_stand_in(built, sources, tmp_path, monkeypatch, capsys):
    """The push mirrors the folder: `delete_patterns="*"` drops what an earlier push left (a single model.safetensors
    beside a new sharded index was the file transformers loaded)."""
    folder, _ = built
    with pytest.raises(FileExistsError, match="--force"):
        build_from_pretrained(sources["vision"], sources["llm"], folder)
    calls, hub = [], tmp_path / "hub"

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, hub)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    args = ["--vision", sources["vision"], "--llm", sources["llm"], "--output", folder, "--force"]
    main([*map(str, args), "--push-to-hub", "me/hydrax-tiny", "--private"])
    out = capsys.readouterr().out
    assert "newly initialised: model.projector.linear_1.weight" in out and "dropped vision:decompressor." in out
    assert "uploaded" in out and "https://huggingface.co/me/hydrax-tiny/commit/0" in out
    assert calls[0] == ("create_repo", "me/hydrax-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][:2] == ("upload_folder", "me/hydrax-tiny") and calls[1][2]["delete_patterns"] == "*"
    uploaded = sorted(path.relative_to(hub) for path in hub.rglob("*") if path.is_file())
    assert uploaded == sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    assert all((hub / path).read_bytes() == (folder / path).read_bytes() for path in uploaded)
    assert 'model_id = "me/hydrax-tiny"' in (hub / "README.md").read_text()


def test_qwen2_5_7b_maps_onto_the_7b_preset_on_meta():
    qwen_config = Qwen2Config(**{key: value for key, value in QWEN2_5_7B_INSTRUCT.items() if key != "model_type"})
    preset = HydraXConfig.from_preset("hydrax-7b")
    tok_config = HydraXTokConfig(**{**preset.vision_config.to_dict(), "use_decompressor": True})
    config = derive_config(qwen_config, tok_config, QWEN2_5_SPECIAL_TOKEN_IDS)
    assert config.text_config.to_dict() == preset.text_config.to_dict()
    assert config.vision_config.to_dict() == preset.vision_config.to_dict()
    with torch.device("meta"):
        qwen, tok = Qwen2ForCausalLM(qwen_config), HydraXTokModel(tok_config)
    llm_shapes = {name: tuple(tensor.shape) for name, tensor in qwen.state_dict().items()}
    vision_shapes = {name: tuple(tensor.shape) for name, tensor in tok.state_dict().items()}
    target_shapes, tied = target_layout(preset)
    plan = plan_weights(llm_shapes, vision_shapes, target_shapes, tied)
    assert len(llm_shapes) == 339 and {f"llm:{name}" for name in llm_shapes} <= set(plan.copied.values())
    for target, origin in plan.copied.items():
        source, name = origin.split(":", 1)
        assert target_shapes[target] == (llm_shapes if source == "llm" else vision_shapes)[name], target
    assert target_shapes["model.language_model.embed_tokens.weight"] == (152064, 3584) and not plan.tied
    assert target_shapes["lm_head.weight"] == (152064, 3584)
    assert set(target_shapes) == set(plan.copied) | set(plan.initialised)
    assert all(origin.startswith("vision:decompressor.") for origin in plan.dropped)
    with pytest.raises(ValueError, match="lm_head.weight .* no source provides it"):
        plan_weights(
            {k: v for k, v in llm_shapes.items() if k != "lm_head.weight"}, vision_shapes, target_shapes, tied
        )
