"""GPU check of examples/train_tokenizer.py: Hydra-XTok at the paper's size (so400m, random weights) trained on 256²
images with bf16 autocast and gradient checkpointing, stage 1 (L1 + LPIPS + KL) and then stage 2 (decoder + PatchGAN)
from stage 1's model: seconds per step and peak GPU memory; then the tiny tokenizer under `accelerate launch` with
examples/accelerate/fsdp_tokenizer.yaml (one process), loaded back. Rows are appended to docs/PERFORMANCE.md as they
are measured.

    python bench/gpu_check_tokenizer_training.py                       # one CUDA GPU
    python bench/gpu_check_tokenizer_training.py --preset tiny --device cpu --size 32 --steps 1 --report /tmp/r.md

Images only and no teachers: the GPU machine this was written for has no PyAV and no network (LPIPS therefore has
random VGG16 weights; the speed is the same).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "examples"))

import train_tokenizer  # noqa: E402
from gpu_check_pipelines import append_lines  # noqa: E402
from gpu_check_training import loads_back, precision, run_command, step_clock  # noqa: E402

from script_args import HelpFormatter, check_output_folder, command_line  # noqa: E402


def write_images(folder: Path, count: int, size: int) -> Path:
    """`count` smooth random RGB images of `size`² (upsampled noise) as PNGs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        noise = (generator.random((size // 16, size // 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(noise).resize((size, size), Image.BICUBIC).save(folder / f"{index}.png")
    return folder


def train(args, data: Path, output: Path, *options) -> str:
    """One in-process run; returns its row cells (seconds per step, peak memory, first and last loss)."""
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    argv = ["--data", data, "--output-dir", output, "--size", args.size, "--batch-size", args.batch_size]
    argv += ["--max-steps", args.steps, "--logging-steps", 1, "--save-steps", args.steps, "--report-to", "none"]
    argv += ["--no-teachers", "--gradient-checkpointing"] + (["--bf16"] if args.device == "cuda" else ["--cpu"])
    with step_clock() as clock:
        trainer = train_tokenizer.main(list(map(str, [*argv, *options])))
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return f"{clock.per_step()}, peak {peak:.1f} GiB, loss {losses[0]:.3f} → {losses[-1]:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="so400m", choices=["so400m", "small", "tiny"], help="tokenizer size")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu only for a smoke run")
    parser.add_argument("--steps", type=int, default=6, help="training steps of each run")
    parser.add_argument("--size", type=int, default=256, help="image side")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument(
        "--report", type=Path, default=ROOT / "docs" / "PERFORMANCE.md", help="Markdown file the rows are appended to"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; pass --device cpu for a smoke run")
    if args.steps < 1 or args.size < 16 or args.size % 16:
        parser.error(f"--steps must be ≥ 1 and --size a positive multiple of 16, got {args.steps} and {args.size}")
    check_output_folder(parser, "--report", args.report.parent)
    with tempfile.TemporaryDirectory(prefix="hydrax-tokenizer-check-") as work:  # the report is all that is kept
        run_checks(args, argv, Path(work))


def run_checks(args, argv, work: Path) -> None:
    """The checks, each appending its row to --report; the runs write into `work`."""
    data = write_images(work / "images", 2 * args.batch_size, args.size + args.size // 4)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    header = [
        f"\n## Tokenizer training check on {device_name}\n",
        f"Command: `{command_line('bench/gpu_check_tokenizer_training.py', argv)}`\n",
    ]
    append_lines(args.report, [*header, "| run | result |", "| --- | --- |"])

    # 1. Stage 1, then stage 2 from its model, in-process
    what = f"{args.preset}, {args.size}², batch {args.batch_size}, {args.steps} steps"
    cells = train(args, data, work / "stage1", "--stage", 1, "--preset", args.preset)
    append_lines(
        args.report,
        [f"| {what}, stage 1 (L1 + LPIPS + KL), {precision(args.device)} + gradient checkpointing | {cells} |"],
    )
    cells = train(args, data, work / "stage2", "--stage", 2, "--model", work / "stage1" / "model")
    append_lines(
        args.report,
        [f"| {what}, stage 2 (decoder + PatchGAN), {precision(args.device)} + gradient checkpointing | {cells} |"],
    )

    # 2. The tiny tokenizer under accelerate with the FSDP2 config
    output = work / "fsdp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(ROOT / "examples" / "accelerate" / "fsdp_tokenizer.yaml"), "--num_processes", "1"]
    command += ["--cpu", "--mixed_precision", "no"] if args.device == "cpu" else []
    command += [str(ROOT / "examples" / "train_tokenizer.py"), "--data", str(data), "--output-dir", str(output)]
    command += ["--preset", "tiny", "--size", "32", "--max-steps", "3", "--no-teachers", "--report-to", "none"]
    start = time.perf_counter()
    result = run_command(command, os.environ | {"HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    outcome = loads_back(output / "model") if result.returncode == 0 else f"exit code {result.returncode}"
    if result.returncode != 0:  # the first traceback, not the launcher's summary that ends stderr
        print(result.stderr[result.stderr.find("Traceback") :][:6000] or result.stdout[-3000:])
    append_lines(
        args.report,
        [f"| tiny, 3 steps, `accelerate launch` fsdp_tokenizer.yaml (1 process) | {outcome}, {seconds:.0f} s |"],
    )


if __name__ == "__main__":
    main()
