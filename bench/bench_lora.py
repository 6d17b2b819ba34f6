"""LoRA on the Hydra-X pipeline: per-step sampling time of the base model, with a loaded adapter (PEFT's LoRA layers
beside each projection) and with the adapter fused into the weights (`fuse_lora()`), in one process.

    python bench/bench_lora.py                      # 256² text-to-image with CFG, LLM width 768 × 2 layers, rank 16
    python bench/bench_lora.py --rank 64 --layers 4

The adapter targets the LLM's attention and MLP projections, as examples/train_hydrax.py --lora-r does; its weights
are random (non-zero), so the three samplers draw different images, and the fused one must draw the unfused one's.
Rows: median seconds per denoising step (timed between `callback_on_step_end` calls, after a warm-up call), the ratio
to the base model, and the largest difference of the output latents from the unfused adapter's.
"""

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipelines import build_pipeline, check_llm_size, measure_pipeline, text_to_image_call  # noqa: E402

from modeling_hydrax import HydraXPipeline  # noqa: E402
from script_args import check_at_least  # noqa: E402


TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"


def write_adapter(model, rank: int, folder: Path) -> Path:
    """A LoRA of `model` (a copy of it is adapted) with random non-zero updates, saved as a PEFT adapter folder."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(copy.deepcopy(model), config).save_pretrained(folder)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=16, help="latent grid side of the target (16 = 256²)")
    parser.add_argument("--steps", type=int, default=6, help="denoising steps per run, ≥ 3 (default: 6)")
    parser.add_argument("--hidden-size", type=int, default=768, help="LLM width of the benchmark model (default: 768)")
    parser.add_argument("--layers", type=int, default=2, help="LLM layers of the benchmark model (default: 2)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default: 16)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default: 1, steady timings on a shared machine)"
    )
    args = parser.parse_args(argv)
    if args.grid < 1 or args.steps < 3 or args.rank < 1:
        parser.error(f"need --grid ≥ 1, --steps ≥ 3 and --rank ≥ 1, got {args.grid}, {args.steps}, {args.rank}")
    check_llm_size(parser, args)
    check_at_least(parser, 1, threads=args.threads)
    torch.set_num_threads(args.threads)

    pipe = HydraXPipeline.from_pipe(build_pipeline(args))
    pipe.set_progress_bar_config(disable=True)
    size = args.grid * pipe.patch_size
    channels = pipe.model.config.vision_config.latent_channels
    noise = torch.randn(1, channels, 1, args.grid, args.grid, generator=torch.Generator().manual_seed(0))

    text_to_image = text_to_image_call(pipe, "A red fox in the snow", size, args.steps, noise)
    rows = {"base model": measure_pipeline(text_to_image)}
    with tempfile.TemporaryDirectory() as folder:
        pipe.load_lora_weights(write_adapter(pipe.model, args.rank, Path(folder)))
    rows[f"LoRA rank {args.rank}, loaded"] = measure_pipeline(text_to_image)
    pipe.fuse_lora()
    rows[f"LoRA rank {args.rank}, fused"] = measure_pipeline(text_to_image)

    base = rows["base model"][0]
    unfused = rows[f"LoRA rank {args.rank}, loaded"][2]
    print(
        f"Hydra-X text-to-image with a LoRA adapter, {size}² target ({args.grid}² latent tokens), {args.steps} steps, "
        f"CFG, LLM width {args.hidden_size} × {args.layers} layers, {torch.get_num_threads()} threads"
    )
    print("| sampler | s / step | vs base | max \\|Δ latents\\| vs loaded |")
    print("| --- | --- | --- | --- |")
    for name, (seconds, _, latents) in rows.items():
        print(f"| {name} | {seconds:.4f} | {seconds / base:.2f}× | {(latents - unfused).abs().max().item():.1e} |")


if __name__ == "__main__":
    main()
