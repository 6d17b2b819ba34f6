"""Train Hydra-XTok with transformers' Trainer: the paper's three stages, images and videos, one GPU to many.

    python examples/train_tokenizer.py --data photos/ clips/ --max-steps 20 --preset tiny --no-teachers --size 64
    python examples/train_tokenizer.py --model ckpt/model --stage 2 --data photos/ --lpips lpips/ --bf16

Stages (the paper's; every loss weight is a flag, these are the defaults, from the predecessor HYDRA):
  1  everything trains: L1 1.0 + LPIPS 0.1 + KL 1e-4 + image / video distillation 1.0 each; no GAN
  2  encoder and Sem-ViT frozen, the pixel decoder fine-tuned with L1 1.0 + LPIPS 0.1 + GAN 0.075 (hinge, PatchGAN)
  3  the per-channel latent mean / std computed over the training data first (written into the saved config with the
     number of samples used), then Gen-ViT and decoder frozen and the Sem-ViT (+ Decompressor) trained by
     distillation only
`--compute-latent-stats` runs only the statistics pass and saves the model.

GAN (stage 2): the discriminator is its own AdamW parameter group (`--discriminator-lr`, betas 0.5 / 0.9, no weight
decay, gradients clipped apart from the generator's), trained from `--gan-start-step` on. The generator's GAN term
sees the discriminator's weights detached and the discriminator's hinge loss sees detached reconstructions, so one
backward pass trains both (a separate Adam optimiser gives the same updates), and DDP, FSDP, DeepSpeed and exact
resuming need nothing more. The GAN weight is fixed (`--gan-weight`) or, with `--adaptive-gan-weight`, scaled by
‖∇ reconstruction loss‖ / ‖∇ GAN loss‖ at the decoder's last layer (VQGAN; single-process runs).

Teachers: SigLIP 2 for images and InternVideo-Next (remote code) or V-JEPA 2 for video, by name or folder
(`--image-teacher`, `--video-teacher`; defaults from the tokenizer config), loaded once, frozen, in bf16 on a GPU
that supports it. `--no-teachers` switches distillation off (the log says so). LPIPS: `--lpips FOLDER` (a
`HydraXTokLPIPS` checkpoint); without it LPIPS has random VGG16 weights and a warning says so.

Data (`--data SOURCE ...`): image / video folders (searched recursively), JSONL manifests of `{"image": path}` /
`{"video": path}` lines, or `datasets` datasets with an `image` or `video` column. Every file is probed up front;
unreadable ones and videos shorter than a clip are reported by path (`--on-bad-sample skip|error`). Batches hold one
resolution bucket (`--resolutions 256 256x384 ...`, by nearest aspect ratio) and one kind; `--video-ratio` is the
share of video batches; clips are `--num-frames` (1+4k) frames at a random start. `--streaming` reads the sources
as streams instead (a Hub dataset is read while training): rows are shuffled through a buffer, probed as they come
and batched per bucket; `--video-ratio` then draws video rows.

Output (OUTPUT_DIR): `work/` (Trainer checkpoints with a reconstruction grid each; logs: l1, lpips, kl, gan,
gan_weight, discriminator, distill_image, distill_video, psnr, and eval_psnr on the held-out split) and `model/`, a
`HydraXTokModel` folder that `AutoModel.from_pretrained` loads and `conversion/build_hydrax.py --vision` accepts
(staged, renamed into place). Scale-out: the same script under `accelerate launch` (examples/accelerate/: ddp.yaml,
fsdp_tokenizer.yaml, deepspeed_zero2.yaml) or `torchrun`; `--resume-from-checkpoint last` continues the same losses.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conversion"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoint_importer import staged_folder  # noqa: E402
from huggingface_hub import ModelCard, ModelCardData  # noqa: E402
from model_card_hydrax import CARD_TEMPLATE, card_lineage, check_card  # noqa: E402
from PIL import Image  # noqa: E402
from train_hydrax import (  # noqa: E402
    COUNT_OPTIONS,
    EVAL_PADDING,
    RUN_OUTPUTS,
    HydraXTrainer,
    RunRecordCallback,
    TimeBudget,
    add_time_budget_argument,
    check_no_earlier_run,
    check_non_negative,
    check_time_budget,
    clear_earlier_run,
    full_parameters,
    gathered_model,
    resume_checkpoint,
    stored_dtype,
    training_arguments,
)
from transformers import TrainerCallback  # noqa: E402
from transformers.utils import logging  # noqa: E402

from modeling_hydrax import HydraXTokConfig, HydraXTokModel  # noqa: E402
from modeling_hydrax.data_hydrax_tok import (  # noqa: E402
    HydraXTokBadSample,
    HydraXTokBucketBatchSampler,
    HydraXTokClipDataset,
    HydraXTokStreamDataset,
    check_bucket_resolutions,
    collate_clips,
    parse_resolution,
    psnr,
    report,
)
from modeling_hydrax.losses_hydrax_tok import (  # noqa: E402
    HydraXTokLoss,
    HydraXTokLossConfig,
    HydraXTokLPIPS,
    HydraXTokTeachers,
)
from script_args import (  # noqa: E402
    HelpFormatter,
    check_at_least,
    check_folder,
    check_inputs_outside,
    check_media_sources,
    check_output_folder,
    check_tokenizer_folder,
    finite_float,
    write_atomically,
)


logger = logging.get_logger("train_tokenizer")

STAGE_WEIGHTS = {
    1: {"l1": 1.0, "lpips": 0.1, "kl": 1e-4, "gan": 0.0, "distill_image": 1.0, "distill_video": 1.0},
    2: {"l1": 1.0, "lpips": 0.1, "kl": 0.0, "gan": 0.075, "distill_image": 0.0, "distill_video": 0.0},
    3: {"l1": 0.0, "lpips": 0.0, "kl": 0.0, "gan": 0.0, "distill_image": 1.0, "distill_video": 1.0},
}
STAGE_LEARNING_RATES = {1: 2e-4, 2: 1e-4, 3: 1e-4}
LOGGED_TERMS = ("l1", "lpips", "kl", "gan", "gan_weight", "discriminator", "distill_image", "distill_video", "psnr")
PREVIEW_SAMPLES = 4
LOSS_STATE_FILE = "hydrax_loss_state.json"  # in each checkpoint: the adaptive GAN factor, which is not a weight
STREAM_SHUFFLE_BUFFER = 1000  # rows a --streaming run shuffles among
PREVIEW_FILE = "reconstructions.png"


# ------------------------------------------------------------------------------------------------------ the model
def tokenizer_config(preset: str, size: int) -> HydraXTokConfig:
    """A new tokenizer's config: `so400m` (the paper's size, SigLIP 2 so400m widths), `small` (~3M parameters) or
    `tiny` (tests), with the position table sized for `size`² inputs. The small ones start without the Decompressor;
    `main` adds it, sized for the teachers, when there are teachers."""
    if preset == "so400m":
        return HydraXTokConfig()
    widths = (32, 2, 64, 8) if preset == "tiny" else (192, 4, 768, 64)
    return HydraXTokConfig(
        **dict(zip(("hidden_size", "num_attention_heads", "intermediate_size", "latent_channels"), widths)),
        num_gen_layers=2,
        gen_fold_layer=1,
        num_sem_layers=1 if preset == "tiny" else 2,
        num_decoder_layers=2,
        decoder_unfold_layer=1,
        position_embedding_size=size // 16,
        use_decompressor=False,  # built when teachers are given (it serves distillation only)
    )


class HydraXTokTrainingModel(nn.Module):
    """The tokenizer and its objective as one module for Trainer: `forward(pixel_values)` returns the total loss (the
    generator's terms plus, when a discriminator exists, its hinge loss) and every term, detached, for logging.

    The teachers are frozen and kept out of the module's parameters and state dict (they are not trained, saved or
    sharded); `step` gates the GAN by `gan_start_step` and is kept in sync by `StepCallback`."""

    def __init__(self, tokenizer: HydraXTokModel, loss_fn: HydraXTokLoss, teachers: HydraXTokTeachers | None):
        super().__init__()
        self.tokenizer, self.loss_fn = tokenizer, loss_fn
        self._teachers = [teachers]  # a list: not registered as a submodule
        self.step = 0

    def train(self, mode: bool = True):
        """Trainer's `model.train()`, except for the tokenizer's parts the stage freezes whole (the Gen-ViT in stages
        2 and 3, the decoder in stage 3): they stay in eval mode, as diffusers' scripts keep a frozen VAE, so that
        their dropout does not change the features the trained parts learn from (`encode` gives them without)."""
        super().train(mode)
        for part in self.tokenizer.children() if mode else ():
            if not any(parameter.requires_grad for parameter in part.parameters()):
                part.eval()
        return self

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """Trainer's `--gradient-checkpointing`: recompute the tokenizer's blocks in the backward pass."""
        self.tokenizer.activation_checkpointing_enable(**kwargs)

    @property
    def teachers(self) -> HydraXTokTeachers | None:
        teachers = self._teachers[0]
        if teachers is not None:
            device = next(self.tokenizer.parameters()).device
            if next(teachers.parameters()).device != device:
                self._teachers[0] = teachers = teachers.to(device)
        return teachers

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        config = self.loss_fn.config
        distilling = config.distill_image_weight > 0 or config.distill_video_weight > 0
        output = self.tokenizer(pixel_values, semantic=distilling)
        last_layer = self.tokenizer.decoder.out_proj.weight if config.adaptive_gan_weight else None
        losses = self.loss_fn(pixel_values, output, step=self.step, teachers=self.teachers, last_layer=last_layer)
        total = losses["loss"]
        if self.loss_fn.discriminator is not None:
            discriminator = self.loss_fn(pixel_values, output, step=self.step, mode="discriminator")
            losses["discriminator"] = discriminator["loss"].detach()
            total = total + discriminator["loss"]
        with torch.no_grad():
            losses["psnr"] = psnr(
                output.reconstruction.clamp(-1, 1), pixel_values.reshape(output.reconstruction.shape)
            )
        return {**losses, "loss": total, "psnr": losses["psnr"].mean()}


def cosine_decay(progress: float) -> float:
    """The learning-rate factor of the Trainer's "cosine" schedule after warm-up, at `progress` in [0, 1]: the time
    budget follows it, so that a run with `--max-minutes` decays as one without (to 0, not to a floor)."""
    return 0.5 * (1 + math.cos(math.pi * progress))


class HydraXTokStreamLoader(torch.utils.data.DataLoader):
    """The loader of a `HydraXTokStreamDataset`: the Trainer's `set_epoch` reaches the stream, which reshuffles."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class HydraXTokTrainer(HydraXTrainer):
    """Trainer for `HydraXTokTrainingModel`: batches from one resolution bucket, the tokenizer's trainable parameters
    and the discriminator as separate AdamW groups clipped separately, each loss term logged."""

    logged_terms = LOGGED_TERMS

    def __init__(self, *args, batch_sampler, eval_batches=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sampler, self.eval_batches = batch_sampler, eval_batches
        self.can_return_loss = True  # forward(pixel_values) takes no labels: without this, evaluation skips the loss

    def term_weights(self, inputs) -> tuple:
        """One per batch for every logged term but `distill_video` of an image batch, which has no video term (it
        reports 0): counted, it scaled the logged video distance down by the share of image batches."""
        pixels = inputs["pixel_values"]
        clips = pixels.ndim == 5 and pixels.shape[2] > 1
        return tuple(int(clips or name != "distill_video") for name in self.logged_terms)

    def get_train_dataloader(self):
        if self.batch_sampler is None:  # a stream of whole batches, already split among the processes
            return HydraXTokStreamLoader(
                self.train_dataset,
                batch_size=None,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=collate_clips,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return epochs_reach_sampler(self.accelerator.prepare(loader), self.batch_sampler)

    def get_eval_dataloader(self, eval_dataset=None):
        """The held-out batches, dealt out to the processes in turn, their count padded to a multiple of the processes
        with repeats of the first batch that `EvalPaddingLoader` marks: accelerate would otherwise repeat batches
        itself to even out the processes, unmarked, and they would count twice in the logged terms."""
        processes = self.accelerator.num_processes
        batches = self.eval_batches + self.eval_batches[:1] * (-len(self.eval_batches) % processes)
        loader = torch.utils.data.DataLoader(
            self.eval_dataset, batch_sampler=batches, collate_fn=collate_clips, num_workers=0
        )
        loader = self.accelerator.prepare(loader)
        return EvalPaddingLoader(loader, len(self.eval_batches), processes, self.accelerator.process_index)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            groups = []
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    player = "discriminator" if name.startswith("loss_fn.discriminator.") else "tokenizer"
                    decay = param.ndim >= 2 and player == "tokenizer"
                    groups.append((f"{player}{'' if decay else '_no_decay'}", player, decay, param))
            param_groups = {}
            for group_name, player, decay, param in groups:
                group = param_groups.setdefault(
                    group_name,
                    {
                        "params": [],
                        "name": group_name,
                        "lr": self.learning_rates[player],
                        "weight_decay": self.args.weight_decay if decay else 0.0,
                        **({"betas": (0.5, 0.9)} if player == "discriminator" else {}),
                    },
                )
                group["params"].append(param)
            self.optimizer = optimizer_cls(list(param_groups.values()), **optimizer_kwargs)
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Clip the tokenizer's and the discriminator's gradients apart (one player's large gradient must not shrink
        the other's step); returns the tokenizer's pre-clip norm."""
        players = {"tokenizer": [], "discriminator": []}
        for name, param in model.named_parameters():
            if param.requires_grad:
                players["discriminator" if "loss_fn.discriminator." in name else "tokenizer"].append(param)
        if players["discriminator"]:
            self.accelerator.clip_grad_norm_(players["discriminator"], self.args.max_grad_norm)
        return self.accelerator.clip_grad_norm_(players["tokenizer"], self.args.max_grad_norm)


class StepCallback(TrainerCallback):
    """Keeps `HydraXTokTrainingModel.step` at the global step (the GAN's start gate), and the adaptive GAN factor
    across a resume: written into every checkpoint (`LOSS_STATE_FILE`, before the run record that marks it complete)
    and read back from the `resume` checkpoint, so an evaluation before the resumed run's first step applies it."""

    def __init__(self, module: HydraXTokTrainingModel, resume: str | None = None):
        self.module = module
        state = Path(resume) / LOSS_STATE_FILE if resume is not None else None
        if state is not None and state.is_file():  # a checkpoint of an older version has none: the factor starts at 1
            module.loss_fn.adaptive_gan_factor.fill_(json.loads(state.read_text())["adaptive_gan_factor"])

    def on_step_begin(self, args, state, control, **kwargs):
        self.module.step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            factor = json.dumps({"adaptive_gan_factor": float(self.module.loss_fn.adaptive_gan_factor)})
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_atomically(folder / LOSS_STATE_FILE, lambda partial: partial.write_text(factor))


class PreviewCallback(TrainerCallback):
    """Saves `reconstructions.png` (originals above reconstructions, posterior mean) into every checkpoint. Every
    process reconstructs (FSDP2 and ZeRO-3 gather the tokenizer's weights for it); the main process writes."""

    def __init__(self, module: HydraXTokTrainingModel, pixels: torch.Tensor):
        self.module, self.pixels = module, pixels

    def on_save(self, args, state, control, **kwargs):
        tokenizer = self.module.tokenizer
        was_training = tokenizer.training
        tokenizer.eval()
        with full_parameters(self.module):
            rebuilt = reconstruct(tokenizer, self.pixels.to(next(tokenizer.parameters()).device))
        tokenizer.train(was_training)
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_grid(self.pixels, rebuilt, folder / PREVIEW_FILE)


@torch.no_grad()
def reconstruct(
    tokenizer: HydraXTokModel, pixels: torch.Tensor, sample: bool = False, chunk_frames: int | None = None
) -> torch.Tensor:
    """Encode (posterior mean, or a sample with `sample`), decode, clamp to [-1, 1], in the input's shape, float32 (no
    gradients); `chunk_frames` streams that many latent frames at a time (equal to the whole clip)."""
    dtype = next(tokenizer.parameters()).dtype
    unrecorded = {"chunk_frames": chunk_frames, "output_hidden_states": False, "output_attentions": False}
    latents = tokenizer.encode(pixels.to(dtype), sample=sample, **unrecorded).latents
    return tokenizer.decode(latents, **unrecorded).sample.float().clamp(-1, 1).reshape(pixels.shape)


def save_rows(rows: list[list[torch.Tensor]], path: Path, scale: int = 1) -> None:
    """Tile rows of `[3, H, W]` tensors in [-1, 1] into one PNG (shorter rows padded), enlarged `scale`× (nearest)."""
    strips = [torch.cat(row, dim=2) for row in rows]
    width = max(strip.shape[-1] for strip in strips)
    grid = torch.cat([nn.functional.pad(strip, (0, width - strip.shape[-1]), value=-1) for strip in strips], dim=1)
    array = ((grid.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    write_atomically(path, lambda partial: image.save(partial, format="PNG"))


def save_grid(originals: torch.Tensor, rebuilt: torch.Tensor, path: Path, scale: int = 1) -> None:
    """A PNG with, per sample, its frames in a row and the reconstructed frames below (images: one frame)."""
    rows = []
    for original, reconstruction in zip(originals, rebuilt):
        rows += [list(clip.unbind(1)) if clip.ndim == 4 else [clip] for clip in (original, reconstruction)]
    save_rows(rows, path, scale)


# ------------------------------------------------------------------------------------------------- latent statistics
@torch.no_grad()
def compute_latent_stats(tokenizer: HydraXTokModel, dataset, max_samples: int, batch_size: int, seed: int = 0):
    """Per-channel mean and std of the raw (un-normalised) posterior means over `max_samples` items of `dataset` drawn
    at random with `seed` (all of a probed dataset that holds no more: a folder sorted by class or kind is sampled
    whole, not its first items), centred crops and middle clips, in float64; returns (mean, std, samples loaded)."""
    device = next(tokenizer.parameters()).device
    was_training = tokenizer.training
    tokenizer.eval()
    channels = tokenizer.config.latent_channels
    total, total_sq = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    count, used = 0, 0
    for pixels in centred_batches(dataset, batch_size, max_samples, seed):
        pixels = pixels.to(device)
        dtype = next(tokenizer.parameters()).dtype
        latents = tokenizer.encode(pixels.to(dtype)).latent_dist.mean.double().cpu()
        total += latents.sum(dim=(0, 2, 3, 4))
        total_sq += latents.pow(2).sum(dim=(0, 2, 3, 4))
        count += latents[:, 0].numel()
        used += len(pixels)
    tokenizer.train(was_training)
    if used == 0:
        raise ValueError("No sample could be loaded for the latent statistics.")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist(), used


def centred_batches(dataset, batch_size: int, max_samples: int, seed: int | None = None):
    """`pixel_values` batches of `max_samples` items, centred crops and middle clips: of a probed dataset the first
    ones bucket by bucket, or with a `seed` a random draw over all items (batched by bucket); of a stream
    (`HydraXTokStreamDataset`) the first rows, or with a `seed` the first of its shuffled rows (images and videos
    drawn by its `video_ratio`). Files that fail to decode are left out (reported)."""
    if isinstance(dataset, HydraXTokStreamDataset):
        options = dict(num_frames=dataset.num_frames, frame_stride=dataset.frame_stride, on_bad_sample="skip")
        if seed is not None:
            options.update(shuffle=True, seed=seed, video_ratio=dataset.video_ratio)
        stream = HydraXTokStreamDataset(dataset.sources, dataset.resolutions, batch_size, augment=False, **options)
        for batch in stream:
            yield batch["pixel_values"][:max_samples]
            max_samples -= len(batch["pixel_values"])
            if max_samples <= 0:
                return
        return
    for keys in eval_batches(dataset, batch_size, max_samples, seed):
        samples = []
        for index, _ in keys:
            try:
                samples.append(dataset.load(index, None))
            except HydraXTokBadSample as error:
                report(str(error), dataset.on_bad_sample)
        if samples:
            yield torch.stack([sample["pixel_values"] for sample in samples])


def eval_batches(
    dataset: HydraXTokClipDataset, batch_size: int, max_samples: int | None = None, seed: int | None = None
) -> list[list]:
    """Deterministic batches of `(index, None)` keys (centred crops), bucket by bucket, at most `max_samples` keys:
    the first ones of each bucket in turn, or with a `seed` a random draw of `max_samples` over all items."""
    budget = max_samples if max_samples is not None else len(dataset)
    chosen = None
    if seed is not None and budget < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        chosen = set(torch.randperm(len(dataset), generator=generator)[:budget].tolist())
    batches = []
    for indices in dataset.buckets.values():
        indices = [index for index in indices if index in chosen] if chosen is not None else indices[: max(0, budget)]
        budget -= len(indices)
        batches += [
            [(index, None) for index in indices[i : i + batch_size]] for i in range(0, len(indices), batch_size)
        ]
    return [batch for batch in batches if batch]


class EvalPaddingLoader:
    """A prepared evaluation loader whose batches after the first `real` ones are marked `EVAL_PADDING` (their terms
    count for nothing); accelerate deals the batches out in turn, so this process's k-th is batch k · processes +
    rank."""

    def __init__(self, loader, real: int, processes: int, rank: int):
        self.loader, self.real, self.processes, self.rank = loader, real, processes, rank

    def __iter__(self):
        for number, batch in enumerate(self.loader):
            if number * self.processes + self.rank >= self.real:
                batch[EVAL_PADDING] = True
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def epochs_reach_sampler(loader, sampler):
    """`loader` (prepared by accelerate) with its batch sampler's `set_epoch` reaching `sampler`: with several
    processes accelerate wraps it (`BatchSamplerShard`, and `SkipBatchSampler` on a resume), and neither it nor the
    Trainer reaches through both, so a run resumed in a later epoch replayed epoch 0's batches."""
    if loader.batch_sampler is not sampler:
        loader.batch_sampler.set_epoch = sampler.set_epoch
    return loader


# --------------------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, help="a HydraXTokModel folder (or a Hydra-X checkpoint) to train")
    parser.add_argument(
        "--preset",
        choices=("tiny", "small", "so400m"),
        default="small",
        help="size of a new tokenizer when --model is not given",
    )
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=1, help="the paper's stage (see above)")
    parser.add_argument(
        "--compute-latent-stats", action="store_true", help="only compute the latent statistics and save the model"
    )
    parser.add_argument("--stats-samples", type=int, default=1000, help="most samples for the latent statistics")
    parser.add_argument("--data", nargs="+", default=[], help="training data sources (folders, manifests, datasets)")
    parser.add_argument("--eval-data", nargs="+", default=[], help="held-out sources for evaluation (PSNR)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/train_tokenizer"), help="work/ and model/")
    parser.add_argument(
        "--resolutions",
        nargs="+",
        type=parse_resolution,
        help="H or HxW buckets, one per aspect ratio (default: --size)",
    )
    parser.add_argument("--size", type=int, default=256, help="square training side when --resolutions is not given")
    parser.add_argument("--num-frames", type=int, default=17, help="frames per video clip (1 + 4k)")
    parser.add_argument("--frame-stride", type=int, default=1, help="take every n-th frame of a video")
    parser.add_argument(
        "--video-ratio", type=finite_float, default=0.5, help="share of video batches when there are both"
    )
    parser.add_argument(
        "--min-crop-fraction", type=finite_float, default=0.5, help="smallest random crop, share of a side"
    )
    parser.add_argument("--shuffle-channels", action="store_true", help="permute RGB channels of training crops")
    parser.add_argument(
        "--cache-media", action="store_true", help="decode each file once and keep its pixels in memory (small data)"
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="read --data as streams, probed as they train (datasets' IterableDataset: a Hub dataset is read while "
        "training, nothing listed, probed or downloaded up front); batches fill per resolution bucket",
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--on-bad-sample", choices=("skip", "error"), default="skip", help="unreadable media")
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="images or clips per device and step")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="batches per optimizer step")
    parser.add_argument(
        "--learning-rate", type=finite_float, help="peak learning rate (default: stage 1 2e-4, else 1e-4)"
    )
    parser.add_argument(
        "--discriminator-lr", type=finite_float, default=1e-4, help="discriminator learning rate (stage 2)"
    )
    parser.add_argument(
        "--weight-decay", type=finite_float, default=0.01, help="AdamW weight decay (not on biases/norms)"
    )
    parser.add_argument("--adam-beta2", type=finite_float, default=0.95, help="AdamW β2 of the tokenizer's parameters")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps, then cosine decay")
    parser.add_argument(
        "--max-grad-norm", type=finite_float, default=1.0, help="gradient clipping, per player (0: no clipping)"
    )
    for term in STAGE_WEIGHTS[1]:
        parser.add_argument(
            f"--{term.replace('_', '-')}-weight",
            type=finite_float,
            help=f"weight of the {term} loss (default: the stage's)",
        )
    parser.add_argument("--gan-start-step", type=int, default=0, help="step from which the GAN terms are on")
    parser.add_argument("--adaptive-gan-weight", action="store_true", help="VQGAN's adaptive GAN weight")
    parser.add_argument("--lpips", type=Path, help="a HydraXTokLPIPS folder (default: random VGG16 weights)")
    parser.add_argument("--image-teacher", help="image teacher name or folder (default: the config's, SigLIP 2)")
    parser.add_argument("--video-teacher", help="video teacher name or folder (default: the config's)")
    parser.add_argument("--no-teachers", action="store_true", help="switch the distillation terms off")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a teacher's own code (InternVideo)")
    parser.add_argument("--resume-from-checkpoint", help="a checkpoint folder, or 'last'")
    parser.add_argument(
        "--force",
        action="store_true",
        help="start afresh in an --output-dir that holds an earlier run's checkpoints (they are removed)",
    )
    add_time_budget_argument(parser)
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every n steps")
    parser.add_argument("--eval-steps", type=int, help="evaluate every n steps (default: at the end)")
    parser.add_argument("--logging-steps", type=int, default=10, help="log every n steps")
    parser.add_argument("--report-to", help="Trainer integrations (default: tensorboard when installed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast; on a machine without a GPU add --cpu")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required: image / video folders, JSONL manifests or datasets.")
    check_media_sources(parser, "--data", args.data)
    check_media_sources(parser, "--eval-data", args.eval_data)
    if args.resume_from_checkpoint not in (None, "last"):
        hint = "pass a checkpoint-N folder of OUTPUT_DIR/work, or 'last'"
        check_folder(parser, "--resume-from-checkpoint", args.resume_from_checkpoint, hint, "trainer_state.json")
    if args.model is not None:
        check_tokenizer_folder(parser, "--model", args.model, "a HydraXTokModel folder")
        check_card(parser, "--model", args.model)  # its lineage goes into the trained tokenizer's card
    if args.lpips is not None:
        check_folder(parser, "--lpips", args.lpips, "a HydraXTokLPIPS folder", required_file="config.json")
    check_output_folder(parser, "--output-dir", args.output_dir)
    inputs = {"--model": args.model, "--lpips": args.lpips, "--data": args.data, "--eval-data": args.eval_data}
    inputs |= {"--image-teacher": args.image_teacher, "--video-teacher": args.video_teacher}
    check_inputs_outside(parser, "--output-dir", args.output_dir, inputs, RUN_OUTPUTS)
    check_no_earlier_run(parser, args)
    if args.num_frames < 1 or (args.num_frames - 1) % 4:
        parser.error(f"--num-frames must be 1 + 4k (an anchor plus a multiple of 4), got {args.num_frames}.")
    args.resolutions = args.resolutions or [(args.size, args.size)]
    for height, width in args.resolutions:
        if height % 16 or width % 16 or min(height, width) < 16:
            parser.error(f"resolutions must be multiples of 16 (the patch size), got {height}x{width}.")
    try:
        check_bucket_resolutions(args.resolutions)
    except ValueError as error:
        parser.error(f"--resolutions: {error}")
    counts = (*COUNT_OPTIONS, "stats_samples", "frame_stride")
    check_at_least(parser, 1, **{name: getattr(args, name) for name in counts})
    if args.eval_steps is not None and not args.eval_data:
        parser.error("--eval-steps needs evaluation data: pass --eval-data")
    check_time_budget(parser, args)
    check_non_negative(parser, args, ("--learning-rate", "--discriminator-lr", "--weight-decay", "--max-grad-norm"))
    if args.streaming and args.cache_media:
        parser.error("--cache-media keeps every decoded file in memory, which a stream never revisits; drop one.")
    if args.streaming and args.max_minutes is not None:
        parser.error("--max-minutes needs batches fixed in advance; with --streaming give --max-steps only.")
    if args.stage == 3 and args.no_teachers:
        parser.error("stage 3 trains the Sem-ViT by distillation only: it needs the teachers (drop --no-teachers).")
    return args


def loss_weights(args) -> dict[str, float]:
    """The stage's loss weights with the flags that were given; distillation off without teachers."""
    weights = {term: getattr(args, f"{term}_weight") for term in STAGE_WEIGHTS[args.stage]}
    weights = {term: STAGE_WEIGHTS[args.stage][term] if value is None else value for term, value in weights.items()}
    if args.no_teachers:
        weights["distill_image"] = weights["distill_video"] = 0.0
    return weights


def load_teachers(args, config: HydraXTokConfig, new_heads: bool, weights: dict[str, float]):
    """The frozen teachers (bf16 on a GPU that has it) whose distillation term has a weight (a teacher whose term is
    off is not loaded: InternVideo-Next is a large download with remote code), or None with `--no-teachers`
    (logged). The config records both teachers' names, and with `new_heads` (a new model, or one without a
    Decompressor) the teachers' widths, which the distillation heads about to be built project to."""
    if args.no_teachers:
        logger.warning("--no-teachers: the image and video distillation terms are off; the Sem-ViT gets no signal.")
        return None
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    names = {
        "image_teacher_name": args.image_teacher or config.image_teacher_name,
        "video_teacher_name": args.video_teacher or config.video_teacher_name,
    }
    config.update(names)
    used = {kind: weights[f"distill_{kind}"] > 0 for kind in ("image", "video")}
    loaded = {f"{kind}_teacher_name": names[f"{kind}_teacher_name"] if used[kind] else None for kind in used}
    if new_heads:  # the distillation heads will be sized for these teachers
        teachers = HydraXTokTeachers.from_pretrained(**loaded, dtype=dtype, trust_remote_code=args.trust_remote_code)
        config.image_teacher_hidden_size = teachers.image_hidden_size or config.image_teacher_hidden_size
        config.video_teacher_hidden_size = teachers.video_hidden_size or config.video_teacher_hidden_size
    else:  # the heads exist: the teachers must match their widths
        teachers = HydraXTokTeachers.from_config(
            config,
            load_image=used["image"],
            load_video=used["video"],
            dtype=dtype,
            trust_remote_code=args.trust_remote_code,
        )
    shown = {kind: name if name is not None else "(its term is off)" for kind, name in loaded.items()}
    print(f"Teachers (frozen, {dtype}): image {shown['image_teacher_name']}, video {shown['video_teacher_name']}")
    return teachers


def build_objective(args, weights: dict[str, float], config: HydraXTokConfig) -> HydraXTokLoss:
    """`HydraXTokLoss` with the run's weights, GAN settings and LPIPS (`--lpips`, else random VGG16 with a warning)."""
    lpips = HydraXTokLPIPS.from_pretrained(args.lpips) if args.lpips is not None and weights["lpips"] > 0 else None
    loss_config = HydraXTokLossConfig(
        **{f"{term}_weight": value for term, value in weights.items()},
        gan_start_step=args.gan_start_step,
        adaptive_gan_weight=args.adaptive_gan_weight,
        patch_size=config.patch_size,
    )
    return HydraXTokLoss(loss_config, lpips=lpips)


def run_record(tokenizer: HydraXTokModel, args, weights: dict, learning_rates: dict[str, float]) -> dict:
    """What a checkpoint of this run must match to be resumed from (a resume restores the optimizer's learning rates,
    weight decay and β2, so changed ones would be silently ignored; a run ended by `--max-minutes` followed the clock,
    which a resume cannot replay)."""
    config = tokenizer.config
    architecture = {key: getattr(config, key) for key in ("hidden_size", "latent_channels", "num_gen_layers")}
    return {
        "script": "train_tokenizer",
        "stage": args.stage,
        "seed": args.seed,  # the data order
        "architecture": architecture,
        "loss_weights": weights,
        "learning_rates": learning_rates,
        "weight_decay": args.weight_decay,
        "adam_beta2": args.adam_beta2,
        "max_minutes": args.max_minutes,
    }


# -------------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> HydraXTokTrainer | None:
    """Train (or only compute the latent statistics), save OUTPUT_DIR/model, return the Trainer."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    output_dir, work_dir = args.output_dir, args.output_dir / "work"
    weights = loss_weights(args)
    learning_rate = STAGE_LEARNING_RATES[args.stage] if args.learning_rate is None else args.learning_rate
    learning_rates = {"tokenizer": learning_rate, "discriminator": args.discriminator_lr}

    # 1. Training arguments first: they set up the processes (torchrun / accelerate launch)
    training_args = training_arguments(
        args,
        work_dir,
        evaluate=bool(args.eval_data),
        learning_rate=learning_rate,
        adam_beta2=args.adam_beta2,
        lr_scheduler_type="cosine",
    )
    clear_earlier_run(args, training_args, work_dir)

    # 2. Data, probed once (every process probes the same files: a deterministic list)
    data_options = dict(
        resolutions=args.resolutions,
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        on_bad_sample=args.on_bad_sample,
    )
    augmentation = dict(min_crop_fraction=args.min_crop_fraction, shuffle_channels=args.shuffle_channels)
    if args.streaming:  # each process reads its share of the rows, probed as they come
        train_dataset = HydraXTokStreamDataset(
            args.data,
            batch_size=args.batch_size,
            video_ratio=args.video_ratio,
            seed=args.seed,
            buffer_size=STREAM_SHUFFLE_BUFFER,
            process_index=training_args.process_index,
            num_processes=training_args.world_size,
            **augmentation,
            **data_options,
        )
    else:
        train_dataset = HydraXTokClipDataset(args.data, cache_media=args.cache_media, **augmentation, **data_options)
    eval_dataset = HydraXTokClipDataset(args.eval_data, **data_options) if args.eval_data else None
    kinds = train_dataset.kinds()
    video_ratio = args.video_ratio if len(kinds) == 2 else float("video" in kinds)
    if args.streaming:
        print(f"Training data: streamed {sorted(kinds)} from {args.data}")
    else:
        print(f"Training data: {len(train_dataset)} items in buckets {sorted(train_dataset.buckets)}")

    # 3. The tokenizer, its stage, the teachers and the objective
    new_model, saved_dtype = args.model is None, torch.float32
    if new_model:
        tokenizer = HydraXTokModel(tokenizer_config(args.preset, max(max(size) for size in args.resolutions)))
    else:  # float32 master weights, saved back in the checkpoint's dtype
        saved_dtype = stored_dtype(HydraXTokConfig.from_pretrained(args.model))
        tokenizer = HydraXTokModel.from_pretrained(args.model, dtype=torch.float32)
    distilling = not args.compute_latent_stats and (weights["distill_image"] > 0 or weights["distill_video"] > 0)
    new_heads = new_model or tokenizer.decompressor is None  # the distillation heads are built for the teachers
    teachers = load_teachers(args, tokenizer.config, new_heads, weights) if distilling else None
    if teachers is not None and new_heads:
        tokenizer.add_decompressor()
        if not new_model:  # e.g. a stage-1 model trained with --no-teachers
            print(f"{args.model} had no Decompressor (training only): a new one is initialised for the distillation.")
    device = training_args.device
    tokenizer.to(device)
    if args.stage == 3 or args.compute_latent_stats:
        tokenizer.config.latents_mean = tokenizer.config.latents_std = None
        mean, std, used = compute_latent_stats(
            tokenizer, train_dataset, args.stats_samples, args.batch_size, args.seed
        )
        tokenizer.config.latents_mean, tokenizer.config.latents_std = mean, std
        tokenizer.config.latents_stats_samples = used
        print(
            f"Latent statistics over {used} samples: mean {min(mean):.3f}…{max(mean):.3f}, "
            f"std {min(std):.3f}…{max(std):.3f}"
        )
        if args.compute_latent_stats:
            if training_args.process_index == 0:
                save_tokenizer(tokenizer.to(saved_dtype), output_dir / "model", args)
                print(f"model with latent statistics: {output_dir / 'model'}")
            return None
    if args.stage == 1 and tokenizer.config.latents_mean is not None:
        tokenizer.config.latents_mean = tokenizer.config.latents_std = tokenizer.config.latents_stats_samples = None
        print(
            f"Stage 1 trains the encoder, so the latent statistics of {args.model} would go stale: they are dropped. "
            "Recompute them with --stage 3 or --compute-latent-stats."
        )
    tokenizer.set_training_stage(args.stage)
    if not distilling:  # without teachers nothing reaches the Sem-ViT and the Decompressor: freeze them
        for name, param in tokenizer.named_parameters():
            if name.startswith(("sem_vit.", "decompressor.")):
                param.requires_grad_(False)
    module = HydraXTokTrainingModel(tokenizer, build_objective(args, weights, tokenizer.config), teachers).to(device)
    record = run_record(tokenizer, args, weights, learning_rates)
    resume = resume_checkpoint(args.resume_from_checkpoint, work_dir, record, "examples/train_tokenizer.py")

    # 4. Train
    preview_pixels = next(centred_batches(eval_dataset or train_dataset, PREVIEW_SAMPLES, PREVIEW_SAMPLES))
    budget = None
    if args.max_minutes:
        budget = TimeBudget(args.max_minutes, args.max_steps, args.warmup_steps, "training Hydra-XTok", cosine_decay)
    trainer = HydraXTokTrainer(
        model=module,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        batch_sampler=None
        if args.streaming
        else HydraXTokBucketBatchSampler(
            train_dataset, args.batch_size, video_ratio, args.seed, num_processes=training_args.world_size
        ),
        eval_batches=eval_batches(eval_dataset, args.batch_size) if eval_dataset is not None else None,
        learning_rates=learning_rates,
        time_budget=budget,
        callbacks=[StepCallback(module, resume), RunRecordCallback(record), PreviewCallback(module, preview_pixels)],
    )
    trainer.train(resume_from_checkpoint=resume)

    # 5. Save the tokenizer (main process), staged and renamed into place
    fresh = lambda: HydraXTokTrainingModel(  # noqa: E731
        HydraXTokModel(tokenizer.config), build_objective(args, weights, tokenizer.config), None
    )
    trained = gathered_model(trainer, fresh)
    if trainer.is_world_process_zero():
        save_tokenizer(trained.tokenizer.to(saved_dtype), output_dir / "model", args)
        final = {key: value for key, value in trainer.state.log_history[-1].items() if not math.isnan(value)}
        print(json.dumps(final, indent=2))
        print(f"model: {output_dir / 'model'}")
    trainer.accelerator.wait_for_everyone()
    return trainer


def save_tokenizer(tokenizer: HydraXTokModel, folder: Path, args=None) -> None:
    """`save_pretrained` into a staging folder, renamed into place: never a half-written model. Given the run's
    `args`, a model card too, with the `base_model` and licence of `--model`'s card (a converted SigLIP 2's id), which
    conversion/build_hydrax.py carries into the Hydra-X card."""
    with staged_folder(folder) as staging:
        tokenizer.save_pretrained(staging)
        if args is not None:
            tokenizer_card(args).save(staging / "README.md")


def tokenizer_card(args) -> ModelCard:
    """The trained tokenizer's model card: what it was trained from, and that source card's lineage."""
    lineage = card_lineage(args.model) if args.model is not None else {"base_models": None, "license": None}
    source = f"`{args.model}`" if args.model is not None else f"a new {args.preset} tokenizer"
    body = (
        f"# Hydra-XTok\n\nA Hydra-XTok visual tokenizer trained from {source} by `examples/train_tokenizer.py` "
        f"(stage {args.stage}). Load it with `AutoModel.from_pretrained(folder, trust_remote_code=True)`."
    )
    data = ModelCardData(
        library_name="transformers",
        base_model=lineage["base_models"],
        license=lineage["license"],
        tags=["hydrax", "hydrax-tok"],
    )
    return ModelCard.from_template(data, template_str=CARD_TEMPLATE, body=body)


if __name__ == "__main__":
    main()
