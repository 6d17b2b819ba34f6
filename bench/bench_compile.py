"""torch.compile warm-up of the Hydra-X sampler: the whole LLM (`model.model.language_model.compile()`) against
regional compilation of its decoder layers (`model.compile_repeated_blocks()`), each on a fresh copy of the same
model, with eager sampling as the baseline.

    python bench/bench_compile.py                   # 28 layers (hydrax-7b's depth) at width 64, ~5 minutes
    python bench/bench_compile.py --layers 4        # quick

Compilation time grows with the graph that is compiled, hardly with its width: a narrow LLM with the 7B's 28 layers
shows what the whole LLM costs to compile against one layer. Every variant runs in a process of its own with an empty
inductor cache folder and the graph caches off, so each warm-up compiles from scratch and pays inductor's start-up
(in one process the first compiled variant paid it, and its kernels in the on-disk cache served the next). Rows: the
first call (the warm-up, compilation included), the median step of a second call, the graphs compiled, and the
largest difference of the output latents from eager. Per-step times at this width say little about a GPU at 7B
width; the warm-up and graph counts carry over.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch._dynamo.utils import counters


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipelines import build_pipeline, check_llm_size, text_to_image_call  # noqa: E402

from modeling_hydrax import HydraXPipeline  # noqa: E402
from script_args import check_at_least  # noqa: E402


VARIANTS = {
    "eager": lambda model, backend: None,
    "whole LLM, language_model.compile()": lambda model, backend: model.model.language_model.compile(backend=backend),
    "decoder layers, compile_repeated_blocks()": lambda model, backend: model.compile_repeated_blocks(
        backend=backend, fullgraph=True
    ),
}


def run_variant(args, compile_model) -> tuple[float, float, int, torch.Tensor]:
    """(first-call seconds, median seconds per step of a second call, graphs compiled, output latents) of text-to-image
    with CFG on a fresh pipeline that `compile_model(model, backend)` prepared."""
    torch._dynamo.reset()
    counters.clear()
    pipe = HydraXPipeline.from_pipe(build_pipeline(args))
    pipe.set_progress_bar_config(disable=True)
    compile_model(pipe.model, args.backend)
    size = args.grid * pipe.patch_size
    channels = pipe.model.config.vision_config.latent_channels
    noise = torch.randn(1, channels, 1, args.grid, args.grid, generator=torch.Generator().manual_seed(0))
    stamps = []

    call = text_to_image_call(pipe, "A red fox in the snow", size, args.steps, noise)

    def stamp(pipeline, step, timestep, callback_kwargs):
        stamps.append(time.perf_counter())
        return {}

    with torch.no_grad():
        began = time.perf_counter()
        call()
        first = time.perf_counter() - began
        latents = call(stamp)
    step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return first, step, counters["stats"]["unique_graphs"], latents


def run_in_own_process(args, name: str, work: Path) -> tuple[float, float, int, torch.Tensor]:
    """`run_variant` of the variant `name` in a fresh Python process with an empty inductor cache folder."""
    output = work / f"variant{list(VARIANTS).index(name)}"
    sizes = ("layers", "hidden_size", "grid", "steps", "backend", "threads")
    command = [sys.executable, __file__, *(f"--{key.replace('_', '-')}={getattr(args, key)}" for key in sizes)]
    command += ["--worker", name, "--worker-output", str(output)]
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(work / f"{output.name}-inductor")}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"variant {name!r} failed:\n{result.stderr[-4000:]}")
    figures = json.loads(output.with_suffix(".json").read_text())
    latents = load_file(output.with_suffix(".safetensors"))["latents"]
    return figures["first"], figures["step"], figures["graphs"], latents


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28, help="LLM layers (default: 28, as in hydrax-7b)")
    parser.add_argument("--hidden-size", type=int, default=64, help="LLM width (default: 64)")
    parser.add_argument("--grid", type=int, default=8, help="latent grid side of the target (default: 8)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per call, ≥ 3 (default: 4)")
    parser.add_argument(
        "--backend", default="inductor", help="torch.compile backend (default: inductor; aot_eager for a smoke run)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one variant, in its process
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hidden_size < 64 or args.grid < 1 or args.steps < 3:
        parser.error(
            f"need --hidden-size ≥ 64, --grid ≥ 1 and --steps ≥ 3, got {args.hidden_size}, {args.grid}, {args.steps}"
        )
    check_llm_size(parser, args)
    check_at_least(parser, 1, threads=args.threads)
    if args.worker is not None:
        torch.set_num_threads(args.threads)
        with torch._inductor.config.patch(fx_graph_cache=False):
            with torch._functorch.config.patch(enable_autograd_cache=False):
                first, step, graphs, latents = run_variant(args, VARIANTS[args.worker])
        save_file({"latents": latents.contiguous()}, args.worker_output.with_suffix(".safetensors"))
        args.worker_output.with_suffix(".json").write_text(json.dumps(dict(first=first, step=step, graphs=graphs)))
        return
    with tempfile.TemporaryDirectory(prefix="hydrax-bench-compile-") as work:
        rows = {name: run_in_own_process(args, name, Path(work)) for name in VARIANTS}
    print(
        f"Hydra-X text-to-image with CFG, {args.grid}² latent tokens, {args.steps} steps, LLM {args.layers} layers × "
        f"width {args.hidden_size}, backend {args.backend}, {args.threads} threads, each variant in its own process"
    )
    print(f"{'variant':<44}{'first call s':>14}{'s / step':>10}{'graphs':>8}{'max |Δ| vs eager':>18}")
    eager = rows["eager"][3]
    for name, (first, step, graphs, latents) in rows.items():
        print(f"{name:<44}{first:>14.2f}{step:>10.4f}{graphs:>8}{(latents - eager).abs().max().item():>18.1e}")
    whole, regional = rows["whole LLM, language_model.compile()"], rows["decoder layers, compile_repeated_blocks()"]
    print(
        f"warm-up: compile_repeated_blocks is {whole[0] / regional[0]:.1f}x faster to its first image than compiling "
        f"the whole LLM ({regional[2]} graph(s) against {whole[2]})"
    )


if __name__ == "__main__":
    main()
