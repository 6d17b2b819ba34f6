"""GPU check of the pipelines at full size: `hydrax-7b` with random weights in bf16, saved as a pipeline folder and
reloaded with `HydraXPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, device_map="cuda")`, then seconds
and peak GPU memory for a 512² and a 1024² image (30 steps, CFG), a 17-frame 512² video and a 1024² edit (dual CFG),
with the weights on the GPU or offloaded to the CPU (`--offload`), each without and with `torch.compile` of the LLM's
decoder layers (`model.compile_repeated_blocks(fullgraph=True)`:
all 28 layers share one graph, so the warm-up compiles one layer, not the stack); the table is appended to
docs/PERFORMANCE.md, with the first call (warm-up, and with it the compilation) of each row.

    python bench/gpu_check_pipelines.py                                   # one ≥ 40 GB CUDA GPU, ~20 GB disk
    python bench/gpu_check_pipelines.py --preset tiny --device cpu --image-sizes 32 --video-size 32 \\
        --edit-size 32 --steps 2 --compile no --report /tmp/report.md      # a smoke run of the same code on a CPU

No tokenizer download is needed: prompts go through the tiny offline Qwen2.5-style tokenizer, and the model's special
token ids are set to that tokenizer's (random weights either way; speed does not depend on token ids). For scale:
BAGEL is reported at about 5 s per 1024² image on an H800 and needs more than 80 GB; the goal is under 5 s on one
H200 within 40 GB.
"""

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
from PIL import Image
from torch._dynamo.utils import counters


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))

from build_hydrax import special_token_ids  # noqa: E402

from modeling_hydrax import (  # noqa: E402
    HydraXConfig,
    HydraXEditPipeline,
    HydraXForConditionalGeneration,
    HydraXPipeline,
)
from modeling_hydrax.pipeline_hydrax import default_scheduler  # noqa: E402
from processing_hydrax import (  # noqa: E402
    HydraXImageProcessor,
    HydraXProcessor,
    HydraXVideoProcessor,
    build_tiny_qwen2_tokenizer,
)
from script_args import HelpFormatter, check_output_folder, command_line, given_or_temporary_folder  # noqa: E402


def save_random_pipeline(preset: str, folder: Path, device: str, dtype: torch.dtype = torch.bfloat16) -> None:
    """A random-weight `preset` in `dtype`, built directly on `device`, saved as a pipeline folder."""
    processor = HydraXProcessor(HydraXImageProcessor(), build_tiny_qwen2_tokenizer(), HydraXVideoProcessor())
    config = HydraXConfig.from_preset(preset, **special_token_ids(processor))
    with torch.device(device):
        model = HydraXForConditionalGeneration._from_config(config, dtype=dtype)
    HydraXPipeline(model=model, processor=processor, scheduler=default_scheduler()).save_pretrained(folder)


OFFLOADS = {
    "none": None,
    "model": lambda pipe, device: pipe.enable_model_cpu_offload(device=device),
    "group": lambda pipe, device: pipe.enable_group_offload(
        torch.device(device), offload_type="block_level", num_blocks_per_group=1, use_stream=device == "cuda"
    ),
    "sequential": lambda pipe, device: pipe.enable_sequential_cpu_offload(device=device),
}


def synchronized_seconds(device: str, run) -> float:
    """Wall seconds of `run()`, waiting for the device to finish."""
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(device: str, run) -> tuple[float, float, float]:
    """(seconds of the first call, seconds of a second call, peak GiB of device memory in it; 0 on a CPU)."""
    first = synchronized_seconds(device, run)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = synchronized_seconds(device, run)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return first, seconds, peak


def workloads(pipe, edit, args) -> dict:
    """The timed calls, by row name."""
    common = dict(num_inference_steps=args.steps, guidance_scale=4.0, output_type="pt")
    rows = {
        f"image {size}², {args.steps} steps, CFG": lambda size=size: pipe(
            "A red fox in the snow", height=size, width=size, **common
        )
        for size in args.image_sizes
    }
    video = args.video_size
    rows[f"video 17×{video}², {args.steps} steps, CFG"] = lambda: pipe(
        "A red fox running", height=video, width=video, num_frames=17, **common
    )
    source = Image.new("RGB", (args.edit_size, args.edit_size), "gray")

    def edit_call():
        edit(source, "Make it night", image_guidance_scale=1.5, **common)
        # `edit` shares `pipe`'s model but not its model offloading, which would leave the model on the device (and
        # the timed edit without the transfers the other rows pay): offload as a call of `pipe` ends
        pipe.maybe_free_model_hooks()

    rows[f"edit {args.edit_size}², {args.steps} steps, dual CFG"] = edit_call
    return rows


def append_lines(report: Path, lines: list[str]) -> None:
    """Print `lines` and append them to `report` at once, so a run cut short keeps what it measured (its folder is
    made if need be: argparse only checked that it can be)."""
    print("\n".join(lines), flush=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    with report.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="hydrax-7b", help="model preset to build")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu only for a smoke run")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[512, 1024], help="square image sides")
    parser.add_argument("--video-size", type=int, default=512, help="side of the 17-frame video")
    parser.add_argument("--edit-size", type=int, default=1024, help="side of the edited image")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per call")
    parser.add_argument(
        "--compile",
        choices=["both", "no", "only"],
        default="both",
        help="time the calls without torch.compile of the LLM's decoder layers, with it, or both",
    )
    parser.add_argument(
        "--offload",
        choices=list(OFFLOADS),
        default="none",
        help="keep the weights on the CPU and bring them in per call (model), per block (group: block-level group "
        "offloading, streamed on CUDA) or per module (sequential); peak memory then counts what stays on the device",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where to save (and keep) the pipeline folder (default: a temporary folder, deleted at the end)",
    )
    parser.add_argument(
        "--report", type=Path, default=ROOT / "docs" / "PERFORMANCE.md", help="Markdown file the table is appended to"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; pass --device cpu for a smoke run")
    for size in [*args.image_sizes, args.video_size, args.edit_size]:
        if size < 16 or size % 16:
            parser.error(f"image, video and edit sizes must be multiples of 16, got {size}")
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    if args.offload != "none" and args.compile == "both":
        parser.error("--offload times one placement: pass --compile no or only (offloading goes on after compiling)")
    if args.offload == "sequential" and args.compile == "only":
        parser.error("--offload sequential hooks every module inside the compiled layers: pass --compile no")
    if args.output_dir is not None:
        check_output_folder(parser, "--output-dir", args.output_dir)
    check_output_folder(parser, "--report", args.report.parent)
    with given_or_temporary_folder(args.output_dir, "hydrax-pipeline-check-") as folder:
        run_checks(args, argv, folder)


def run_checks(args, argv, folder: Path) -> None:
    """Save a random pipeline into `folder`, reload it, and append each timed call's row to --report."""
    # 1. Build with random weights on the device and save as a pipeline folder
    start = time.perf_counter()
    save_random_pipeline(args.preset, folder, args.device)
    build_s = time.perf_counter() - start
    if args.device == "cuda":
        torch.cuda.empty_cache()

    # 2. Reload as a user would
    start = time.perf_counter()
    placement = None if args.offload != "none" else args.device
    pipe = HydraXPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, device_map=placement)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    edit = HydraXEditPipeline(model=pipe.model, processor=pipe.processor, scheduler=pipe.scheduler)
    edit.set_progress_bar_config(disable=True)

    # 3. Timed calls, then the same with the LLM compiled; each row is appended as soon as it is measured
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    header = [
        f"\n## Pipeline GPU check: {args.preset} on {device_name} (bf16, random weights)\n",
        f"Command: `{command_line('bench/gpu_check_pipelines.py', argv)}`; "
        f"build + save {build_s:.1f} s, "
        f"`HydraXPipeline.from_pretrained(torch_dtype=bf16, device_map={placement!r})` {load_s:.1f} s"
        + ("." if args.offload == "none" else f", then {args.offload} offloading to the CPU.")
        + "\n",
        "| call | torch.compile | first call | time | peak memory |",
        "| --- | --- | --- | --- | --- |",
    ]
    append_lines(args.report, header)
    for compiled in {"both": [False, True], "no": [False], "only": [True]}[args.compile]:
        if compiled:
            pipe.model.compile_repeated_blocks(fullgraph=True)
        if args.offload != "none":  # after compiling: the offloading hooks wrap the compiled layers
            OFFLOADS[args.offload](pipe, args.device)
        with torch.inference_mode():
            for name, run in workloads(pipe, edit, args).items():
                try:
                    first, seconds, peak = measure(args.device, run)
                except Exception as error:  # a failed row must not cost the rows after it their GPU time
                    traceback.print_exc()
                    row = f"| {name} | {'yes' if compiled else 'no'} | failed: {type(error).__name__} | | |"
                else:
                    graphs = f"yes ({counters['stats']['unique_graphs']} graphs so far)" if compiled else "no"
                    row = f"| {name} | {graphs} | {first:.2f} s | {seconds:.2f} s | {peak:.1f} GiB |"
                append_lines(args.report, [row])
    print(f"appended to {args.report}")


if __name__ == "__main__":
    main()
