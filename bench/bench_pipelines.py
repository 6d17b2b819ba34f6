"""Hydra-X sampling speed: the pipelines' cached, batched sampler against a recompute-everything reference, and its
per-step cost against prompt length, in one process.

    python bench/bench_pipelines.py                        # 256² target (16×16 latent grid), 6 steps, ~3 minutes
    python bench/bench_pipelines.py --grid 32 --steps 4    # 512² target

The reference sampler runs, at every step and for every guidance branch separately, the full `model(...)` forward
over the whole prompt (and edit source) plus the noisy target (`target_latents` / `timesteps` given). The pipelines
run the prompt (for editing also the source's Sem-ViT frame cache and LLM tokens) once, then predict all guidance
branches in one forward per step after that cached prefix, with no LM-head logits. Rows: text-to-image with CFG
(2 branches), the same after a step callback cut CFG off (diffusers' CFG cutoff: 1 branch from the next step on), and
editing with dual CFG (3 branches). Per-step times are medians over the steps; peak memory is the peak
resident set above the start of each run (/proc/self/clear_refs). The LLM is the tiny preset widened to `--hidden-size`
and `--layers` (Qwen2.5's MLP ratio), with the tiny Hydra-XTok. Per step, attention over the cached prompt keys still
grows with the prompt; at a realistic width the MLPs dominate (at 7B width it is ~1.5 % per 500 prompt tokens).
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_lm_head import peak_rss_above  # noqa: E402
from build_hydrax import build_processor  # noqa: E402

from modeling_hydrax import (  # noqa: E402
    HydraXConfig,
    HydraXEditPipeline,
    HydraXForConditionalGeneration,
    HydraXPipeline,
)
from modeling_hydrax.configuration_hydrax_presets import preset_kwargs  # noqa: E402
from modeling_hydrax.pipeline_hydrax import default_scheduler  # noqa: E402
from script_args import check_at_least, check_hidden_size, finite_float  # noqa: E402


LLM_HEAD_WIDTH = 64  # channels per attention head of the benchmark LLM (Qwen2.5's head width)


@torch.no_grad()
def reference_sample(
    pipe, branches, weights, latents, num_inference_steps, sources=None, step_seconds=None, guidance_rescale=0.0
):
    """The recompute-everything sampler: per step, one full `model(...)` forward per guidance branch `(input_ids,
    attention_mask)` (a prompt prefix ending with the target's `<|vision_start|>`, as the pipelines build them) with
    the noisy target appended, combined as `Σ weight · velocity`, then rescaled toward the first (conditional)
    branch's standard deviation per output by the fraction `guidance_rescale`. `sources` gives each branch's edit
    source pixels. Step times are appended to `step_seconds` when given. Returns the final latents."""
    model, num_tokens = pipe.model, latents[0, 0].numel()
    pipe._set_timesteps(num_inference_steps, None, num_tokens)  # the pipeline's schedule, on a copy of its scheduler
    scheduler = copy.deepcopy(pipe.scheduler)
    token = model.config.video_token_id if latents.shape[2] > 1 else model.config.image_token_id
    full = []
    for ids, mask in branches:
        target = torch.full((ids.shape[0], num_tokens), token)
        full.append((torch.cat([ids, target], dim=1), torch.cat([mask, torch.ones_like(target)], dim=1)))
    sources = sources or [None] * len(branches)
    for i, t in enumerate(scheduler.timesteps):
        began = time.perf_counter()
        sigma = scheduler.sigmas[i].expand(latents.shape[0])
        velocities = [
            model(
                input_ids=ids,
                attention_mask=mask,
                target_latents=latents,
                noise=latents,  # (1 − σ)·z0 + σ·noise with z0 = noise = the noisy latents: the target as it is
                timesteps=sigma,
                source_pixel_values=source,
            ).velocity
            for (ids, mask), source in zip(full, sources)
        ]
        velocity = sum(weight * branch for weight, branch in zip(weights, velocities))
        if guidance_rescale:
            deviation = [value.flatten(1).std(dim=1).view(-1, 1, 1, 1, 1) for value in (velocities[0], velocity)]
            velocity = velocity * (1 - guidance_rescale + guidance_rescale * deviation[0] / deviation[1])
        latents = scheduler.step(velocity, t, latents).prev_sample
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - began)
    return latents


def build_pipeline(args) -> HydraXEditPipeline:
    """The tiny preset with the benchmark's LLM width and depth, as an edit pipeline (`HydraXPipeline.from_pipe`
    shares its components)."""
    kwargs = preset_kwargs("tiny")
    heads = max(1, args.hidden_size // LLM_HEAD_WIDTH)
    kwargs["text_config"].update(
        hidden_size=args.hidden_size,
        intermediate_size=args.hidden_size * 16 // 3,  # Qwen2.5's MLP ratio (18944 / 3584 ≈ 5.3)
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )
    config = HydraXConfig(**kwargs)
    torch.manual_seed(0)
    model = HydraXForConditionalGeneration(config).eval()
    pipe = HydraXEditPipeline(model, build_processor(config, None), default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_llm_size(parser: argparse.ArgumentParser, args) -> None:
    """`parser.error` unless --layers ≥ 1 and --hidden-size splits into `build_pipeline`'s attention heads."""
    check_at_least(parser, 1, layers=args.layers)
    check_hidden_size(parser, args.hidden_size, LLM_HEAD_WIDTH)


def prompt_of_length(pipe, tokens: int) -> tuple[str, int]:
    """A prompt of at least `tokens` text tokens, and its count (the chat template adds its own tokens around it)."""
    words = ["a", "red", "fox", "in", "the", "snow"] * tokens
    for count in range(1, len(words) + 1):
        text = " ".join(words[:count])
        length = len(pipe.processor.tokenizer(text, add_special_tokens=False).input_ids)
        if length >= tokens:
            return text, length
    raise ValueError(f"Could not build a prompt of {tokens} tokens.")


def text_to_image_call(pipe, text: str, size: int, steps: int, noise: torch.Tensor, guidance_scale: float = 4.0):
    """`call(stamp)`: text-to-image latents from `noise` with CFG, `stamp` as the step-end callback (None: none)."""

    def call(stamp=None):
        return pipe(
            text,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            latents=noise,
            output_type="latent",
            callback_on_step_end=stamp,
        ).images

    return call


def measure_pipeline(call) -> tuple[float, float, torch.Tensor]:
    """(median seconds per step, peak resident bytes, output latents) of a pipeline call, after a warm-up call; steps
    are timed between `callback_on_step_end` calls."""
    call(None)
    stamps, result = [], {}

    def stamp(pipeline, step, timestep, callback_kwargs):
        stamps.append(time.perf_counter())
        return {}

    _, peak = peak_rss_above(lambda: result.update(latents=call(stamp)))
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:])), peak, result["latents"]


def measure_reference(run) -> tuple[float, float, torch.Tensor]:
    """(median seconds per step, peak resident bytes, output latents) of a reference sampler run, after a warm-up."""
    run([])
    seconds, result = [], {}
    _, peak = peak_rss_above(lambda: result.update(latents=run(seconds)))
    return statistics.median(seconds), peak, result["latents"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=16, help="latent grid side of the target (16 = 256², 32 = 512²)")
    parser.add_argument("--steps", type=int, default=6, help="denoising steps per run, ≥ 3 (default: 6)")
    parser.add_argument("--short-prompt", type=int, default=16, help="tokens of the short prompt prefix (default: 16)")
    parser.add_argument("--long-prompt", type=int, default=512, help="tokens of the long prompt prefix (default: 512)")
    parser.add_argument("--hidden-size", type=int, default=768, help="LLM width of the benchmark model (default: 768)")
    parser.add_argument("--layers", type=int, default=2, help="LLM layers of the benchmark model (default: 2)")
    parser.add_argument("--guidance-scale", type=finite_float, default=4.0, help="text guidance scale (default: 4.0)")
    parser.add_argument(
        "--image-guidance-scale", type=finite_float, default=1.5, help="edit image guidance (default: 1.5)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default: 1, steady timings on a shared machine)"
    )
    args = parser.parse_args(argv)
    if args.grid < 1 or args.steps < 3 or args.short_prompt < 1 or args.long_prompt <= args.short_prompt:
        parser.error(
            f"need --grid ≥ 1, --steps ≥ 3 and 1 ≤ --short-prompt < --long-prompt, got {args.grid}, {args.steps}, "
            f"{args.short_prompt}, {args.long_prompt}"
        )
    if args.guidance_scale <= 1 or args.image_guidance_scale <= 1:
        parser.error("--guidance-scale and --image-guidance-scale must be > 1: the benchmark measures guided sampling")
    check_llm_size(parser, args)
    check_at_least(parser, 1, threads=args.threads)
    torch.set_num_threads(args.threads)

    edit = build_pipeline(args)
    pipe = HydraXPipeline.from_pipe(edit)
    pipe.set_progress_bar_config(disable=True)
    size = args.grid * edit.patch_size
    target = {"type": "image", "height": size, "width": size}
    g, ig, steps = args.guidance_scale, args.image_guidance_scale, args.steps
    channels = edit.model.config.vision_config.latent_channels
    noise = torch.randn(1, channels, 1, args.grid, args.grid, generator=torch.Generator().manual_seed(0))
    source = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    (short_text, short), (long_text, long) = (prompt_of_length(pipe, n) for n in (args.short_prompt, args.long_prompt))

    def edit_image(stamp):
        return edit(
            source,
            short_text,
            num_inference_steps=steps,
            guidance_scale=g,
            image_guidance_scale=ig,
            latents=noise,
            output_type="latent",
            callback_on_step_end=stamp,
        ).images

    # Reference inputs: the same guidance branches the pipelines build
    pixels = edit.video_processor.preprocess(source, height=size, width=size)
    conditional, text_free = edit._encode_prompts([edit._conversation(short_text, {"type": "image"}, pixels[0])], None)

    rows = {}
    for text, length in ((short_text, short), (long_text, long)):
        call = text_to_image_call(pipe, text, size, steps, noise, g)
        rows[f"text-to-image, {length}-token prompt, cached"] = measure_pipeline(call)
    for text, length in ((short_text, short), (long_text, long)):
        branches = list(pipe._encode_prompts([pipe._conversation(text, target)], None))
        rows[f"text-to-image, {length}-token prompt, reference"] = measure_reference(
            lambda seconds, branches=branches: reference_sample(
                pipe, branches, [g, 1 - g], noise.clone(), steps, step_seconds=seconds
            )
        )

    def cut_off_guidance(stamp):
        def callback(pipeline, step, timestep, callback_kwargs):
            pipeline._guidance_scale = 1.0  # as diffusers' CFG-cutoff callbacks do, here after the first step
            return stamp(pipeline, step, timestep, callback_kwargs) if stamp else {}

        return text_to_image_call(pipe, short_text, size, steps, noise, g)(callback)

    rows["text-to-image, CFG cut at step 1, cached"] = measure_pipeline(cut_off_guidance)
    rows["edit, dual CFG, cached"] = measure_pipeline(edit_image)
    rows["edit, dual CFG, reference"] = measure_reference(
        lambda seconds: reference_sample(
            edit,
            [conditional, text_free, text_free],
            [g, ig - g, 1 - ig],
            noise.clone(),
            steps,
            sources=[pixels, pixels, torch.zeros_like(pixels)],
            step_seconds=seconds,
        )
    )
    (
        (short_s, _, t2i),
        (long_s, _, _),
        (t2i_ref_s, _, t2i_ref),
        (long_ref_s, _, _),
        (cut_s, _, _),
        (edit_s, _, edited),
        (
            edit_ref_s,
            _,
            edit_ref,
        ),
    ) = rows.values()

    print(
        f"Hydra-X sampling, {size}² target ({args.grid}² latent tokens), {steps} steps, LLM width "
        f"{args.hidden_size} × {args.layers} layers, guidance {g} (image {ig}), {torch.get_num_threads()} threads"
    )
    print(f"{'sampler':<44}{'s / step':>10}{'peak MB':>10}")
    for name, (seconds, peak, _) in rows.items():
        print(f"{name:<44}{seconds:>10.4f}{peak / 2**20:>10.0f}")
    ratio = long_s / short_s
    verdict = "within" if ratio <= 1.1 else "ABOVE"
    print(
        f"text-to-image: the cached sampler is {t2i_ref_s / short_s:.1f}x ({short} tokens) and "
        f"{long_ref_s / long_s:.1f}x ({long} tokens) faster per step than the reference"
    )
    print(f"CFG cutoff: a step after it costs {cut_s / short_s:.2f}x a guided step (1 of the 2 branches' LLM rows)")
    print(f"edit: the cached sampler is {edit_ref_s / edit_s:.1f}x faster per step than the reference")
    print(f"prompt length: {long} tokens cost {ratio:.2f}x {short} tokens per step ({verdict} the 1.1x target)")
    t2i_error, edit_error = (t2i - t2i_ref).abs().max().item(), (edited - edit_ref).abs().max().item()
    print(f"cached equals reference: max |Δ latents| text-to-image {t2i_error:.1e}, edit {edit_error:.1e}")


if __name__ == "__main__":
    main()
