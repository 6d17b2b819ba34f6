"""The GPU checks of bench/ run their whole path on a CPU at toy sizes (the GPU runs themselves need a lent GPU),
label what ran, and leave no temporary folders behind (at full size each holds tens of GB)."""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import transformers


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_check_pipelines  # noqa: E402
import gpu_check_training  # noqa: E402


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """A folder of its own for `tempfile`'s folders, to see what a check leaves there."""
    root = tmp_path / "temp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_pipeline_gpu_check_smoke_run_on_cpu(tmp_path, capsys, temp_root):
    report = tmp_path / "new" / "report.md"  # a folder that does not exist yet is made (it failed after the runs)
    sizes = ["--image-sizes", "32", "--video-size", "32", "--edit-size", "32", "--steps", "2"]
    gpu_check_pipelines.main(["--preset", "tiny", "--device", "cpu", *sizes, "--report", str(report)])
    table = report.read_text()
    assert "## Pipeline GPU check: tiny on CPU" in table
    assert "Command: `python bench/gpu_check_pipelines.py --preset tiny --device cpu --image-sizes 32" in table
    for row in ("image 32², 2 steps, CFG", "video 17×32², 2 steps, CFG", "edit 32², 2 steps, dual CFG"):
        assert f"| {row} | no |" in table and f"| {row} | yes (" in table, row
    assert "failed" not in table
    assert f"appended to {report}" in capsys.readouterr().out
    assert not list(temp_root.glob("hydrax-*")), "the saved pipeline folder was left behind"


def test_pipeline_gpu_check_with_group_offloading_on_cpu(tmp_path):
    report = tmp_path / "report.md"
    sizes = ["--image-sizes", "32", "--video-size", "32", "--edit-size", "32", "--steps", "1", "--compile", "no"]
    gpu_check_pipelines.main(
        ["--preset", "tiny", "--device", "cpu", *sizes, "--offload", "group", "--report", str(report)]
    )
    table = report.read_text()
    assert "device_map=None)` " in table and "then group offloading to the CPU." in table
    assert "| image 32², 1 steps, CFG | no |" in table and "failed" not in table
    with pytest.raises(SystemExit):  # offloading goes on after compiling, so one run times one placement
        gpu_check_pipelines.main(["--device", "cpu", "--offload", "group", "--compile", "both"])


def test_the_edit_row_offloads_the_shared_model_as_a_pipeline_call_does():
    """`--offload model` hooks `pipe`; the edit pipeline shares its model, so the edit row frees the hooks itself (the
    model stayed on the device after an edit, and the timed edit skipped the transfers the other rows pay)."""
    calls = []

    class Pipeline:
        def __init__(self, name):
            self.name = name

        def __call__(self, *args, **kwargs):
            calls.append(self.name)

        def maybe_free_model_hooks(self):
            calls.append(f"{self.name} offloads")

    args = argparse.Namespace(steps=1, image_sizes=[32], video_size=32, edit_size=32)
    for run in gpu_check_pipelines.workloads(Pipeline("pipe"), Pipeline("edit"), args).values():
        run()
    assert calls == ["pipe", "pipe", "edit", "pipe offloads"]


def test_training_gpu_check_smoke_run_on_cpu(tmp_path, temp_root):
    report = tmp_path / "report.md"
    gpu_check_training.main(
        ["--preset", "tiny", "--device", "cpu", "--steps", "1", "--size", "32", "--report", str(report)]
    )
    table = report.read_text()
    assert "Command: `python bench/gpu_check_training.py --preset tiny --device cpu --steps 1 --size 32" in table
    row = "| tiny, 1 steps, one process, fp32 + gradient checkpointing | loads with AutoModel, validation samples"
    assert row + " written," in table
    assert "| tiny, stage 2, 32², fp32 + gradient checkpointing, batch 1 | " in table
    assert " s/step (1 step), peak " in table and "bf16" not in table  # bf16 runs on CUDA only
    assert not list(temp_root.glob("hydrax-*")), "the training runs' folder was left behind"


def test_tokenizer_training_gpu_check_smoke_run_on_cpu(tmp_path, temp_root):
    import gpu_check_tokenizer_training

    report = tmp_path / "new" / "report.md"
    argv = ["--preset", "tiny", "--device", "cpu", "--size", "32", "--steps", "1", "--batch-size", "2"]
    gpu_check_tokenizer_training.main([*argv, "--report", str(report)])
    table = report.read_text()
    assert f"Command: `python bench/gpu_check_tokenizer_training.py {' '.join(argv)} --report" in table
    assert "| tiny, 32², batch 2, 1 steps, stage 1 (L1 + LPIPS + KL), fp32 + gradient checkpointing | " in table
    assert table.count(" s/step (1 step), peak ") == 2
    assert "| tiny, 32², batch 2, 1 steps, stage 2 (decoder + PatchGAN), fp32 + gradient checkpointing | " in table
    assert "| tiny, 3 steps, `accelerate launch` fsdp_tokenizer.yaml (1 process) | loads with AutoModel," in table
    assert "bf16" not in table  # bf16 runs on CUDA only
    assert not list(temp_root.glob("hydrax-*")), "the training runs' folder was left behind"


def test_the_step_clock_times_the_steps_after_the_first_without_the_final_checkpoint(monkeypatch, tmp_path):
    """Seconds per step come from the ends of steps 2..N (the Trainer's `train_runtime` also counted the first step
    and the checkpoint and evaluation that end a run); one step is timed from the start of training."""
    ticks = iter([100.0, 130.0, 131.0, 132.5, 134.0, 500.0])  # begin, four step ends, then a long checkpoint save
    monkeypatch.setattr(gpu_check_training.time, "perf_counter", lambda: next(ticks))
    clock = gpu_check_training.StepClock()
    clock.on_train_begin(None, None, None)
    for _ in range(4):
        clock.on_step_end(None, None, None)
    assert clock.per_step() == "1.33 s/step over steps 2–4"
    clock.times = clock.times[:1]
    assert clock.per_step() == "30.00 s/step (1 step)"
    with gpu_check_training.step_clock() as clock:
        arguments = transformers.TrainingArguments(str(tmp_path), report_to=[])
        trainer = transformers.Trainer(torch.nn.Linear(1, 1), arguments)
    assert clock in trainer.callback_handler.callbacks
    assert clock not in transformers.trainer.DEFAULT_CALLBACKS


def test_a_hung_launch_is_killed_with_its_workers_after_the_timeout():
    """A launched run that hangs (a worker waiting in a collective) is killed as a process group: a worker that held
    the output pipes open would keep `communicate` waiting past the timeout."""
    worker = "import time; time.sleep(120)"
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(120)"
    result = gpu_check_training.run_command([sys.executable, "-c", launcher], dict(os.environ), timeout=2)
    assert result.returncode == -9 and result.stderr.endswith("timed out after 2 s")
    assert gpu_check_training.run_command([sys.executable, "-c", "print('ok')"], dict(os.environ)).stdout == "ok\n"
