"""Every script's command line: `--help` documents every option, and bad paths and values stop it up front, naming
the option and the value."""

import argparse
import json
import runpy
import sys
from pathlib import Path

import pytest

from script_args import check_adapter, check_new_output_folder, check_tokenizer_folder


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(  # every file of these folders that runs as a script (evaluation/metrics_hydrax.py is a module)
    str(path.relative_to(ROOT))
    for folder in ("examples", "conversion", "bench", "evaluation")
    for path in (ROOT / folder).glob("*.py")
    if '__name__ == "__main__"' in path.read_text()
)


def run_in_process(script, args, monkeypatch) -> tuple[int, list[argparse.ArgumentParser]]:
    """Run `script` as `__main__` with `args` until argparse exits; its exit code and the parsers it used."""
    parsers, parse_args = [], argparse.ArgumentParser.parse_args

    def recording_parse_args(parser, *rest, **kwargs):
        parsers.append(parser)
        return parse_args(parser, *rest, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", recording_parse_args)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *map(str, args)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put their folders on it
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    return exit_info.value.code, parsers


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_option(script, monkeypatch, capsys):
    code, parsers = run_in_process(script, ["--help"], monkeypatch)
    assert code == 0 and len(parsers) == 1
    help_text = capsys.readouterr().out
    listed = [action for action in parsers[0]._actions if action.help is not argparse.SUPPRESS]
    undocumented = [action.option_strings for action in listed if not (action.help or "").strip()]
    assert not undocumented, f"{script}: options without help text: {undocumented}"
    for action in listed:
        assert action.option_strings[-1] in help_text, (script, action.option_strings)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    return path


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "examples/run_hydrax.py",
            ["--tokenizer", "{missing}"],
            "--tokenizer {missing}: no such folder; pass a folder written by examples/quickstart.py or a Hydra-XTok "
            "checkpoint",
        ),
        ("examples/run_hydrax.py", ["--model", "{tmp}"], "--model {tmp}: a folder without config.json; pass a"),
        ("examples/run_hydrax.py", ["--output-dir", "{file}/out"], "--output-dir {file}/out: {file} is a file"),
        ("examples/run_hydrax.py", ["--size", "0"], "--size must be a positive multiple of 16, got 0"),
        ("examples/run_hydrax.py", ["--sampling-steps", "0"], "--sampling-steps ≥ 1, got 150 and 0"),
        ("examples/quickstart.py", ["--model", "{missing}"], "--model {missing}: no such folder; pass a folder"),
        ("examples/quickstart.py", ["--model", "{file}"], "--model {file}: not a folder; pass a folder"),
        ("examples/quickstart.py", ["--output-dir", "{file}"], "--output-dir {file}: {file} is a file, not a folder"),
        (
            "conversion/build_hydrax.py",
            ["--preset", "hydrax-7b", "--random-init", "--output", "{tmp}/out", "--tokenizer", "{missing}"],
            "--tokenizer {missing}: no such folder; pass a local Qwen2.5 tokenizer folder",
        ),
        (
            "conversion/build_hydrax.py",
            ["--preset", "tiny", "--random-init", "--output", "{file}/out"],
            "--output {file}/out: {file} is a file, not a folder",
        ),
        ("bench/bench_tokenizer.py", ["--output", "{tmp}"], "--output {tmp}: the file name must end in .json"),
        ("bench/bench_tokenizer.py", ["--output", "{folder_json}"], "--output {folder_json}: a folder; pass a file"),
        ("bench/bench_tokenizer.py", ["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        ("bench/bench_tokenizer.py", ["--size", "0"], "--size must be a positive multiple of 16, got 0"),
        ("bench/bench_tokenizer.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        ("bench/bench_tokenizer.py", ["--frames", "-3"], "clip lengths must be 1 + 4k frames (k ≥ 0), got -3"),
        ("bench/bench_tokenizer.py", ["--heads", "5"], "--hidden-size 384 must be a multiple of --heads 5"),
        ("bench/bench_generate.py", ["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        ("bench/bench_generate.py", ["--image-size", "0"], "--image-size must be a positive multiple of 16, got 0"),
        ("bench/bench_generate.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        ("bench/bench_generate.py", ["--layers", "0"], "--layers must be ≥ 1, got 0"),
        ("bench/bench_understanding.py", ["--layers", "0"], "--layers must be ≥ 1, got 0"),
        ("bench/bench_understanding.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        ("bench/bench_pipelines.py", ["--layers", "0"], "--layers must be ≥ 1, got 0"),
        ("bench/bench_pipelines.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        ("bench/bench_pipelines.py", ["--short-prompt", "8", "--long-prompt", "8"], "--short-prompt < --long-prompt"),
        (
            "bench/bench_pipelines.py",
            ["--hidden-size", "200"],
            "--hidden-size 200: does not split into 3 attention heads of an even width; pass 32 or a multiple of 64",
        ),
        ("bench/bench_lora.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        (  # the model's rule, which the stream workers' failure hid (only "exit status 1" was printed)
            "bench/bench_tokenizer.py",
            ["--hidden-size", "6", "--heads", "2", "--intermediate-size", "8"],
            "give no valid Hydra-XTok: Class validation error",
        ),
        ("bench/bench_compile.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        ("bench/bench_lm_head.py", ["--vocab-size", "500"], "--vocab-size 500: must be ≥ 1024"),
        ("bench/bench_lm_head.py", ["--hidden-size", "0"], "--hidden-size must be ≥ 1, got 0"),
        ("bench/bench_lm_head.py", ["--threads", "0"], "--threads must be ≥ 1, got 0"),
        (
            "bench/gpu_check_training.py",
            ["--device", "cpu", "--size", "24", "--report", "{tmp}/r.md"],
            "--size must be a positive multiple of 16, got 24",
        ),
        ("examples/quickstart.py", ["--seed", "-1"], "--seed must be ≥ 0, got -1"),
        ("examples/toy_world.py", ["--seed", "-1"], "--seed must be ≥ 0, got -1"),
        ("examples/tokenizer_stages.py", ["--seed", "-1"], "--seed must be ≥ 0, got -1"),
        ("examples/tokenizer_stages.py", ["--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
        ("examples/tokenizer_stages.py", ["--size", "16"], "--size must be a multiple of 16 of at least 32"),
        ("examples/tokenizer_stages.py", ["--stage1-minutes", "0"], "--stage1-minutes must be > 0, got 0.0"),
        (
            "examples/tokenizer_stages.py",
            ["--stage2-minutes", "nan"],
            "argument --stage2-minutes: must be a finite number",
        ),
        # inf and nan passed the comparisons and failed late, under train_tokenizer's / train_hydrax's usage, or
        # after the models were loaded (every float option is a `finite_float` now)
        ("evaluation/evaluate_generation.py", ["--guidance-scale", "inf"], "argument --guidance-scale: must be a fin"),
        ("examples/quickstart.py", ["--lr", "abc"], "argument --lr: must be a number, got 'abc'"),
        ("bench/bench_pipelines.py", ["--image-guidance-scale", "nan"], "argument --image-guidance-scale: must be"),
        ("examples/train_hydrax.py", ["--validation-guidance-scale", "nan"], "--validation-guidance-scale: must be"),
        (
            "examples/toy_world.py",
            ["--tokenizer-minutes", "inf"],
            "argument --tokenizer-minutes: must be a finite number",
        ),
        ("examples/toy_world.py", ["--tokenizer-minutes", "-1"], "--tokenizer-minutes must be ≥ 0, got -1.0"),
        (
            "examples/toy_world.py",
            ["--learning-rate-scale", "inf"],
            "argument --learning-rate-scale: must be a finite number",
        ),
        ("examples/toy_world.py", ["--tokenizer-lr", "0"], "--tokenizer-lr must be > 0, got 0.0"),
        (
            "examples/toy_world.py",
            ["--flow-logit-mean", "nan"],
            "argument --flow-logit-mean: must be a finite number, got nan",
        ),
        (
            "examples/toy_world.py",
            ["--image-guidance-scale", "inf"],
            "argument --image-guidance-scale: must be a finite number",
        ),
        (
            "examples/tokenizer_stages.py",
            ["--output-dir", "{file}/out"],
            "--output-dir {file}/out: {file} is a file, not a folder",
        ),
        (
            "examples/tokenizer_stages.py",
            ["--stage1-model", "{missing}"],
            "--stage1-model {missing}: no such folder; pass a stage-1 model folder",
        ),
        (
            "examples/tokenizer_stages.py",
            ["--stage1-model", "{tmp}"],
            "--stage1-model {tmp}: a folder without config.json; pass a stage-1 model folder",
        ),
        (
            "examples/tokenizer_stages.py",
            ["--tiny", "--stage1-model", "{tmp}"],
            "--tiny sizes a new stage-1 model; it cannot be combined with --stage1-model.",
        ),
    ],
)
def test_bad_arguments_stop_the_script_up_front(script, args, message, monkeypatch, capsys, tmp_path, a_file):
    paths = {"missing": tmp_path / "no" / "such" / "folder", "tmp": tmp_path, "file": a_file}
    paths["folder_json"] = tmp_path / "results.json"
    paths["folder_json"].mkdir()
    monkeypatch.chdir(tmp_path)  # default output folders would land here
    code, _ = run_in_process(script, [arg.format(**paths) for arg in args], monkeypatch)
    assert code == 2
    assert message.format(**paths) in capsys.readouterr().err
    written = [path for path in tmp_path.rglob("*") if path not in (a_file, paths["folder_json"])]
    assert not written, f"the script did work before the check: {written}"


def test_an_integer_option_too_big_for_a_float_is_compared_not_overflowed(capsys):
    """`check_at_least` compares an int beyond a float's range as an int (a `math.isfinite` check inside it once
    overflowed: a traceback instead of the comparison or a usage error)."""
    from script_args import check_at_least

    parser = argparse.ArgumentParser(prog="script")
    check_at_least(parser, 1, batch_size=10**400)
    with pytest.raises(SystemExit):
        check_at_least(parser, 1, batch_size=-(10**400))
    assert "--batch-size must be ≥ 1, got -1000" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script, args, option, value",
    [
        (
            "examples/train_hydrax.py",
            ["--model", "{out}/model", "--output-dir", "{out}", "--force"],
            "--model",
            "model",
        ),
        ("examples/quickstart.py", ["--model", "{out}/model", "--output-dir", "{out}"], "--model", "model"),
        (  # a stage-2 run's model, which that run replaces (it failed after the stage-2 runs before it)
            "examples/tokenizer_stages.py",
            ["--stage1-model", "{out}/stage2_no_gan/model", "--output-dir", "{out}"],
            "--stage1-model",
            "stage2_no_gan/model",
        ),
        (  # deep inside OUTPUT_DIR/work, which the quickstart replaces
            "examples/quickstart.py",
            ["--model", "{out}/work/checkpoint-3", "--output-dir", "{out}"],
            "--model",
            "work/checkpoint-3",
        ),
        (
            "examples/train_tokenizer.py",
            ["--data", "{data}", "--model", "{out}/model", "--output-dir", "{out}", "--force"],
            "--model",
            "model",
        ),
        (
            "examples/train_tokenizer.py",
            ["--data", "{data}", "--eval-data", "{out}/work", "--output-dir", "{out}", "--force"],
            "--eval-data",
            "work",
        ),
        (
            "examples/train_hydrax.py",
            ["--data", "{out}/work/data.jsonl:2", "--output-dir", "{out}", "--force"],
            "--data",
            "work/data.jsonl",
        ),
        (  # the metric models are loaded, then the staged output replaces the folder
            "evaluation/evaluate_generation.py",
            ["--model", "{hydrax}", "--data", "{prompts}", "--clip-model", "{out}/model", "--output-dir", "{out}"]
            + ["--force"],
            "--clip-model",
            "model",
        ),
        (
            "evaluation/evaluate_tokenizer.py",
            ["--model", "{hydrax}", "--data", "{data}", "--feature-model", "{out}/model", "--output-dir", "{out}"]
            + ["--force"],
            "--feature-model",
            "model",
        ),
        (
            "conversion/build_hydrax.py",
            ["--vision", "{out}/model", "--llm", "{out}/model", "--output", "{out}", "--force"],
            "--vision",
            "model",
        ),
        (
            "conversion/convert_siglip2_to_hydrax_tok.py",
            ["--siglip", "{out}/model", "--output", "{out}", "--force"],
            "--siglip",
            "model",
        ),
        (
            "conversion/checkpoint_importer.py",
            ["--source", "{out}/model/model.safetensors", "--rules", "{rules}", "--model-config", "{out}/model"]
            + ["--output", "{out}", "--force"],
            "--source",
            "model/model.safetensors",
        ),
    ],
)
def test_an_input_inside_the_output_folder_is_refused(script, args, option, value, monkeypatch, capsys, tmp_path):
    """Training stage 2 into the folder that holds its stage-1 model, or converting into the source's folder, would
    replace the input when the run saves: refused before any work."""
    out, data = tmp_path / "out", tmp_path / "data"
    for model in (out / "model", out / "work" / "checkpoint-3", out / "stage2_no_gan" / "model"):
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
    data.mkdir()
    (out / "model" / "model.safetensors").write_text("")
    (out / "work" / "data.jsonl").write_text("")
    (tmp_path / "rules.json").write_text("{}")
    (tmp_path / "prompts.txt").write_text("a red fox\n")
    hydrax = tmp_path / "hydrax"
    hydrax.mkdir()
    (hydrax / "config.json").write_text('{"model_type": "hydrax"}')
    (hydrax / "model.safetensors").write_text("")
    before = sorted(tmp_path.rglob("*"))
    paths = {"out": out, "data": data, "rules": tmp_path / "rules.json", "prompts": tmp_path / "prompts.txt"}
    paths["hydrax"] = hydrax
    code, _ = run_in_process(script, [arg.format(**paths) for arg in args], monkeypatch)
    assert code == 2
    assert f"holds {option} {out / value}, which this run's output would replace or delete" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "script, args",
    [
        ("examples/train_hydrax.py", ["--output-dir", "{tmp}/out"]),
        ("examples/run_hydrax.py", []),
        ("examples/text_to_image.py", []),
        ("evaluation/evaluate_understanding.py", ["--data", "{tmp}/data.jsonl", "--output-dir", "{tmp}/out"]),
        ("evaluation/evaluate_generation.py", ["--data", "{tmp}/data.jsonl", "--output-dir", "{tmp}/out"]),
        ("conversion/model_card_hydrax.py", []),  # it wrote a Hydra-X card of default sizes over the tokenizer's
    ],
)
def test_a_visual_tokenizer_folder_as_model_is_named_as_one(script, args, monkeypatch, capsys, tmp_path):
    """The quickstart and train_tokenizer.py write their Hydra-XTok as `model/` too; as a Hydra-X `--model` it used to
    fail deep inside `AutoProcessor` ("Unrecognized processing class")."""
    tokenizer = tmp_path / "quickstart" / "model"
    tokenizer.mkdir(parents=True)
    (tokenizer / "config.json").write_text(json.dumps({"model_type": "hydrax_tok"}))
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "a cat"}) + "\n")
    monkeypatch.chdir(tmp_path)
    code, _ = run_in_process(script, ["--model", tokenizer, *[arg.format(tmp=tmp_path) for arg in args]], monkeypatch)
    assert code == 2
    assert f"--model {tokenizer}: a Hydra-XTok visual tokenizer, not a Hydra-X checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script, args",
    [
        ("examples/run_hydrax.py", ["--model", "{qwen}"]),
        ("conversion/model_card_hydrax.py", ["--model", "{qwen}"]),
        ("conversion/model_card_hydrax.py", ["--model", "{adapter}", "--base-id", "{qwen}"]),
        (  # a CLIP folder is fine as --clip-model: the run goes on to refuse the Qwen2 --model
            "evaluation/evaluate_generation.py",
            ["--model", "{qwen}", "--clip-model", "{clip}", "--data", "{tmp}/data.txt", "--output-dir", "{tmp}/o"],
        ),
    ],
)
def test_a_folder_of_another_model_type_as_a_hydrax_model_is_refused(script, args, monkeypatch, capsys, tmp_path):
    """transformers only warns when a config of another model type loads as a Hydra-X one, and builds a model (or a
    card) of default sizes around it."""
    paths = {"qwen": tmp_path / "qwen", "clip": tmp_path / "clip", "adapter": tmp_path / "adapter", "tmp": tmp_path}
    for name, model_type in (("qwen", "qwen2"), ("clip", "clip")):
        paths[name].mkdir()
        (paths[name] / "config.json").write_text(json.dumps({"model_type": model_type}))
    paths["adapter"].mkdir()
    (paths["adapter"] / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "me/hydrax"}))
    (tmp_path / "data.txt").write_text("a cat\n")
    code, _ = run_in_process(script, [arg.format(**paths) for arg in args], monkeypatch)
    option = "--base-id" if "--base-id" in args else "--model"
    assert code == 2
    assert f"{option} {paths['qwen']}: a 'qwen2' checkpoint (config.json's model_type), not Hydra-X" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "script, args",
    [
        ("examples/quickstart.py", ["--model", "{qwen}", "--output-dir", "{tmp}/out"]),
        ("examples/run_hydrax.py", ["--tokenizer", "{qwen}"]),
        ("examples/tokenizer_stages.py", ["--stage1-model", "{qwen}", "--output-dir", "{tmp}/out"]),
        ("examples/train_tokenizer.py", ["--data", "{tmp}", "--model", "{qwen}", "--output-dir", "{tmp}/out"]),
        ("evaluation/evaluate_tokenizer.py", ["--data", "{tmp}", "--model", "{qwen}", "--output-dir", "{tmp}/out"]),
    ],
)
def test_a_folder_of_another_model_type_as_a_tokenizer_is_refused(script, args, monkeypatch, capsys, tmp_path):
    """Loading refused it with a traceback, after the run had written its data (quickstart, tokenizer_stages), an
    empty output folder (run_hydrax) or probed the data (train_tokenizer)."""
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    code, _ = run_in_process(script, [arg.format(qwen=qwen, tmp=tmp_path) for arg in args], monkeypatch)
    option = args[args.index("{qwen}") - 1]
    assert code == 2
    message = f"{option} {qwen}: a 'qwen2' checkpoint (config.json's model_type), not a Hydra-XTok tokenizer"
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "card, message",
    [
        ("---\nbase_model: [unclosed\n---\n", "the card's metadata cannot be read (ParserError"),
        ("---\nbase_model: 3\n---\n", "base_model must be a Hub id or a list of them, got 3"),
    ],
)
@pytest.mark.parametrize(
    "script, args",
    [
        ("examples/train_hydrax.py", ["--model", "{hydrax}", "--output-dir", "{tmp}/out"]),
        ("examples/train_tokenizer.py", ["--data", "{tmp}", "--model", "{tok}", "--output-dir", "{tmp}/out"]),
        ("conversion/model_card_hydrax.py", ["--model", "{hydrax}"]),
        ("conversion/build_hydrax.py", ["--vision", "{tok}", "--llm", "Qwen/Qwen2.5-7B", "--output", "{tmp}/out"]),
    ],
)
def test_a_model_whose_card_cannot_be_read_is_refused_up_front(
    script, args, card, message, monkeypatch, capsys, tmp_path
):
    """The training scripts read `--model`'s card (its lineage) when saving: a broken one lost the trained model
    (build_hydrax read `--vision`'s after the build)."""
    for name, model_type in (("hydrax", "hydrax"), ("tok", "hydrax_tok")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": model_type}))
        (tmp_path / name / "README.md").write_text(card)
    code, _ = run_in_process(
        script,
        [arg.format(tmp=tmp_path, hydrax=tmp_path / "hydrax", tok=tmp_path / "tok") for arg in args],
        monkeypatch,
    )
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("output", [".", ".."])
@pytest.mark.parametrize(
    "script, args",
    [
        ("conversion/build_hydrax.py", ["--preset", "tiny", "--random-init", "--force", "--output"]),
        ("conversion/convert_siglip2_to_hydrax_tok.py", ["--siglip", "org/siglip2", "--force", "--output"]),
        ("evaluation/evaluate_tokenizer.py", ["--model", "{tok}", "--data", "{work}", "--force", "--output-dir"]),
    ],
)
def test_the_working_folder_is_refused_as_an_output_replaced_whole(
    script, args, output, monkeypatch, capsys, tmp_path
):
    """`--output .` (or `..`) ran the whole conversion or evaluation, then failed to rename the folder into place."""
    work, tok = tmp_path / "work", tmp_path / "tok"
    work.mkdir(), tok.mkdir()
    (tok / "config.json").write_text(json.dumps({"model_type": "hydrax_tok"}))
    monkeypatch.chdir(work)
    code, _ = run_in_process(script, [*[arg.format(work=work, tok=tok) for arg in args], output], monkeypatch)
    assert code == 2 and f"{output}: the working folder or one above it" in capsys.readouterr().err


@pytest.mark.parametrize("model_type", ["hydrax_tok", "hydrax"])
def test_a_tokenizer_option_takes_a_tokenizer_or_a_unified_checkpoint(model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    check_tokenizer_folder(argparse.ArgumentParser(), "--model", tmp_path, "hint")


def test_only_org_name_adapters_are_taken_as_hub_ids(tmp_path, monkeypatch, capsys):
    """With `hub_ids`, `org/name` is left to the Hub; a bare name that is not there is a missing local folder."""
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    check_adapter(parser, "--lora", "org/name", hub_ids=True)
    with pytest.raises(SystemExit) as exit_info:
        check_adapter(parser, "--lora", "my-adapter", hub_ids=True)
    assert exit_info.value.code == 2 and "--lora my-adapter: no such folder" in capsys.readouterr().err


def test_a_new_output_folder_may_exist_empty_and_force_replaces_a_full_one(tmp_path):
    parser = argparse.ArgumentParser()
    (tmp_path / "empty").mkdir()
    check_new_output_folder(parser, "--output-dir", tmp_path / "empty", force=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    check_new_output_folder(parser, "--output-dir", tmp_path / "full", force=True)
