"""GPU check of examples/train_hydrax.py: the tiny model trained on one GPU with bf16 and gradient checkpointing, and
under `accelerate launch` with the FSDP2 and DDP configs of examples/accelerate/ (one process each: the machine has
one GPU), each output folder loaded back and its last checkpoint's `--validation-prompts` samples found; then
`hydrax-1.5b` (random weights, fp32 master weights) trained at stage 2 on 256² demo data with bf16 autocast and
gradient checkpointing: seconds per step and peak GPU memory. Rows are appended to docs/PERFORMANCE.md as they are
measured.

    python bench/gpu_check_training.py                                  # one CUDA GPU, ~15 GB disk
    python bench/gpu_check_training.py --preset tiny --device cpu --steps 2 --launchers --report /tmp/r.md  # CPU smoke

DeepSpeed is not exercised here (not installed on the GPU machine this was written for); its configs are checked by
the CPU test suite as accelerate plugins.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers.trainer
from transformers import AutoModel, TrainerCallback


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "examples"))

import train_hydrax  # noqa: E402
from gpu_check_pipelines import append_lines, save_random_pipeline  # noqa: E402

from script_args import HelpFormatter, check_output_folder, command_line  # noqa: E402


SCRIPT = ROOT / "examples" / "train_hydrax.py"
LAUNCH_TIMEOUT = 300  # seconds for one tiny launched run (~25 s on an H200)
LAUNCHERS = {"FSDP2": "fsdp.yaml", "DDP": "ddp.yaml"}


def launch(config: str | None, device: str, output: Path, steps: int) -> tuple[int, float, str]:
    """Train the tiny model `steps` steps in a subprocess (through `accelerate launch --config_file config` unless
    `config` is None); returns (exit code, seconds, the end of the output)."""
    argv = [str(SCRIPT), "--output-dir", str(output), "--max-steps", str(steps), "--stage", "2"]
    argv += ["--gradient-checkpointing", "--report-to", "none", "--validation-prompts", "a cat"]
    argv += ["--validation-inference-steps", "2"]
    if config is None:
        command = [sys.executable, *argv, "--bf16"] if device == "cuda" else [sys.executable, *argv]
    else:
        config_file = ROOT / "examples" / "accelerate" / config
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
        command += ["--num_processes", "1"]
        if device == "cpu":
            command += ["--cpu", "--mixed_precision", "no"]
        command += argv
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    result = run_command(command, env)
    return result.returncode, time.perf_counter() - start, (result.stdout + result.stderr)[-3000:]


def run_command(command: list[str], env: dict, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """`subprocess.run(command)` with its output captured, in a process group of its own that is killed whole after
    `timeout` seconds (exit code -9, stderr ending in "timed out"): a launcher's workers hung in a collective would
    otherwise hold the GPU machine's few minutes."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\ntimed out after {timeout:.0f} s"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def precision(device: str) -> str:
    """What the training runs compute in: bf16 autocast on CUDA (`--bf16`), fp32 on a CPU."""
    return "bf16 autocast" if device == "cuda" else "fp32"


def loads_back(folder: Path) -> str:
    """'loads' when `AutoModel.from_pretrained(folder)` works, else the error."""
    try:
        AutoModel.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        return f"does not load: {error}"
    return "loads with AutoModel"


class StepClock(TrainerCallback):
    """The end of each training step, after a CUDA sync: seconds per step from these leave out the first step's
    warm-up and the evaluation and checkpoint that end a run (which the Trainer's `train_runtime` counts; a 1.5B
    model's checkpoint with its AdamW state is ~24 GB written)."""

    def __init__(self):
        self.start, self.times = None, []

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.times = self._now(), []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(self._now())

    def per_step(self) -> str:
        """'X s/step' over the steps after the first (over the one step when only one ran)."""
        if len(self.times) < 2:
            return f"{self.times[0] - self.start:.2f} s/step (1 step)"
        seconds = (self.times[-1] - self.times[0]) / (len(self.times) - 1)
        return f"{seconds:.2f} s/step over steps 2–{len(self.times)}"


@contextlib.contextmanager
def step_clock():
    """A `StepClock` that every Trainer built inside the block gets (the training scripts build theirs in `main`)."""
    clock = StepClock()
    transformers.trainer.DEFAULT_CALLBACKS.append(clock)
    try:
        yield clock
    finally:
        transformers.trainer.DEFAULT_CALLBACKS.remove(clock)


def train_full_size(args, work: Path) -> str:
    """A stage-2 run of `args.preset` in-process: the report row with seconds per step and peak memory."""
    checkpoint = work / args.preset
    save_random_pipeline(args.preset, checkpoint, args.device, dtype=torch.float32)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    argv = ["--model", checkpoint, "--output-dir", work / "full", "--stage", 2, "--max-steps", args.steps]
    argv += ["--min-pixels", args.size**2, "--max-pixels", args.size**2, "--logging-steps", 1, "--report-to", "none"]
    argv += ["--gradient-checkpointing"] + (["--bf16"] if args.device == "cuda" else [])
    with step_clock() as clock:
        trainer = train_hydrax.main(list(map(str, argv)))
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    return (
        f"| {args.preset}, stage 2, {args.size}², {precision(args.device)} + gradient checkpointing, batch 1 | "
        f"{clock.per_step()}, peak {peak:.1f} GiB, loss {steps[0]['loss']:.3f} → {steps[-1]['loss']:.3f} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="hydrax-1.5b", help="preset of the full-size training row")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu only for a smoke run")
    parser.add_argument("--steps", type=int, default=10, help="training steps of each run")
    parser.add_argument("--size", type=int, default=256, help="image side of the full-size row")
    parser.add_argument("--launchers", action="store_true", help="also run the accelerate configs on a CPU")
    parser.add_argument(
        "--report", type=Path, default=ROOT / "docs" / "PERFORMANCE.md", help="Markdown file the rows are appended to"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; pass --device cpu for a smoke run")
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    check_output_folder(parser, "--report", args.report.parent)
    with tempfile.TemporaryDirectory(prefix="hydrax-training-check-") as work:  # the report is all that is kept
        run_checks(args, argv, Path(work))


def run_checks(args, argv, work: Path) -> None:
    """The checks, each appending its row to --report; the runs write into `work`."""
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"

    # 1. The tiny model: one process, then each accelerate config
    append_lines(
        args.report,
        [
            f"\n## Training GPU check on {device_name}\n",
            f"Command: `{command_line('bench/gpu_check_training.py', argv)}`\n",
            "| run | result |",
            "| --- | --- |",
        ],
    )
    runs = {f"one process, {precision(args.device)} + gradient checkpointing": None}
    if args.device == "cuda" or args.launchers:
        runs |= {f"`accelerate launch` {name} ({config}, 1 process)": config for name, config in LAUNCHERS.items()}
    for name, config in runs.items():
        output = work / (config or "single")
        code, seconds, tail = launch(config, args.device, output, args.steps)
        result = loads_back(output / "model") if code == 0 else f"exit code {code}: `{tail[-300:]!r}`"
        if code == 0:
            samples = output / "work" / f"checkpoint-{args.steps}" / train_hydrax.SAMPLES_FILE
            result += ", validation samples written" if samples.is_file() else ", validation samples MISSING"
        if code != 0:
            print(tail)
        append_lines(args.report, [f"| tiny, {args.steps} steps, {name} | {result}, {seconds:.0f} s in all |"])

    # 2. A full-size preset at stage 2
    append_lines(args.report, [train_full_size(args, work)])


if __name__ == "__main__":
    main()
