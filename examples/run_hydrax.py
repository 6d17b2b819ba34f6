"""Hydra-X end to end on a tiny model built on the fly: train understanding + text-to-image together, answer image
questions with `generate`, and sample images from text with `HydraXPipeline` (cached prompt, batched CFG).

    python examples/run_hydrax.py                                       # ~10 s on an idle 2-core CPU
    python examples/run_hydrax.py --tokenizer outputs/quickstart/model  # ~15 s: the Hydra-XTok fitted by quickstart.py

Steps: (1) build a tiny random checkpoint folder with conversion/build_hydrax.py (or load `--model PATH`) and load it
as a user would (`AutoModel` / `AutoProcessor`); (2) train on four real images with captions (skimage): captioning
(next-token loss on the answer) and caption → image (flow-matching loss), one forward each; (3) ask "What is in the
image?" about each training image and count exact captions (`train_caption_exact_match`: memorisation, not
generalisation); (4) sample each caption's image with `HydraXPipeline` (diffusers' `FlowMatchEulerDiscreteScheduler`,
the prompt's LLM cache computed once, the conditional and unconditional branches batched); (5) save the pipeline
(`model/`: loads with `AutoModel`, `HydraXPipeline` or `DiffusionPipeline`), `samples.png` (each caption above its
training image and the image sampled from it) and metrics.json into `--output-dir`, beside `initial/` (the checkpoint
built in step 1, before training; none with `--model`).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))

from build_hydrax import DROPPED_VISION, build_checkpoint, sub_config_dict  # noqa: E402
from checkpoint_importer import staged_folder  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

from modeling_hydrax import HydraXConfig, HydraXPipeline, HydraXTokConfig, HydraXTokModel  # noqa: E402
from modeling_hydrax.pipeline_hydrax import default_scheduler  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_hydrax_folder,
    check_output_folder,
    check_positive,
    check_tokenizer_folder,
    finite_float,
    write_atomically,
)


CAPTIONS = {"astronaut": "an astronaut", "coffee": "a cup of coffee", "chelsea": "a cat", "rocket": "a rocket"}
QUESTION = "What is in the image?"
RESULT_FILES = ("samples.png", "metrics.json")  # written after the model, describing it: they go with it
LABEL_SIDE = 128  # samples.png enlarges its tiles to at least this many pixels, so the captions fit beside them
LABEL_MARGIN, LABEL_HEADER = 100, 20  # pixels: row labels on the left, captions above the columns


def load_images(size: int) -> dict[str, np.ndarray]:
    """Center-cropped, resized RGB sample images shipped with scikit-image."""
    from skimage import data

    images = {}
    for name in CAPTIONS:
        array = getattr(data, name)()
        side = min(array.shape[:2])
        top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
        crop = Image.fromarray(array[top : top + side, left : left + side]).convert("RGB")
        images[name] = np.array(crop.resize((size, size), Image.Resampling.BICUBIC))
    return images


def chat_batch(processor, conversations, size=None, padding_side=None, **kwargs):
    """`conversations` rendered, tokenized and padded into one batch; with `size`, images stay size × size pixels.
    `padding_side` ("left" for generation) holds for this call only, without changing the tokenizer that is saved
    with the checkpoint; other batches pad with the tokenizer's own side (the model's positions follow the attention
    mask, so training gives the same losses padded either way)."""
    processor_kwargs = {"padding": True} | ({} if padding_side is None else {"padding_side": padding_side})
    if size is not None:
        processor_kwargs["images_kwargs"] = {"size": {"min_pixels": size * size, "max_pixels": size * size}}
    return processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs,
        **kwargs,
    )


def caption_batch(processor, images, size):
    """Captioning conversations; labels cover the assistant's answer only."""
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": images[name]}, {"type": "text", "text": QUESTION}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": CAPTIONS[name]}]},
        ]
        for name in CAPTIONS
    ]
    inputs = chat_batch(processor, conversations, size, return_assistant_tokens_mask=True)
    labels = inputs["input_ids"].masked_fill(inputs.pop("assistant_masks") == 0, -100)
    return dict(inputs, labels=labels)


def drawing_prompts() -> list[str]:
    """The caption → image instructions, in `CAPTIONS` order."""
    return [f"Draw {caption}." for caption in CAPTIONS.values()]


def generation_prompts(processor, size):
    """Caption → image conversations; the assistant turn is the image block to generate."""
    conversations = [
        [
            {"role": "user", "content": [{"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "image", "height": size, "width": size}]},
        ]
        for prompt in drawing_prompts()
    ]
    return chat_batch(processor, conversations)


def to_pixels(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(images[name]).permute(2, 0, 1).float() / 127.5 - 1 for name in CAPTIONS])


def train(model, processor, images, args):
    """Joint training: one captioning forward (LM loss) and one caption → image forward (flow loss) per step."""
    captions = caption_batch(processor, images, args.size)
    prompts = generation_prompts(processor, args.size)
    targets = to_pixels(images)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    history = []
    progress = tqdm(range(args.steps), desc="training")
    for step in progress:
        lm_loss = model(**captions).loss
        flow_loss = model(**prompts, target_pixel_values=targets).flow_loss
        loss = lm_loss + flow_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append({"step": step, "lm_loss": lm_loss.item(), "flow_loss": flow_loss.item()})
        progress.set_postfix(lm=f"{lm_loss.item():.3f}", flow=f"{flow_loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        history.append({"step": args.steps, "lm_loss": model(**captions).loss.item(), "flow_loss": None})
    return history


@torch.no_grad()
def answer_questions(model, processor, images, size) -> dict[str, str]:
    """Greedy answers to `QUESTION` about each image, batched with left padding."""
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": images[name]}, {"type": "text", "text": QUESTION}]}]
        for name in CAPTIONS
    ]
    inputs = chat_batch(processor, conversations, size, padding_side="left", add_generation_prompt=True)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {name: text.strip() for name, text in zip(CAPTIONS, texts)}


def save_grid(path: Path, originals: torch.Tensor, samples: torch.Tensor, captions) -> None:
    """One column per caption, written above it: the training image, then the image sampled from the caption (both
    `[B, 3, H, W]` in [-1, 1]). Tiles are enlarged (nearest) to at least `LABEL_SIDE` pixels so the labels fit."""
    scale = -(-LABEL_SIDE // originals.shape[-1])
    rows = [torch.cat(list(images), dim=-1) for images in (originals, samples)]
    pixels = ((torch.cat(rows, dim=-2) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    grid = Image.fromarray(pixels)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (LABEL_MARGIN + grid.width, LABEL_HEADER + grid.height), "white")
    canvas.paste(grid, (LABEL_MARGIN, LABEL_HEADER))
    draw, font, tile = ImageDraw.Draw(canvas), ImageFont.load_default(size=12), originals.shape[-1] * scale
    for column, caption in enumerate(captions):
        draw.text((LABEL_MARGIN + (column + 0.5) * tile, LABEL_HEADER / 2), caption, "black", font, anchor="mm")
    for row, label in enumerate(("training image", "sampled from\nits caption")):
        position = (LABEL_MARGIN / 2, LABEL_HEADER + (row + 0.5) * tile)
        draw.multiline_text(position, label, "black", font, anchor="mm", align="center")
    write_atomically(path, lambda partial: canvas.save(partial, format="PNG"))


def tower_weights(state_dict: dict) -> dict:
    """A Hydra-XTok state dict without its training-only Decompressor: what a Hydra-X vision tower holds."""
    return {name: value for name, value in state_dict.items() if not name.startswith(tuple(DROPPED_VISION))}


def plug_in_tokenizer(model, fitted: HydraXTokModel) -> None:
    """Load a fitted Hydra-XTok (e.g. from quickstart.py) into the model's vision tower."""
    model.model.vision_tower.load_state_dict(tower_weights(fitted.state_dict()))


def tower_mismatch(vision_config: HydraXTokConfig, tokenizer_config: HydraXTokConfig) -> str | None:
    """The config fields that differ ("field tokenizer-value vs model-value") when a tokenizer of `tokenizer_config`
    has weights of other names or shapes than the vision tower of a model with `vision_config`, else `None`. Both are
    built on the meta device: no memory is allocated and no weight is read."""
    shapes = []
    for config in (vision_config, tokenizer_config):
        with torch.device("meta"):
            state_dict = HydraXTokModel(config).state_dict()
        shapes.append({name: value.shape for name, value in tower_weights(state_dict).items()})
    if shapes[0] == shapes[1]:
        return None
    ours, theirs = sub_config_dict(vision_config), sub_config_dict(tokenizer_config)
    differences = [key for key in sorted(theirs) if theirs[key] != ours.get(key)]
    return ", ".join(f"{key} {theirs[key]} vs {ours.get(key)}" for key in differences)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, help="an existing Hydra-X checkpoint folder (default: build a tiny one)")
    parser.add_argument(
        "--tokenizer", type=Path, help="a fitted Hydra-XTok folder (e.g. outputs/quickstart/model) as the vision tower"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs/run_hydrax"),
        help="where the model, samples.png and metrics.json go",
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, a multiple of 16")
    parser.add_argument("--steps", type=int, default=150, help="training steps; 0 skips training")
    parser.add_argument("--lr", type=finite_float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--sampling-steps", type=int, default=20, help="Euler steps per generated image")
    parser.add_argument("--guidance-scale", type=finite_float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights, data and sampling")
    args = parser.parse_args(argv)
    if args.size % 16 or args.size < 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.steps < 0 or args.sampling_steps < 1:
        parser.error(f"--steps must be ≥ 0 and --sampling-steps ≥ 1, got {args.steps} and {args.sampling_steps}")
    check_positive(parser, lr=args.lr)  # both failed only after the work: AdamW at step 1, guidance at sampling
    if args.model is not None:
        hint = "pass a checkpoint folder written by conversion/build_hydrax.py or examples/run_hydrax.py"
        check_hydrax_folder(parser, "--model", args.model, hint)
    if args.tokenizer is not None:
        hint = "pass a folder written by examples/quickstart.py or a Hydra-XTok checkpoint"
        check_tokenizer_folder(parser, "--tokenizer", args.tokenizer, hint)
    if args.model is not None and args.tokenizer is not None:
        vision_config = HydraXConfig.from_pretrained(args.model).vision_config
        problem = tower_mismatch(vision_config, HydraXTokConfig.from_pretrained(args.tokenizer))
        if problem is not None:
            parser.error(
                f"--tokenizer {args.tokenizer} does not fit the vision tower of --model {args.model} (tokenizer vs "
                f"model: {problem}); pass a tokenizer with the model's vision_config, or leave out --model to build a "
                "tiny model around the tokenizer"
            )
    check_output_folder(parser, "--output-dir", args.output_dir)
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    output_dir = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)

    # 1. A checkpoint folder, loaded the way a user loads a Hub checkpoint
    fitted = HydraXTokModel.from_pretrained(args.tokenizer) if args.tokenizer else None
    overrides = {"vision_config": fitted.config.to_dict()} if fitted else {}
    initial = output_dir / "initial"
    if args.model is None:
        checkpoint = build_checkpoint("tiny", initial, seed=args.seed, overwrite=True, **overrides)
    else:
        checkpoint = args.model
        if initial.is_dir() and not args.model.resolve().is_relative_to(initial.resolve()):
            shutil.rmtree(initial)  # an earlier run's, of another model than this run's `model/`
    model = AutoModel.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    if fitted is not None:
        plug_in_tokenizer(model, fitted)
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(("model.vision_tower.gen_vit", "model.vision_tower.decoder")))

    # 2. Joint training on real images
    images = load_images(args.size)
    answers_before = answer_questions(model, processor, images, args.size)
    history = train(model, processor, images, args) if args.steps else []

    # 3. Understanding: answer a question about each image
    answers = answer_questions(model, processor, images, args.size)
    correct = sum(answers[name] == CAPTIONS[name] for name in CAPTIONS)

    # 4. Generation: sample each caption's image with the pipeline
    pipe = HydraXPipeline(model=model, processor=processor, scheduler=default_scheduler())
    samples = pipe(
        drawing_prompts(),
        height=args.size,
        width=args.size,
        num_inference_steps=args.sampling_steps,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
    ).images

    # 5. Save everything, the model first (each written beside and renamed into place)
    with staged_folder(output_dir / "model") as staging:
        pipe.save_pretrained(staging)
        for name in RESULT_FILES:  # the earlier run's, which describe the model about to be replaced
            (output_dir / name).unlink(missing_ok=True)
    save_grid(output_dir / "samples.png", to_pixels(images), samples * 2 - 1, list(CAPTIONS.values()))
    metrics = {
        "train_caption_exact_match": f"{correct}/{len(CAPTIONS)}",
        "note": "the questions are about the training images: exact captions show memorisation, not generalisation",
        "answers_before_training": answers_before,
        "answers": answers,
        "first_losses": history[0] if history else None,
        "last_losses": history[-2] if history else None,
        "caption_loss_after_training": history[-1]["lm_loss"] if history else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_atomically(output_dir / "metrics.json", lambda partial: partial.write_text(json.dumps(metrics, indent=2)))
    print(json.dumps(metrics, indent=2))
    print(
        f"samples: {output_dir / 'samples.png'}\nmodel: {output_dir / 'model'}\nmetrics: {output_dir / 'metrics.json'}"
    )


if __name__ == "__main__":
    main()
