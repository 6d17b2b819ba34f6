"""Reconstruction quality of a Hydra-XTok on images and videos: PSNR, SSIM, LPIPS and rFD.

    python evaluation/evaluate_tokenizer.py --model outputs/quickstart/model --data photos/ clips.jsonl \\
        --resolution 256 --num-frames 17 --output-dir outputs/eval-tokenizer
    python evaluation/evaluate_tokenizer.py --model outputs/hydrax-7b --data val/ --lpips lpips/ \\
        --feature-model facebook/dinov2-base --device cuda --dtype bfloat16 --chunk-frames 2

`--data` takes the training script's sources: folders of images and videos, JSONL manifests, `datasets` datasets.
Each item is cropped to the centred box of the `--resolution` bucket nearest its aspect ratio (videos: the middle
`--num-frames`-frame clip), encoded with the posterior mean (`--sample` draws from the posterior instead) and decoded,
`--chunk-frames` latent frames at a time when given (streaming: equal to the whole clip). Per kind (image, video):
- `psnr`: dB over each item's pixels in [-1, 1], averaged over items;
- `ssim`: Gaussian 11×11 window (scikit-image's `gaussian_weights=True`), per frame, averaged over frames and items;
- `lpips`: with `--lpips` (a `HydraXTokLPIPS` folder; `HydraXTokLPIPS.from_lpips_package()` converts the real one);
- `rfd_<model>`: the Fréchet distance between the features of every original and every reconstructed frame under
  `--feature-model` (any transformers vision model; `facebook/dinov2-base` gives rFD-DINOv2; FID's own Inception
  network is not a transformers model). Like FID, it depends on the number of frames: compare runs at equal counts.
`--model` is a `HydraXTokModel` folder or a Hydra-X checkpoint: `HydraXTokModel.from_pretrained` reads its vision tower
alone (the LLM's weights stay on disk).

Writes into `--output-dir`, all at once when the run completes (an existing folder is replaced only with `--force`):
`metrics.json` (per kind, the settings, what was skipped and how to turn it on), `samples.jsonl` (each item's origin
and metrics), `eval_results.json` (for a model card: `conversion/model_card_hydrax.py --eval-results`) and `examples/`
(the first `--save-examples` items: original frames above reconstructed ones).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "evaluation"))

import torch  # noqa: E402
from checkpoint_importer import staged_folder  # noqa: E402
from metrics_hydrax import (  # noqa: E402
    HydraXFeatureStatistics,
    HydraXImageFeatures,
    eval_results,
    frechet_distance,
    ssim,
)
from tqdm.auto import tqdm  # noqa: E402
from train_tokenizer import reconstruct, save_grid  # noqa: E402

from modeling_hydrax import HydraXTokModel  # noqa: E402
from modeling_hydrax.data_hydrax_tok import (  # noqa: E402
    HydraXTokBadSample,
    HydraXTokClipDataset,
    list_source,
    parse_resolution,
    psnr,
    report,
)
from modeling_hydrax.losses_hydrax_tok import HydraXTokLPIPS  # noqa: E402
from modeling_hydrax.losses_hydrax_tok import _fold_frames as frames_of  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_folder,
    check_media_sources,
    check_new_output_folder,
    check_tokenizer_folder,
    looks_like_path,
)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_exactly(dataset: HydraXTokClipDataset, index: int) -> dict | None:
    """Item `index` (its centred crop), or `None` when its file fails to decode (reported per `--on-bad-sample`):
    `dataset[index]` lets another item of its bucket stand in, which training wants and a measurement must not."""
    try:
        return dataset.load(index, None)
    except HydraXTokBadSample as error:
        report(str(error), dataset.on_bad_sample)
        return None


def card_settings(args, values: dict, items: int) -> dict[str, str]:
    """How each metric was measured, for the card's entries (`metric_config`): the resolution, clips' frames, a
    posterior sample and a `--limit` below the data's `items` change the figures (a part of the data is not the
    data's score)."""
    shared = [" ".join(f"{height}x{width}" for height, width in args.resolution)]
    shared += ["posterior sample"] if args.sample else []
    shared += [f"first {args.limit} items"] if args.limit is not None and args.limit < items else []
    clips = f"{args.num_frames} frames, stride {args.frame_stride}"
    return {name: ", ".join([*shared, *([clips] if name.startswith("video") else [])]) for name in values}


def item_batches(dataset: HydraXTokClipDataset, batch_size: int, limit: int | None) -> list[list[int]]:
    """The evaluated items (the first `limit`, in data order) grouped into batches of one kind and one size."""
    chosen = set(range(len(dataset) if limit is None else min(limit, len(dataset))))
    batches = []
    for key in sorted(dataset.buckets):
        members = [index for index in dataset.buckets[key] if index in chosen]
        batches += [members[start : start + batch_size] for start in range(0, len(members), batch_size)]
    return batches


class HydraXTokEvaluation:
    """Per-kind sums of the per-item metrics and the feature statistics of originals and reconstructions."""

    def __init__(self, lpips: HydraXTokLPIPS | None, features: HydraXImageFeatures | None, feature_name: str):
        self.lpips, self.features, self.feature_name = lpips, features, feature_name
        self.sums: dict[str, dict[str, float]] = {}
        self.statistics: dict[str, tuple[HydraXFeatureStatistics, HydraXFeatureStatistics]] = {}

    def add(self, kind: str, originals: torch.Tensor, rebuilt: torch.Tensor) -> list[dict[str, float]]:
        """Measure one batch of one kind; returns each item's metrics."""
        count = originals.shape[0]
        frame_ssim = ssim(frames_of(rebuilt), frames_of(originals))
        values = {"psnr": psnr(rebuilt, originals), "ssim": frame_ssim.view(count, -1).mean(1)}
        if self.lpips is not None:
            device = next(self.lpips.parameters()).device
            values["lpips"] = self.lpips(rebuilt.to(device), originals.to(device)).float().cpu()
        if self.features is not None:
            real, fake = self.statistics.setdefault(kind, (HydraXFeatureStatistics(), HydraXFeatureStatistics()))
            real.update(self.features(frames_of(originals)))
            fake.update(self.features(frames_of(rebuilt)))
        totals = self.sums.setdefault(kind, {"count": 0})
        totals["count"] += count
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + float(value.sum())
        return [{name: float(value[row]) for name, value in values.items()} for row in range(count)]

    def results(self) -> dict[str, dict[str, float]]:
        """Per kind: `count`, the mean of every per-item metric and, with a feature model, `rfd_<name>` (None when a
        kind has fewer than 2 frames)."""
        results = {}
        for kind, totals in self.sums.items():
            count = totals["count"]
            results[kind] = {
                "count": count,
                **{name: total / count for name, total in totals.items() if name != "count"},
            }
            if self.features is not None:
                real, fake = self.statistics[kind]
                enough = real.count >= 2
                results[kind][f"rfd_{self.feature_name}"] = frechet_distance(real, fake) if enough else None
        return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a Hydra-XTok or Hydra-X checkpoint folder")
    parser.add_argument(
        "--data", nargs="+", required=True, help="image / video folders, JSONL manifests or `datasets` datasets"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where metrics.json, samples.jsonl go")
    parser.add_argument("--force", action="store_true", help="replace an existing --output-dir")
    parser.add_argument(
        "--resolution",
        nargs="+",
        default=["256"],
        help="evaluation sizes, `256` or `HxW` (multiples of 16); each item takes the one nearest its aspect ratio",
    )
    parser.add_argument("--num-frames", type=int, default=17, help="frames of each video clip, 1 + 4·k")
    parser.add_argument("--frame-stride", type=int, default=1, help="take every n-th frame of a video")
    parser.add_argument(
        "--chunk-frames", type=int, help="stream videos this many latent frames at a time (default: the whole clip)"
    )
    parser.add_argument("--sample", action="store_true", help="decode a posterior sample instead of its mean")
    parser.add_argument("--lpips", type=Path, help="a HydraXTokLPIPS folder; without it LPIPS is skipped")
    parser.add_argument(
        "--feature-model", help="a transformers vision model (Hub id or folder) for rFD, e.g. facebook/dinov2-base"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="items per forward")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--save-examples", type=int, default=4, help="side-by-side PNGs of the first N items")
    parser.add_argument("--on-bad-sample", choices=["skip", "error"], default="skip", help="unreadable media")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="the tokenizer's dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed for `--sample`")
    args = parser.parse_args(argv)
    check_tokenizer_folder(parser, "--model", args.model, "pass a Hydra-XTok or Hydra-X checkpoint folder")
    inputs = {"--model": args.model, "--data": args.data, "--lpips": args.lpips, "--feature-model": args.feature_model}
    check_new_output_folder(parser, "--output-dir", args.output_dir, args.force, inputs)
    if args.lpips is not None:
        hint = "pass a folder written by HydraXTokLPIPS.save_pretrained"
        check_folder(parser, "--lpips", args.lpips, hint, "model.safetensors")
    check_media_sources(parser, "--data", args.data, hub_ids=False)
    if args.feature_model is not None and looks_like_path(args.feature_model):
        check_folder(parser, "--feature-model", args.feature_model, "pass a Hub id or a model folder", "config.json")
    try:
        args.resolution = [parse_resolution(value) for value in args.resolution]
    except ValueError:
        parser.error(f"--resolution {' '.join(args.resolution)}: each must be a number or HxW, e.g. 256 or 256x384")
    for height, width in args.resolution:
        if height < 16 or width < 16 or height % 16 or width % 16:
            parser.error(f"--resolution {height}x{width}: both sides must be positive multiples of 16")
    if args.num_frames < 1 or (args.num_frames - 1) % 4:
        parser.error(f"--num-frames {args.num_frames}: must be 1 + 4·k (an anchor plus a multiple of 4)")
    for name in ("frame_stride", "batch_size", "chunk_frames", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if args.save_examples < 0:
        parser.error(f"--save-examples {args.save_examples}: must be ≥ 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available; use --device cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error(
            f"runs in one process, not {os.environ['WORLD_SIZE']} (each would evaluate every item and write the same "
            "--output-dir); start it with python, not accelerate launch or torchrun"
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    # 1. The data (nothing usable stops here, before any model loads), the tokenizer, the optional LPIPS and features
    try:
        dataset = HydraXTokClipDataset(
            args.data, args.resolution, args.num_frames, args.frame_stride, on_bad_sample=args.on_bad_sample
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    model = HydraXTokModel.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device).eval()
    lpips = HydraXTokLPIPS.from_pretrained(args.lpips).to(args.device).eval() if args.lpips else None
    features = HydraXImageFeatures.from_pretrained(args.feature_model, args.device) if args.feature_model else None
    feature_name = Path(str(args.feature_model)).name.replace("-", "_").lower()
    batches = item_batches(dataset, args.batch_size, args.limit)
    usable = {item.origin for item in dataset.items}
    listed = [origin for source in args.data for _, _, origin in list_source(source)]

    # 2. Reconstruct batch by batch, measuring as we go
    evaluation = HydraXTokEvaluation(lpips, features, feature_name)
    samples, skipped = [], [origin for origin in listed if origin not in usable]  # unreadable or too short
    with staged_folder(args.output_dir) as staging:
        (staging / "examples").mkdir()
        progress = tqdm(total=sum(map(len, batches)), desc="reconstructing", unit="item")
        for indices in batches:
            loaded = [(index, load_exactly(dataset, index)) for index in indices]
            skipped += [dataset.items[index].origin for index, item in loaded if item is None]
            loaded = [(index, item) for index, item in loaded if item is not None]
            progress.update(len(indices))
            if not loaded:
                continue
            originals = torch.stack([item["pixel_values"] for _, item in loaded]).to(args.device)
            rebuilt = reconstruct(model, originals, args.sample, args.chunk_frames)
            kind = dataset.items[loaded[0][0]].kind
            for row, ((index, item), values) in enumerate(zip(loaded, evaluation.add(kind, originals, rebuilt))):
                samples.append({"index": index, "origin": item["origin"], "kind": kind, **values})
                if index < args.save_examples:
                    pair = originals[row : row + 1], rebuilt[row : row + 1]
                    save_grid(*pair, staging / "examples" / f"{index:05d}.png")
        progress.close()

        # 3. Summaries
        skipped_metrics = {}
        if lpips is None:
            skipped_metrics["lpips"] = "pass --lpips FOLDER (HydraXTokLPIPS.save_pretrained)"
        if features is None:
            skipped_metrics["rfd"] = "pass --feature-model, e.g. facebook/dinov2-base"
        metrics = {
            **evaluation.results(),
            "skipped_items": skipped,
            "skipped_metrics": skipped_metrics,
            "settings": {
                "model": str(args.model),
                "data": args.data,
                "resolution": [f"{height}x{width}" for height, width in args.resolution],
                "num_frames": args.num_frames,
                "frame_stride": args.frame_stride,
                "chunk_frames": args.chunk_frames,
                "posterior": "sample" if args.sample else "mean",
                "limit": args.limit,
                "dtype": args.dtype,
                "feature_model": args.feature_model,
                "lpips": None if args.lpips is None else str(args.lpips),
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (staging / "samples.jsonl").write_text("".join(json.dumps(sample) + "\n" for sample in samples))
        values = {
            f"{kind}_{name}": value
            for kind in ("image", "video")
            for name, value in metrics.get(kind, {}).items()
            if name != "count"
        }
        settings = card_settings(args, values, len(dataset))
        results = eval_results("image-to-image", list(map(str, args.data)), None, values, None, settings)
        (staging / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")

    for kind in ("image", "video"):
        if kind in metrics:
            values = metrics[kind]
            shown = ", ".join(
                f"{name} {value:.4g}" for name, value in values.items() if name != "count" and value is not None
            )
            print(f"{kind}s ({values['count']}): {shown}")
    for name, fix in skipped_metrics.items():
        print(f"{name} skipped: {fix}")
    if skipped:
        print(f"{len(skipped)} unreadable item(s) skipped, listed in metrics.json")
    print(f"Wrote metrics.json, samples.jsonl and examples/ to {args.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
