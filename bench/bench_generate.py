"""Answer decoding speed of `HydraXForConditionalGeneration.generate`: eager decoding with transformers' dynamic cache
against `cache_implementation="static"` with its decoding steps compiled (`torch.compile`, as transformers does by
itself on GPUs), in one process.

    python bench/bench_generate.py                              # width 512 × 4 layers, 64 new tokens, ~2 minutes
    python bench/bench_generate.py --hidden-size 1024 --layers 8 --new-tokens 128

The prompt is an image question (a 256² image, its visual block bidirectional) answered greedily with EOS switched
off, so every run decodes `--new-tokens` tokens. Rows: the first call (compilation included for the compiled one), the
median of `--repeats` later calls, the later call's milliseconds per new token (its prefill of the image question
included, so an upper bound on decoding's), and whether the tokens equal eager decoding's. The LLM
is the tiny preset widened to `--hidden-size` and `--layers`, as in bench/bench_pipelines.py.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipelines import build_pipeline, check_llm_size  # noqa: E402
from transformers import CompileConfig  # noqa: E402

from script_args import check_at_least  # noqa: E402


def timed_calls(generate, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(seconds of the first call, median seconds of `repeats` later calls, the tokens) of `generate()`."""
    began = time.perf_counter()
    tokens = generate()
    first = time.perf_counter() - began
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        generate()
        seconds.append(time.perf_counter() - began)
    return first, statistics.median(seconds), tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512, help="LLM width (default: 512)")
    parser.add_argument("--layers", type=int, default=4, help="LLM layers (default: 4)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per call (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args(argv)
    if args.image_size < 16 or args.image_size % 16:
        parser.error(f"--image-size must be a positive multiple of 16, got {args.image_size}")
    check_at_least(parser, 2, new_tokens=args.new_tokens)
    check_at_least(parser, 1, repeats=args.repeats, threads=args.threads)
    check_llm_size(parser, args)
    torch.set_num_threads(args.threads)
    pipe = build_pipeline(args)
    model, processor = pipe.model, pipe.processor
    image = Image.new("RGB", (args.image_size, args.image_size), "white")
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}]}
    ]
    inputs = processor.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"images_kwargs": {"min_pixels": args.image_size**2, "max_pixels": args.image_size**2}},
    )
    greedy = dict(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles by itself on GPUs only

    rows = {
        "eager, dynamic cache": lambda: model.generate(**greedy),
        "compiled, static cache": lambda: model.generate(
            **greedy, cache_implementation="static", compile_config=compile_config
        ),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; LLM width {args.hidden_size} × {args.layers} "
        f"layers; prompt {inputs['input_ids'].shape[1]} tokens ({args.image_size}² image), {args.new_tokens} new"
    )
    print("| decoding | first call s | later calls s | call ms / new token | speed-up | tokens equal eager |")
    print("| --- | --- | --- | --- | --- | --- |")
    baseline = reference = None
    for name, generate in rows.items():
        with torch.no_grad():
            first, later, tokens = timed_calls(generate, args.repeats)
        baseline = baseline or later
        reference = tokens if reference is None else reference
        print(
            f"| {name} | {first:.2f} | {later:.3f} | {1000 * later / args.new_tokens:.1f} | {baseline / later:.2f}× | "
            f"{torch.equal(tokens, reference)} |"
        )


if __name__ == "__main__":
    main()
