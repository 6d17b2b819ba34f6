"""Hydra-X end to end on a tiny model built on the fly: train understanding + text-to-image together, answer image
questions with `generate`, and sample images from text with a cached, batched-CFG rectified-flow sampler.

    python examples/run_hydrax.py                                   # ~2 minutes on 2 CPU cores
    python examples/run_hydrax.py --tokenizer outputs/quickstart/model  # the Hydra-XTok fitted by quickstart.py

Steps: (1) build a tiny random checkpoint folder with conversion/build_hydrax.py (or load `--model PATH`) and load it
as a user would (`AutoModel` / `AutoProcessor`); (2) train on four real images with captions (skimage): captioning
(next-token loss on the answer) and caption → image (flow-matching loss), one forward each; (3) ask "What is in the
image?" about each image and count exact captions; (4) sample each caption's image with diffusers'
`FlowMatchEulerDiscreteScheduler`, the prompt's LLM cache computed once and the conditional and unconditional
branches batched; (5) save the model, a PNG grid and metrics.json into `--output-dir`.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))

from build_hydrax import build_checkpoint  # noqa: E402
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

from modeling_hydrax import HydraXTokModel  # noqa: E402


CAPTIONS = {"astronaut": "an astronaut", "coffee": "a cup of coffee", "chelsea": "a cat", "rocket": "a rocket"}
QUESTION = "What is in the image?"


def load_images(size: int) -> dict[str, np.ndarray]:
    """Center-cropped, resized RGB sample images shipped with scikit-image."""
    from skimage import data

    images = {}
    for name in CAPTIONS:
        array = getattr(data, name)()
        side = min(array.shape[:2])
        top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
        crop = Image.fromarray(array[top : top + side, left : left + side]).convert("RGB")
        images[name] = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))
    return images


def fixed_size(size: int) -> dict:
    """Processor kwargs that keep images at exactly size × size pixels."""
    return {"images_kwargs": {"size": {"min_pixels": size * size, "max_pixels": size * size}}}


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
    inputs = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
        return_assistant_tokens_mask=True,
        processor_kwargs=fixed_size(size),
    )
    labels = inputs["input_ids"].masked_fill(inputs.pop("assistant_masks") == 0, -100)
    return dict(inputs, labels=labels)


def generation_prompts(processor, size, with_target_block=True):
    """Caption → image conversations; the assistant turn is the image block to generate."""
    conversations = [
        [
            {"role": "user", "content": [{"type": "text", "text": f"Draw {CAPTIONS[name]}."}]},
            {"role": "assistant", "content": [{"type": "image", "height": size, "width": size}]},
        ]
        for name in CAPTIONS
    ]
    return processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )


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
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": images[name]}, {"type": "text", "text": QUESTION}]}]
        for name in CAPTIONS
    ]
    processor.tokenizer.padding_side = "left"
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
        processor_kwargs=fixed_size(size),
    )
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {name: text.strip() for name, text in zip(CAPTIONS, texts)}


@torch.no_grad()
def sample_images(model, processor, size, steps, guidance_scale, seed) -> torch.Tensor:
    """Text → image: prompt cache computed once for [conditional; unconditional], Euler steps of diffusers'
    FlowMatchEulerDiscreteScheduler with the model's resolution shift."""
    config = model.config
    prompts = generation_prompts(processor, size)
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    start = int(prompts["target_mask"][0].nonzero()[0]) if prompts["target_mask"][0].any() else ids.shape[1]
    prefix_ids = torch.cat([ids[:, :start], model.unconditional_input_ids(ids)[:, :start]])
    prefix = model.prepare_generation_prefix(prefix_ids, torch.cat([mask[:, :start]] * 2))
    grid = size // config.vision_config.patch_size
    batch = ids.shape[0]
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, config.vision_config.latent_channels, 1, grid, grid, generator=generator)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(steps, mu=model.flow_shift_mu(grid * grid))
    for i, timestep in enumerate(tqdm(scheduler.timesteps, desc="sampling")):
        sigma = scheduler.sigmas[i].expand(2 * batch)
        velocity = model.predict_velocity(torch.cat([latents, latents]), sigma, prefix)
        conditional, unconditional = velocity.chunk(2)
        guided = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(guided, timestep, latents).prev_sample
    return model.model.vision_tower.decode(latents).sample.clamp(-1, 1)


def save_grid(path: Path, originals: torch.Tensor, samples: torch.Tensor) -> None:
    """Top row: training images; bottom row: images sampled from their captions."""
    rows = [torch.cat(list(images), dim=-1) for images in (originals, samples[:, :, 0])]
    grid = ((torch.cat(rows, dim=-2) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(grid).save(path)


def plug_in_tokenizer(model, fitted: HydraXTokModel) -> None:
    """Load a fitted Hydra-XTok (e.g. from quickstart.py) into the model's vision tower; the training-only
    Decompressor is left out."""
    weights = {k: v for k, v in fitted.state_dict().items() if not k.startswith("decompressor.")}
    model.model.vision_tower.load_state_dict(weights)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an existing Hydra-X checkpoint folder (default: build tiny)")
    parser.add_argument("--tokenizer", type=Path, help="a fitted Hydra-XTok folder to use as the vision tower")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/run_hydrax"))
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size % 16 or args.size < 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.steps < 0 or args.sampling_steps < 1:
        parser.error(f"--steps must be ≥ 0 and --sampling-steps ≥ 1, got {args.steps} and {args.sampling_steps}")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a checkpoint folder (no config.json)")
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
    checkpoint = args.model or build_checkpoint("tiny", output_dir / "initial", overwrite=True, **overrides)
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

    # 4. Generation: sample each caption's image
    samples = sample_images(model, processor, args.size, args.sampling_steps, args.guidance_scale, args.seed)
    save_grid(output_dir / "samples.png", to_pixels(images), samples)

    # 5. Save everything (model folder written beside and renamed into place)
    staging = output_dir / ".model-staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    shutil.rmtree(output_dir / "model", ignore_errors=True)
    staging.rename(output_dir / "model")
    metrics = {
        "captions_correct": f"{correct}/{len(CAPTIONS)}",
        "answers_before_training": answers_before,
        "answers": answers,
        "first_losses": history[0] if history else None,
        "last_losses": history[-2] if history else None,
        "caption_loss_after_training": history[-1]["lm_loss"] if history else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(
        f"samples: {output_dir / 'samples.png'}\nmodel: {output_dir / 'model'}\nmetrics: {output_dir / 'metrics.json'}"
    )


if __name__ == "__main__":
    main()
