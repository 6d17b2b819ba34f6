"""Multiple-choice scoring speed: evaluation/evaluate_understanding.py's cached option scoring against one full
forward per option, in one process.

    python bench/bench_understanding.py                          # 256² image, 2 / 4 / 8 options, ~1 minute
    python bench/bench_understanding.py --image-size 512 --options 4

The cached scorer (`score_options`) runs the prompt (chat template, image, question) once, repeats its key/value cache
once per option and scores all options in one batch over it. The reference does what a plain log-likelihood harness
does: one forward over prompt + option per option, every time encoding the image again (it too keeps only the
logits that score the option's tokens, so the two differ in the prompt's reuse alone). Both give the same scores (the
largest difference is printed). The LLM is the tiny preset widened to `--hidden-size` and `--layers` (Qwen2.5's MLP
ratio), with the tiny Hydra-XTok, as in bench/bench_pipelines.py.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "evaluation"))

from bench_pipelines import build_pipeline, check_llm_size, prompt_of_length  # noqa: E402
from evaluate_understanding import Sample, likelihood_text, media_kwargs, prompt_inputs, score_options  # noqa: E402

from script_args import check_at_least  # noqa: E402


OPTION_TEXTS = [
    "a red fox resting in fresh snow",
    "a cup of coffee on a wooden table",
    "an astronaut floating above the earth",
    "a cat asleep on a windowsill",
    "a rocket on its launch pad at dawn",
    "a bowl of soup with bread",
    "three bicycles leaning on a wall",
    "a lighthouse in a storm at night",
]


@torch.no_grad()
def reference_scores(model, processor, sample: Sample, processor_kwargs: dict) -> list[float]:
    """Each option's summed token log-probability from its own forward over prompt + option (image encoded again)."""
    inputs = prompt_inputs(processor, [sample], likelihood_text, processor_kwargs)
    prompt_length = inputs["input_ids"].shape[1]
    scores = []
    for text in sample.options.values():
        ids = torch.tensor([processor.tokenizer(text, add_special_tokens=False)["input_ids"]])
        full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], ids], dim=1))
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        positions = torch.arange(prompt_length - 1, prompt_length - 1 + ids.shape[1])
        logits = model(**full, logits_to_keep=positions).logits[0].float()
        scores.append(float(logits.log_softmax(dim=-1).gather(-1, ids[0, :, None]).sum()))
    return scores


def seconds_per_question(score, repeats: int) -> tuple[float, list[float]]:
    """Median seconds of `score()` over `repeats` calls after a warm-up call, and its scores."""
    scores = score()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        score()
        times.append(time.perf_counter() - started)
    return statistics.median(times), scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument(
        "--options", type=int, nargs="+", default=[2, 4, 8], help="options per question, each a row (default: 2 4 8)"
    )
    parser.add_argument("--question-tokens", type=int, default=32, help="tokens of the question text (default: 32)")
    parser.add_argument("--hidden-size", type=int, default=768, help="LLM width of the benchmark model (default: 768)")
    parser.add_argument("--layers", type=int, default=2, help="LLM layers of the benchmark model (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row after a warm-up (default: 3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default: 1, steady timings on a shared machine)"
    )
    args = parser.parse_args(argv)
    if args.image_size < 16 or args.image_size % 16:
        parser.error(f"--image-size {args.image_size}: must be a positive multiple of 16")
    if min(args.options) < 2 or max(args.options) > len(OPTION_TEXTS):
        parser.error(f"--options {args.options}: each must be between 2 and {len(OPTION_TEXTS)}")
    check_at_least(parser, 1, question_tokens=args.question_tokens, repeats=args.repeats, threads=args.threads)
    check_llm_size(parser, args)
    torch.set_num_threads(args.threads)

    pipe = build_pipeline(args)
    model, processor = pipe.model, pipe.processor
    question, question_tokens = prompt_of_length(pipe, args.question_tokens)
    pixels = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    kwargs = media_kwargs(processor, max_pixels=args.image_size**2)
    visual_tokens = (args.image_size // pipe.patch_size) ** 2
    print(
        f"Multiple-choice scoring, {args.image_size}² image ({visual_tokens} visual tokens), {question_tokens}-token "
        f"question, LLM {args.layers} layers × width {args.hidden_size}, {args.threads} thread(s)\n"
    )
    print("| options | cached s / question | one forward per option | speed-up | max \\|Δ score\\| |")
    print("| --- | --- | --- | --- | --- |")
    for count in args.options:
        options = dict(zip("ABCDEFGH", OPTION_TEXTS[:count]))
        sample = Sample(index=0, question=question, options=options, answer="A", images=[image])
        cached, cached_scores = seconds_per_question(
            lambda: score_options(model, processor, [sample], kwargs)[0], args.repeats
        )
        reference, scores = seconds_per_question(
            lambda: reference_scores(model, processor, sample, kwargs), args.repeats
        )
        difference = max(abs(a - b) for a, b in zip(cached_scores, scores))
        print(f"| {count} | {cached:.3f} | {reference:.3f} | {reference / cached:.2f}× | {difference:.1e} |")


if __name__ == "__main__":
    main()
