"""examples/run_hydrax.py, the unified model's main job, runs end to end on a tiny model and leaves its outputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script, run_script, tiny_tok_config
from PIL import Image

from modeling_hydrax import HydraXConfig, HydraXTokModel


SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "run_hydrax.py"


def run(*args, cwd):
    return run_script(SCRIPT, *args, cwd=cwd)


@pytest.fixture(scope="module")
def run_hydrax():
    """The script as a module, for its argument parser."""
    return load_script(SCRIPT)


def test_short_run_writes_model_samples_and_metrics(tmp_path):
    out = tmp_path / "out"
    result = run("--steps", "3", "--sampling-steps", "2", "--size", "32", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warn" not in result.stderr.lower() and "kwargs" not in result.stderr.lower(), result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["answers"]) == {"astronaut", "coffee", "chelsea", "rocket"}
    assert metrics["train_caption_exact_match"].endswith("/4") and "training images" in metrics["note"]
    assert metrics["last_losses"]["lm_loss"] < metrics["first_losses"]["lm_loss"]
    # 32-pixel tiles enlarged 4×, a column of row labels on the left, a caption above each column
    samples = np.asarray(Image.open(out / "samples.png").convert("L"))
    assert samples.shape == (20 + 2 * 128, 100 + 4 * 128)
    header = samples[:20, 100:].reshape(20, 4, 128)
    assert (header.min(axis=(0, 2)) < 128).all(), "a caption must be written above every column"
    assert samples[20:, :100].min() < 128, "the rows must be labelled"
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "processor_config.json").is_file()
    assert (out / "model" / "model_index.json").is_file(), "the saved model is a pipeline folder too"
    assert not (out / ".model-staging").exists()


def test_a_seed_repeats_the_run_and_another_seed_changes_it(run_hydrax, tmp_path):
    """--seed seeds the weights, the training noise and the sampling: the same seed gives the same losses, answers,
    samples and weights; another seed, other ones. metrics.json's losses are the training history's."""

    def run_seed(seed: int, name: str) -> tuple[dict, np.ndarray, bytes]:
        out = tmp_path / name
        args = ["--steps", "3", "--sampling-steps", "2", "--size", "32", "--seed", str(seed), "--output-dir", str(out)]
        run_hydrax.main(args)
        metrics = json.loads((out / "metrics.json").read_text())
        metrics.pop("seconds")
        samples = np.asarray(Image.open(out / "samples.png"))
        return metrics, samples, (out / "model" / "model.safetensors").read_bytes()

    first, again, other = run_seed(0, "first"), run_seed(0, "again"), run_seed(1, "other")
    assert first[0] == again[0] and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert first[0]["first_losses"] != other[0]["first_losses"] and not np.array_equal(first[1], other[1])
    assert first[2] != other[2]
    metrics = first[0]
    assert metrics["first_losses"]["step"] == 0 and metrics["last_losses"]["step"] == 2
    assert metrics["caption_loss_after_training"] < metrics["first_losses"]["lm_loss"]


def test_a_failed_run_leaves_the_earlier_model_with_its_results(run_hydrax, tmp_path, monkeypatch):
    """samples.png was written before the model was saved: a run that failed in between left its samples beside the
    earlier run's model and metrics. The earlier results now go only with the earlier model."""
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    earlier = {name: f"the earlier run's {name}" for name in ("samples.png", "metrics.json", "model/config.json")}
    for name, text in earlier.items():
        (out / name).write_text(text)

    def full_disk(self, folder, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_hydrax.HydraXPipeline, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_hydrax.main(["--steps", "1", "--sampling-steps", "1", "--size", "32", "--output-dir", str(out)])
    assert {name: (out / name).read_text() for name in earlier} == earlier


def test_help_and_bad_arguments(tmp_path):
    assert "--tokenizer" in run("--help", cwd=tmp_path).stdout
    bad = run("--size", "30", cwd=tmp_path)
    assert bad.returncode == 2 and "multiple of 16" in bad.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--lr", "nan"],
            "argument --lr: must be a finite number, got nan",
        ),  # AdamW refused it after the checkpoint was built
        (["--lr", "-1"], "--lr must be > 0, got -1.0"),
        (
            ["--guidance-scale", "inf"],
            "argument --guidance-scale: must be a finite number, got inf",
        ),  # after all training
    ],
)
def test_bad_numbers_stop_in_argparse(run_hydrax, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_hydrax.parse_args([*args, "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_run_with_model_removes_an_earlier_runs_initial_checkpoint(run_hydrax, checkpoint, tmp_path):
    """`initial/` is the checkpoint a run without --model builds; a later run with --model into the same folder left
    it beside a `model/` of another checkpoint. One that --model points into stays."""
    out = tmp_path / "out"
    (out / "initial").mkdir(parents=True)
    (out / "initial" / "config.json").write_text("{}")
    options = ["--steps", "0", "--sampling-steps", "1", "--size", "32", "--output-dir", str(out)]
    run_hydrax.main(["--model", str(checkpoint), *options])
    assert not (out / "initial").exists() and (out / "model" / "model.safetensors").is_file()
    shutil.copytree(checkpoint, out / "initial")
    run_hydrax.main(["--model", str(out / "initial"), *options])
    assert (out / "initial" / "model.safetensors").is_file()


def test_zero_training_steps_are_accepted(run_hydrax, tmp_path):
    """--steps 0 skips training (sampling only)."""
    assert run_hydrax.parse_args(["--steps", "0", "--output-dir", str(tmp_path / "out")]).steps == 0


def test_a_tokenizer_that_does_not_fit_the_model_stops_in_argparse(run_hydrax, checkpoint, tmp_path, capsys):
    """--model with --tokenizer plugs the tokenizer into the model's vision tower: one of another shape is refused up
    front, naming both options and the differing fields, and one with the model's vision_config is accepted."""
    HydraXTokModel(tiny_tok_config(hidden_size=48)).save_pretrained(tmp_path / "tok48")
    HydraXTokModel(HydraXConfig.from_pretrained(checkpoint).vision_config).save_pretrained(tmp_path / "fitting")
    output = ["--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        run_hydrax.parse_args(["--model", str(checkpoint), "--tokenizer", str(tmp_path / "tok48"), *output])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"--tokenizer {tmp_path / 'tok48'} does not fit the vision tower of --model {checkpoint}" in error
    assert "hidden_size 48 vs 32" in error
    args = run_hydrax.parse_args(["--model", str(checkpoint), "--tokenizer", str(tmp_path / "fitting"), *output])
    assert args.tokenizer == tmp_path / "fitting"
