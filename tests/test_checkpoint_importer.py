"""conversion/checkpoint_importer.py: rule semantics, strictness, safe reading and its command line."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoProcessor, GenerationConfig

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration, HydraXTokModel


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))

from checkpoint_importer import (  # noqa: E402
    CheckpointImportError,
    import_checkpoint,
    main,
    module_cover,
    plan_import,
    read_checkpoint,
    staged_folder,
    write_model,
)


class Pickled:
    """Not a tensor: `torch.load(weights_only=True)` must refuse to rebuild it."""


def target_model():
    torch.manual_seed(0)
    return nn.ModuleDict({"encoder": nn.Linear(4, 3), "head": nn.Linear(3, 2)})


def source_tensors():
    return {
        "blocks.0.w": torch.randn(3, 4),
        "blocks.0.b": torch.randn(3),
        "out.w": torch.randn(2, 3),
        "out.b": torch.randn(2),
        "ema.out.w": torch.randn(2, 3),
    }


RULES = [
    (r"blocks\.0\.w", "encoder.weight"),
    (r"blocks\.0\.b", "encoder.bias"),
    (r"ema\..*", None),
    (r"out\.(?P<kind>w|b)", r"head.\g<kind>"),
    (r"out\.w", "never.used"),
]


def test_rules_first_full_match_wins_groups_expand_and_none_drops():
    model, source = target_model(), source_tensors()
    rules = [*RULES[:3], (r"out\.w", "head.weight"), (r"out\.b", "head.bias"), RULES[4]]
    plan = import_checkpoint(source, model, rules)
    assert plan.sources["head.weight"] == "out.w", "the first matching rule wins over the later one"
    assert plan.dropped == {"ema.out.w": r"ema\..*"}
    assert torch.equal(model["encoder"].weight, source["blocks.0.w"])
    assert torch.equal(model["head"].bias, source["out.b"])
    # Groups expand, and a pattern must match the whole key: "out.w" does not match "xout.w".
    plan = plan_import({"xout.w": torch.zeros(2, 3)}, model.state_dict(), [(r"out\.(w)", r"head.\1eight")])
    assert plan.unmapped == ["xout.w"]
    plan = plan_import({"out.w": torch.zeros(2, 3)}, model.state_dict(), [(r"out\.(w)", r"head.\1eight")])
    assert plan.sources == {"head.weight": "out.w"}


def test_strict_lists_unmapped_and_missing_keys_and_non_strict_reports_them():
    model, source = target_model(), source_tensors()
    source["stray.tensor"] = torch.zeros(1)
    rules = [RULES[0], RULES[2], (r"out\.w", "head.weight")]
    with pytest.raises(CheckpointImportError) as error:
        import_checkpoint(source, model, rules)
    message = str(error.value)
    assert "match no rule" in message and "blocks.0.b" in message and "stray.tensor" in message
    assert "filled by no source tensor" in message and "encoder.bias" in message and "head.bias" in message
    before = model["encoder"].bias.clone()
    plan = import_checkpoint(source, model, rules, strict=False)
    assert plan.unmapped == ["blocks.0.b", "out.b", "stray.tensor"]
    assert plan.missing == ["encoder.bias", "head.bias"]
    assert torch.equal(model["encoder"].bias, before) and torch.equal(model["head"].weight, source["out.w"])
    plan = import_checkpoint(source, model, [*rules, (r".*", None)], new=[r".*\.bias"])
    assert plan.new == ["encoder.bias", "head.bias"] and not plan.missing


@pytest.mark.parametrize(
    "source, rules, message",
    [
        (
            {"a": torch.zeros(3, 5)},
            [("a", "encoder.weight")],
            "'a' → 'encoder.weight': the source has shape (3, 5), the target (3, 4)",
        ),
        ({"a": torch.zeros(3, 4, dtype=torch.int64)}, [("a", "encoder.weight")], "dtype torch.int64 cannot become"),
        ({"a": torch.zeros(3), "b": torch.zeros(3)}, [("[ab]", "encoder.bias")], "'a' and 'b' both map to"),
        ({"a": torch.zeros(3)}, [("a", "decoder.bias")], "'a' maps to 'decoder.bias', which the target model"),
        ({"a": torch.zeros(3)}, [("(", "x")], "Rule 0: '(' is not a valid regex"),
        ({"a": torch.zeros(3)}, [("a", 3)], "the replacement must be a string or None"),
        # a replacement naming a group its pattern lacks was a raw re.error traceback
        ({"ab": torch.zeros(3)}, [("a", "x"), ("(a)(b)", r"encoder.\3")], "Rule 1 ('(a)(b)' → 'encoder.\\\\3'): the"),
        ({"ab": torch.zeros(3)}, [("(a)b", r"encoder.\g<name>")], "refer only to the pattern's groups (\\1 … \\1"),
    ],
)
def test_impossible_imports_are_errors_even_when_not_strict(source, rules, message):
    with pytest.raises(CheckpointImportError) as error:
        import_checkpoint(source, target_model(), rules, strict=False)
    assert message in str(error.value)


def test_a_bad_new_pattern_is_an_error_naming_it():
    with pytest.raises(CheckpointImportError, match=re.escape(r"`new`: 'decoder\\.(' is not a valid regex")):
        import_checkpoint({"a": torch.zeros(3)}, target_model(), [("a", None)], [r"decoder\.("], strict=False)


def test_transforms_are_planned_on_meta_and_applied_on_load():
    def transposed(tensor):
        return tensor.t()

    source = {"w": torch.randn(4, 3)}
    model = target_model()
    plan = plan_import({"w": source["w"].to("meta")}, model.state_dict(), [("w", "encoder.weight")], (".*",), {})
    assert "shape (4, 3), the target (3, 4)" in plan.errors[0]
    plan = import_checkpoint(source, model, [("w", "encoder.weight")], [".*"], {r"encoder\.weight": transposed})
    assert plan.shapes == {"encoder.weight": (3, 4)}
    assert plan.summary()["transforms"] == {"encoder.weight": "transposed"}
    assert torch.equal(model["encoder"].weight, source["w"].t())
    assert module_cover(model, plan.new) == ["head", "encoder.bias"], "whole modules, then stray tensors"


def test_reading_pickles_only_with_weights_only(tmp_path):
    tensors = {"out.w": torch.randn(2, 3)}
    torch.save({"model": tensors, "step": 3}, tmp_path / "trainer.pt")
    assert torch.equal(read_checkpoint(tmp_path / "trainer.pt", "model")["out.w"], tensors["out.w"])
    with pytest.raises(CheckpointImportError, match="entries that are not tensors: model, step"):
        read_checkpoint(tmp_path / "trainer.pt")
    with pytest.raises(CheckpointImportError, match="no entry 'weights'"):
        read_checkpoint(tmp_path / "trainer.pt", "weights")
    torch.save({"out.w": tensors["out.w"], "object": Pickled()}, tmp_path / "unsafe.bin")
    with pytest.raises(CheckpointImportError, match=r"weights_only=True\) refused it"):
        read_checkpoint(tmp_path / "unsafe.bin")


def test_reading_shards_and_naming_broken_ones(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3)}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert {name: tensor.shape for name, tensor in read_checkpoint(tmp_path).items()} == {"a": (2,), "b": (3,)}
    with pytest.raises(CheckpointImportError, match="no state dict entries to pick 'model' from; drop the state"):
        read_checkpoint(tmp_path, "model")  # was silently ignored
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(CheckpointImportError, match=f"{shard} is not a readable safetensors file"):
        read_checkpoint(tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointImportError, match="lists the shard model-00002-of-00002.safetensors, which is"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointImportError, match="empty holds no weights; pass the weights file itself, or a"):
        read_checkpoint(tmp_path / "empty")


def test_a_folder_of_one_weights_file_or_index_of_another_name_is_read(tmp_path):
    """The docs promise a folder "with a single such file or a sharded one": only the standard names were read."""
    trainer, ema, sharded = (tmp_path / name for name in ("trainer", "ema", "sharded"))
    for folder in (trainer, ema, sharded):
        folder.mkdir()
    torch.save({"model": {"a": torch.ones(2)}}, trainer / "step-100.pt")
    assert torch.equal(read_checkpoint(trainer, "model")["a"], torch.ones(2))
    save_file({"b": torch.zeros(3)}, ema / "ema.safetensors")
    assert list(read_checkpoint(ema)) == ["b"]
    save_file({"a": torch.zeros(2)}, sharded / "ema-1.safetensors")
    save_file({"b": torch.ones(3)}, sharded / "ema-2.safetensors")
    weight_map = {"a": "ema-1.safetensors", "b": "ema-2.safetensors"}
    (sharded / "ema.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert sorted(read_checkpoint(sharded)) == ["a", "b"]
    (sharded / "ema.safetensors.index.json").unlink()
    with pytest.raises(CheckpointImportError, match=r"holds 2 weights files \(ema-1.safetensors, ema-2.safetensors\)"):
        read_checkpoint(sharded)


def test_command_line_imports_a_training_state_dict(tok_config, tmp_path, capsys):
    reference = HydraXTokModel(tok_config).eval()
    reference.config.save_pretrained(tmp_path / "config")
    state = {f"module.{name}": tensor for name, tensor in reference.state_dict().items()}
    state |= {f"ema.{name}": tensor for name, tensor in reference.state_dict().items() if "decoder" in name}
    torch.save({"model": state}, tmp_path / "step-100.pt")
    rules = [[r"module\.decompressor\..*", None], [r"module\.(.*)", r"\1"], [r"ema\..*", None]]
    rules = {"rules": rules, "new": [r"decompressor\..*"]}
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    output = tmp_path / "imported"
    arguments = ["--source", tmp_path / "step-100.pt", "--rules", tmp_path / "rules.json"]
    arguments += ["--model-config", tmp_path / "config", "--output", output, "--state-dict-key", "model"]
    main(list(map(str, arguments)))
    assert "newly initialised: decompressor" in capsys.readouterr().out
    imported, expected = HydraXTokModel.from_pretrained(output).state_dict(), reference.state_dict()
    assert all(torch.equal(imported[name], tensor) for name, tensor in expected.items() if "decompressor" not in name)
    report = json.loads((output / "conversion_report.json").read_text())
    assert report["new_modules"] == ["decompressor"] and report["source_tensors"] == len(state)
    assert report["mapped_tensors"] == len(expected) - report["new_tensors"] == len(state) - report["dropped_tensors"]
    assert report["checks"][0].startswith("reloaded from disk: all")
    with pytest.raises(SystemExit):
        main(list(map(str, arguments)))
    assert f"--output {output}: already exists; pass --force" in capsys.readouterr().err
    (tmp_path / "rules.json").write_text(json.dumps({"rules": [[r"module\.(.*)", r"\1"]]}))
    with pytest.raises(SystemExit):
        main([*map(str, arguments), "--force"])
    assert "ema.decoder" in capsys.readouterr().err and output.is_dir(), "the old output survives a failed import"


def test_write_model_refuses_an_existing_folder_without_force(tok_config, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        write_model(HydraXTokModel(tok_config), tmp_path / "out", {})


def test_staged_folder_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with staged_folder(output) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in output.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging or previous folder left behind"

    real_rename = Path.rename

    def failing_rename(self, target):
        if Path(target) == output and "previous" not in self.name:
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        with staged_folder(output) as staging:
            (staging / "newer.txt").write_text("newer")
    assert sorted(p.name for p in output.iterdir()) == ["new.txt"], "the previous folder is restored"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_folder_replaces_what_a_symbolic_link_points_to(tmp_path):
    """An output folder that links to a bigger disk: the new folder lands there and the link stays."""
    disk, links = tmp_path / "big-disk", tmp_path / "outputs"
    (disk / "hydrax").mkdir(parents=True)
    (disk / "hydrax" / "old.txt").write_text("old")
    links.mkdir()
    (links / "hydrax").symlink_to(disk / "hydrax")
    with staged_folder(links / "hydrax") as staging:
        (staging / "new.txt").write_text("new")
    assert (links / "hydrax").is_symlink() and sorted(p.name for p in (links / "hydrax").iterdir()) == ["new.txt"]
    assert [p.name for p in disk.iterdir()] == ["hydrax"], "no staging or previous folder left on the disk"
    assert [p.name for p in links.iterdir()] == ["hydrax"]


def test_a_terminated_save_leaves_no_staging_folder_and_the_old_output(tmp_path):
    """SIGTERM (SLURM, Kubernetes, `timeout`) in the middle of a staged save exits through the cleanup."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / "conversion")!r})
        from checkpoint_importer import staged_folder
        with staged_folder(Path({str(tmp_path / "out")!r})) as staging:
            (staging / "half-written.safetensors").write_text("...")
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no hidden staging folder left behind"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.txt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)])
def test_staged_folder_gets_the_mode_of_a_plain_mkdir(tmp_path, umask, mode):
    """The folder and its files as `mkdir` / `open` make them: transformers writes model.safetensors 0600, which
    left a built checkpoint's weights unreadable to other users and serving containers."""
    previous = os.umask(umask)
    try:
        with staged_folder(tmp_path / "out") as staging:
            (staging / "metrics.json").write_text("{}")
            save_file({"w": torch.zeros(2)}, staging / "model.safetensors")
            (staging / "model.safetensors").chmod(0o600)
            (staging / "processor").mkdir(mode=0o700)
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode, "not mkdtemp's private 0700"
    assert (tmp_path / "out" / "processor").stat().st_mode & 0o777 == mode
    for name in ("metrics.json", "model.safetensors"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == mode & 0o666, name


def test_a_tied_lm_head_is_filled_through_the_embedding(tmp_path):
    """A tied Hydra-X (hydrax-1.5b ties its embeddings) saves no lm_head.weight; strict import still succeeds."""
    text_config = {**HydraXConfig.from_preset("tiny").text_config.to_dict(), "tie_word_embeddings": True}
    config = HydraXConfig.from_preset("tiny", text_config=text_config)
    HydraXForConditionalGeneration(config).save_pretrained(tmp_path / "release")
    source = read_checkpoint(tmp_path / "release")
    embedding = "model.language_model.embed_tokens.weight"
    assert "lm_head.weight" not in source
    model = HydraXForConditionalGeneration(config)
    plan = import_checkpoint(source, model, [(r"(.*)", r"\1")])
    assert plan.tied == {"lm_head.weight": embedding} and not plan.missing
    assert plan.summary()["tied"] == {"lm_head.weight": embedding}
    assert torch.equal(model.lm_head.weight, source[embedding])
    with pytest.raises(
        CheckpointImportError, match=f"'head' maps to 'lm_head.weight', which the target model ties to '{embedding}'"
    ):
        import_checkpoint({**source, "head": source[embedding]}, model, [("head", "lm_head.weight"), (r"(.*)", r"\1")])


def test_command_line_keeps_the_processor_and_generation_config_of_a_checkpoint_folder(checkpoint, tmp_path, capsys):
    import processing_hydrax  # noqa: F401  (registers the Hydra-X processor with AutoProcessor)

    (tmp_path / "rules.json").write_text(json.dumps({"rules": [["(.*)", r"\1"]]}))
    output = tmp_path / "imported"
    arguments = ["--source", checkpoint, "--rules", tmp_path / "rules.json", "--model-config", checkpoint]
    main(list(map(str, [*arguments, "--output", output])))
    printed = capsys.readouterr().out
    assert f"kept from {checkpoint}: " in printed and "tokenizer.json" in printed
    processor, expected = AutoProcessor.from_pretrained(output), AutoProcessor.from_pretrained(checkpoint)
    assert type(processor).__name__ == "HydraXProcessor" and processor.chat_template == expected.chat_template
    assert processor.tokenizer.get_vocab() == expected.tokenizer.get_vocab()
    generation, expected_generation = (
        GenerationConfig.from_pretrained(output),
        GenerationConfig.from_pretrained(checkpoint),
    )
    assert generation.max_new_tokens == expected_generation.max_new_tokens == 128
    assert generation.eos_token_id == expected_generation.eos_token_id
    added = json.loads((output / "conversion_report.json").read_text())["added_files"]
    assert {"tokenizer.json", "chat_template.jinja", "model_index.json", "scheduler/scheduler_config.json"} <= set(
        added
    )
    assert not [name for name in added if name.endswith(".safetensors")] and "README.md" not in added
    assert not (output / "README.md").exists(), "the source's card describes other weights"
