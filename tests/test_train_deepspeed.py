"""examples/train_hydrax.py and examples/train_tokenizer.py under DeepSpeed ZeRO-2 and ZeRO-3
(examples/accelerate/deepspeed_zero*.yaml), two CPU processes: they train on different samples, end with the same
weights, which the saved model holds, the gradients equal DDP's, and resuming an interrupted run continues the
uninterrupted run's losses. Skipped where DeepSpeed is not installed.

Mixed data: Hydra-X's backward order depends on what a batch holds (questions, text-to-image targets, edits; images or
videos for the tokenizer). With DeepSpeed's own ready-order buckets, processes whose batches differ in kind sum
gradients of different parameters (ZeRO-2 on the demo set: step-1 gradient norm 7.738 against DDP's 8.125); the
scripts' default `--deepspeed-grad-reduction step` reduces them once per step in parameter order, equal to DDP.
ZeRO-3 gathers parameters as modules run, so its tests use data of one kind (questions about images).

On CPU the runs use DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`; gloo without oneCCL) and `--mixed_precision
no` (transformers refuses bf16 without a GPU unless `use_cpu`, which turns DeepSpeed off). accelerate 1.15 finds no
backend for DeepSpeed without a GPU and would run every process alone, so the script runs through a small launcher
that names gloo for it (GPU runs take the NCCL path untouched)."""

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCHRUN, load_script, pipeline_row, run_processes
from PIL import Image
from test_train_tokenizer import write_data, write_helpers
from transformers import AutoModel


pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_hydrax.py"
CONFIGS = ROOT / "examples" / "accelerate"
LAUNCHER = """
import importlib.util, os, sys
import accelerate.state
from accelerate.utils import DistributedType

prepare = accelerate.state.PartialState._prepare_backend


def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    backend, kind = prepare(self, cpu, sagemaker_dp, backend)
    if backend is None and os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" and "LOCAL_RANK" in os.environ:
        return "gloo", DistributedType.MULTI_CPU  # DeepSpeed's CPU accelerator has set up gloo
    return backend, kind


accelerate.state.PartialState._prepare_backend = prepare_backend
spec = importlib.util.spec_from_file_location("script", {script!r})
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
if os.environ.get("STOP_AFTER_FIRST_CHECKPOINT"):  # as a crash right after it would

    class Interrupt(script.RunRecordCallback):
        def on_save(self, args, state, control, **kwargs):
            super().on_save(args, state, control, **kwargs)
            control.should_training_stop = True

    script.RunRecordCallback = Interrupt
script.main(sys.argv[1:])
"""

TOKENIZER_SCRIPT = ROOT / "examples" / "train_tokenizer.py"
train_hydrax = load_script(SCRIPT)


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """8 captioning conversations of the demo images (data of one kind)."""
    folder = tmp_path_factory.mktemp("captions")
    demo = train_hydrax.write_demo_data(folder)
    lines = [line for line in demo.read_text().splitlines() if "What is in the image?" in line]
    lines += [line.replace("What is in the image?", "Describe the image.") for line in lines]
    manifest = folder / "captions.jsonl"
    manifest.write_text("".join(line + "\n" for line in lines))
    return manifest


def one_kind(captions: Path) -> list:
    """The captioning conversations alone, at the demo's 32² size: every process runs the same modules."""
    return ["--data", captions, "--min-pixels", 1024, "--max-pixels", 1024]


def launch(tmp_path, stage: int, *args, stop=False, script: Path = SCRIPT):
    """`accelerate launch --config_file deepspeed_zero{stage}.yaml --num_processes 2 --mixed_precision no` of
    `script` on CPU."""
    launcher = tmp_path / f"launch_{script.stem}.py"
    launcher.write_text(LAUNCHER.replace("{script!r}", repr(str(script))))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        CONFIGS / f"deepspeed_zero{stage}.yaml",
    ]
    command += ["--num_processes", 2, "--mixed_precision", "no", "--main_process_port", port, launcher, *args]
    command += ["--report-to", "none", "--logging-steps", 1]
    stopping = {"STOP_AFTER_FIRST_CHECKPOINT": "1"} if stop else {}
    result = run_processes(*command, timeout=180, DS_ACCELERATOR="cpu", **stopping)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def logged_losses(checkpoint: Path) -> list[tuple]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [
        (entry["step"], entry["loss"], entry.get("lm_loss"), entry.get("flow_loss"))
        for entry in history
        if "loss" in entry
    ]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_train_on_different_samples_and_save_the_weights_they_hold(
    stage, checkpoint, captions, tmp_path
):
    """Both ranks load different samples, end with the same weights, and OUTPUT_DIR/model (gathered from the ZeRO-3
    partitions) loads with AutoModel and holds them; only the stage-1 groups changed."""
    out = tmp_path / "out"
    launch(
        tmp_path,
        stage,
        "--model",
        checkpoint,
        *one_kind(captions),
        "--output-dir",
        out,
        "--max-steps",
        3,
        "--log-samples",
        "--validation-prompts",
        "an astronaut",
        "--validation-size",
        32,
        "--validation-inference-steps",
        2,
    )

    seen = [(out / f"samples_rank{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert [len(origins) for origins in seen] == [4, 4], seen  # 3 steps, and the batch the loader reads ahead
    assert not set(seen[0]) & set(seen[1]), f"both processes trained on {set(seen[0]) & set(seen[1])}"

    held = [json.loads((out / f"weights_rank{rank}.txt").read_text()) for rank in (0, 1)]
    assert held[0] == held[1], "the processes ended with different weights"
    model = AutoModel.from_pretrained(out / "model")
    saved = train_hydrax.parameter_checksums(model)
    assert set(saved) == set(held[0])
    if {param.dtype for param in model.parameters()} == {torch.float32}:
        assert saved == held[0]
    else:  # zero3_save_16bit_model with bf16 mixed precision: the saved copy is rounded to bf16
        mismatched = [name for name in saved if saved[name] != pytest.approx(held[0][name], rel=1e-2, abs=1e-2)]
        assert not mismatched, mismatched
    initial = train_hydrax.parameter_checksums(AutoModel.from_pretrained(checkpoint))
    trained = [name for name in saved if saved[name] != initial[name]]
    assert trained and all(train_hydrax.parameter_group(name) in ("vision_head", "sem_vit") for name in trained)
    # --validation-prompts: every process sampled (ZeRO-3 gathering its partitions), the main one wrote it
    samples = np.asarray(Image.open(out / "work" / "checkpoint-3" / train_hydrax.SAMPLES_FILE))
    assert np.array_equal(samples, pipeline_row(out / "model", ["an astronaut"], size=32, steps=2))


@pytest.mark.parametrize("stage", [2, 3])
def test_resuming_an_interrupted_run_continues_the_same_losses(stage, checkpoint, captions, tmp_path):
    """A run stopped after its checkpoint at step 2 and resumed with `--resume-from-checkpoint last` logs the
    uninterrupted run's losses at steps 3 and 4 (DeepSpeed's own checkpoint, optimizer included) and saves the same
    model."""
    argv = ["--model", checkpoint, *one_kind(captions), "--stage", 2, "--max-steps", 4, "--save-steps", 2]
    launch(tmp_path, stage, *argv, "--output-dir", tmp_path / "whole")
    launch(tmp_path, stage, *argv, "--output-dir", tmp_path / "split", stop=True)
    assert not (tmp_path / "split" / "work" / "checkpoint-4").exists()
    launch(tmp_path, stage, *argv, "--output-dir", tmp_path / "split", "--resume-from-checkpoint", "last")

    whole = logged_losses(tmp_path / "whole" / "work" / "checkpoint-4")
    assert [entry[0] for entry in whole] == [1, 2, 3, 4]
    assert logged_losses(tmp_path / "split" / "work" / "checkpoint-4") == whole
    expected = AutoModel.from_pretrained(tmp_path / "whole" / "model").state_dict()
    for name, value in AutoModel.from_pretrained(tmp_path / "split" / "model").state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_zero2_gradients_equal_ddp(checkpoint, captions, tmp_path):
    """The same 2 steps under ZeRO-2 and under DDP (torchrun, gloo): the same losses and gradient norms, and saved
    weights equal up to float summation order."""
    argv = ["--model", checkpoint, *one_kind(captions), "--stage", 2, "--max-steps", 2, "--save-steps", 2]
    assert_zero2_equals_ddp(tmp_path, argv, steps=2)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_zero2_gradients_equal_ddp_on_mixed_data(accumulation, checkpoint, tmp_path):
    """The demo set mixes questions, text-to-image targets and an edit, so the processes' batches differ in kind and
    their gradients become ready in different orders: ZeRO-2 still equals DDP (train_hydrax.py reduces the gradients
    once per step in parameter order), with and without gradient accumulation."""
    argv = ["--model", checkpoint, "--stage", 2, "--max-steps", 3, "--save-steps", 3, "--batch-size", 1]
    argv += ["--gradient-accumulation-steps", accumulation]
    assert_zero2_equals_ddp(tmp_path, argv, steps=3)


def test_tokenizer_zero2_gradients_equal_ddp_on_images_and_videos(tmp_path):
    """train_tokenizer.py with both teachers on images and a video: the processes' batches differ in kind (an image
    batch leaves the Decompressor and the video distillation out), and ZeRO-2 still equals DDP: losses, gradient
    norms and weights. Except the Decompressor's weights: in a step where no process had a video batch, torch's AdamW
    skips a parameter without a gradient, while DeepSpeed's flat optimizer steps it with a zero gradient (its Adam
    momentum and weight decay still move it)."""
    data, helpers = write_data(tmp_path / "data"), write_helpers(tmp_path / "helpers")
    argv = ["--data", data, "--size", 32, "--num-frames", 5, "--batch-size", 2, "--preset", "tiny"]
    argv += ["--image-teacher", helpers / "image", "--video-teacher", helpers / "video", "--lpips", helpers / "lpips"]
    argv += ["--max-steps", 3, "--save-steps", 3]
    assert_zero2_equals_ddp(tmp_path, argv, steps=3, script=TOKENIZER_SCRIPT, unequal_weights=("decompressor.",))


def assert_zero2_equals_ddp(tmp_path, argv: list, steps: int, script=SCRIPT, unequal_weights: tuple[str, ...] = ()):
    """Runs `script` with `argv` under ZeRO-2 and under DDP (torchrun, gloo) and compares losses, gradient norms and
    saved weights (but those whose names start with `unequal_weights`)."""
    launch(tmp_path, 2, *argv, "--output-dir", tmp_path / "zero2", script=script)
    argv = [*argv, "--output-dir", tmp_path / "ddp", "--report-to", "none", "--logging-steps", 1]
    result = run_processes(*TORCHRUN, script, *argv, timeout=180, ACCELERATE_USE_CPU="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    runs = {}
    for name in ("zero2", "ddp"):
        state = json.loads(next((tmp_path / name / "work").glob("checkpoint-*/trainer_state.json")).read_text())
        runs[name] = [(entry["loss"], entry["grad_norm"]) for entry in state["log_history"] if "loss" in entry]
    assert len(runs["ddp"]) == steps
    for (loss, norm), (ddp_loss, ddp_norm) in zip(runs["zero2"], runs["ddp"]):
        assert loss == pytest.approx(ddp_loss, rel=1e-5) and norm == pytest.approx(ddp_norm, rel=1e-4), runs
    expected = AutoModel.from_pretrained(tmp_path / "ddp" / "model").state_dict()
    for name, value in AutoModel.from_pretrained(tmp_path / "zero2" / "model").state_dict().items():
        if not name.startswith(unequal_weights):
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-6)
