"""Training step of a text-to-image batch: the LM head over every position (the old behaviour) against the LM head
only where a label needs it (`HydraXForConditionalGeneration.forward`'s default), in one process.

    python bench/bench_lm_head.py                    # 512² target (32×32 latent grid), Qwen2.5's 151,936 tokens
    python bench/bench_lm_head.py --grid 64          # 1024² target: 4,096 target tokens

A generation sample's labels cover its prompt only: the target's placeholders never count in the LM loss, so their
logits are never read. Computing them anyway costs `positions × vocab` floats (and as much again inside the
cross-entropy for backward). The LLM here is narrow (the head's cost scales with the vocabulary, which is real), so
the figures isolate the head; the analytic bf16 logits size of the 7B model is printed beside them.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration  # noqa: E402
from modeling_hydrax.configuration_hydrax_presets import preset_kwargs  # noqa: E402
from script_args import check_at_least, check_hidden_size  # noqa: E402


HEAD_WIDTH = 32  # channels per attention head of the benchmark LLM
PROMPT_IDS = 1000  # prompt tokens are drawn from ids below this, under the tiny preset's special tokens
MIN_VOCAB = preset_kwargs("tiny")["text_config"]["vocab_size"]


def build_model(args) -> HydraXForConditionalGeneration:
    """The tiny preset with a Qwen2.5-sized vocabulary and the benchmark's LLM width."""
    kwargs = preset_kwargs("tiny")
    heads = max(1, args.hidden_size // HEAD_WIDTH)
    kwargs["text_config"].update(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )
    torch.manual_seed(0)
    return HydraXForConditionalGeneration(HydraXConfig(**kwargs, text_dropout_prob=0.0)).train()


def build_batch(config: HydraXConfig, args) -> dict:
    """One text-to-image sample: prompt, `<|vision_start|>`, grid² target placeholders, `<|vision_end|>`."""
    tokens = args.grid * args.grid
    prompt = torch.randint(0, PROMPT_IDS, (args.prompt_tokens,)).tolist()
    ids = prompt + [config.vision_start_token_id] + [config.image_token_id] * tokens + [config.vision_end_token_id]
    ids = torch.tensor([ids])
    channels = config.vision_config.latent_channels
    return dict(
        input_ids=ids,
        labels=ids,
        target_latents=torch.randn(1, channels, 1, args.grid, args.grid),
        timesteps=torch.tensor([0.5]),
        noise=torch.randn(1, channels, 1, args.grid, args.grid),
    )


def step_every_position(model, batch):
    """The old behaviour: logits at every position, cross-entropy over all of them (placeholders masked)."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    out = model(**inputs, logits_to_keep=0)
    labels = batch["labels"].masked_fill(model.model.visual_block_ids(batch["input_ids"]) >= 0, -100)
    lm_loss = model.loss_function(logits=out.logits, labels=labels, vocab_size=model.config.text_config.vocab_size)
    (lm_loss + out.flow_loss).backward()
    return lm_loss.detach()


def step_where_needed(model, batch):
    """The default: logits only at the positions that predict a label."""
    out = model(**batch)
    out.loss.backward()
    return out.lm_loss.detach()


def peak_rss_above(fn) -> tuple[float, float]:
    """(seconds, peak resident bytes above the start) of one call; the peak is reset through /proc/self/clear_refs."""
    Path("/proc/self/clear_refs").write_text("5")
    start = rss("VmHWM")  # the reset high-water mark (the resident set read after it could exceed it: a negative peak)
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began, rss("VmHWM") - start


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=32, help="latent grid side of the target (32 = 512², 64 = 1024²)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens before the target (default: 32)")
    parser.add_argument("--vocab-size", type=int, default=151936, help="LM vocabulary (default: Qwen2.5's 151,936)")
    parser.add_argument("--hidden-size", type=int, default=128, help="LLM width of the benchmark model (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant after a warm-up (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    check_at_least(
        parser, 1, grid=args.grid, prompt_tokens=args.prompt_tokens, repeats=args.repeats, threads=args.threads
    )
    if args.vocab_size < MIN_VOCAB:
        parser.error(
            f"--vocab-size {args.vocab_size}: must be ≥ {MIN_VOCAB}, the tiny preset's vocabulary, which holds its "
            "special token ids"
        )
    check_hidden_size(parser, args.hidden_size, HEAD_WIDTH)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model = build_model(args)
    batch = build_batch(model.config, args)
    variants = {"every position (old)": step_every_position, "where labels need it": step_where_needed}
    losses, results = {}, {}
    for name, step in variants.items():
        losses[name] = step(model, batch)
        model.zero_grad(set_to_none=True)
        runs = []
        for _ in range(args.repeats):
            runs.append(peak_rss_above(lambda: step(model, batch)))
            model.zero_grad(set_to_none=True)
        results[name] = (statistics.median(t for t, _ in runs), max(m for _, m in runs))
    torch.testing.assert_close(*losses.values(), rtol=1e-5, atol=1e-5)

    positions = batch["input_ids"].shape[1]
    print(
        f"training step, 1 sample: {args.prompt_tokens} prompt + {args.grid}² target tokens = {positions} positions, "
        f"vocab {args.vocab_size:,}, LLM width {args.hidden_size}, {torch.get_num_threads()} threads"
    )
    print(f"{'LM head':<24}{'step s':>10}{'peak MB':>10}")
    for name, (seconds, peak) in results.items():
        print(f"{name:<24}{seconds:>10.3f}{peak / 2**20:>10.0f}")
    (old_t, old_m), (new_t, new_m) = results.values()
    memory = f"{new_m / old_m:.2f}x of the old" if old_m > 0 else "not measurable at this size"
    print(f"speed-up {old_t / new_t:.2f}x, peak memory {memory}; same LM loss")
    print(f"7B model, bf16: the skipped logits of one sample are {positions * 152064 * 2 / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
