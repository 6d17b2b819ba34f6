"""Fine-tune Hydra-X with transformers' Trainer: the paper's three unified-model stages, a mixture of chat datasets
collated on the fly, per-module learning rates, LoRA, evaluation, resuming, and an atomically written output folder.

    python examples/train_hydrax.py --max-steps 5                    # tiny model + built-in demo data, ~20 s on CPU
    python examples/train_hydrax.py --model CKPT --stage 2 --data a.jsonl:3 b.jsonl:1 --eval-split 0.05

Stages (the paper's; Gen-ViT and the pixel decoder are always frozen, they fix the latent space):
  1  LLM frozen; vision head (projector, timestep embedding, flow head) 1e-4, Sem-ViT 5e-5
  2  everything else trainable; vision head 5e-5, LLM and Sem-ViT 2e-5
  3  as stage 2 (the paper's high-quality instruction data at 1024 px)
`--learning-rate-scale` multiplies these; `--vision-head-lr`, `--sem-vit-lr` and `--llm-lr` replace them.

Data: `--data SOURCE[:WEIGHT] ...`; a SOURCE is a JSONL manifest (one `{"messages": [...]}` conversation per line
in the processor's chat format; image/video blocks give a `path` relative to the manifest's folder), a folder written
by `datasets`' `save_to_disk`, or a name `datasets.load_dataset` knows, with a `messages` column. Several sources are
interleaved with probabilities proportional to their weights (`datasets.interleave_datasets`). A conversation learns
from its assistant turns: text by next-token loss, images/videos by flow matching, e.g.
  {"messages": [{"role": "user", "content": [{"type": "image", "path": "cat.png"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}]}
  {"messages": [{"role": "user", "content": [{"type": "text", "text": "Draw a cat."}]},
                {"role": "assistant", "content": [{"type": "image", "path": "cat.png"}]}]}
Without --data a tiny demo set (scikit-image photos: captions, caption → image and one edit) is written to
OUTPUT_DIR/demo_data. Samples whose files are missing or unreadable, and manifest lines without an assistant turn,
are reported with their file and line, then skipped or fatal (`--on-bad-sample`).

Small grids: flow times near noise are where conditioning is learned, and the default logit-normal(0, 1) rarely draws
them on a 2×2 latent grid; for toy sizes and short fine-tunes pass e.g. `--flow-logit-mean 1.0` (docs/TOY_WORLD.md,
"Flow times": 2.5 learns the conditioning but leaves the near-clean times, and so the samples' detail, untrained).

Validation: `--validation-prompts "a red fox" "a cup of coffee"` samples one image per prompt with the weights being
trained at every checkpoint (`--validation-size`, `--validation-inference-steps`, `--validation-guidance-scale`,
seeded with --seed) into `work/checkpoint-N/samples.png`, a row in prompt order: what the pipeline would draw from
that checkpoint (`--validation-num-frames 17`: videos, `samples.mp4`). Every process samples (FSDP and ZeRO-3 gather
the weights for it); training is not disturbed.

Output (OUTPUT_DIR): `work/` (Trainer checkpoints, logs, TensorBoard when installed), `model/` (the trained model:
loads with `AutoModel`, `AutoProcessor` and `HydraXPipeline`; written to a staging folder and renamed into place) and,
with LoRA, `adapter/` (`PeftModel.from_pretrained(base_model, OUTPUT_DIR/adapter)`, or onto a pipeline of the base
checkpoint with `pipe.load_lora_weights(OUTPUT_DIR/adapter)`; `model/` is then the merged model).
Batches may mix understanding, text-to-image and editing samples, with generation targets of different sizes
(resolutions and frame counts): the model runs Sem-ViT and the flow head once per size in a batch.

Scale-out: the script runs unchanged under `torchrun` or `accelerate launch` (DDP, FSDP2, DeepSpeed ZeRO-2/3; configs
and commands in examples/accelerate/README.md). Batches of different kinds on different processes are fine under DDP,
FSDP2 and ZeRO-2 (whose gradients the script reduces once per step in parameter order, `--deepspeed-grad-reduction`);
ZeRO-3 needs data of one kind. Each process trains on its own samples; the main process writes
the demo data, the checkpoints' run records and the final model (gathered in full from FSDP / ZeRO-3 shards).
Resuming (`--resume-from-checkpoint last`) continues the same losses as an uninterrupted run: weights, optimizer,
scheduler, data position and every process's RNG state come back from the checkpoint. Keep --max-steps: the
learning-rate schedule is laid out over it.
"""

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))

from accelerate import PartialState  # noqa: E402
from accelerate.utils import broadcast  # noqa: E402
from accelerate.utils.deepspeed import DeepSpeedEngineWrapper  # noqa: E402
from build_hydrax import build_checkpoint  # noqa: E402
from checkpoint_importer import staged_folder  # noqa: E402
from model_card_hydrax import build_adapter_card, build_model_card, card_lineage, check_card  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoProcessor,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import find_batch_size  # noqa: E402
from transformers.trainer_utils import sort_checkpoints  # noqa: E402
from transformers.utils import logging  # noqa: E402

from modeling_hydrax.data_collator_hydrax import (  # noqa: E402
    VISUAL_TYPES,
    BadSampleError,
    HydraXDataCollator,
    bare_image_blocks,
    file_name,
    find_problem,
    images_problem,
    normalize_messages,
)
from modeling_hydrax.modeling_hydrax import HYDRAX_FROZEN_MODULES  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_at_least,
    check_folder,
    check_hydrax_folder,
    check_inputs_outside,
    check_output_folder,
    check_positive,
    finite_float,
    missing_local_source,
    write_atomically,
    write_video,
)


logger = logging.get_logger("train_hydrax")

# Learning rate per parameter group and stage (the paper's; a group absent from a stage is frozen).
STAGE_LEARNING_RATES = {
    1: {"vision_head": 1e-4, "sem_vit": 5e-5},
    2: {"vision_head": 5e-5, "llm": 2e-5, "sem_vit": 2e-5},
    3: {"vision_head": 5e-5, "llm": 2e-5, "sem_vit": 2e-5},
}
# Parameter name prefixes of each group (after PEFT's `base_model.model.` prefix is removed).
PARAMETER_GROUPS = {
    "frozen": HYDRAX_FROZEN_MODULES,
    "vision_head": ("model.projector", "model.timestep_embedding", "model.flow_head"),
    "sem_vit": ("model.vision_tower.sem_vit",),
    "llm": ("model.language_model", "lm_head"),
}
# LoRA's default targets: the Qwen2 attention and MLP projections of the LLM (not those of the vision tower).
DEFAULT_LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
# Options of both training scripts that count something (steps, samples) and must be ≥ 1 when given.
COUNT_OPTIONS = ("max_steps", "batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps", "eval_steps")
CONFIG_OPTIONS = (
    "flow_logit_mean",
    "flow_logit_std",
    "text_dropout_prob",
    "source_dropout_prob",
    "image_to_video_prob",
    "lm_loss_weight",
    "flow_loss_weight",
)
SAMPLES_FILE = "samples.png"  # --validation-prompts' images in every checkpoint
VIDEO_SAMPLES_FILE = "samples.mp4"  # … or their videos, with --validation-num-frames above 1
# The sub-folders of OUTPUT_DIR a run replaces (model/, adapter/ when it saves) or deletes (work/ with --force)
RUN_OUTPUTS = ("model", "adapter", "work")
RUN_FILE = "hydrax_training.json"  # what a checkpoint was trained as, checked before resuming from it
DEMO_SIZE = 32
DEMO_MANIFEST = "demo.jsonl"
STREAM_SHUFFLE_BUFFER = 1000  # samples a --streaming mixture shuffles among
DEMO_CAPTIONS = {"astronaut": "an astronaut", "coffee": "a cup of coffee", "chelsea": "a cat", "rocket": "a rocket"}


# ---------------------------------------------------------------------------------------------------- parameters
def parameter_group(name: str) -> str:
    """The group (`frozen`, `vision_head`, `sem_vit` or `llm`) of a parameter, by its name."""
    name = name.removeprefix("base_model.model.")
    for group, prefixes in PARAMETER_GROUPS.items():
        if name.startswith(prefixes):
            return group
    raise ValueError(f"Parameter {name!r} belongs to no group of {sorted(PARAMETER_GROUPS)}; extend PARAMETER_GROUPS.")


def stage_learning_rates(stage: int, scale: float = 1.0, **overrides) -> dict[str, float]:
    """Per-group learning rates of `stage`, times `scale`; `overrides` (`vision_head=…`, …; `None` ignored) replace
    them."""
    rates = {group: rate * scale for group, rate in STAGE_LEARNING_RATES[stage].items()}
    for group, rate in overrides.items():
        if rate is not None:
            if group not in rates:
                raise ValueError(f"Stage {stage} freezes {group}; a learning rate for it has no effect.")
            rates[group] = rate
    return rates


def set_trainable(model, learning_rates: dict[str, float]) -> None:
    """Train the groups that have a learning rate, freeze the rest (Gen-ViT and decoder always)."""
    for name, param in model.named_parameters():
        param.requires_grad_(parameter_group(name) in learning_rates)


def optimizer_groups(model, learning_rates: dict[str, float], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: one per (module group, decay or not) with that group's learning rate; biases and
    norms get no weight decay."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = parameter_group(name)
        decay = param.ndim >= 2
        key = (group, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": learning_rates[group],
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{group}{'' if decay else '_no_decay'}",
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def add_lora(model, args, learning_rates: dict[str, float]):
    """Wrap the model with PEFT LoRA adapters on the LLM; the stage's other trainable groups are trained in full and
    saved with the adapter (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model

    frozen = [
        name
        for name, _ in model.named_modules()
        if name.startswith(HYDRAX_FROZEN_MODULES) and re.fullmatch(args.lora_target_modules, name)
    ]
    if frozen:
        raise ValueError(
            f"--lora-target-modules {args.lora_target_modules!r} matches {len(frozen)} modules of the frozen Gen-ViT "
            f"and pixel decoder (e.g. {frozen[0]}; Hydra-XTok's attention also names its projections q_proj, k_proj, "
            "v_proj), whose adapters would never get a gradient (DDP then fails on its second step). Narrow the "
            f"pattern, e.g. to the default {DEFAULT_LORA_TARGETS!r}."
        )
    full = [
        prefix.removeprefix("model.")
        for group in learning_rates
        if group != "llm"
        for prefix in PARAMETER_GROUPS[group]
    ]
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules,
        modules_to_save=full,
    )
    return get_peft_model(model, config)


# ---------------------------------------------------------------------------------------------------------- data
def report_bad_sample(message: str, on_bad_sample: str) -> None:
    """Raise on a bad sample, or log it as skipped; never silent."""
    if on_bad_sample == "error":
        raise ValueError(f"{message} (pass --on-bad-sample skip to leave such samples out)")
    logger.warning(f"Skipping {message}")


def names_files(messages: list[dict]) -> bool:
    """Whether a conversation's image or video blocks name their files (a manifest's way)."""
    blocks = (
        block for message in messages if isinstance(message.get("content"), list) for block in message["content"]
    )
    return any(block.get("type") in VISUAL_TYPES and file_name(block) is not None for block in blocks)


def read_manifest(path: Path, on_bad_sample: str):
    """A JSONL manifest as a `datasets.Dataset` of (`messages` as JSON, `origin` = file:line, `root` = its folder),
    each line checked up front: JSON, a `messages` list, an assistant turn, and existing image/video files."""
    from datasets import Dataset

    rows = {"messages": [], "origin": [], "root": []}
    root = str(path.resolve().parent)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            record = json.loads(line)
            messages = normalize_messages(record["messages"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            report_bad_sample(f"{origin}: not a JSON object with a `messages` list ({error!r})", on_bad_sample)
            continue
        # TRL's layout, which a manifest's lines do not take: bare image blocks (the collator failed on them), or
        # plain-string turns beside an `images` key (its images were left out, silently)
        trl_layout = bool(record.get("images") or record.get("image")) and not names_files(messages)
        try:
            bare_image_blocks(messages, 0, origin)
        except BadSampleError:
            trl_layout = True
        problem = find_problem(messages, root)
        if problem is None and trl_layout:
            problem = (
                "an image block without a `path`, `image`, `url` or `base64`, or an `images` / `image` key; a "
                "manifest's image blocks name their files (TRL's bare blocks filled from an `images` column are read "
                "from `datasets` sources only)"
            )
        if problem is not None:
            report_bad_sample(f"{origin}: {problem}", on_bad_sample)
            continue
        rows["messages"].append(json.dumps(messages))
        rows["origin"].append(origin)
        rows["root"].append(root)
    if not rows["messages"]:
        raise ValueError(f"{path}: no usable conversation in the manifest.")
    return Dataset.from_dict(rows)


def load_source(source: str, on_bad_sample: str, streaming: bool = False):
    """A data source (a JSONL manifest, a `save_to_disk` folder or a `load_dataset` name) in the common columns:
    `messages` (JSON; from TRL's conversational `prompt` + `completion` when the source has those instead), `origin`,
    `root` and `images` (TRL's layout: the images of the bare `{"type": "image"}` blocks, in order; `[image]` from
    TRL's single `image` column; empty for sources without either), so that sources of either layout interleave.
    Images stay encoded until the collator of the process that trains on them decodes them. With `streaming`, an
    `IterableDataset`: a `load_dataset` name is read as it trains, nothing downloaded or prepared up front."""
    import datasets

    path = Path(source)
    images = datasets.List(datasets.Image(decode=False))
    if path.suffix.lower() == ".jsonl":
        manifest = read_manifest(path, on_bad_sample)
        manifest = manifest.add_column("images", [[]] * len(manifest), feature=images)
        return manifest.to_iterable_dataset() if streaming else manifest
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        dataset = datasets.load_from_disk(str(path))
        root = str(path.resolve())
    else:
        dataset = datasets.load_dataset(source, split="train", streaming=streaming)
        root = str(path.resolve()) if path.is_dir() else None
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        dataset = dataset["train"]
    if streaming and isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    columns = dataset.column_names or list(next(iter(dataset)))  # a stream of unknown features: its first row's
    conversation = ["messages"] if "messages" in columns else ["prompt", "completion"]
    if not set(conversation) <= set(columns):
        raise ValueError(
            f"{source}: the dataset has neither a `messages` column nor TRL's conversational `prompt` and "
            f"`completion` columns (columns: {columns})."
        )
    text = datasets.Value("string")
    features = datasets.Features(messages=text, origin=text, root=text, images=images)
    single = "image" in columns and "images" not in columns  # TRL's one-image column: `images` = [image] …
    if single and dataset.features is not None:  # … when it holds images or paths (not, e.g., an image id)
        feature = dataset.features["image"]
        single = isinstance(feature, datasets.Image) or getattr(feature, "dtype", None) in ("string", "large_string")
    if dataset.features is not None:  # (a stream of unknown features takes its types from `map(features=)`)
        if "images" in columns:
            dataset = dataset.cast_column("images", images)  # e.g. an older `Sequence(Image())` column
        elif single:
            dataset = dataset.cast_column("image", images.feature)  # kept encoded, as `images` is

    def common_columns(*values):
        """One row's common columns from its turns, its single `image` (when that is the source's column) and its
        index; `images` (when the source lacks it) is `[image]` or empty. A `messages` string is the conversation's
        JSON (the collator parses and checks it); TRL's standard `prompt` / `completion` strings are a user and an
        assistant turn."""
        turns, index = values[: len(conversation)], values[-1]
        if len(turns) == 1 and isinstance(turns[0], str):
            messages = turns[0]
        else:
            roles = ("user", "assistant")
            parts = [
                [{"role": role, "content": part}] if isinstance(part, str) else part
                for role, part in zip(roles, turns)
            ]
            messages = json.dumps([turn for part in parts for turn in part])
        row = {"messages": messages, "origin": f"{source} row {index}"}
        if "images" not in columns:
            row["images"] = [values[-2]] if single and values[-2] is not None else []
        return {**row, "root": root}

    dataset = dataset.map(
        common_columns,
        with_indices=True,
        input_columns=conversation + (["image"] if single else []),  # images are neither decoded nor re-encoded
        remove_columns=[name for name in columns if name != "images"],
        features=features,
    )
    return dataset if streaming else drop_bad_rows(dataset, source, on_bad_sample)


def drop_bad_rows(dataset, source: str, on_bad_sample: str):
    """A map-style source's rows checked up front as a manifest's lines are (a conversation with an assistant turn,
    existing files; TRL's `images`, one per bare image block, their files existing), each bad one reported by its
    origin, then skipped or fatal: a bad row must not end a run hours in. Images are not decoded. A stream's rows are
    checked as they are collated."""
    good, index = [], 0
    for batch in dataset.iter(batch_size=1000):
        for messages, origin, root, images in zip(batch["messages"], batch["origin"], batch["root"], batch["images"]):
            try:
                messages = normalize_messages(messages)
            except (ValueError, TypeError, AttributeError) as error:
                problem = f"`messages` is not a conversation ({error})"
            else:
                problem = images_problem(messages, images or [], root, origin)  # a text-only row's images: None
            if problem is None:
                good.append(index)
            else:
                report_bad_sample(f"{origin}: {problem}", on_bad_sample)
            index += 1
    if not good:
        raise ValueError(f"{source}: no usable conversation in the dataset.")
    return dataset if len(good) == len(dataset) else dataset.select(good)


def parse_source(value: str, weighted: bool = True) -> tuple[str, float]:
    """`SOURCE[:WEIGHT]` → (source, weight); a weight must be positive, a file a `.jsonl` manifest (another file
    would be looked up as a Hub dataset id), and a local path (a `.jsonl` name, or one starting `.`, `/` or `~`, or
    with more than one `/`) must exist (else it too would be looked up on the Hub). `weighted=False` (evaluation
    sources, read whole) refuses a weight."""
    source, _, weight = value.rpartition(":")
    try:
        parsed = float(weight)
    except ValueError:
        source, parsed = value, 1.0
    if Path(value).expanduser().exists():  # an existing path that ends in ":2" (e.g. `run_12:30`) is a path
        source, parsed = value, 1.0
    if not weighted and source != value:
        raise argparse.ArgumentTypeError(
            f"{value!r}: evaluation data is read whole and takes no ':WEIGHT'; pass {source!r}"
        )
    if not source or not math.isfinite(parsed) or parsed <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: the weight after ':' must be a positive finite number")
    if missing_local_source(source):
        raise argparse.ArgumentTypeError(
            f"{source!r}: no such file or folder; pass a .jsonl manifest, a save_to_disk folder or a Hub dataset id"
        )
    source = os.path.expanduser(source)  # the loaders read it as written: a quoted `~/data.jsonl` was not found
    if Path(source).is_file() and Path(source).suffix.lower() != ".jsonl":
        raise argparse.ArgumentTypeError(
            f'{source!r}: a manifest must be a .jsonl file, one {{"messages": [...]}} object per line; for a parquet, '
            "JSON or CSV file pass the folder holding it (read with `datasets.load_dataset`), or a save_to_disk "
            "folder or a Hub dataset id"
        )
    return source, parsed


def parse_eval_source(value: str) -> str:
    """`SOURCE` of `--eval-data`: evaluation sources are read whole and concatenated; a `:WEIGHT` would be ignored."""
    return parse_source(value, weighted=False)[0]


def held_out_split(dataset, source: str, eval_split: float, seed: int):
    """`dataset.train_test_split(eval_split)`, with an error that names the source when it is too small to split."""
    try:
        return dataset.train_test_split(test_size=eval_split, seed=seed)
    except ValueError as error:
        raise ValueError(
            f"--eval-split {eval_split}: cannot hold out part of --data {source} ({len(dataset)} rows): {error} Pass "
            "--eval-data with evaluation samples of their own instead, or more rows."
        ) from error


def build_datasets(sources, eval_sources, eval_split: float, on_bad_sample: str, seed: int, streaming: bool = False):
    """The training mixture (sources interleaved with probabilities ∝ weights; with `streaming` an `IterableDataset`,
    which `endless_stream` shuffles) and the evaluation set (`eval_sources` concatenated, or an `eval_split` fraction
    held out of every source), or `None`."""
    import datasets

    loaded = [(load_source(source, on_bad_sample, streaming), weight) for source, weight in sources]
    held_out = []
    if eval_split > 0:
        splits = [
            held_out_split(dataset, source, eval_split, seed) for (dataset, _), (source, _) in zip(loaded, sources)
        ]
        loaded = [(split["train"], weight) for split, (_, weight) in zip(splits, loaded)]
        held_out = [split["test"] for split in splits]
    held_out += [load_source(source, on_bad_sample) for source in eval_sources]
    total = sum(weight for _, weight in loaded)
    train = (
        loaded[0][0]
        if len(loaded) == 1
        else datasets.interleave_datasets(
            [dataset for dataset, _ in loaded],
            probabilities=[weight / total for _, weight in loaded],
            seed=seed,
            stopping_strategy="all_exhausted",
        )
    )
    return train, datasets.concatenate_datasets(held_out) if held_out else None


def endless_stream(stream, seed: int):
    """A `--streaming` mixture shuffled through a buffer (the Trainer shuffles map-style datasets with its sampler; a
    stream shuffles itself), then read pass after pass, each in the same order, as one endless epoch: a resume skips
    exactly the batches trained on, and gradient accumulation never meets the end of a pass, whose leftover
    micro-batch would be folded into the next step. (A buffer running across passes would repeat samples within a
    pass of a set smaller than the buffer.)"""
    return stream.shuffle(seed=seed, buffer_size=STREAM_SHUFFLE_BUFFER).repeat(None)


def write_demo_data(folder: Path) -> Path:
    """A tiny real-image manifest: captioning, caption → image, and one edit (make it darker), from scikit-image."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, caption in DEMO_CAPTIONS.items():
        array = getattr(data, name)()
        side = min(array.shape[:2])
        crop = Image.fromarray(array[:side, :side]).convert("RGB").resize((DEMO_SIZE, DEMO_SIZE))
        crop.save(folder / f"{name}.png")
        image = {"type": "image", "path": f"{name}.png"}
        lines.append([user([image, text("What is in the image?")]), assistant([text(caption)])])
        lines.append([user([text(f"Draw {caption}.")]), assistant([image])])
    Image.fromarray((np.asarray(crop) * 0.5).astype(np.uint8)).save(folder / "rocket_dark.png")
    edit = [text("Make it darker."), {"type": "image", "path": "rocket.png"}]  # instruction, source: as the pipeline
    lines.append([user(edit), assistant([{"type": "image", "path": "rocket_dark.png"}])])
    manifest = folder / DEMO_MANIFEST
    manifest.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in lines))
    return manifest


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def text(value):
    return {"type": "text", "text": value}


# ------------------------------------------------------------------------------------------------------- trainer
LOSS_SHARES = "hydrax_loss_shares"  # a training micro-batch's (text, flow) loss weights, set by get_batch_samples
EVAL_PADDING = "hydrax_eval_padding"  # marks an evaluation batch of padding only, whose terms count for nothing


def loss_token_counts(batch: dict) -> tuple[int, int]:
    """A collated batch's (scored text tokens, generation target tokens): what its `lm_loss` and `flow_loss` average
    over (a token is scored when the next position's label is set; a row's target is the last block `target_mask`
    marks, its earlier marked blocks being clean context, as the model takes them)."""
    targets = batch.get("target_mask")
    scored = int((batch["labels"][:, 1:] != -100).sum())
    if targets is None:
        return scored, 0
    marked = targets.bool()  # marks the pad tokens of blocks, so blocks are runs apart (vision start/end between)
    runs = (marked & ~F.pad(marked[:, :-1], (1, 0))).cumsum(dim=1).masked_fill(~marked, 0)
    return scored, int((marked & (runs == runs.max(dim=1, keepdim=True).values)).sum())


def linear_decay(progress: float) -> float:
    """The learning-rate factor of the Trainer's default "linear" schedule after warm-up, at `progress` in [0, 1]."""
    return 1.0 - progress


class TimeBudget(TrainerCallback):
    """`--max-minutes`: stops training when the budget is spent (with the evaluation and checkpoint that end a run at
    its last step), shows a progress bar that counts its seconds (the step bar's ETA would be for a step count the
    budget rarely reaches), and gives the learning-rate schedule its progress, the larger of the step and time
    fractions: a linear warm-up, then `decay(progress)`.

    Every process reads the main process's clock, broadcast at each step's end: with their own clocks, processes
    could stop at different steps (one left waiting for gradients the others never send) and would step with
    different learning rates, so that their weights drift apart."""

    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of the time budget{postfix}"

    def __init__(self, minutes: float, max_steps: int, warmup_steps: int, desc: str, decay: Callable[[float], float]):
        self.seconds, self.max_steps, self.warmup_steps = minutes * 60, max_steps, warmup_steps
        self.desc, self.decay = desc, decay
        self.start, self.elapsed, self.bar, self.loss = time.monotonic(), 0.0, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.elapsed = time.monotonic(), 0.0
        if state.is_world_process_zero:
            self.bar = tqdm(total=self.seconds, desc=self.desc, bar_format=self.bar_format)

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = torch.tensor([time.monotonic() - self.start], device=PartialState().device)
        self.elapsed = float(broadcast(elapsed, from_process=0)[0])
        if self.elapsed >= self.seconds:  # ends the run as DefaultFlowCallback does at max_steps: a last eval and save
            control.should_training_stop = True
            control.should_evaluate |= args.eval_strategy == "steps" and args.eval_delay <= state.global_step
            control.should_save |= args.save_strategy == "steps"
        if self.bar is not None:
            self.bar.update(min(self.elapsed, self.seconds) - self.bar.n)
            loss = "" if self.loss is None else f", loss {self.loss:.4f}"
            self.bar.set_postfix_str(f"step {state.global_step}/{self.max_steps}{loss}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.loss = (logs or {}).get("loss", self.loss)
        if self.bar is not None and logs:  # what ProgressCallback, which this replaces, would print
            self.bar.write(
                str({key: f"{value:.4g}" if isinstance(value, float) else value for key, value in logs.items()})
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()

    @property
    def ran_out(self) -> bool:
        """Whether the budget, not the step count, ended the run."""
        return self.elapsed >= self.seconds

    def factor(self, step: int) -> float:
        """The Trainer's schedule: a linear warm-up from 0 over `warmup_steps`, then `decay` of the larger of the step
        fraction after the warm-up and the time fraction (a budget that never runs out leaves the Trainer's rates)."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        steps = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.decay(min(1.0, max(steps, self.elapsed / self.seconds)))


class HydraXTrainer(Trainer):
    """Trainer with per-module learning rates (optimizer parameter groups) and the model's `logged_terms` (`lm_loss`,
    `flow_loss`) logged beside `loss` (averaged over the batches since the last log; `eval_…` in evaluation); with a
    `time_budget`, its progress bar and learning-rate schedule."""

    def __init__(
        self,
        *args,
        learning_rates: dict[str, float],
        deepspeed_grad_reduction: str = "step",
        time_budget: TimeBudget | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.learning_rates = learning_rates
        self.deepspeed_grad_reduction = deepspeed_grad_reduction
        self.loss_sums = {"train": {}, "eval": {}}
        self.time_budget = time_budget
        if time_budget is not None:  # its bar counts the budget's seconds, in place of the step bar
            self.add_callback(time_budget)
            self.remove_callback(ProgressCallback)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.time_budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, self.time_budget.factor)
        return self.lr_scheduler

    def _run_epoch(self, *args, **kwargs):
        """The Trainer's epoch, none once `max_steps` is reached: its loop checks the step count after a step, so a
        run resumed from its last checkpoint (a finished job started again) trained a step past `max_steps`."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            groups = optimizer_groups(self.model, self.learning_rates, self.args.weight_decay)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        wrapped = self.accelerator.deepspeed_engine_wrapped if self.is_deepspeed_enabled else None
        if self.deepspeed_grad_reduction == "step" and type(wrapped) is DeepSpeedEngineWrapper:
            if HydraXDeepSpeedEngineWrapper.applies_to(wrapped.engine):
                self.accelerator.deepspeed_engine_wrapped = HydraXDeepSpeedEngineWrapper(wrapped.engine)
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(self, *args, **kwargs):
        """The Trainer's evaluation under a forked RNG: the model draws flow times and noise in evaluation too, which
        would otherwise move the training's RNG, so that a run with `--eval-steps` trained differently."""
        device = self.args.device
        on_accelerator = device.type != "cpu"  # the CPU generator is always forked; this process's accelerator's too
        devices, device_type = ([device], device.type) if on_accelerator else ([], "cuda")
        with torch.random.fork_rng(devices, device_type=device_type):
            return super().evaluate(*args, **kwargs)

    logged_terms = ("lm_loss", "flow_loss")

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The micro-batches of one optimizer step, each with its shares (`LOSS_SHARES`) of the step's scored text
        tokens and target latent tokens, counted over the micro-batches and the processes. `compute_loss` weights the
        micro-batch's `lm_loss` and `flow_loss` (means over its own tokens) by them, so that gradient accumulation and
        data parallelism give the gradient of one batch of all the samples; unweighted, a micro-batch without a
        generation target would halve the flow term's weight in the step. (The counts are the collator's: an
        image-to-video anchor frame or assistant text dropped for guidance, which `forward` leaves out, still
        counts.)"""
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and "labels" in batches[0]:
            counts = torch.tensor([loss_token_counts(batch) for batch in batches], dtype=torch.float32, device=device)
            totals = self.accelerator.reduce(counts.sum(0), "sum").clamp_min(1)
            for batch, count in zip(batches, counts):
                batch[LOSS_SHARES] = count / totals * (len(batches) * self.accelerator.num_processes)
        return batches, num_items_in_batch

    def term_weights(self, inputs) -> tuple:
        """How much a batch's logged terms count in their logged means: its scored text and target tokens, so that
        the logged `lm_loss` / `flow_loss` (and `eval_loss`) are the large-batch values whatever the batching; one per
        batch for terms without labels (the tokenizer's)."""
        return loss_token_counts(inputs) if "labels" in inputs else (1,) * len(self.logged_terms)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        shares = inputs.pop(LOSS_SHARES, None)
        padding = inputs.pop(EVAL_PADDING, False)
        weights = (0,) * len(self.logged_terms) if padding else self.term_weights(inputs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if shares is not None:
            config = self.accelerator.unwrap_model(model).config
            for name, weight, share in zip(
                self.logged_terms, (config.lm_loss_weight, config.flow_loss_weight), shares
            ):
                if outputs.get(name) is not None:
                    loss = loss + (share - 1) * weight * outputs[name]
        sums = self.loss_sums["train" if model.training else "eval"]
        terms = [(name, outputs.get(name), weight) for name, weight in zip(self.logged_terms, weights)]
        if not model.training:  # the evaluation loss per sample (as the Trainer's), without the padding batches
            terms.append(("loss", loss, 0 if padding else find_batch_size(inputs)))
        for name, value, weight in terms:
            if value is not None:
                total, count = sums.get(name, (0.0, 0))
                sums[name] = (total + value.detach().float().item() * weight, count + weight)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds each term's mean, weighted by `term_weights`, over the batches of every process since the last log (the
        Trainer calls `log` on every process at the same points, so the sums are reduced across them). `eval_loss`
        becomes the weighted sum of the evaluation terms, as the training `loss` is: the Trainer's mean of per-batch
        losses would depend on how the evaluation samples were batched. Other trainers' `eval_loss` is the mean of the
        evaluation batches' losses per sample, as the Trainer's, but without `EVAL_PADDING` batches."""
        split, prefix = ("train", "") if "loss" in logs else ("eval", "eval_") if "eval_loss" in logs else (None, "")
        if split is not None:
            names = (*self.logged_terms, "loss") if split == "eval" else self.logged_terms
            sums = [self.loss_sums[split].get(name, (0.0, 0)) for name in names]
            sums = self.accelerator.reduce(torch.tensor(sums, dtype=torch.float64, device=self.args.device), "sum")
            for name, (total, count) in zip(names, sums.tolist()):
                if count:
                    logs[prefix + name] = total / count
            self.loss_sums[split] = {}
        if split == "eval" and self.logged_terms == HydraXTrainer.logged_terms:
            config = self.accelerator.unwrap_model(self.model).config
            weights = {"lm_loss": config.lm_loss_weight, "flow_loss": config.flow_loss_weight}
            present = [weights[name] * logs[prefix + name] for name in self.logged_terms if prefix + name in logs]
            logs["eval_loss"] = sum(present) if present else logs["eval_loss"]
        super().log(logs, start_time)


class HydraXDeepSpeedEngineWrapper(DeepSpeedEngineWrapper):
    """accelerate's DeepSpeed engine wrapper, with ZeRO-2 gradients reduced once per optimizer step in parameter
    order (DeepSpeed's `coalesce_grad_reduction`) instead of in buckets filled in the order the backward pass makes
    them ready. Hydra-X's backward order depends on what a batch holds (questions, text-to-image targets, edits,
    target sizes; images or videos for the tokenizer), so with ready-order buckets processes whose batches differ in
    kind would sum gradients of different parameters. A parameter that none of a step's batches used (the tokenizer's
    Decompressor in an image batch) is reduced as a zero gradient, as DDP's `find_unused_parameters` does,
    so every process reduces the same tensors. The cost: every process keeps its full gradients until the step (as
    DDP does), and the reduction no longer overlaps the backward pass."""

    def __init__(self, engine):
        if not hasattr(engine, "coalesce_grad_reduction"):
            import deepspeed

            raise RuntimeError(
                f"DeepSpeed {deepspeed.__version__} has no `engine.coalesce_grad_reduction` (DeepSpeed PR #7992), "
                "which reduces ZeRO-2 gradients in parameter order: upgrade it (`pip install -U deepspeed`), or pass "
                "--deepspeed-grad-reduction ready and train on data of one kind."
            )
        super().__init__(engine)
        self.coalescing = None  # open from a step's first micro-batch to its last

    @staticmethod
    def applies_to(engine) -> bool:
        """ZeRO-2 engines (ZeRO-3's parameter gathers in the forward pass follow the modules a batch runs)."""
        return engine.zero_optimization_stage() == 2

    def backward(self, loss, sync_gradients=True, **kwargs):
        if self.coalescing is None:
            self.coalescing = contextlib.ExitStack()
            self.coalescing.enter_context(self.engine.coalesce_grad_reduction())
        self.engine.set_gradient_accumulation_boundary(is_boundary=False)
        self.engine.backward(loss, **kwargs)
        if sync_gradients:
            for param in self.engine.module.parameters():
                if param.requires_grad and param.grad is None:
                    param.grad = torch.zeros_like(param)
            coalescing, self.coalescing = self.coalescing, None
            coalescing.close()  # one reduction of the step's accumulated gradients, in parameter order
            self.engine.set_gradient_accumulation_boundary(is_boundary=True)
            self.engine.step()


class RunRecordCallback(TrainerCallback):
    """Writes `hydrax_training.json` (stage, LoRA settings, architecture, trainable parameters) into every checkpoint,
    so a resume can check it continues the same kind of run."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            record = json.dumps(self.record, indent=2)  # written whole or not at all: it marks the checkpoint complete
            write_atomically(folder / RUN_FILE, lambda partial: partial.write_text(record))


class ValidationCallback(TrainerCallback):
    """`--validation-prompts`: at every checkpoint, one image (or video) per prompt sampled with the weights being
    trained (the pipelines' cached CFG sampler, seeded; the training's RNG is not touched) into
    `checkpoint-N/samples.png` (or `samples.mp4`), a row in prompt order. Every process samples (FSDP and ZeRO-3
    gather the weights together); the main process writes."""

    def __init__(self, prompts: list[str], size: int, steps: int, guidance_scale: float, seed: int, num_frames=1):
        self.prompts, self.size, self.seed, self.num_frames = prompts, size, seed, num_frames
        self.steps, self.guidance_scale = steps, guidance_scale

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        outputs = sample_prompts(
            model,
            processing_class,
            self.prompts,
            self.size,
            self.steps,
            self.guidance_scale,
            self.seed,
            self.num_frames,
        )
        if args.should_save:
            from diffusers.utils import make_image_grid

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if self.num_frames == 1:
                grid = make_image_grid(outputs, rows=1, cols=len(outputs))
                write_atomically(folder / SAMPLES_FILE, lambda partial: grid.save(partial, format="PNG"))
            else:
                rows = [make_image_grid(list(frames), rows=1, cols=len(frames)) for frames in zip(*outputs)]
                write_video(rows, folder / VIDEO_SAMPLES_FILE, fps=8)


@torch.no_grad()
def sample_prompts(
    model, processor, prompts: list[str], size: int, steps: int, guidance_scale: float, seed: int, num_frames: int = 1
):
    """PIL images (or, with `num_frames` > 1, videos: lists of PIL frames) of `prompts`, size × size, from `model` as
    it is now, through `HydraXPipeline` (its seeded generator draws the noise: the global RNG, and so the training's,
    is not touched); the model's mode comes back."""
    from modeling_hydrax.pipeline_hydrax import HydraXPipeline, default_scheduler

    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: its layers are in it
    pipe = HydraXPipeline(model=model, processor=processor, scheduler=default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    training = model.training
    model.eval()
    try:
        with full_parameters(model):
            generator = torch.Generator().manual_seed(seed)
            output = pipe(
                prompts,
                height=size,
                width=size,
                num_frames=num_frames,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generator,
            )
            return output.images if num_frames == 1 else output.frames
    finally:
        model.train(training)


@contextlib.contextmanager
def full_parameters(model):
    """Every parameter of `model` whole on every process for the block: gathered from DeepSpeed ZeRO-3 partitions,
    or FSDP2's root unit unsharded (its Qwen2 layer units unshard themselves as they run); otherwise as it is."""
    from torch.distributed.fsdp import FSDPModule
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield
    elif isinstance(model, FSDPModule):
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:
        yield


class PaddedEvalSet(torch.utils.data.Dataset):
    """The evaluation set padded with `None` items to a multiple of `multiple` (the processes' joint batch): otherwise
    accelerate (`even_batches`) fills the last batches of the processes with the set's first samples again, and those
    count twice in the logged evaluation terms. `EvalPaddingCollator` leaves the padding out."""

    def __init__(self, dataset, multiple: int):
        self.dataset, self.length = dataset, -(-len(dataset) // multiple) * multiple

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index] if index < len(self.dataset) else None


class EvalPaddingCollator:
    """Wraps a collator to leave out `PaddedEvalSet`'s padding. A batch of padding only collates `stand_in` (a sample
    of the set) marked `EVAL_PADDING`: every process still runs one forward per batch (FSDP and ZeRO-3 gather
    parameters in it), and `HydraXTrainer` counts its terms for nothing."""

    def __init__(self, collator, stand_in: dict):
        self.collator, self.stand_in = collator, stand_in

    def __call__(self, samples):
        real = [sample for sample in samples if sample is not None]
        batch = self.collator(real or [self.stand_in])
        if not real:
            batch[EVAL_PADDING] = True
        return batch


class SampleLog:
    """Wraps a collator to append the `origin` of every sample it collates to `path`, one per line (`--log-samples`:
    which data each process loaded)."""

    def __init__(self, collator, path: Path):
        self.collator, self.path = collator, path

    def __call__(self, samples):
        with self.path.open("a") as file:
            file.writelines(sample["origin"] + "\n" for sample in samples)
        return self.collator(samples)


def run_record(model, args, learning_rates: dict[str, float]) -> dict:
    """What a checkpoint of this run must match to be resumed from (a resume restores the optimizer's learning rates
    and weight decay and the adapter from the checkpoint, so changed values would be silently ignored; a run ended
    by `--max-minutes` followed the clock, which a resume cannot replay; another seed or base model continues another
    run: a LoRA checkpoint holds the adapter only, and the data order follows the seed)."""
    config = model.config.to_dict()
    architecture = {
        "text": {k: config["text_config"][k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        "vision": {k: config["vision_config"][k] for k in ("hidden_size", "latent_channels")},
    }
    trainable = sum(param.requires_grad for param in model.parameters())
    lora = None
    if args.lora_r is not None:
        lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}
        lora["targets"] = args.lora_target_modules
    return {
        "stage": args.stage,
        "seed": args.seed,
        # a LoRA checkpoint holds the adapter only: its base must be the same (a full one holds every weight)
        "model": None if args.model is None or args.lora_r is None else str(args.model.resolve()),
        "learning_rates": learning_rates,
        "weight_decay": args.weight_decay,
        "max_minutes": args.max_minutes,
        "lora": lora,
        "architecture": architecture,
        "trainable_tensors": trainable,
    }


def check_resumable(checkpoint: Path, record: dict, script: str = "examples/train_hydrax.py") -> None:
    """A clear error when `checkpoint` was not written by a run like this one (its optimizer state and weights would
    not fit, or would silently continue a different run)."""
    path = checkpoint / RUN_FILE
    if not path.is_file():
        raise ValueError(
            f"Cannot resume from {checkpoint}: it has no {RUN_FILE}, so it is not a checkpoint of {script}. Start "
            "from a model folder with --model instead."
        )
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Cannot resume from {checkpoint}: its {RUN_FILE} is not valid JSON ({error}); the file was damaged after "
            "it was written. Resume from an earlier checkpoint-N folder, or start again with --force."
        ) from error
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, this run {value!r}"
        for key, value in record.items()
        if key in saved and saved[key] != value  # a key a checkpoint of an earlier version lacks is not checked
    ]
    if differences:
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was trained differently ({'; '.join(differences)}). Resume with the "
            "checkpoint's settings, or start the new run from a finished model folder with --model."
        )


def resume_checkpoint(resume: str | None, work_dir: Path, record: dict, script: str = "examples/train_hydrax.py"):
    """`--resume-from-checkpoint` as a checkpoint folder (`last`: the newest complete `checkpoint-N` in `work_dir`, one
    whose run record was written after everything else), checked against this run's `record`; None when not
    resuming."""
    if resume == "last":
        folders = [Path(folder) for folder in sort_checkpoints(str(work_dir))]  # oldest first
        complete = [folder for folder in folders if (folder / RUN_FILE).is_file()]
        if not complete:
            raise ValueError(f"--resume-from-checkpoint last: no complete checkpoint-N folder in {work_dir}.")
        if folders[-1] != complete[-1]:
            logger.warning(
                f"{folders[-1]} has no {RUN_FILE}: its save was interrupted. Resuming from {complete[-1]} instead."
            )
        resume = str(complete[-1])
    if resume is not None:
        check_resumable(Path(resume), record, script)
    return resume


def check_no_earlier_run(parser: argparse.ArgumentParser, args) -> None:
    """`parser.error` when OUTPUT_DIR/work holds checkpoints of an earlier run and this run neither continues it
    (--resume-from-checkpoint) nor replaces it (--force): `last` would later resume the earlier run's newest
    checkpoint, and the two runs' checkpoints and logs would mix."""
    work_dir = Path(args.output_dir) / "work"
    earlier = sort_checkpoints(str(work_dir)) if work_dir.is_dir() else []
    if earlier and args.resume_from_checkpoint is None and not args.force:
        parser.error(
            f"--output-dir {args.output_dir}: holds the checkpoints of an earlier run (newest: {earlier[-1]}); pass "
            "--resume-from-checkpoint last to continue it, --force to replace it, or a new folder"
        )


def add_time_budget_argument(parser: argparse.ArgumentParser) -> None:
    """`--max-minutes`, checked by `check_time_budget`."""
    parser.add_argument(
        "--max-minutes",
        type=finite_float,
        help="time budget: stop after this many minutes (with the evaluation and checkpoint of a last step); the "
        "learning rate then follows whichever of --max-steps and the budget runs out first (a run that is not "
        "reproducible step for step: no resuming)",
    )


def check_time_budget(parser: argparse.ArgumentParser, args) -> None:
    """`--max-minutes`, when given, is a positive number of minutes, and starts a run: its schedule follows
    the clock, which a resumed run cannot replay."""
    if args.max_minutes is None:
        return
    if args.max_minutes <= 0:
        parser.error(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}.")
    if args.resume_from_checkpoint:
        parser.error(
            "--max-minutes cannot resume a run (its learning rate followed the clock); resume with --max-steps only."
        )


def check_non_negative(parser: argparse.ArgumentParser, args, options: tuple[str, ...]) -> None:
    """The `options` that were given (learning rates, weight decay, clipping norm) are ≥ 0 (a learning rate of 0
    leaves the weights as they are; a clipping norm of 0 turns clipping off)."""
    for option in options:
        value = getattr(args, option.removeprefix("--").replace("-", "_"))
        if value is not None and value < 0:
            parser.error(f"{option} must be ≥ 0, got {value}")


def clear_earlier_run(args, training_args: TrainingArguments, work_dir: Path) -> None:
    """--force without a resume: the earlier run's OUTPUT_DIR/work and --log-samples records go (the main process
    removes them while the others wait) before this run writes its own; its OUTPUT_DIR/model is replaced only when
    this run saves."""
    if args.force and args.resume_from_checkpoint is None:
        with training_args.main_process_first(desc="removing the earlier run's checkpoints"):
            if training_args.process_index == 0 and work_dir.exists():
                shutil.rmtree(work_dir)
            for log in work_dir.parent.glob("samples_rank*.txt") if training_args.process_index == 0 else ():
                log.unlink()  # --log-samples' record, which appends


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        help="the Hydra-X checkpoint folder to fine-tune (default: a tiny random one built on the fly)",
    )
    parser.add_argument(
        "--stage",
        type=int,
        choices=(1, 2, 3),
        default=1,
        help="the paper's training stage: which modules train and their learning rates (see above)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        type=parse_source,
        default=[],
        metavar="SOURCE[:WEIGHT]",
        help="training data: JSONL manifests, save_to_disk folders or load_dataset names, each with "
        "an optional mixture weight (default: the built-in demo set)",
    )
    parser.add_argument(
        "--eval-data",
        nargs="+",
        type=parse_eval_source,
        default=[],
        metavar="SOURCE",
        help="held-out evaluation data (same kinds of source as --data)",
    )
    parser.add_argument(
        "--eval-split", type=finite_float, default=0.0, help="fraction of every --data source held out for evaluation"
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="read --data as streams (datasets' IterableDataset): Hub datasets are read while training, nothing "
        f"downloaded or prepared up front, shuffled through a {STREAM_SHUFFLE_BUFFER}-sample buffer and read pass "
        "after pass in that order; every process collates its own share (not with --eval-split; --eval-data is "
        "read whole)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/train_hydrax"), help="where work/, model/ (and adapter/) go"
    )
    parser.add_argument("--max-steps", type=int, default=100, help="optimizer steps")
    add_time_budget_argument(parser)
    parser.add_argument(
        "--batch-size", type=int, default=1, help="samples per device and step (may mix tasks and target sizes)"
    )
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="batches per optimizer step")
    parser.add_argument(
        "--learning-rate-scale", type=finite_float, default=1.0, help="multiplies the stage's learning rates"
    )
    for group in ("vision-head", "sem-vit", "llm"):
        parser.add_argument(
            f"--{group}-lr",
            type=finite_float,
            help=f"learning rate of the {group.replace('-', ' ')} group, replacing the stage's",
        )
    parser.add_argument(
        "--weight-decay", type=finite_float, default=0.0, help="AdamW weight decay (not on biases/norms)"
    )
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    parser.add_argument(
        "--max-grad-norm", type=finite_float, default=1.0, help="gradient clipping norm (0: no clipping)"
    )
    parser.add_argument(
        "--flow-logit-mean",
        type=finite_float,
        help="mean of the logit-normal flow-time distribution "
        "(config field; >0 draws times toward noise: use ~1.0 for small grids)",
    )
    parser.add_argument("--flow-logit-std", type=finite_float, help="std of the logit-normal flow-time distribution")
    parser.add_argument(
        "--text-dropout-prob",
        type=finite_float,
        help="CFG text dropout of generation samples (the model "
        "applies it in forward; dropped text never counts in the LM loss)",
    )
    parser.add_argument(
        "--source-dropout-prob", type=finite_float, help="probability of replacing an edit's source by the null image"
    )
    parser.add_argument(
        "--image-to-video-prob",
        type=finite_float,
        help="probability that a video target trains as image-to-video: its first latent frame clean, out of the loss "
        "(config field, default 0.5)",
    )
    parser.add_argument("--lm-loss-weight", type=finite_float, help="weight of the next-token loss")
    parser.add_argument("--flow-loss-weight", type=finite_float, help="weight of the flow-matching loss")
    parser.add_argument(
        "--add-vision-id",
        action="store_true",
        help="label each image and video of a conversation's user turns as Qwen2.5-VL's template does "
        "('Picture 1: ', 'Video 1: '); the model card says so (evaluate with evaluate_understanding.py "
        "--add-vision-id, prompt with apply_chat_template(..., add_vision_id=True)); meant for understanding data, "
        "as HydraXEditPipeline writes an edit's source unlabelled",
    )
    parser.add_argument("--min-pixels", type=int, help="smallest image area after resizing (default: the processor's)")
    parser.add_argument("--max-pixels", type=int, help="largest image area after resizing (default: the processor's)")
    parser.add_argument(
        "--lora-r",
        type=int,
        help="train LoRA adapters of this rank on the LLM instead of its full weights (stages 2 and 3)",
    )
    parser.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling alpha")
    parser.add_argument("--lora-dropout", type=finite_float, default=0.0, help="LoRA dropout")
    parser.add_argument(
        "--lora-target-modules",
        default=DEFAULT_LORA_TARGETS,
        help="regex of the modules LoRA adapts (default: the Qwen2 attention and MLP projections)",
    )
    parser.add_argument(
        "--on-bad-sample",
        choices=("skip", "error"),
        default="error",
        help="what to do with a "
        "sample whose files are missing or unreadable or that has no assistant turn (always reported)",
    )
    parser.add_argument("--resume-from-checkpoint", help="a checkpoint folder under OUTPUT_DIR/work, or 'last'")
    parser.add_argument(
        "--force",
        action="store_true",
        help="start afresh in an --output-dir that holds an earlier run's checkpoints (they are removed)",
    )
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every this many steps")
    parser.add_argument("--eval-steps", type=int, help="evaluate every this many steps (default: at the end only)")
    parser.add_argument("--logging-steps", type=int, default=10, help="log losses every this many steps")
    parser.add_argument(
        "--report-to", default=None, help="Trainer's report_to (default: tensorboard when installed, else none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and flow noise")
    parser.add_argument(
        "--validation-prompts",
        nargs="+",
        default=[],
        metavar="PROMPT",
        help=f"text-to-image prompts sampled with the weights being trained at every checkpoint, into "
        f"work/checkpoint-N/{SAMPLES_FILE} (one image per prompt, in a row; seeded with --seed)",
    )
    parser.add_argument(
        "--validation-size",
        type=int,
        help=f"side of the validation images in pixels, a multiple of the tokenizer's patch size (default: "
        f"{DEMO_SIZE} with the demo data, else 256)",
    )
    parser.add_argument("--validation-inference-steps", type=int, default=30, help="Euler steps per validation image")
    parser.add_argument(
        "--validation-num-frames",
        type=int,
        default=1,
        help=f"1: validation images ({SAMPLES_FILE}); 1 + 4k: validation videos ({VIDEO_SAMPLES_FILE}, 8 fps)",
    )
    parser.add_argument(
        "--validation-guidance-scale",
        type=finite_float,
        default=4.0,
        help="classifier-free guidance of the validation images",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, ~30%% more compute)",
    )
    parser.add_argument(
        "--deepspeed-grad-reduction",
        choices=("step", "ready"),
        default="step",
        help="DeepSpeed ZeRO-2 only. 'step': reduce the gradients once per optimizer step, in parameter order "
        "(right for batches of any kind; each process holds its full gradients until the step). 'ready': "
        "DeepSpeed's own buckets, reduced as the backward pass makes gradients ready (less memory, overlapped with "
        "the backward pass), right only when every process's batches are of one kind (e.g. only questions)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 mixed precision (an accelerate config can also set it); on a machine without a GPU add --cpu",
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument(
        "--log-samples",
        action="store_true",
        help="every process appends the origin of each sample it loads (the data loader reads one batch ahead) "
        "to OUTPUT_DIR/samples_rank{R}.txt and, at the end, a checksum of each of its parameters to "
        "OUTPUT_DIR/weights_rank{R}.txt",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.eval_split < 1:
        parser.error(f"--eval-split must lie in [0, 1), got {args.eval_split}")
    if args.streaming and args.eval_split:
        parser.error("--eval-split holds out part of every whole source; with --streaming pass --eval-data")
    check_at_least(parser, 1, **{name: getattr(args, name) for name in COUNT_OPTIONS})
    check_time_budget(parser, args)
    check_non_negative(
        parser,
        args,
        ("--learning-rate-scale", "--vision-head-lr", "--sem-vit-lr", "--llm-lr", "--weight-decay", "--max-grad-norm"),
    )
    # the config fields' own rules (HydraXConfig), here before any work: a NaN flow-time mean trained a NaN model
    check_positive(parser, flow_logit_std=args.flow_logit_std)
    check_non_negative(parser, args, ("--lm-loss-weight", "--flow-loss-weight"))
    intervals = {"text_dropout_prob": "[0, 1)", "source_dropout_prob": "[0, 1)", "image_to_video_prob": "[0, 1]"}
    for name, interval in intervals.items():
        value = getattr(args, name)
        if value is not None and not (0 <= value < 1 or (value == 1 and interval.endswith("]"))):
            parser.error(f"--{name.replace('_', '-')} must lie in {interval}, got {value}")
    if args.lora_alpha < 1:
        parser.error(f"--lora-alpha must be ≥ 1 (the adapters' update is scaled by alpha / r), got {args.lora_alpha}")
    check_at_least(parser, 1, lora_r=args.lora_r, min_pixels=args.min_pixels)
    if not 0 <= args.lora_dropout < 1:
        parser.error(f"--lora-dropout must lie in [0, 1), got {args.lora_dropout}")
    try:
        re.compile(args.lora_target_modules)
    except re.error as error:
        parser.error(f"--lora-target-modules {args.lora_target_modules!r} is not a valid regex ({error})")
    if args.min_pixels is not None and args.max_pixels is not None and args.min_pixels > args.max_pixels:
        parser.error(f"--min-pixels {args.min_pixels} exceeds --max-pixels {args.max_pixels}")
    if args.max_pixels is not None and args.max_pixels < 16 * 16:
        parser.error(f"--max-pixels must hold one 16×16 patch (≥ 256 pixels), got {args.max_pixels}")
    if args.eval_steps is not None and not (args.eval_data or args.eval_split):
        parser.error("--eval-steps needs evaluation data: pass --eval-data or --eval-split")
    if any(not prompt.strip() for prompt in args.validation_prompts):
        parser.error("--validation-prompts holds an empty prompt; give each prompt some text")
    if args.validation_num_frames < 1 or (args.validation_num_frames - 1) % 4:
        parser.error(f"--validation-num-frames must be 1 or 1 + 4k (5, 9, …), got {args.validation_num_frames}")
    if args.validation_inference_steps < 1:
        parser.error(f"--validation-inference-steps must be ≥ 1, got {args.validation_inference_steps}")
    if args.validation_size is not None and args.validation_size < 1:
        parser.error(f"--validation-size must be a positive number of pixels, got {args.validation_size}")
    if args.lora_r is not None and args.stage == 1:
        parser.error("--lora-r adapts the LLM, which stage 1 freezes; use --stage 2 or 3")
    if args.eval_split and not args.data:
        parser.error("--eval-split needs --data (the demo set is too small to split)")
    if args.model is not None:
        hint = "pass a checkpoint folder written by conversion/build_hydrax.py or this script (OUTPUT_DIR/model)"
        check_hydrax_folder(parser, "--model", args.model, hint)
        check_card(parser, "--model", args.model)  # its lineage goes into the trained model's card
    if args.resume_from_checkpoint not in (None, "last"):
        hint = "pass a checkpoint-N folder of OUTPUT_DIR/work, or 'last'"
        check_folder(parser, "--resume-from-checkpoint", args.resume_from_checkpoint, hint, "trainer_state.json")
    check_output_folder(parser, "--output-dir", args.output_dir)
    inputs = {"--model": args.model, "--data": [source for source, _ in args.data], "--eval-data": args.eval_data}
    check_inputs_outside(parser, "--output-dir", args.output_dir, inputs, RUN_OUTPUTS)
    check_no_earlier_run(parser, args)
    return args


def training_arguments(args, work_dir: Path, evaluate: bool, **overrides) -> TrainingArguments:
    """`TrainingArguments` from the options the training scripts share (steps, batch, schedule, logging, saving,
    seeds, activation checkpointing, bf16, CPU); `overrides` add or replace fields."""
    shared = dict(
        output_dir=str(work_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=args.eval_steps or args.max_steps,
        prediction_loss_only=True,
        remove_unused_columns=False,
        report_to=args.report_to or report_to(),
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        activation_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        use_cpu=args.cpu,
    )
    training_args = TrainingArguments(**{**shared, **overrides})
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:  # each process would train alone, all into one folder
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE={launched}), but the Trainer runs each alone (world "
            f"size 1): without a GPU, accelerate joins processes only when told to train on the CPU. Pass --cpu, or "
            "launch with ACCELERATE_USE_CPU=true."
        )
    return training_args


def report_to() -> str:
    """TensorBoard when it is installed, otherwise no logging integration."""
    import importlib.util

    return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"


def main(argv=None) -> HydraXTrainer:
    """Train, save OUTPUT_DIR/model (and adapter/), and return the Trainer (its `state.log_history` has the losses)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    output_dir, work_dir = args.output_dir, args.output_dir / "work"
    checkpoint = (args.model or output_dir / "initial").resolve()  # absolute: the adapter's recorded base
    sources = args.data or [(str(output_dir / "demo_data" / DEMO_MANIFEST), 1.0)]
    learning_rates = stage_learning_rates(
        args.stage, args.learning_rate_scale, vision_head=args.vision_head_lr, sem_vit=args.sem_vit_lr, llm=args.llm_lr
    )

    # 1. Training arguments first: they set up the processes (torchrun / accelerate launch), and DeepSpeed ZeRO-3 must
    # be configured before the model is loaded to partition it while loading
    training_args = training_arguments(
        args,
        work_dir,
        evaluate=bool(args.eval_data or args.eval_split),
        learning_rate=max(learning_rates.values()),
        # a stream's batches of differently sized images cannot be dispatched from one process: each collates its own
        **({"accelerator_config": {"dispatch_batches": False}} if args.streaming else {}),
    )
    clear_earlier_run(args, training_args, work_dir)

    plugin = training_args.deepspeed_plugin
    if plugin is not None and training_args.world_size > 1:
        if plugin.zero_stage == 3:
            logger.warning(
                "DeepSpeed ZeRO-3 gathers each module's parameters when the module runs, and which vision modules a "
                "Hydra-X step runs, how often, depends on what its batch holds: train on data of one kind (e.g. only "
                "questions, or only text-to-image at one size), or use deepspeed_zero2.yaml, ddp.yaml or fsdp.yaml "
                "for mixed data. Processes whose batches differ in kind stop on a collective mismatch."
            )
        elif args.deepspeed_grad_reduction == "ready":
            logger.warning(
                "--deepspeed-grad-reduction ready: DeepSpeed reduces gradients in the order they become ready, and "
                "Hydra-X's backward order depends on what a batch holds; processes whose batches differ in kind get "
                "gradients summed out of place. Train on data of one kind, or use the default 'step'."
            )

    # 2. Files: the main process writes the tiny checkpoint and the demo set and fills the datasets cache; the others
    # wait for it, then read them
    with training_args.main_process_first(local=False, desc="the initial checkpoint and the data"):
        if training_args.process_index == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            if args.model is None and not (args.resume_from_checkpoint and (checkpoint / "config.json").is_file()):
                with without_zero3_init():  # built by this process alone; a resume keeps the one it trained on
                    build_checkpoint("tiny", checkpoint, seed=args.seed, overwrite=True)
            if not args.data:
                write_demo_data(output_dir / "demo_data")
        train_dataset, eval_dataset = build_datasets(
            sources, args.eval_data, args.eval_split, args.on_bad_sample, args.seed, args.streaming
        )
        if args.streaming:
            train_dataset = endless_stream(train_dataset, args.seed)

    # 3. Model and processor, with the config pass-throughs; trainable groups and learning rates of the stage; LoRA
    overrides = {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name) is not None}
    config = AutoConfig.from_pretrained(checkpoint, **overrides)
    saved_dtype = stored_dtype(config)  # the model trains in float32 and is saved back in this dtype
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = load_model(checkpoint, config, learning_rates, args)
    record = run_record(model, args, learning_rates)
    resume = resume_checkpoint(args.resume_from_checkpoint, work_dir, record)

    validation = []
    if args.validation_prompts:
        size = args.validation_size or (256 if args.data else DEMO_SIZE)
        patch = config.vision_config.patch_size
        if size % patch:
            raise ValueError(
                f"--validation-size {size} is not a multiple of the tokenizer's patch size {patch}; use e.g. "
                f"{max(patch, size // patch * patch)}."
            )
        steps, scale = args.validation_inference_steps, args.validation_guidance_scale
        frames = args.validation_num_frames
        validation = [ValidationCallback(args.validation_prompts, size, steps, scale, args.seed, frames)]

    # 4. The on-the-fly collator (32² demo images unless sizes are given)
    pixels = (args.min_pixels, args.max_pixels)
    if not args.data and pixels == (None, None):
        pixels = (DEMO_SIZE**2, DEMO_SIZE**2)
    size = {key: value for key, value in zip(("min_pixels", "max_pixels"), pixels) if value is not None}
    processor_kwargs = {"images_kwargs": {"size": size}, "videos_kwargs": {"size": size}} if size else {}
    template_kwargs = {"add_vision_id": True} if args.add_vision_id else None
    collator = HydraXDataCollator(processor, processor_kwargs, args.on_bad_sample, template_kwargs)
    rank = training_args.process_index
    if args.log_samples:
        collator = SampleLog(collator, output_dir / f"samples_rank{rank}.txt")
    if eval_dataset is not None and training_args.world_size > 1:
        eval_dataset = PaddedEvalSet(eval_dataset, training_args.per_device_eval_batch_size * training_args.world_size)
        collator = EvalPaddingCollator(collator, eval_dataset.dataset[0])

    # 5. Train
    budget = None
    if args.max_minutes:
        budget = TimeBudget(args.max_minutes, args.max_steps, args.warmup_steps, "training Hydra-X", linear_decay)
    trainer = HydraXTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        learning_rates=learning_rates,
        deepspeed_grad_reduction=args.deepspeed_grad_reduction,
        time_budget=budget,
        callbacks=[RunRecordCallback(record), *validation],
    )
    trainer.train(resume_from_checkpoint=resume)
    if args.log_samples:
        held = trainer.accelerator.unwrap_model(trainer.model)
        with full_parameters(held):  # ZeRO-3: each process's partitions, gathered
            checksums = parameter_checksums(held)
        (output_dir / f"weights_rank{rank}.txt").write_text(json.dumps(checksums, indent=0))

    # 6. Save (main process): adapter (LoRA), then the full model as a transformers + diffusers folder, each with a
    # model card, staged and renamed into place
    trained = gathered_model(trainer, lambda: load_model(checkpoint, config, learning_rates, args))
    if trainer.is_world_process_zero():
        details = training_details(args, trainer, sources, learning_rates)
        lineage = card_lineage(checkpoint)  # the merged model's Hub ids and the licence carry over (an adapter's
        # base_model is the checkpoint it applies to, not that checkpoint's own bases)
        if args.lora_r is not None:  # the adapter goes in place after the merged model: a failed save changes neither
            with staged_folder(output_dir / "adapter") as staging:
                trained.save_pretrained(staging)
                lora = json.loads((staging / "adapter_config.json").read_text())
                adapter, base = (str(path.resolve()) for path in (output_dir / "adapter", checkpoint))
                card = build_adapter_card(
                    adapter, base, config, lora, training_details=details, license=lineage["license"]
                )
                card.save(staging / "README.md")  # in place of PEFT's blank template
                merged = trained.merge_and_unload().to(saved_dtype)
                save_model(merged, processor, output_dir / "model", details, lineage)
        else:
            save_model(trained.to(saved_dtype), processor, output_dir / "model", details, lineage)
            if (output_dir / "adapter").is_dir():  # an earlier LoRA run's, which this model does not go with
                shutil.rmtree(output_dir / "adapter")
                print(f"removed {output_dir / 'adapter'}, an earlier run's LoRA adapter")
        final = {key: value for key, value in trainer.state.log_history[-1].items() if not math.isnan(value)}
        print(json.dumps(final, indent=2))
        print(f"model: {output_dir / 'model'}" + (f"\nadapter: {output_dir / 'adapter'}" if args.lora_r else ""))
    trainer.accelerator.wait_for_everyone()
    return trainer


def stored_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (its config's `dtype`; float32 when it records none): a run
    trains float32 master weights and saves the result back in it (a LoRA adapter stays float32)."""
    dtype = getattr(config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load_model(checkpoint: Path, config, learning_rates: dict[str, float], args):
    """The model to train: `checkpoint` with `config` in float32 (master weights: a bf16 checkpoint, as
    conversion/build_hydrax.py --dtype bfloat16 writes, would otherwise load and train in bf16, where small AdamW
    updates round away; `--bf16` computes in bf16; the result is saved back in the checkpoint's dtype), the stage's
    groups trainable, LoRA when asked."""
    model = AutoModel.from_pretrained(checkpoint, config=config, dtype=torch.float32)
    set_trainable(model, learning_rates)
    return model if args.lora_r is None else add_lora(model, args, learning_rates)


def gathered_model(trainer: HydraXTrainer, fresh_model):
    """The trained model with full weights on the main process (`None` on the others when they are sharded). FSDP and
    DeepSpeed shards are gathered by every process (a collective call) into a full state dict on the main process,
    which loads it into `fresh_model()`; otherwise the trained model itself."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return trainer.accelerator.unwrap_model(trainer.model)
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return None
    with without_zero3_init():
        model = fresh_model()  # on this process alone: not partitioned by ZeRO-3 while loading
    model.load_state_dict(state_dict)
    return model


@contextlib.contextmanager
def without_zero3_init():
    """Models built in this block are not partitioned by DeepSpeed ZeRO-3: for a model one process builds alone, whose
    partitioning (a collective call) would wait forever for the others. transformers partitions every model built
    while a ZeRO-3 config is registered, and accelerate's `zero3_init_context_manager(enable=False)` (1.15) registers
    it again, so the registration itself is lifted here."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def parameter_checksums(model) -> dict[str, float]:
    """A float64 sum of every parameter (`--log-samples`: do all processes hold the same weights?)."""
    return {name: param.detach().double().sum().item() for name, param in model.named_parameters()}


def save_model(model, processor, folder: Path, details: str | None = None, lineage: dict | None = None) -> None:
    """The trained model, its processor, the pipeline files (a folder for `AutoModel` and `HydraXPipeline`) and, given
    the training `details`, a model card (with the `base_models` and `license` of `lineage`, the starting
    checkpoint's: `card_lineage`), written to a staging folder and renamed into place."""
    from modeling_hydrax import HydraXPipeline
    from modeling_hydrax.pipeline_hydrax import default_scheduler

    with staged_folder(folder) as staging:
        HydraXPipeline(model=model, processor=processor, scheduler=default_scheduler()).save_pretrained(staging)
        if details is not None:
            card = build_model_card(
                str(folder.resolve()), model.config, "trained", training_details=details, **(lineage or {})
            )
            card.save(staging / "README.md")


def training_details(args, trainer, sources, learning_rates: dict[str, float]) -> str:
    """The run, as the model cards' "Training details": base, stage, data, steps, batch, learning rates, LoRA and the
    last logged losses."""
    data = ", ".join(f"`{source}` (weight {weight:g})" for source, weight in sources) if args.data else "the demo set"
    history = trainer.state.log_history
    last = next((entry for entry in reversed(history) if "loss" in entry), {})
    losses = ", ".join(f"{name} {last[name]:.4f}" for name in ("loss", "lm_loss", "flow_loss") if name in last)
    if not losses and history and "train_loss" in history[-1]:
        losses = f"train_loss {history[-1]['train_loss']:.4f} (the run's mean)"
    budget = trainer.time_budget
    stopped = f" (the {args.max_minutes:g}-minute time budget ran out)" if budget and budget.ran_out else ""
    rows = {
        "base checkpoint": f"`{args.model.resolve()}`" if args.model else "a tiny random Hydra-X built by the run",
        "stage": args.stage,
        "data": data,
        "steps": f"{trainer.state.global_step}{stopped}",
        "batch": f"{args.batch_size} per process × {args.gradient_accumulation_steps} accumulated × "
        f"{trainer.args.world_size} process(es)",
        "learning rates": ", ".join(f"{group} {rate:g}" for group, rate in learning_rates.items()),
        "LoRA": f"rank {args.lora_r}, alpha {args.lora_alpha}" if args.lora_r else "none (the stage's groups in full)",
        "vision ids": '"Picture 1: ", "Video 1: " before each image and video of a user turn (prompt with '
        "`apply_chat_template(..., add_vision_id=True)`; `HydraXEditPipeline` writes an edit's source unlabelled)"
        if args.add_vision_id
        else "none",
        "last logged losses": losses or "none logged",
        "seed": args.seed,
    }
    table = "\n".join(f"| {name} | {value} |" for name, value in rows.items())
    return f"Fine-tuned with `examples/train_hydrax.py`:\n\n| setting | value |\n| --- | --- |\n{table}"


if __name__ == "__main__":
    main()
