"""Hydra-XTok's stage 1, then stage 2 (the GAN stage), on the quickstart's photos and clips, offline on a CPU: the
evidence of docs/TOKENIZER_TRAINING.md.

    python examples/tokenizer_stages.py                     # ~15 minutes on a 2-core CPU
    python examples/tokenizer_stages.py --tiny --stage1-minutes 0.1 --stage2-minutes 0.1 --size 32  # a smoke run

Both stages run through examples/train_tokenizer.py's code. Stage 1 trains everything with L1 + LPIPS 0.1 + KL 1e-4
(no teachers: none can be downloaded here). Stage 2 freezes the encoder and fine-tunes the pixel decoder with
L1 + LPIPS + GAN 0.075 (PatchGAN, hinge, its own learning rate); a control run fine-tunes the decoder for the same
time with the GAN weight at 0, so the GAN's effect is not mixed up with more decoder training, and a third run scales
the GAN term by VQGAN's adaptive weight (‖∇ reconstruction‖ / ‖∇ GAN‖ at the decoder's last layer).

LPIPS: real LPIPS weights (ImageNet VGG16 + the `lpips` package's heads) cannot be downloaded here, so the LPIPS of
training is a small random network (`HydraXTokLPIPS(channels=(16, 32, 64, 64, 64))`, seed 0, equal head weights),
and LPIPS is measured with both that network and a second one (seed 1) that training never saw. Held-out data: the
photos `chelsea` and `coffee` and a clip of `bigbuckbunny.mp4`, as in the quickstart. Writes `metrics.json` and
`reconstructions.png` (one held-out image per row: original, then each model in the order of the table) to
--output-dir.
"""

import argparse
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quickstart  # noqa: E402
import train_tokenizer  # noqa: E402

from modeling_hydrax import HydraXTokModel  # noqa: E402
from modeling_hydrax.data_hydrax_tok import psnr  # noqa: E402
from modeling_hydrax.losses_hydrax_tok import HydraXTokLPIPS  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_at_least,
    check_inputs_outside,
    check_output_folder,
    check_positive,
    check_tokenizer_folder,
    finite_float,
)


LPIPS_CHANNELS = (16, 32, 64, 64, 64)
STAGE2_RUNS = (  # (name, output folder, extra options), each from the stage-1 model for the same time
    ("stage 2 + GAN", "stage2_gan", ()),
    ("stage 2 + GAN, adaptive weight", "stage2_gan_adaptive", ("--adaptive-gan-weight",)),
    ("stage 2, no GAN", "stage2_no_gan", ("--gan-weight", 0)),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/tokenizer_stages"), help="where runs go")
    parser.add_argument("--stage1-minutes", type=finite_float, default=5.0, help="time budget of stage 1")
    parser.add_argument("--stage2-minutes", type=finite_float, default=3.0, help="time budget of each stage-2 run")
    parser.add_argument("--size", type=int, default=128, help="train / evaluation side in pixels (multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=16, help="images or clips per step")
    parser.add_argument("--tiny", action="store_true", help="the test-sized tokenizer (hidden 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    parser.add_argument(
        "--stage1-model",
        type=Path,
        help="reuse this stage-1 model folder (OUTPUT_DIR/stage1/model of an earlier run) instead of training one",
    )
    args = parser.parse_args(argv)
    if args.size < 32 or args.size % 16:
        parser.error(f"--size must be a multiple of 16 of at least 32 (LPIPS pools 4 times), got {args.size}.")
    check_positive(parser, stage1_minutes=args.stage1_minutes, stage2_minutes=args.stage2_minutes)
    check_at_least(parser, 1, batch_size=args.batch_size)
    check_at_least(parser, 0, seed=args.seed)
    if args.stage1_model is not None:
        if args.tiny:
            parser.error("--tiny sizes a new stage-1 model; it cannot be combined with --stage1-model.")
        hint = "pass a stage-1 model folder, e.g. OUTPUT_DIR/stage1/model of an earlier run"
        check_tokenizer_folder(parser, "--stage1-model", args.stage1_model, hint)
    check_output_folder(parser, "--output-dir", args.output_dir)
    # a stage-1 model inside a stage-2 run's folder would be replaced by that run (it failed after the runs before it)
    stage2_outputs = [f"{folder}/{part}" for _, folder, _ in STAGE2_RUNS for part in train_tokenizer.RUN_OUTPUTS]
    inputs = {"--stage1-model": args.stage1_model}
    check_inputs_outside(parser, "--output-dir", args.output_dir, inputs, stage2_outputs)
    return args


def run_stage(args, manifest: Path, output: Path, minutes: float, *options) -> Path:
    """One examples/train_tokenizer.py run on the quickstart data; returns its model folder."""
    argv = ["--data", manifest, "--output-dir", output, "--force", "--no-teachers"]
    argv += ["--lpips", args.output_dir / "lpips_train"]
    argv += ["--size", args.size, "--num-frames", 5, "--frame-stride", quickstart.CLIP_STRIDE, "--cache-media"]
    argv += ["--video-ratio", 0.25, "--shuffle-channels", "--max-steps", 100_000, "--max-minutes", minutes]
    argv += ["--batch-size", args.batch_size, "--seed", args.seed, "--report-to", "none", "--cpu"]
    argv += ["--save-steps", 100_000, "--logging-steps", 25, "--warmup-steps", 20, *options]
    train_tokenizer.main(list(map(str, argv)))
    return output / "model"


@torch.no_grad()
def evaluate(model: HydraXTokModel, evaluations: dict, lpips_nets: dict) -> tuple[dict, dict]:
    """Held-out PSNR and LPIPS (each network) per kind, and the reconstructions."""
    model.eval()
    metrics, outputs = {}, {}
    for kind, pixels in evaluations.items():
        outputs[kind] = train_tokenizer.reconstruct(model, pixels)
        metrics[f"{kind}_psnr"] = psnr(outputs[kind], pixels).mean().item()
        for name, net in lpips_nets.items():
            metrics[f"{kind}_lpips_{name}"] = net(outputs[kind], pixels).mean().item()
    return metrics, outputs


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = args.output_dir

    # 1. The quickstart's data and held-out sets; the two random LPIPS networks
    data_args = argparse.Namespace(size=args.size, frames=5, video_every=4)
    manifest, evaluations, video_skipped = quickstart.prepare_data(out / "data", data_args)
    lpips_nets = {}
    for name, seed in (("train", 0), ("unseen", 1)):
        torch.manual_seed(seed)
        lpips_nets[name] = HydraXTokLPIPS(channels=LPIPS_CHANNELS)
        lpips_nets[name].save_pretrained(out / f"lpips_{name}")

    # 2. Stage 1 from a new tokenizer, then stage 2 with and without the GAN, each from stage 1's model
    stage1 = args.stage1_model
    if stage1 is None:
        preset = ["--preset", "tiny" if args.tiny else "small"]
        stage1 = run_stage(args, manifest, out / "stage1", args.stage1_minutes, "--stage", 1, *preset)
    models = {"stage 1": stage1}
    for name, folder, options in STAGE2_RUNS:
        models[name] = run_stage(
            args, manifest, out / folder, args.stage2_minutes, "--stage", 2, "--model", stage1, *options
        )

    # 3. Held-out PSNR and LPIPS of each model
    results, rows = {}, {}
    originals = evaluations["image"]
    for name, folder in models.items():
        results[name], outputs = evaluate(HydraXTokModel.from_pretrained(folder), evaluations, lpips_nets)
        rows[name] = outputs["image"]
    grid = [[original, *(row[i] for row in rows.values())] for i, original in enumerate(originals)]
    train_tokenizer.save_rows(grid, out / "reconstructions.png")
    (out / "metrics.json").write_text(json.dumps({"results": results, "video_skipped": video_skipped}, indent=2))

    print_summary(results, list(evaluations), video_skipped, out)


def print_summary(results: dict, kinds: list[str], video_skipped: str | None, out: Path) -> None:
    """Each model's held-out scores per kind as a table, why video was skipped (with the fix), what was written."""
    header = " | ".join(f"{kind} PSNR | {kind} LPIPS (train net / unseen net)" for kind in kinds)
    print(f"\n| model | {header} |\n|---|" + "---|" * (2 * len(kinds)))
    for name, metrics in results.items():
        cells = " | ".join(
            f"{metrics[f'{kind}_psnr']:.2f} dB | {metrics[f'{kind}_lpips_train']:.4f} / "
            f"{metrics[f'{kind}_lpips_unseen']:.4f}"
            for kind in kinds
        )
        print(f"| {name} | {cells} |")
    if video_skipped:
        print(f"video skipped: {video_skipped}")
    print(f"\nWrote metrics.json and reconstructions.png to {out}/")


if __name__ == "__main__":
    main()
