"""Toy world: a proof of learning that runs offline on a CPU in minutes, scored on compositions never trained on.

    python examples/toy_world.py                  # ~3 minutes on a 2-core CPU
    python examples/toy_world.py --help           # every option

(1) Draws a procedural world: a circle, square or triangle in one of four colours on a background of another, 32²
pixels (a 2×2 latent grid), each combination at three sizes. A third of the 36 shape × colour × background combinations
is held out: every (colour, background) pair keeps two of its three shapes, so each held-out image is a new composition
of attributes that all appear in training. (2) Fits a tiny Hydra-XTok on the training images with
examples/train_tokenizer.py's stage 1 (L1 + KL), with 8 latent channels rather than the quickstart's 64 (the tiny
Hydra-X's LLM and flow head are 64 wide: with 64 channels the flow loss stays at its predict-zero level, 2.0), and sets
the latent statistics. (3) Builds a tiny Hydra-X around it (conversion/build_hydrax.py) and trains it with
examples/train_hydrax.py's `main`, the command a user runs, on three JSONL manifests: questions ("What colour is the
square?"), captions → images ("a red circle on blue") and edits ("make the circle green"), mixed in batches of 16
(at batch 1 the generated images stay in the background colour), all trainable (stage 2) with
`--flow-logit-mean 1.0`: on a 2×2 grid conditioning is learned at flow times near noise, which the default
logit-normal(0, 1) draws less often (docs/TOY_WORLD.md, "Flow times"); 2.5 draws almost nothing but noise and leaves
the shapes faint.
(4) Scores the held-out combinations, each against the best constant guess ("chance": the share of the most common
right answer): (a) greedy answers, exact match; (b) `HydraXPipeline` images from held-out captions: the named colour
(nearest of the four) of the centre and of the border; (c) `HydraXEditPipeline` edits whose result is a held-out
combination: the centre's named colour, and PSNR against the source outside the shape (the part the edit must keep).
Writes to --output-dir: world/ (images and manifests), tokenizer_training/ (the Hydra-XTok fit: its images, initial/,
work/ and model/), tokenizer/ (the fitted tokenizer with its latent statistics), initial/ (the untrained Hydra-X
checkpoint), hydrax/ (train_hydrax.py's output: work/ and model/), text_to_image.png and edits.png (sample grids) and
metrics.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "conversion"))

import train_hydrax  # noqa: E402
import train_tokenizer  # noqa: E402
from build_hydrax import build_checkpoint  # noqa: E402
from run_hydrax import chat_batch, plug_in_tokenizer  # noqa: E402
from train_hydrax import assistant, text, user  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

from modeling_hydrax import HydraXEditPipeline, HydraXPipeline, HydraXTokModel  # noqa: E402
from modeling_hydrax.data_hydrax_tok import psnr  # noqa: E402
from modeling_hydrax.pipeline_hydrax import default_scheduler  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_at_least,
    check_output_folder,
    check_positive,
    finite_float,
)


COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
RADII = (0.28, 0.32, 0.36)  # shape half-sizes as fractions of the side: three drawings of every combination
EVAL_RADIUS = 1  # held-out combinations are scored at the middle size
REGION = 8  # the centre box and the border ring are side / REGION pixels wide
MANIFESTS = ("questions", "text_to_image", "edits")


# ------------------------------------------------------------------------------------------------------ the world
def combinations() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) with the colour unlike the background: 3 × 4 × 3 = 36."""
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if c != b]


def is_held_out(shape: str, colour: str, background: str) -> bool:
    """One shape per (colour, background) pair, chosen by their colour distance: 12 combinations, each of whose
    (shape, colour), (shape, background) and (colour, background) pairs still appears in training."""
    names = list(COLOURS)
    return (names.index(colour) - names.index(background)) % len(names) == SHAPES.index(shape) + 1


def shape_mask(shape: str, radius: float, size: int) -> Image.Image:
    """A binary `L` image of the shape, centred, with half-size `radius · size`."""
    mask, centre, half = Image.new("L", (size, size), 0), size / 2, radius * size
    box = (centre - half, centre - half, centre + half - 1, centre + half - 1)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(centre, centre - half), (centre - half, centre + half), (centre + half, centre + half)], 255)
    return mask


def render(shape: str, colour: str, background: str, radius: float, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), COLOURS[background])
    image.paste(COLOURS[colour], mask=shape_mask(shape, radius, size))
    return image


def image_name(shape, colour, background, radius_index) -> str:
    return f"{colour}_{shape}_on_{background}_{radius_index}.png"


def caption(shape, colour, background) -> str:
    return f"a {colour} {shape} on {background}"


def questions(shape, colour, background) -> list[tuple[str, str]]:
    """(question, answer) pairs about one image."""
    return [
        (f"What colour is the {shape}?", colour),
        ("What colour is the background?", background),
        ("What shape is it?", shape),
    ]


def edit_instruction(shape, new_colour) -> str:
    return f"make the {shape} {new_colour}"


def edits(combos) -> list[tuple[tuple, tuple]]:
    """(source, result) combination pairs that recolour the shape, among `combos` (the result must be in `combos`)."""
    recoloured = [((s, c, b), (s, new, b)) for s, c, b in combos for new in COLOURS if new not in (c, b)]
    return [(source, result) for source, result in recoloured if result in combos]


def write_world(folder: Path, size: int) -> dict[str, Path]:
    """Every combination's images (training and held out) and the three training manifests; returns the manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    for combo in combinations():
        for index, radius in enumerate(RADII):
            render(*combo, radius, size).save(folder / image_name(*combo, index))
    train = [combo for combo in combinations() if not is_held_out(*combo)]
    image = lambda *key: {"type": "image", "path": image_name(*key)}  # noqa: E731
    lines = {name: [] for name in MANIFESTS}
    for index in range(len(RADII)):
        for combo in train:
            for question, answer in questions(*combo):
                lines["questions"].append([user([image(*combo, index), text(question)]), assistant([text(answer)])])
            lines["text_to_image"].append([user([text(caption(*combo))]), assistant([image(*combo, index)])])
        for source, result in edits(train):
            instruction = text(edit_instruction(result[0], result[1]))
            lines["edits"].append([user([instruction, image(*source, index)]), assistant([image(*result, index)])])
    manifests = {}
    for name, conversations in lines.items():
        manifests[name] = folder / f"{name}.jsonl"
        manifests[name].write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    return manifests


# ------------------------------------------------------------------------------------------------------ tokenizer
def pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL images → `[B, 3, H, W]` in [-1, 1]."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 127.5 - 1


def fit_tokenizer(images: list[Image.Image], args, folder: Path) -> tuple[HydraXTokModel, dict]:
    """A tiny Hydra-XTok (train_tokenizer.py's small config, `args.latent_channels` channels) fitted on `images` by
    train_tokenizer.py's stage 1 (L1 + KL; whole images, flips and shuffled colour channels), its latent statistics
    then set from them; returns it and the run's figures."""
    config = train_tokenizer.tokenizer_config("small", args.size)
    config.latent_channels = args.latent_channels  # few: the tiny Hydra-X's 64-wide LLM must carry them (docs)
    train_tokenizer.save_tokenizer(HydraXTokModel(config), folder / "initial")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(images):
        image.save(folder / "images" / f"{number}.png")
    argv = ["--data", folder / "images", "--model", folder / "initial", "--output-dir", folder, "--force"]
    argv += ["--stage", 1]
    argv += ["--no-teachers", "--lpips-weight", 0, "--size", args.size, "--min-crop-fraction", 1, "--cache-media"]
    argv += ["--shuffle-channels", "--max-steps", args.tokenizer_steps]
    argv += ["--max-minutes", args.tokenizer_minutes] if args.tokenizer_minutes else []
    argv += ["--learning-rate", args.tokenizer_lr, "--batch-size", 16, "--warmup-steps", 20, "--seed", args.seed]
    argv += ["--save-steps", args.tokenizer_steps, "--report-to", "none", "--cpu"]
    trainer = train_tokenizer.main(list(map(str, argv)))
    model = HydraXTokModel.from_pretrained(folder / "model").eval()
    with torch.no_grad():
        latents = model.encode(pixels(images)).latents.transpose(0, 1).flatten(1)
    model.config.latents_mean = latents.mean(1).tolist()
    model.config.latents_std = latents.std(1).clamp_min(1e-3).tolist()
    steps = trainer.state.global_step
    stats = {
        "steps": steps,
        "train_seconds": round(trainer.state.log_history[-1]["train_runtime"], 1),
        "stopped_by": "steps" if steps == args.tokenizer_steps else "time budget",
    }
    return model, stats


def build_model(tokenizer: HydraXTokModel, folder: Path, seed: int) -> Path:
    """A tiny Hydra-X checkpoint folder around the fitted tokenizer (its weights and config)."""
    build_checkpoint("tiny", folder, seed=seed, overwrite=True, vision_config=tokenizer.config.to_dict())
    model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    plug_in_tokenizer(model, tokenizer)
    train_hydrax.save_model(model, processor, folder)
    return folder


# ----------------------------------------------------------------------------------------------------- evaluation
def score(predictions: list[str], answers: list[str]) -> dict:
    """Accuracy, and chance: the accuracy of always giving the most common right answer."""
    most_common = max(answers.count(answer) for answer in set(answers))
    correct = sum(p == a for p, a in zip(predictions, answers))
    return {"accuracy": correct / len(answers), "chance": most_common / len(answers), "n": len(answers)}


def region_masks(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean `[H, W]` masks of the centre box (inside every shape) and the border ring (outside every shape)."""
    width, low, high = size // REGION, (size - size // REGION) // 2, (size + size // REGION) // 2
    centre, border = torch.zeros(size, size, dtype=torch.bool), torch.ones(size, size, dtype=torch.bool)
    centre[low:high, low:high] = True
    border[width:-width, width:-width] = False
    return centre, border


def named_colours(images: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The nearest of `COLOURS` to the median colour inside `mask`, per image (`[B, 3, H, W]` in [-1, 1])."""
    palette = torch.tensor(list(COLOURS.values())).float() / 127.5 - 1
    medians = images[:, :, mask].median(dim=-1).values
    return [list(COLOURS)[index] for index in torch.cdist(medians, palette).argmin(1).tolist()]


def outside_shape(shape: str, radius: float, size: int) -> torch.Tensor:
    """Boolean `[H, W]` mask of the pixels more than 2 pixels away from the shape."""
    return torch.from_numpy(np.asarray(shape_mask(shape, radius, size).filter(ImageFilter.MaxFilter(5))) == 0)


def masked_psnr(images: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """PSNR (dB, pixels in [-1, 1]) of each image against its reference over the pixels of its `[H, W]` mask."""
    errors = ((images - references) ** 2).mean(1)
    return [(10 * torch.log10(4 / e[m].mean().clamp_min(1e-10))).item() for e, m in zip(errors, masks)]


@torch.no_grad()
def evaluate_questions(model, processor, held_out, size) -> tuple[dict, list]:
    """Greedy answers to every question about the held-out images."""
    items = [(combo, question, answer) for combo in held_out for question, answer in questions(*combo)]
    conversations = [
        [user([{"type": "image", "image": render(*combo, RADII[EVAL_RADIUS], size)}, text(question)])]
        for combo, question, _ in items
    ]
    inputs = chat_batch(processor, conversations, size, padding_side="left", add_generation_prompt=True)
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    replies = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    predictions = [reply.strip().lower().rstrip(".") for reply in replies]
    examples = [{"question": q, "answer": a, "reply": p} for (_, q, a), p in zip(items, predictions)]
    return score(predictions, [answer for *_, answer in items]), examples


def sampling_kwargs(args) -> dict:
    return {
        "height": args.size,
        "width": args.size,
        "num_inference_steps": args.sampling_steps,
        "guidance_scale": args.guidance_scale,
        "generator": torch.Generator().manual_seed(args.seed),
        "output_type": "pt",
    }


def evaluate_text_to_image(pipe, held_out, args) -> tuple[dict, torch.Tensor]:
    """Images sampled from the held-out captions: named colours of their centres and borders."""
    images = pipe([caption(*combo) for combo in held_out], **sampling_kwargs(args)).images * 2 - 1
    centre, border = region_masks(args.size)
    shapes, backgrounds = named_colours(images, centre), named_colours(images, border)
    colours, grounds = [c for _, c, _ in held_out], [b for *_, b in held_out]
    both = [f"{s}/{b}" for s, b in zip(shapes, backgrounds)]
    metrics = {
        "shape_colour": score(shapes, colours),
        "background_colour": score(backgrounds, grounds),
        "both": score(both, [f"{c}/{b}" for c, b in zip(colours, grounds)]),
    }
    return metrics, images


def evaluate_edits(pipe, pairs, args) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Edits whose result is a held-out combination: the centre recoloured, the rest kept (PSNR outside the shape,
    dilated by 2 pixels, against the source; the border's named colour)."""
    radius = RADII[EVAL_RADIUS]
    sources = pixels([render(*source, radius, args.size) for source, _ in pairs])
    prompts = [edit_instruction(result[0], result[1]) for _, result in pairs]
    kwargs = sampling_kwargs(args)
    edited = pipe(list((sources + 1) / 2), prompts, image_guidance_scale=args.image_guidance_scale, **kwargs).images
    edited = edited * 2 - 1
    centre, border = region_masks(args.size)
    psnr = masked_psnr(edited, sources, [outside_shape(source[0], radius, args.size) for source, _ in pairs])
    metrics = {
        "shape_colour": score(named_colours(edited, centre), [result[1] for _, result in pairs]),
        "background_kept": score(named_colours(edited, border), [source[2] for source, _ in pairs]),
        "psnr_outside_shape_db": sum(psnr) / len(psnr),
    }
    return metrics, sources, edited


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/toy_world"), help="where world/, the models and metrics go"
    )
    parser.add_argument("--size", type=int, default=32, help="image side in pixels, a multiple of 16 (32: 2×2 tokens)")
    parser.add_argument(
        "--tokenizer-minutes",
        type=finite_float,
        default=1.5,
        help="time budget of the Hydra-XTok fit, in minutes; 0: none, so the fit and its learning-rate schedule "
        "depend on --tokenizer-steps alone and the run repeats exactly (a budget's schedule follows the clock)",
    )
    parser.add_argument(
        "--tokenizer-steps", type=int, default=3000, help="most Hydra-XTok steps (the time budget usually ends first)"
    )
    parser.add_argument(
        "--latent-channels",
        type=int,
        default=8,
        help="Hydra-XTok latent channels; the tiny Hydra-X's flow path is 64 wide, so 64 channels leave it no room "
        "to learn (flow loss stays at 2.0)",
    )
    parser.add_argument(
        "--tokenizer-lr", type=finite_float, default=1e-3, help="peak learning rate of the Hydra-XTok fit"
    )
    parser.add_argument("--steps", type=int, default=1500, help="Hydra-X optimizer steps of train_hydrax.py")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="Hydra-X samples per step, questions, captions and edits mixed (at batch 1 generation stays at the "
        "background colour: docs/TOY_WORLD.md)",
    )
    parser.add_argument(
        "--learning-rate-scale",
        type=finite_float,
        default=25.0,
        help="train_hydrax.py's multiplier of the stage-2 learning rates (a toy model learns fast)",
    )
    parser.add_argument(
        "--flow-logit-mean",
        type=finite_float,
        default=1.0,
        help="mean of the logit-normal flow-time distribution (> 0 draws times near noise, where small grids learn "
        'their conditioning: docs/TOY_WORLD.md, "Flow times"; 1.0 still trains the near-clean times the last '
        "sampling steps need)",
    )
    parser.add_argument("--sampling-steps", type=int, default=20, help="Euler steps per generated or edited image")
    parser.add_argument(
        "--guidance-scale", type=finite_float, default=3.0, help="classifier-free (text) guidance scale"
    )
    parser.add_argument(
        "--image-guidance-scale", type=finite_float, default=1.5, help="source-image guidance of edits"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and sampling noise")
    args = parser.parse_args(argv)
    if args.size < 32 or args.size % 16:
        parser.error(f"--size must be a multiple of 16 of at least 32, got {args.size}")
    for name in ("tokenizer_steps", "steps", "batch_size", "sampling_steps", "latent_channels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    check_positive(parser, tokenizer_lr=args.tokenizer_lr, learning_rate_scale=args.learning_rate_scale)
    check_at_least(parser, 0, tokenizer_minutes=args.tokenizer_minutes, seed=args.seed)  # minutes 0: no budget
    check_output_folder(parser, "--output-dir", args.output_dir)
    return args


def train_args(args, manifests: dict[str, Path], checkpoint: Path) -> list[str]:
    """The train_hydrax.py command line of the run (printed, so it can be rerun by hand)."""
    side = str(args.size**2)
    return [
        *("--model", str(checkpoint), "--stage", "2", "--data", *(f"{path}:1" for path in manifests.values())),
        *("--output-dir", str(args.output_dir / "hydrax"), "--force", "--max-steps", str(args.steps)),
        *("--batch-size", str(args.batch_size), "--learning-rate-scale", str(args.learning_rate_scale)),
        *("--warmup-steps", str(min(50, args.steps // 10))),
        *("--flow-logit-mean", str(args.flow_logit_mean), "--min-pixels", side, "--max-pixels", side),
        *("--logging-steps", str(max(1, args.steps // 10)), "--save-steps", str(args.steps + 1)),
        *("--report-to", "none", "--seed", str(args.seed)),
    ]


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    output_dir = args.output_dir
    train_combos = [combo for combo in combinations() if not is_held_out(*combo)]
    held_out = [combo for combo in combinations() if is_held_out(*combo)]

    # 1. The world, 2. its tokenizer
    manifests = write_world(output_dir / "world", args.size)
    print(f"World: {len(train_combos)} training combinations × {len(RADII)} sizes, {len(held_out)} held out")
    train_images = [render(*combo, radius, args.size) for combo in train_combos for radius in RADII]
    tokenizer, tokenizer_stats = fit_tokenizer(train_images, args, output_dir / "tokenizer_training")
    train_tokenizer.save_tokenizer(tokenizer, output_dir / "tokenizer")
    held_out_pixels = pixels([render(*combo, RADII[EVAL_RADIUS], args.size) for combo in held_out])
    tokenizer_psnr = psnr(train_tokenizer.reconstruct(tokenizer, held_out_pixels), held_out_pixels).mean().item()

    # 3. Hydra-X trained by train_hydrax.py
    command = train_args(args, manifests, build_model(tokenizer, output_dir / "initial", args.seed))
    print("python examples/train_hydrax.py " + " ".join(command))
    trainer = train_hydrax.main(command)
    model, processor = trainer.model.eval(), trainer.processing_class
    losses = [log for log in trainer.state.log_history if "loss" in log]

    # 4. Held-out scores
    question_metrics, answers = evaluate_questions(model, processor, held_out, args.size)
    pipe = HydraXPipeline(model=model, processor=processor, scheduler=default_scheduler())
    image_metrics, samples = evaluate_text_to_image(pipe, held_out, args)
    pairs = edits(combinations())
    pairs = [(source, result) for source, result in pairs if is_held_out(*result)]
    edit_pipe = HydraXEditPipeline(model=model, processor=processor, scheduler=default_scheduler())
    edit_metrics, sources, edited = evaluate_edits(edit_pipe, pairs, args)

    scale = max(1, 128 // args.size)
    train_tokenizer.save_rows([list(held_out_pixels), list(samples)], output_dir / "text_to_image.png", scale)
    targets = pixels([render(*result, RADII[EVAL_RADIUS], args.size) for _, result in pairs])
    train_tokenizer.save_rows([list(sources), list(targets), list(edited)], output_dir / "edits.png", scale)
    metrics = {
        "questions": question_metrics,
        "text_to_image": image_metrics,
        "edits": edit_metrics,
        "tokenizer": {"held_out_psnr_db": tokenizer_psnr, **tokenizer_stats},
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "held_out_combinations": [caption(*combo) for combo in held_out],
        "answers": answers,
        "train_command": "python examples/train_hydrax.py " + " ".join(command),
        "seconds": round(time.perf_counter() - started, 1),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print_summary(metrics)
    return metrics


def print_summary(metrics: dict) -> None:
    """What was measured, each score beside its chance level."""
    line = lambda name, m: f"  {name:<38} {m['accuracy']:6.1%}  (chance {m['chance']:.1%}, n={m['n']})"  # noqa: E731
    edits_ = metrics["edits"]
    print(
        f"\nHeld-out combinations ({len(metrics['held_out_combinations'])}) after {metrics['seconds']:.0f} s; "
        f"tokenizer PSNR on them {metrics['tokenizer']['held_out_psnr_db']:.1f} dB",
        line("(a) questions, exact answer", metrics["questions"]),
        line("(b) text-to-image: shape colour", metrics["text_to_image"]["shape_colour"]),
        line("    text-to-image: background colour", metrics["text_to_image"]["background_colour"]),
        line("    text-to-image: both", metrics["text_to_image"]["both"]),
        line("(c) edit: shape recoloured", edits_["shape_colour"]),
        line("    edit: background kept", edits_["background_kept"]),
        f"  {'    edit: PSNR outside the shape':<38} {edits_['psnr_outside_shape_db']:5.1f} dB",
        sep="\n",
    )


if __name__ == "__main__":
    main()
