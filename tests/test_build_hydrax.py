"""conversion/build_hydrax.py: complete offline checkpoints that load through both routes and run end to end."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard, ModelCardData
from test_build_from_pretrained import write_sources


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))

from build_hydrax import build_checkpoint, build_from_pretrained, default_base_models, main  # noqa: E402


def test_checkpoint_folder_is_complete(checkpoint):
    names = {path.name for path in checkpoint.iterdir()}
    for name in (
        "config.json",
        "model.safetensors",
        "README.md",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "modeling_hydrax.py",
        "modeling_hydrax_tok.py",
        "configuration_hydrax.py",
        "processing_hydrax.py",
        "model_index.json",
        "scheduler",
        "pipeline_hydrax.py",
    ):
        assert name in names, name
    assert len(list(checkpoint.rglob("*.safetensors"))) == 1, "one copy of the weights"
    assert not any(name.startswith(".") for name in names)
    assert not [p for p in checkpoint.parent.iterdir() if p.name.startswith(".hydrax-tiny")], "staging folder left"


def test_remote_code_end_to_end_without_our_packages(checkpoint, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert not [m for m in sys.modules if m.split(".")[0] in ("modeling_hydrax", "processing_hydrax")]
        image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
        content = [{{"type": "image", "image": image}}, {{"type": "text", "text": "What?"}}]
        question = [{{"role": "user", "content": content}}]
        inputs = processor.apply_chat_template(question, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 5, out.shape
        text = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])
        t2i = [{{"role": "user", "content": [{{"type": "text", "text": "A cat"}}]}},
               {{"role": "assistant", "content": [{{"type": "image", "height": 64, "width": 64}}]}}]
        inputs = processor.apply_chat_template(t2i, tokenize=True, return_dict=True, return_tensors="pt")
        result = model(**inputs, target_pixel_values=torch.rand(1, 3, 64, 64) * 2 - 1, labels=inputs["input_ids"])
        assert result.velocity.shape == (1, 8, 1, 4, 4) and torch.isfinite(result.loss)
        print("ok", type(model).__module__)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok transformers_modules" in result.stdout


def test_loads_as_a_diffusers_pipeline(checkpoint):
    pipe = DiffusionPipeline.from_pretrained(checkpoint, trust_remote_code=True)
    assert type(pipe).__name__ == "HydraXPipeline" and pipe.scheduler.config.use_dynamic_shifting
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", height=32, width=32, num_inference_steps=1, output_type="pt").images
    assert image.shape == (1, 3, 32, 32)


def test_refuses_to_overwrite_and_needs_a_tokenizer_for_real_presets(checkpoint, tmp_path):
    with pytest.raises(FileExistsError, match="--force"):
        build_checkpoint("tiny", checkpoint)
    with pytest.raises(ValueError, match="--tokenizer"):
        build_checkpoint("hydrax-1.5b", tmp_path / "real")
    assert not (tmp_path / "real").exists()


def test_cli_help_and_errors(tmp_path):
    script = str(ROOT / "conversion" / "build_hydrax.py")
    assert "--preset" in subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True).stdout
    bad = subprocess.run(
        [sys.executable, script, "--preset", "hydrax-7b", "--random-init", "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode == 2 and "needs a Qwen2.5 tokenizer" in bad.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "pass --random-init --preset NAME for random weights, or --vision PATH --llm PATH_OR_ID"),
        (["--random-init", "--preset", "tiny", "--llm", "Qwen/Qwen2.5-7B-Instruct"], "not both"),
        (["--random-init"], "--random-init needs --preset"),
        (["--llm", "Qwen/Qwen2.5-7B-Instruct"], "needs both --vision and --llm; missing --vision"),
        (
            ["--vision", "v", "--llm", "Qwen/Qwen2.5-7B-Instruct", "--preset", "tiny"],
            "--preset and --tokenizer go with",
        ),
        (["--random-init", "--preset", "tiny", "--private"], "--private goes with --push-to-hub"),
        (["--random-init", "--preset", "tiny", "--push-to-hub", "me/hydrax tiny"], "not a Hub repo id"),  # after it
        (["--vision", "{tmp}", "--llm", "Qwen/Qwen2.5-7B-Instruct"], "--vision {tmp}: a folder without config.json"),
    ],
)
def test_cli_takes_exactly_one_source_of_weights(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(tmp=tmp_path) for arg in args] + ["--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_card_base_model_holds_hub_ids_never_local_paths(tmp_path):
    """Local --vision and --llm folders put no path into `base_model`; the Hydra-XTok folder's own card contributes
    the Hub id it records (the SigLIP 2 it was converted from), and a Hub id --llm is named as given."""
    parts = write_sources(tmp_path)
    siglip = "google/siglip2-so400m-patch16-naflex"
    ModelCard.from_template(ModelCardData(base_model=[siglip])).save(parts["vision"] / "README.md")
    folder, _ = build_from_pretrained(str(parts["vision"]), str(parts["llm"]), tmp_path / "hydrax", model_id="me/x")
    data = ModelCard.load(folder / "README.md").data
    assert data.base_model == [siglip]
    assert default_base_models("Qwen/Qwen2.5-7B-Instruct", parts["vision"]) == ["Qwen/Qwen2.5-7B-Instruct", siglip]
    assert default_base_models(str(parts["llm"]), tmp_path) == []
