"""GPU check of the full-size model: build `hydrax-7b` with random weights in bf16 on CUDA, save it, reload it with
`from_pretrained(dtype=torch.bfloat16, device_map="cuda")`, answer an image question (32 new tokens) and run one
generation forward at 512², then append the figures to docs/PERFORMANCE.md.

    python bench/gpu_check_hydrax.py --output-dir /tmp/hydrax-7b        # needs one ≥40 GB CUDA GPU and ~20 GB disk

The prompt is built from Qwen2.5's special token ids directly, so no tokenizer download is needed.
"""

import argparse
import sys
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check_pipelines import append_lines  # noqa: E402

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration  # noqa: E402
from script_args import check_output_folder, command_line, given_or_temporary_folder  # noqa: E402


def image_question_ids(config, tokens: int) -> torch.Tensor:
    """`<|im_start|>` + an image block of `tokens` placeholders + a few question tokens."""
    question = [9707, 11, 1128, 374, 304, 419, 2168, 30]  # ordinary Qwen2.5 vocabulary ids
    block = [config.vision_start_token_id] + [config.image_token_id] * tokens + [config.vision_end_token_id]
    return torch.tensor([[151644] + block + question + [151645]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        choices=["hydrax-7b", "hydrax-1.5b"],
        default="hydrax-7b",
        help="model preset to build (one with Qwen2.5's vocabulary: the prompt is Qwen2.5 token ids)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where to save (and keep) the random checkpoint (default: a temporary folder, deleted at the end)",
    )
    parser.add_argument("--size", type=int, default=512, help="image side for the question and the generation")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated for the answer (default: 32)")
    parser.add_argument(
        "--report",
        type=Path,
        default=ROOT / "docs" / "PERFORMANCE.md",
        help="Markdown file the figures are appended to",
    )
    args = parser.parse_args(argv)
    if args.output_dir is not None:
        check_output_folder(parser, "--output-dir", args.output_dir)
    check_output_folder(parser, "--report", args.report.parent)
    if not torch.cuda.is_available():
        parser.error("this check needs a CUDA GPU")
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    with given_or_temporary_folder(args.output_dir, "hydrax-gpu-check-") as output_dir:
        run_check(args, argv, output_dir)


def run_check(args, argv, output_dir: Path) -> None:
    """Build, save into `output_dir`, reload, time, and append the figures to --report."""
    # 1. Build with random weights in bf16 directly on the GPU and save
    config = HydraXConfig.from_preset(args.preset)
    start = time.perf_counter()
    with torch.device("cuda"):
        model = HydraXForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    model.save_pretrained(output_dir)
    save_s = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()

    # 2. Reload as a user would
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = HydraXForConditionalGeneration.from_pretrained(output_dir, dtype=torch.bfloat16, device_map="cuda").eval()
    load_s = time.perf_counter() - start
    weights_gib = torch.cuda.memory_allocated() / 2**30

    # 3. An image question, 32 new tokens
    grid = args.size // config.vision_config.patch_size
    ids = image_question_ids(config, grid * grid).cuda()
    pixels = torch.rand(1, 3, args.size, args.size, device="cuda", dtype=torch.bfloat16) * 2 - 1
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=2, do_sample=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            pixel_values=pixels,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            min_new_tokens=args.new_tokens,
        )
        torch.cuda.synchronize()
    answer_s = time.perf_counter() - start
    new_tokens = out.shape[1] - ids.shape[1]
    answer_peak = torch.cuda.max_memory_allocated() / 2**30

    # 4. One generation (flow-matching) forward at size²
    gen_ids = torch.tensor(
        [
            [151644, 9707, 151645, config.vision_start_token_id]
            + [config.image_token_id] * grid * grid
            + [config.vision_end_token_id]
        ],
        device="cuda",
    )
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model(input_ids=gen_ids, target_pixel_values=pixels)
        torch.cuda.synchronize()
        start = time.perf_counter()
        gen = model(input_ids=gen_ids, target_pixel_values=pixels)
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - start
    gen_peak = torch.cuda.max_memory_allocated() / 2**30

    device = torch.cuda.get_device_name()
    lines = [
        f"\n## GPU check: {args.preset} on {device} (bf16, random weights)\n",
        f"Command: `{command_line('bench/gpu_check_hydrax.py', argv)}`\n",
        "| step | figure |",
        "| --- | --- |",
        f"| build on GPU / save | {build_s:.1f} s / {save_s:.1f} s |",
        f"| `from_pretrained(dtype=bf16, device_map='cuda')` | {load_s:.1f} s, {weights_gib:.1f} GiB of weights |",
        f"| image question {args.size}², {new_tokens} new tokens | {answer_s:.2f} s, "
        f"{new_tokens / answer_s:.1f} tokens/s (incl. prefill), peak {answer_peak:.1f} GiB |",
        f"| one generation forward {args.size}² | {gen_s:.2f} s, peak {gen_peak:.1f} GiB, flow loss "
        f"{gen.flow_loss.item():.3f} |",
    ]
    append_lines(args.report, lines)
    print(f"appended to {args.report}")


if __name__ == "__main__":
    main()
