"""conversion/model_card_hydrax.py: cards that parse back with their metadata, and usage snippets that run as written
against the folder they name."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from modeling_hydrax import HydraXConfig


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))

from model_card_hydrax import (  # noqa: E402
    HYDRAX_TAGS,
    WARNINGS,
    build_adapter_card,
    build_model_card,
    eval_results_from_json,
    main,
)


EVAL_RESULTS = [
    {
        "task_type": "text-to-image",
        "dataset_type": "geneval",
        "dataset_name": "GenEval",
        "metric_type": "accuracy",
        "metric_name": "GenEval overall",
        "metric_value": 0.12,
    }
]


def python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_random_init_card_parses_back_and_warns(checkpoint):
    text = (checkpoint / "README.md").read_text()
    data = ModelCard(text).data.to_dict()
    assert data["pipeline_tag"] == "any-to-any" and data["library_name"] == "transformers"
    assert data["tags"] == HYDRAX_TAGS and data["license"] == "apache-2.0"
    body = text.split("---", 2)[2]
    assert body.index("**Random weights.**") < body.index("## Model") and "Random weights" in body.split("## Limit")[1]
    assert len(python_snippets(text)) == 3


def test_snippets_run_against_the_folder(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save("photo.jpg")
    for code in python_snippets((checkpoint / "README.md").read_text()):
        assert f'model_id = "{checkpoint.resolve()}"' in code
        exec(compile(code, "README.md", "exec"), {"__name__": "__snippet__"})
    assert Image.open("fox.png").size == (64, 64) and Image.open("night.png").size == (64, 64)
    assert Image.open("fox.gif").n_frames == 17


def test_converted_card_with_training_and_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    card = build_model_card(
        "me/hydrax-7b",
        HydraXConfig.from_preset("hydrax-7b"),
        "converted",
        base_models=["Qwen/Qwen2.5-7B-Instruct", "google/siglip2-so400m-patch16-naflex"],
        sources={"language model (Qwen2.5)": "Qwen/Qwen2.5-7B-Instruct"},
        training_details="Stage 1: 300k steps at 256 px.",
        eval_results=eval_results_from_json(tmp_path / "results.json"),
    )
    data = ModelCard(str(card)).data
    assert data.base_model == ["Qwen/Qwen2.5-7B-Instruct", "google/siglip2-so400m-patch16-naflex"]
    assert data.model_name == "hydrax-7b" and data.eval_results[0].metric_value == 0.12
    assert "Not trained as a multimodal model yet" in card.text and "Stage 1: 300k steps" in card.text
    assert "| GenEval | GenEval overall | 0.12 |" in card.text and "height=256" in card.text
    assert "hidden 3584, 28 layers, 28 heads (4 KV), vocabulary 152064, untied" in card.text
    trained = build_model_card("me/hydrax-7b", HydraXConfig.from_preset("hydrax-7b"), "trained")
    assert "[!WARNING]" not in trained.text
    with pytest.raises(ValueError, match="`weights` must be one of"):
        build_model_card("me/x", HydraXConfig.from_preset("tiny"), "pretrained")


def test_cli_rewrites_a_folder_card(checkpoint, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    (tmp_path / "training.md").write_text("Fine-tuned for 10 steps.")
    readme = (checkpoint / "README.md").read_text()
    try:
        args = ["--model", checkpoint, "--model-id", "me/tiny", "--base-model", "Qwen/Qwen2.5-1.5B"]
        args += ["--eval-results", tmp_path / "results.json", "--training-details", tmp_path / "training.md"]
        main(list(map(os.fspath, args)))
        card = ModelCard.load(checkpoint / "README.md")
        assert card.data.base_model == ["Qwen/Qwen2.5-1.5B"] and card.data.eval_results[0].dataset_name == "GenEval"
        assert "Fine-tuned for 10 steps." in card.text and 'model_id = "me/tiny"' in card.text
        assert WARNINGS["random"] in card.text  # the built card's "random weights" warning stays
        main(list(map(os.fspath, ["--model", checkpoint, "--model-id", "me/tiny-2"])))  # details and results kept
        card = ModelCard.load(checkpoint / "README.md")
        assert "## Training details\n\nFine-tuned for 10 steps." in card.text and 'model_id = "me/tiny-2"' in card.text
        assert card.data.eval_results[0].dataset_name == "GenEval"
        assert card.data.base_model == ["Qwen/Qwen2.5-1.5B"] and WARNINGS["random"] in card.text
        main(list(map(os.fspath, ["--model", checkpoint, "--weights", "trained"])))  # said explicitly: replaced
        assert WARNINGS["random"] not in (checkpoint / "README.md").read_text()
        sources = {"language model (Qwen2.5)": "Qwen/Qwen2.5-7B-Instruct", "vision tower (Hydra-XTok)": "tok"}
        config = HydraXConfig.from_pretrained(checkpoint)
        build_model_card("me/x", config, "converted", sources=sources).save(checkpoint / "README.md")
        main(list(map(os.fspath, ["--model", checkpoint, "--model-id", "me/y"])))  # a converted card's table stays
        text = (checkpoint / "README.md").read_text()
        assert WARNINGS["converted"] in text and "| vision tower (Hydra-XTok) | `tok` |" in text
        # a card whose warning an earlier version worded otherwise is found by its headline
        older = text.replace(WARNINGS["converted"], WARNINGS["converted"].split("**")[1] + " Older wording.")
        (checkpoint / "README.md").write_text(older)
        main(list(map(os.fspath, ["--model", checkpoint, "--model-id", "me/z"])))
        assert WARNINGS["converted"] in (checkpoint / "README.md").read_text()
    finally:
        (checkpoint / "README.md").write_text(readme)
    (tmp_path / "bad.json").write_text(json.dumps([{"dataset_name": "x"}]))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(checkpoint), "--eval-results", str(tmp_path / "bad.json")])
    assert exit_info.value.code == 2 and "each entry needs task_type" in capsys.readouterr().err


@pytest.fixture(scope="module")
def adapter(checkpoint, tmp_path_factory):
    """A PEFT LoRA adapter folder of the tiny checkpoint (random updates, a full copy of the flow head)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("adapter") / "hydrax-tiny-lora"
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["flow_head"], init_lora_weights=False)
    get_peft_model(AutoModel.from_pretrained(checkpoint), lora).save_pretrained(folder)
    return folder


def test_an_adapter_card_parses_back_and_its_snippets_run(adapter, checkpoint, tmp_path, monkeypatch, capsys):
    """`--model` on an adapter folder writes a PEFT card whose snippets apply the adapter to the base checkpoint
    (its diffusers pipeline and its transformers model, both through remote code) and run as written."""
    main(["--model", str(adapter), "--base-id", str(checkpoint), "--base-model", "me/hydrax-tiny"])
    assert capsys.readouterr().out.strip() == f"wrote {adapter / 'README.md'}"
    text = (adapter / "README.md").read_text()
    data = ModelCard(text).data
    assert data.library_name == "peft" and data.pipeline_tag == "any-to-any" and data.base_model == ["me/hydrax-tiny"]
    assert data.tags == [*HYDRAX_TAGS, "lora", "peft"]
    assert "rank 4 (alpha 8)" in text and "full fine-tuned copies of `flow_head`" in text
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save("photo.jpg")
    snippets = python_snippets(text)
    assert len(snippets) == 2
    for code in snippets:
        assert f'"{checkpoint}"' in code and f'"{adapter.resolve()}"' in code
        exec(compile(code, "README.md", "exec"), {"__name__": "__snippet__"})
    assert Image.open("fox.png").size == (64, 64)
    assert capsys.readouterr().out.count("\n") == 1, "the understanding snippet prints one answer (random: empty)"
    # a rewrite for another Hub id keeps the card's base_model and licence unless given again
    main(["--model", str(adapter), "--base-id", str(checkpoint), "--base-model", "me/hydrax-tiny", "--license", "mit"])
    main(["--model", str(adapter), "--base-id", str(checkpoint), "--model-id", "me/lora"])
    data = ModelCard.load(adapter / "README.md").data
    assert data.base_model == ["me/hydrax-tiny"] and data.license == "mit"
    # a rewrite naming the base by its Hub id makes that id the base_model, not the one the old card named
    config = HydraXConfig.from_pretrained(checkpoint)
    monkeypatch.setattr(HydraXConfig, "from_pretrained", lambda name, **kwargs: config)
    lora = (adapter / "adapter_config.json").read_text()
    main(["--model", str(adapter), "--base-id", "you/hydrax-7b"])
    data = ModelCard.load(adapter / "README.md").data
    assert data.base_model == ["you/hydrax-7b"] and data.license == "mit"
    # ... and the adapter's config, which PEFT's AutoPeftModel loads the base from (it kept the local path)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "you/hydrax-7b"
    (adapter / "adapter_config.json").write_text(lora)


def test_a_local_base_path_in_an_adapters_card_is_not_carried_as_base_model(adapter, checkpoint, tmp_path):
    """PEFT's own card names a local base by its path: the rewrite carried it into the card's base_model."""
    folder = shutil.copytree(adapter, tmp_path / "lora")
    (folder / "README.md").write_text(f"---\nbase_model: {checkpoint}\nlibrary_name: peft\n---\n")
    main(["--model", str(folder), "--base-id", str(checkpoint)])
    assert ModelCard.load(folder / "README.md").data.base_model is None


def test_an_adapter_cards_base_model_defaults_to_its_base_hub_id_never_a_local_folder(adapter, checkpoint):
    """An adapter of a Hub checkpoint names it as `base_model` (the card had none, so the Hub did not list the
    adapter under its base although the id was known); a local base folder is never named; given ones win."""
    config, lora = HydraXConfig.from_pretrained(checkpoint), json.loads((adapter / "adapter_config.json").read_text())
    cards = {
        "hub base": build_adapter_card("me/lora", "me/hydrax-tiny", config, lora),
        "local base": build_adapter_card("me/lora", str(checkpoint), config, lora),
        "given": build_adapter_card("me/lora", "me/hydrax-tiny", config, lora, base_models=["me/other"]),
    }
    bases = {case: ModelCard(str(card)).data.base_model for case, card in cards.items()}
    assert bases == {"hub base": ["me/hydrax-tiny"], "local base": None, "given": ["me/other"]}


def test_an_adapter_whose_base_cannot_be_read_is_a_command_line_error(adapter, tmp_path, capsys):
    missing = tmp_path / "no-such-base"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(adapter), "--base-id", str(missing)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--base-id {missing}: cannot read the base checkpoint's config" in error
    assert "pass --base-id with its folder, or a Hub id this machine can reach" in error
