"""Evaluate a Hydra-X checkpoint's text-to-image, text-to-video or image-to-video generation or instruction editing:
generate from a data set's prompts (animate or edit its source images) with HydraXPipeline / HydraXEditPipeline, save
every output as a PNG (videos: MP4) and score them.

    python evaluation/evaluate_generation.py --model CKPT --data prompts.txt --output-dir outputs/eval-t2i \\
        --clip-model openai/clip-vit-large-patch14 --feature-model facebook/dinov2-base --reference coco-val2017/
    python evaluation/evaluate_generation.py --task edit --model CKPT --data osunlp/MagicBrush --split dev \\
        --output-dir outputs/eval-edit --clip-model openai/clip-vit-base-patch32 --feature-model facebook/dino-vits16
    python evaluation/evaluate_generation.py --task text-to-video --num-frames 17 --model CKPT --data prompts.txt \\
        --output-dir outputs/eval-t2v --clip-model openai/clip-vit-base-patch32 --feature-model facebook/dino-vitb16
    python evaluation/evaluate_generation.py --task image-to-video --num-frames 17 --model CKPT --data i2v.jsonl \\
        --output-dir outputs/eval-i2v --clip-model openai/clip-vit-base-patch32 --feature-model facebook/dino-vitb16
    accelerate launch --num_processes 8 evaluation/evaluate_generation.py --model CKPT --data prompts.txt \\
        --output-dir outputs/eval-t2i --dtype bfloat16   # one GPU each, every 8th row; the main process writes metrics
    python evaluation/evaluate_generation.py --model BASE --lora outputs/sft/adapter --data prompts.txt \\
        --output-dir outputs/eval-lora   # a LoRA adapter on its base, unmerged (--lora-scale weighs it)

Data (--data; --limit N keeps the first N rows):
  text-to-image  a .txt file (one prompt per line), a JSONL manifest of {"prompt": ..., "image": optional reference
                 image}, a `datasets` save_to_disk folder or a Hub dataset (--split) with a `prompt`, `caption` or
                 `text` column and optionally an `image` column
  text-to-video  the same (reference images, if any, are compared with every generated frame)
  image-to-video a JSONL manifest of {"image": first frame, "prompt": ...} or a dataset with those columns (also
                 `input_image`); the first frames are center-cropped and resized to --height × --width, and are the
                 FD references unless --reference gives others
  edit           a JSONL manifest of {"image": source, "prompt": instruction, "target": optional ground-truth edit,
                 "target_caption": optional caption of the target}, or a dataset with those columns; also accepted:
                 `instruction` / `edit_prompt` (instruction), `source_img` / `input_image` (source), `target_img` /
                 `edited_image` (target) and `edited_prompt` (caption): MagicBrush's and InstructPix2Pix's names
Paths are relative to the manifest's folder (a save_to_disk folder's for datasets); image columns may hold PIL images
or paths. Sources and targets are center-cropped and resized to --height × --width, as examples/edit_image.py does.

Metrics (each only when its inputs exist; metrics.json lists the others under "skipped" with what enables them):
  text-to-image  clip_score      100·max(cos, 0) of each image's and its prompt's --clip-model embeddings
                 fd_<name>       Fréchet distance between the --feature-model features of the generated images and of
                                 the reference images (the data's `image` column, or --reference), which go to the
                                 feature model at their own size: its image processor resizes both sets alike
  edit           l1, clip_i, dino                  MagicBrush's metrics against the row's `target`: mean absolute
                                                   pixel difference in [0, 1] units, cosine of --clip-model and of
                                                   --feature-model image embeddings (DINO with a DINO model)
                 source_l1, source_clip_i, source_dino   the same against the source, for rows without a target: how
                                                   much of the source the edit keeps
                 clip_t / clip_t_instruction       CLIP image–text cosine (MagicBrush's CLIP-T, the scale of
                                                   clip_i) against the row's `target_caption`, or against the
                                                   instruction when the row has none
  text-to-video  clip_sim        the CLIP score (100 · max(cos, 0)) of every frame with the prompt, averaged over
                                 the frames (CLIPSIM; papers often print the cosine, 1/100 of it)
                 background_consistency, subject_consistency   VBench's temporal consistency: over frames 2…F, the
                                 mean of each frame's cosine with the first frame and with the previous one, on
                                 --clip-model embeddings (background) and --feature-model features (subject; VBench
                                 uses DINO ViT-B/16)
                 fd_<name>       as for text-to-image, over every generated frame
  image-to-video the text-to-video metrics, and VBench-I2V's adherence to the input image: 0.4 · the highest cosine of
                 a frame with the input image + 0.3 · the mean and 0.3 · the lowest cosine of consecutive frames
                 (each clamped at 0), on --feature-model features (i2v_subject; VBench-I2V uses DINO ViT-B/16) and on
                 --clip-model embeddings (i2v_background; VBench-I2V uses DreamSim there, which transformers lacks)
Every metric is computed on the pixels of the saved PNGs (the pipeline's output rounded to 8 bits), so the files
reproduce it; videos are scored on their 8-bit frames before the (lossy) MP4 encoding. FD is biased upward on small
sets and its bias shrinks with the number of images: compare FD values only at equal image counts and against the same
references (the literature uses 10k–50k images).

Seeds: output j of row i starts from the noise of `torch.Generator().manual_seed(--seed + i·K + j)`,
K = --num-images-per-prompt, so the outputs do not depend on --batch-size. Runs whose --seed differ by less than
rows·K share noise (--seed 1 is --seed 0 shifted by one output): pick seeds that far apart for independent runs.

Output (--output-dir, written to a staging folder and renamed into place, so a failure never leaves a half-written one;
an existing folder is replaced only with --force): images/ROW_SAMPLE.png (videos/ROW_SAMPLE.mp4), metrics.json (every
metric's mean and count, the skipped ones, the settings and the seconds taken) and samples.jsonl (one line per image:
row, sample, seed, where the row came from, prompt, file and its metric values) and eval_results.json (for a model
card: conversion/model_card_hydrax.py --eval-results).
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm.auto import tqdm


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "conversion"), str(ROOT / "evaluation")]

from accelerate import PartialState  # noqa: E402
from accelerate.utils import broadcast_object_list, gather_object  # noqa: E402
from checkpoint_importer import staged_folder  # noqa: E402
from metrics_hydrax import (  # noqa: E402
    HydraXClipScore,
    HydraXFeatureStatistics,
    HydraXImageFeatures,
    cosine_similarity,
    eval_results,
    frechet_distance,
)

from modeling_hydrax import HydraXEditPipeline, HydraXPipeline  # noqa: E402
from modeling_hydrax.data_hydrax_tok import IMAGE_SUFFIXES, is_saved_dataset  # noqa: E402
from processing_hydrax.image_processing_hydrax import rgb_image  # noqa: E402
from script_args import (  # noqa: E402
    PATCH_SIZE,
    HelpFormatter,
    check_adapter,
    check_file,
    check_folder,
    check_hydrax_folder,
    check_new_output_folder,
    finite_float,
    looks_like_path,
    write_video,
)


TASKS = ("text-to-image", "text-to-video", "image-to-video", "edit")
VIDEO_TASKS = ("text-to-video", "image-to-video")
SOURCE_TASKS = ("image-to-video", "edit")  # each row has an image the pipeline starts from
# task → field → (accepted column names, first found wins; required). "reference" reads --reference's images.
COLUMNS = {
    "text-to-image": {"prompt": (("prompt", "caption", "text"), True), "image": (("image",), False)},
    "text-to-video": {"prompt": (("prompt", "caption", "text"), True), "image": (("image",), False)},
    "image-to-video": {"prompt": (("prompt", "caption", "text"), True), "image": (("image", "input_image"), True)},
    "edit": {
        "prompt": (("instruction", "prompt", "edit_prompt"), True),
        "image": (("image", "source_img", "input_image", "original_image"), True),
        "target": (("target", "target_img", "edited_image"), False),
        "target_caption": (("target_caption", "edited_prompt"), False),
    },
    "reference": {"image": (("image",), True)},
}
IMAGE_FIELDS = ("image", "target")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLIP_HINT = "no --clip-model: pass a CLIP or SigLIP checkpoint, e.g. --clip-model openai/clip-vit-large-patch14"
FEATURE_HINT = "no --feature-model: pass a vision model, e.g. --feature-model facebook/dinov2-base"
NO_TARGETS = "no row has a target image: add ground-truth edits to the data (`target`, `target_img` or `edited_image`)"
NO_CAPTIONS = "no row has a `target_caption` (or `edited_prompt`): add them; clip_t_instruction scores the instruction"
NO_REFERENCES = (
    "no reference images: give the data an `image` column or pass --reference (a folder, manifest or dataset)"
)
FD_NOTE = "biased upward on small sets: compare only at equal image counts and the same references"


class EvaluationDataError(ValueError):
    """A data set the evaluation cannot use (missing column, missing or unreadable image), named by row."""


# ---------------------------------------------------------------------------------------------------------- data
class EvaluationRows(Sequence):
    """The rows of an evaluation data set, read lazily (a dataset's images are decoded only when a row is read).

    `rows[i]` is a dict with `row` (= i), `origin` (`file:line` or `source row i`, for messages) and the task's fields
    (`prompt`, `image`, `target`, `target_caption`; absent optional ones are None; images as resolved paths or PIL
    images).

    Args:
        table: the rows as dicts keyed by field (a list, or a `datasets.Dataset` with columns renamed to fields).
        fields: the task's fields.
        origins: where each row came from.
        root: the folder that relative image paths start from.
        present: the fields that some row has.
        truncated: whether the source holds more rows than these (`--limit` cut it).
    """

    def __init__(
        self, table, fields: Sequence[str], origins: list[str], root: Path, present: set[str], truncated: bool = False
    ):
        self.table, self.fields, self.origins, self.root, self.present = table, fields, origins, root, present
        self.truncated = truncated

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        try:
            record = self.table[index]  # a dataset decodes its images here
        except (OSError, ValueError) as error:
            raise EvaluationDataError(
                f"{self.origins[index]}: an image does not decode ({type(error).__name__}: {error}); replace it or "
                "drop the row"
            ) from error
        row = {"row": index, "origin": self.origins[index]}
        for field in self.fields:
            value = record.get(field)
            row[field] = str(self.root / value) if field in IMAGE_FIELDS and isinstance(value, str) else value
        return row


def column_list(names: Sequence[str]) -> str:
    return " / ".join(f"`{name}`" for name in names)


def check_image_path(value: str, root: Path, origin: str, field: str) -> None:
    """Stop unless `root / value` is an image file whose header PIL reads."""
    path = root / value
    if not path.is_file():
        raise EvaluationDataError(
            f"{origin}: {field} file {path} does not exist (paths are relative to {root}); fix the path or drop "
            "the row"
        )
    try:
        with Image.open(path):
            pass
    except (OSError, ValueError) as error:
        raise EvaluationDataError(
            f"{origin}: {field} {path} is not a readable image ({type(error).__name__}: {error}); replace the file or "
            "drop the row"
        ) from error


def check_text(value, origin: str, field: str, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        raise EvaluationDataError(f"{origin}: {field} must be non-empty text, got {value!r}; fix or drop the row")


def read_prompt_file(path: Path, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """A .txt file's non-empty lines as prompts (the first `limit`)."""
    table, origins = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if len(table) == limit:
            break
        if line.strip():
            table.append({"prompt": line.strip()})
            origins.append(f"{path}:{number}")
    return table, origins


def read_manifest(path: Path, task: str, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """A JSONL manifest's lines (the first `limit`) in the task's fields, each checked: its text, and that its image
    files exist and open (paths relative to the manifest's folder)."""
    table, origins = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if len(table) == limit:
            break
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvaluationDataError(f"{origin}: not JSON ({error}); write one JSON object per line") from error
        if not isinstance(entry, dict):
            raise EvaluationDataError(f"{origin}: a JSON {type(entry).__name__}; write one JSON object per line")
        record = {}
        for field, (names, required) in COLUMNS[task].items():
            name = next((name for name in names if entry.get(name) is not None), None)
            if name is None and required:
                raise EvaluationDataError(
                    f"{origin}: no {field} (the line has {sorted(entry)}); the {task} task reads it from "
                    f"{column_list(names)}"
                )
            value = None if name is None else entry[name]
            if field in IMAGE_FIELDS and value is not None:
                if not isinstance(value, str):
                    raise EvaluationDataError(f"{origin}: {name} must be a path, got {value!r}")
                check_image_path(value, path.parent, origin, field)
            elif field not in IMAGE_FIELDS:
                check_text(value, origin, field, required)
            record[field] = value
        table.append(record)
        origins.append(origin)
    return table, origins


def load_dataset_source(source: str, split: str, subset: str | None = None):
    """A save_to_disk folder or a Hub dataset (of which `subset` is the configuration) as a `datasets.Dataset` (`split`
    of a DatasetDict) and the folder its relative paths start from."""
    import datasets

    path = Path(source)
    if path.is_dir():
        dataset, root = datasets.load_from_disk(str(path)), path
    else:
        dataset, root = datasets.load_dataset(source, subset, split=split), Path.cwd()
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise EvaluationDataError(f"{source}: no split {split!r}; pass --split with one of {sorted(dataset)}")
        dataset = dataset[split]
    return dataset, root


def dataset_table(dataset, source: str, task: str, root: Path):
    """A dataset's columns renamed to the task's fields, its text and path columns checked up front."""
    import datasets

    chosen = {}
    for field, (names, required) in COLUMNS[task].items():
        name = next((name for name in names if name in dataset.column_names), None)
        if name is None and required:
            raise EvaluationDataError(
                f"{source}: no {field} column among {dataset.column_names}; the {task} task reads it from "
                f"{column_list(names)}: rename a column (Dataset.rename_column) or pass another data set"
            )
        if name is not None:
            chosen[name] = field
    dataset = dataset.select_columns(list(chosen))
    dataset = dataset.rename_columns({name: field for name, field in chosen.items() if name != field})
    origins = [f"{source} row {index}" for index in range(len(dataset))]
    for field in chosen.values():
        required = COLUMNS[task][field][1]
        if field in IMAGE_FIELDS and isinstance(dataset.features[field], datasets.Image):
            # PIL images, decoded (and checked) when their row is read; a missing one is found here, undecoded
            undecoded = dataset.cast_column(field, datasets.Image(decode=False))
            values = (value for batch in undecoded.iter(batch_size=1000) for value in batch[field])
        else:
            values = dataset[field]
        for value, origin in zip(values, origins):
            if field not in IMAGE_FIELDS:
                check_text(value, origin, field, required)
            elif value is None and required:
                raise EvaluationDataError(
                    f"{origin}: no {field} (an empty cell); the {task} task needs one in every row: drop the row"
                )
            elif isinstance(value, str):
                check_image_path(value, root, origin, field)
            elif value is not None and not isinstance(value, dict):  # a dict: an undecoded `datasets` image
                raise EvaluationDataError(
                    f"{origin}: column {field} holds {type(value).__name__}; expected images or image paths"
                )
    return dataset, origins


def read_rows(
    source: str, task: str, split: str = "train", limit: int | None = None, subset: str | None = None
) -> EvaluationRows:
    """The first `limit` (default all) rows of `source` for `task` (one of `TASKS`, or "reference" for
    --reference's images): a .txt file of prompts, a JSONL manifest, a save_to_disk folder, a Hub dataset, or
    (reference only) a folder of images searched recursively. Missing columns, empty prompts and missing or unreadable
    image files stop it here, naming the row."""
    path = Path(source)
    fields = list(COLUMNS[task])
    root, suffix = path.parent, path.suffix.lower()
    if suffix in (".txt", ".jsonl"):
        available = sum(1 for line in path.read_text().splitlines() if line.strip())
    if suffix == ".txt":
        if task == "reference":
            raise EvaluationDataError(
                f"{source}: a .txt file holds prompts only, and --reference needs images: pass a folder of images, "
                "a JSONL manifest, a save_to_disk folder or a Hub dataset"
            )
        if task in SOURCE_TASKS:
            raise EvaluationDataError(f"{source}: a .txt file holds prompts only, which the {task} task cannot use")
        table, origins = read_prompt_file(path, limit)
    elif suffix == ".jsonl":
        table, origins = read_manifest(path, task, limit)
    elif task == "reference" and path.is_dir() and not is_saved_dataset(path):
        files = sorted(file for file in path.rglob("*") if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES)
        root, available = path, len(files)
        table = [{"image": str(file.relative_to(path))} for file in files[:limit]]
        origins = [str(file) for file in files[:limit]]
    else:
        dataset, root = load_dataset_source(source, split, subset)
        available = len(dataset)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        table, origins = dataset_table(dataset, source, task, root)
    if not len(table):
        raise EvaluationDataError(f"{source}: no rows; pass a data set with at least one")
    if isinstance(table, list):
        present = {field for field in fields if any(record.get(field) is not None for record in table)}
    else:
        present = set(table.column_names)
    return EvaluationRows(table, fields, origins, root, present, truncated=len(table) < available)


def load_image(value, origin: str, field: str, size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB image from a path or a PIL image, upright by its EXIF orientation and read as the processor reads images
    (`rgb_image`); with `size` (width, height), center-cropped and resized to it."""
    try:
        if isinstance(value, Image.Image):
            image = rgb_image(ImageOps.exif_transpose(value))
        else:
            with Image.open(value) as opened:
                image = rgb_image(ImageOps.exif_transpose(opened))
    except (OSError, ValueError) as error:
        raise EvaluationDataError(
            f"{origin}: unreadable {field} {value} ({type(error).__name__}: {error}); replace the file or drop the row"
        ) from error
    return image if size is None else ImageOps.fit(image, size, Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------------- pixels
def pil_to_uint8(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images of one size → uint8 `[B, 3, H, W]`."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2)


def uint8_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, 3, H, W]` → float pixels in [-1, 1] (the metrics' range)."""
    return images.float() / 127.5 - 1


def quantize(images: torch.Tensor) -> torch.Tensor:
    """The pipelines' `output_type="pt"` images (`[B, 3, H, W]` in [0, 1]) → uint8, as the PNGs store them (diffusers'
    PIL conversion rounds the same way)."""
    return (images.float() * 255).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------ generation
@dataclass(frozen=True)
class GenerationSettings:
    """What every output is generated with."""

    height: int = 512
    width: int = 512
    num_inference_steps: int = 30
    guidance_scale: float = 4.0
    image_guidance_scale: float = 1.5
    num_images_per_prompt: int = 1
    seed: int = 0
    num_frames: int = 1


def sample_seeds(rows: Sequence[dict], settings: GenerationSettings) -> list[int]:
    """The seed of each output of `rows`, row-major: `seed + row · K + sample`, so it depends on the row's position
    in the data, never on the batch it falls in."""
    count = settings.num_images_per_prompt
    return [settings.seed + row["row"] * count + sample for row in rows for sample in range(count)]


def load_pipeline(
    model: str,
    task: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    lora: str | None = None,
    lora_scale: float = 1.0,
):
    """`HydraXPipeline` (text-to-image) or `HydraXEditPipeline` (edit) from a checkpoint folder or Hub id, on
    `device`, its own progress bar off (the script counts images); with `lora`, that adapter loaded onto it at
    `lora_scale`."""
    pipeline_class = HydraXEditPipeline if task == "edit" else HydraXPipeline
    pipe = pipeline_class.from_pretrained(model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora, adapter_name="lora")
        pipe.set_adapters("lora", lora_scale)
    return pipe


def generate_batch(
    pipe, task: str, rows: Sequence[dict], settings: GenerationSettings, sources: list[Image.Image] | None = None
) -> torch.Tensor:
    """Generate (or, for "edit", edit `sources`; for "image-to-video", animate them; one per row, already at the output
    size) the outputs of `rows` in one pipeline call: `[len(rows) · K, 3, H, W]` float pixels in [0, 1] (videos:
    `[len(rows) · K, F, 3, H, W]`), row-major, each from its own generator (`sample_seeds`)."""
    generators = [torch.Generator().manual_seed(seed) for seed in sample_seeds(rows, settings)]
    options = dict(
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        num_images_per_prompt=settings.num_images_per_prompt,
        generator=generators,
        output_type="pt",
    )
    prompts = [row["prompt"] for row in rows]
    if task == "edit":
        output = pipe(sources, prompts, image_guidance_scale=settings.image_guidance_scale, **options).images
    elif task in VIDEO_TASKS:
        output = pipe(prompts, image=sources, num_frames=settings.num_frames, **options).frames
    else:
        output = pipe(prompts, **options).images
    return output.float().cpu()


# --------------------------------------------------------------------------------------------------- metrics
def l1_distance(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute pixel difference of two `[B, 3, H, W]` batches in [-1, 1], in [0, 1] units
    (MagicBrush's L1)."""
    return (images.float() - references.float()).abs().flatten(1).mean(1) / 2


def score_text_to_image(
    pixels: torch.Tensor, prompts: list[str], clip: HydraXClipScore | None = None
) -> list[dict[str, float]]:
    """Per-image metrics of generated `[B, 3, H, W]` pixels in [-1, 1]: `clip_score` with its prompt (with `clip`)."""
    if clip is None:
        return [{} for _ in prompts]
    return [{"clip_score": value} for value in clip.score(pixels, prompts).tolist()]


def consistency(features: torch.Tensor) -> float:
    """VBench's subject / background consistency of one video's frame features `[F, D]`: the mean over frames 2…F of
    the average cosine with the first frame and with the previous one, each clamped at 0 as VBench does."""
    features = F.normalize(features.float(), dim=-1)
    later = features[1:]
    to_first, to_previous = (later @ features[0]).clamp_min(0), (later * features[:-1]).sum(-1).clamp_min(0)
    return float(((to_first + to_previous) / 2).mean())


def image_adherence(frames: torch.Tensor, image: torch.Tensor) -> float:
    """VBench-I2V's i2v_subject / i2v_background score of one video's frame features `[F, D]` given its input image's
    `[D]`: 0.4 · the highest cosine of a frame with the image + 0.3 · the mean and 0.3 · the lowest cosine of
    consecutive frames, each cosine clamped at 0."""
    frames = F.normalize(frames.float(), dim=-1)
    to_image = (frames @ F.normalize(image.float(), dim=-1)).clamp_min(0)
    consecutive = (frames[1:] * frames[:-1]).sum(-1).clamp_min(0)
    return float(0.4 * to_image.max() + 0.3 * consecutive.mean() + 0.3 * consecutive.min())


def score_videos(
    videos: torch.Tensor,
    prompts: list[str],
    clip: HydraXClipScore | None = None,
    features: HydraXImageFeatures | None = None,
    images: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Per-video metrics of generated `[B, F, 3, H, W]` frames in [-1, 1]: with `clip`, `clip_sim` (the CLIP score of
    every frame with the prompt, averaged over frames: CLIPSIM) and `background_consistency` (VBench's, on CLIP
    image embeddings); with `features`, `subject_consistency` (VBench's, on DINO features). With the image-to-video
    input `images` (`[B, 3, H, W]`), also `i2v_background` (with `clip`) and `i2v_subject` (with `features`)."""
    scores = []
    for index, (frames, prompt) in enumerate(zip(videos, prompts)):
        values, image = {}, None if images is None else images[index : index + 1]
        if clip is not None:
            embeddings = clip.image_features(frames)
            cosine = (embeddings * clip.text_features([prompt])).sum(-1)
            values["clip_sim"] = float(100 * cosine.clamp_min(0).mean())
            values["background_consistency"] = consistency(embeddings)
            if image is not None:
                values["i2v_background"] = image_adherence(embeddings, clip.image_features(image)[0])
        if features is not None:
            frame_features = features(frames)
            values["subject_consistency"] = consistency(frame_features)
            if image is not None:
                values["i2v_subject"] = image_adherence(frame_features, features(image)[0])
        scores.append(values)
    return scores


def score_edits(
    pixels: torch.Tensor,
    instructions: list[str],
    sources: torch.Tensor,
    targets: list[torch.Tensor | None],
    target_captions: list[str | None],
    clip: HydraXClipScore | None = None,
    features: HydraXImageFeatures | None = None,
) -> list[dict[str, float]]:
    """Per-output edit metrics of `[B, 3, H, W]` pixels in [-1, 1], given each output's source (`[B, 3, H, W]`),
    target (`[3, H, W]` or None) and target caption (or None), all at the output size: against a target `l1`,
    `clip_i` (with `clip`) and `dino` (with `features`); without one, the same against the source (`source_l1`,
    `source_clip_i`, `source_dino`); and with `clip`, `clip_t` (against the target caption) or `clip_t_instruction`
    (against the instruction, when there is no caption)."""
    scores = [{} for _ in range(len(pixels))]
    clip_outputs = clip.image_features(pixels) if clip is not None else None
    feature_outputs = features(pixels) if features is not None else None
    with_target = [index for index, target in enumerate(targets) if target is not None]
    without_target = [index for index, target in enumerate(targets) if target is None]
    comparisons = (
        ("", with_target, [targets[index] for index in with_target]),
        ("source_", without_target, [sources[index] for index in without_target]),
    )
    for prefix, indices, references in comparisons:
        if not indices:
            continue
        references = torch.stack(references)
        values = {f"{prefix}l1": l1_distance(pixels[indices], references)}
        if clip is not None:
            values[f"{prefix}clip_i"] = cosine_similarity(clip_outputs[indices], clip.image_features(references))
        if features is not None:
            values[f"{prefix}dino"] = cosine_similarity(feature_outputs[indices], features(references))
        for name, column in values.items():
            for index, value in zip(indices, column.tolist()):
                scores[index][name] = value
    if clip is not None:
        texts = [
            instruction if caption is None else caption for instruction, caption in zip(instructions, target_captions)
        ]
        for index, value in enumerate(clip.cosine(pixels, texts).tolist()):  # MagicBrush's scale, as clip_i
            scores[index]["clip_t_instruction" if target_captions[index] is None else "clip_t"] = value
    return scores


def fd_name(feature_model: str | None) -> str:
    """`fd_<basename of the feature model>` (e.g. `fd_dinov2-base`), or `fd` without one."""
    return f"fd_{Path(str(feature_model).rstrip('/')).name}" if feature_model else "fd"


def image_statistics(
    features: HydraXImageFeatures, rows: EvaluationRows, batch_size: int, description: str
) -> HydraXFeatureStatistics:
    """Feature statistics of the `image` of every row that has one, each at its own size (images of one size in a
    batch go through the feature model together)."""
    result = HydraXFeatureStatistics()
    for start in tqdm(range(0, len(rows), batch_size), desc=description, unit="batch"):
        by_size = {}
        for index in range(start, min(start + batch_size, len(rows))):
            row = rows[index]
            if row["image"] is not None:
                image = load_image(row["image"], row["origin"], "image")
                by_size.setdefault(image.size, []).append(image)
        for images in by_size.values():
            result.update(features(uint8_to_pixels(pil_to_uint8(images))))
    return result


def summarise(records: list[dict], names: Sequence[str]) -> dict[str, dict]:
    """Mean and count of every per-sample metric in `names` that some record has."""
    summary = {}
    for name in names:
        values = [record[name] for record in records if name in record]
        if values:
            summary[name] = {"mean": fmean(values), "count": len(values)}
    return summary


def edit_requirements(seen: set[str], clip: bool, features: bool) -> dict[str, list[str | None]]:
    """Each edit metric's missing inputs (None where an input is there); `seen` holds `target` / `no_target` /
    `caption` / `no_caption` for the kinds of rows the data had."""
    clip_missing, feature_missing = None if clip else CLIP_HINT, None if features else FEATURE_HINT
    no_targets = None if "target" in seen else NO_TARGETS
    all_targets = None if "no_target" in seen else "every row has a target: source metrics are for rows without one"
    no_captions = None if "caption" in seen else NO_CAPTIONS
    all_captions = None if "no_caption" in seen else "every row has a `target_caption`: clip_t is reported instead"
    return {
        "l1": [no_targets],
        "clip_i": [clip_missing, no_targets],
        "dino": [feature_missing, no_targets],
        "clip_t": [clip_missing, no_captions],
        "clip_t_instruction": [clip_missing, all_captions],
        "source_l1": [all_targets],
        "source_clip_i": [clip_missing, all_targets],
        "source_dino": [feature_missing, all_targets],
    }


# ------------------------------------------------------------------------------------------------------- run
def evaluate_batch(pipe, task, rows, settings, clip, features, generated, output_folder: Path, fps=8) -> list[dict]:
    """Generate `rows`' outputs, save them in `output_folder` (PNGs; videos as MP4s at `fps`), add their features
    (every frame of a video) to `generated` (when given) and return one record per output: row, sample, seed,
    origin, prompt, file and metric values."""
    count, size = settings.num_images_per_prompt, (settings.width, settings.height)
    sources = None
    if task in SOURCE_TASKS:
        sources = [load_image(row["image"], row["origin"], "source", size) for row in rows]
    images = quantize(generate_batch(pipe, task, rows, settings, sources))  # videos: [N, F, 3, H, W]
    pixels = uint8_to_pixels(images)
    source_pixels = None if sources is None else uint8_to_pixels(pil_to_uint8(sources)).repeat_interleave(count, 0)
    outputs = [(row, sample) for row in rows for sample in range(count)]
    prompts = [row["prompt"] for row, _ in outputs]
    if task == "edit":
        targets = {
            row["row"]: uint8_to_pixels(pil_to_uint8([load_image(row["target"], row["origin"], "target", size)]))[0]
            for row in rows
            if row["target"] is not None
        }
        scores = score_edits(
            pixels,
            prompts,
            source_pixels,
            [targets.get(row["row"]) for row, _ in outputs],
            [row["target_caption"] for row, _ in outputs],
            clip,
            features,
        )
    elif task in VIDEO_TASKS:
        scores = score_videos(pixels, prompts, clip, features, source_pixels)
    else:
        scores = score_text_to_image(pixels, prompts, clip)
    if generated is not None:
        generated.update(features(pixels.flatten(0, 1) if task in VIDEO_TASKS else pixels))
    records = []
    for (row, sample), seed, image, values in zip(outputs, sample_seeds(rows, settings), images, scores):
        record = {"row": row["row"], "sample": sample, "seed": seed, "origin": row["origin"], "prompt": row["prompt"]}
        if task in VIDEO_TASKS:
            name = f"videos/{row['row']:05d}_{sample}.mp4"
            write_video(
                [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in image], output_folder / name, fps
            )
        else:
            name = f"images/{row['row']:05d}_{sample}.png"
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(output_folder / name)
        if row.get("target_caption") is not None:
            record["target_caption"] = row["target_caption"]
        records.append({**record, "file": name, **values})
    return records


def generation_requirements(
    task: str, feature_model: str | None, clip: bool, references: bool, generated, reference_statistics
) -> dict[str, list[str | None]]:
    """Each text-to-image or video metric's missing inputs (None where an input is there); `generated` and
    `reference_statistics` are the FD statistics (of video frames, for videos), None when FD has no feature model or
    no references."""
    counts = (generated.count, reference_statistics.count) if generated is not None else None
    clip_missing, feature_missing = None if clip else CLIP_HINT, None if feature_model else FEATURE_HINT
    if task in VIDEO_TASKS:
        per_output = {
            "clip_sim": [clip_missing],
            "background_consistency": [clip_missing],
            "subject_consistency": [feature_missing],
        }
        if task == "image-to-video":
            per_output.update(i2v_background=[clip_missing], i2v_subject=[feature_missing])
    else:
        per_output = {"clip_score": [clip_missing]}
    return {
        **per_output,
        fd_name(feature_model): [
            None if feature_model else FEATURE_HINT,
            None if references else NO_REFERENCES,
            None
            if counts is None or min(counts) >= 2
            else f"FD needs at least 2 generated and 2 reference images, got {counts[0]} and {counts[1]}: pass more",
        ],
    }


def generate_rows(pipe, args, rows, indices, settings, clip, features, generated, staging, progress) -> tuple:
    """Generate, save and score the rows at `indices` in batches of `--batch-size`; their records and the kinds of
    rows seen (`target` / `no_target`, `caption` / `no_caption`)."""
    records, seen = [], set()
    unit = "video" if args.task in VIDEO_TASKS else "image"
    bar = tqdm(total=len(indices) * settings.num_images_per_prompt, desc="generating", unit=unit, disable=not progress)
    for start in range(0, len(indices), args.batch_size):
        batch = [rows[index] for index in indices[start : start + args.batch_size]]
        for row in batch:
            seen.add("no_target" if row.get("target") is None else "target")
            seen.add("no_caption" if row.get("target_caption") is None else "caption")
        records += evaluate_batch(pipe, args.task, batch, settings, clip, features, generated, staging, args.fps)
        bar.update(len(batch) * settings.num_images_per_prompt)
    bar.close()
    return records, seen


def evaluate(args) -> dict | None:
    """The whole evaluation of parsed arguments (see `parse_args`): read the data, generate and score every output,
    write the output folder; returns what metrics.json holds.

    Under `accelerate launch` / torchrun each process generates every n-th row into the main process's staging folder;
    the main process gathers the records and feature statistics, writes the metrics and returns them (the others
    return None)."""
    started = time.perf_counter()
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())  # gloo between CPU processes
    device = args.device or str(state.device)
    rows = read_rows(args.data, args.task, args.split, args.limit, args.subset)
    references = None
    if args.reference is not None:
        references = read_rows(args.reference, "reference", args.reference_split or args.split)
    elif args.task != "edit" and "image" in rows.present:
        references = rows
    pipe = load_pipeline(args.model, args.task, device, DTYPES[args.dtype], args.lora, args.lora_scale)
    clip = HydraXClipScore.from_pretrained(args.clip_model, device) if args.clip_model else None
    dino = "magicbrush" if args.task == "edit" else "vbench" if args.task in VIDEO_TASKS else None  # DINO v1's reading
    features = (
        HydraXImageFeatures.from_pretrained(args.feature_model, device, dino=dino) if args.feature_model else None
    )
    settings = GenerationSettings(
        height=args.height,
        width=args.width,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        num_images_per_prompt=args.num_images_per_prompt,
        seed=args.seed,
        num_frames=args.num_frames if args.task in VIDEO_TASKS else 1,
    )
    with_fd = args.task != "edit" and features is not None and references is not None
    generated = HydraXFeatureStatistics() if with_fd else None
    with staged_folder(args.output_dir) if state.is_main_process else nullcontext() as staging:
        staging = broadcast_object_list([staging])[0]  # every process writes into the main process's folder
        if state.is_main_process:
            (staging / ("videos" if args.task in VIDEO_TASKS else "images")).mkdir()
        state.wait_for_everyone()
        indices = list(range(state.process_index, len(rows), state.num_processes))
        records, seen = generate_rows(
            pipe, args, rows, indices, settings, clip, features, generated, staging, state.is_main_process
        )
        records = sorted(gather_object(records), key=lambda record: (record["row"], record["sample"]))
        seen = set().union(*gather_object([seen]))
        if generated is not None:
            for share in gather_object([generated])[1:]:
                generated.merge(share)
        if not state.is_main_process:
            return None

        if args.task == "edit":
            requirements = edit_requirements(seen, clip is not None, features is not None)
        else:
            reference_statistics = (
                image_statistics(features, references, args.batch_size, "reference features") if with_fd else None
            )
            requirements = generation_requirements(
                args.task,
                args.feature_model,
                clip is not None,
                references is not None,
                generated,
                reference_statistics,
            )
        summary = summarise(records, list(requirements))
        if with_fd and not any(requirements[fd_name(args.feature_model)]):
            summary[fd_name(args.feature_model)] = {
                "value": frechet_distance(generated, reference_statistics),
                "count": generated.count,
                "reference_count": reference_statistics.count,
                "note": FD_NOTE,
            }
        generation = asdict(settings)
        if args.task != "edit":
            generation.pop("image_guidance_scale")
        if args.task in VIDEO_TASKS:
            generation["fps"] = args.fps
        else:
            generation.pop("num_frames")
        data = Path(args.data)  # files and a saved `Dataset` (not a `DatasetDict`) have no splits
        plain = data.suffix.lower() in (".txt", ".jsonl") or (
            data.is_dir() and not (data / "dataset_dict.json").is_file()
        )
        split = None if plain else args.split
        metrics = {
            "task": args.task,
            "metrics": summary,
            "skipped": {
                name: "; ".join(reason for reason in reasons if reason)
                for name, reasons in requirements.items()
                if name not in summary
            },
            "settings": {
                "model": args.model,
                "lora": args.lora,
                "lora_scale": args.lora_scale if args.lora else None,
                "data": args.data,
                "subset": args.subset,
                "split": split,
                "limit": args.limit,
                "reference": args.reference,
                "clip_model": args.clip_model,
                "feature_model": args.feature_model,
                **generation,
                "batch_size": args.batch_size,
                "device": device,
                "processes": state.num_processes,
                "dtype": args.dtype,
            },
            "rows": len(rows),
            "images": len(records),
            "seconds": round(time.perf_counter() - started, 1),
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (staging / "samples.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
        values = {name: entry.get("value", entry.get("mean")) for name, entry in summary.items()}
        task_type = "image-to-image" if args.task == "edit" else args.task
        models = {key: args.clip_model for key in ("clip", "background")}  # VBench's background metrics use CLIP
        models.update({key: args.feature_model for key in ("dino", "subject")})
        settings = {  # the metric's feature model: scores of other CLIP / DINO models differ in scale
            name: Path(str(model).rstrip("/")).name
            for name in values
            for key, model in models.items()
            if model and key in name
        }
        if args.feature_model and fd_name(args.feature_model) in values:  # named after its model, maybe a CLIP
            settings[fd_name(args.feature_model)] = Path(str(args.feature_model).rstrip("/")).name
        if rows.truncated:  # a part of the benchmark is not the benchmark's score
            settings = {
                name: ", ".join(filter(None, [settings.get(name), f"first {args.limit} rows"])) for name in values
            }
        results = eval_results(task_type, args.data, split, values, args.subset, settings)
        (staging / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return metrics


def print_summary(metrics: dict, output_dir: Path) -> None:
    """The metrics, the skipped ones with what enables them, and where the outputs went."""
    settings = metrics["settings"]
    kind = "videos" if metrics["task"] in VIDEO_TASKS else "images"
    print(
        f"{metrics['task']}: {metrics['images']} {kind} from {metrics['rows']} rows of {settings['data']}, "
        f"{settings['height']}×{settings['width']}, {settings['num_inference_steps']} steps, guidance "
        f"{settings['guidance_scale']}, {metrics['seconds']} s"
    )
    for name, entry in metrics["metrics"].items():
        if "value" in entry:
            counts = f"{entry['count']} generated, {entry['reference_count']} reference images; {entry['note']}"
            print(f"  {name:<22} {entry['value']:.4f}  ({counts})")
        else:
            print(f"  {name:<22} {entry['mean']:.4f}  (n = {entry['count']})")
    for name, reason in metrics["skipped"].items():
        print(f"  {name:<22} skipped: {reason}")
    print(
        f"{kind}: {output_dir / kind}\nmetrics: {output_dir / 'metrics.json'}\nsamples: {output_dir / 'samples.jsonl'}"
    )


def check_model(parser: argparse.ArgumentParser, option: str, value: str | None, hint: str, hydrax=False) -> None:
    """A local model folder must hold config.json (and, `hydrax`, be a Hydra-X one); anything else is a Hub id."""
    if value is None or not looks_like_path(value):
        return
    if hydrax:
        check_hydrax_folder(parser, option, value, hint)
    else:
        check_folder(parser, option, value, hint, required_file="config.json")


def check_data(parser: argparse.ArgumentParser, option: str, value: str | None, images_folder: bool = False) -> None:
    """A data source must be a .txt / .jsonl file, a save_to_disk folder (or, with `images_folder`, a folder of
    images), or a Hub dataset id."""
    if value is None:
        return
    path = Path(value)
    kinds = "a .txt or .jsonl file, a save_to_disk folder" + (", a folder of images" if images_folder else "")
    if path.suffix.lower() in (".txt", ".jsonl"):
        check_file(parser, option, path, f"pass {kinds} or a Hub dataset id")
    elif path.exists():
        if not path.is_dir() or not (images_folder or is_saved_dataset(path)):
            parser.error(f"{option} {value}: neither {kinds} nor a Hub dataset id; pass one of those")
    elif looks_like_path(value):
        parser.error(f"{option} {value}: no such file or folder; pass {kinds} or a Hub dataset id (org/name)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="a Hydra-X checkpoint folder (conversion/build_hydrax.py, train_hydrax.py's OUTPUT_DIR/model) or Hub id",
    )
    parser.add_argument(
        "--lora",
        help="a LoRA adapter of --model (folder or Hub id; train_hydrax.py --lora-r's OUTPUT_DIR/adapter), loaded "
        "onto the pipeline: the adapter is evaluated without merging it",
    )
    parser.add_argument("--lora-scale", type=finite_float, default=1.0, help="weight of the --lora adapter's update")
    parser.add_argument(
        "--data", required=True, help="prompts (.txt), a JSONL manifest, a save_to_disk folder or a Hub dataset id"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where images/, metrics.json, samples.jsonl go")
    parser.add_argument("--force", "--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--task", choices=TASKS, default="text-to-image", help="what to generate and score")
    parser.add_argument("--split", default="train", help="split of a Hub dataset or a saved DatasetDict")
    parser.add_argument(
        "--subset",
        help="the subset (configuration) of a Hub dataset that has several, of --data: "
        "datasets.load_dataset(name, subset, split=--split)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows")
    parser.add_argument(
        "--clip-model", help="a CLIP / SigLIP checkpoint (Hub id or folder) for clip_score, clip_i and clip_t"
    )
    parser.add_argument(
        "--feature-model", help="a vision model (Hub id or folder, e.g. facebook/dinov2-base) for FD and dino"
    )
    parser.add_argument(
        "--reference",
        help="text-to-image FD references instead of the data's `image` column: a folder of images, a JSONL manifest "
        'of {"image": path}, a save_to_disk folder or a Hub dataset id with an `image` column',
    )
    parser.add_argument("--reference-split", help="split of a --reference dataset (default: --split)")
    parser.add_argument("--height", type=int, default=512, help=f"output height in pixels, a multiple of {PATCH_SIZE}")
    parser.add_argument("--width", type=int, default=512, help=f"output width in pixels, a multiple of {PATCH_SIZE}")
    parser.add_argument("--num-inference-steps", type=int, default=30, help="denoising (Euler) steps")
    parser.add_argument(
        "--guidance-scale",
        type=finite_float,
        default=4.0,
        help="classifier-free guidance on the prompt; ≤ 1 turns it off",
    )
    parser.add_argument(
        "--image-guidance-scale",
        type=finite_float,
        default=1.5,
        help="edit only: guidance on the source image; ≤ 1 turns it off",
    )
    parser.add_argument(
        "--num-frames", type=int, default=17, help="videos only: frames per video, 1 + 4k (17 = 1 + 16)"
    )
    parser.add_argument("--fps", type=int, default=8, help="videos only: frame rate of the saved MP4s")
    parser.add_argument("--num-images-per-prompt", type=int, default=1, help="outputs per row (K)")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per pipeline call (and feature batch)")
    parser.add_argument("--seed", type=int, default=0, help="output j of row i is seeded with seed + i·K + j")
    parser.add_argument(
        "--device",
        help="torch device of the pipeline and the metric models (default: this process's GPU when there is one, "
        "else cpu)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the pipeline's dtype")
    args = parser.parse_args(argv)
    for option, value in (("--height", args.height), ("--width", args.width)):
        if value < PATCH_SIZE or value % PATCH_SIZE:
            parser.error(f"{option} must be a positive multiple of {PATCH_SIZE}, got {value}")
    for option, value in (
        ("--num-inference-steps", args.num_inference_steps),
        ("--num-images-per-prompt", args.num_images_per_prompt),
        ("--fps", args.fps),
        ("--batch-size", args.batch_size),
        ("--limit", args.limit),
    ):
        if value is not None and value < 1:
            parser.error(f"{option} must be ≥ 1, got {value}")
    try:
        device = None if args.device is None else torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device}: {error}; pass e.g. cpu, cuda or cuda:1")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine; pass --device cpu")
    if args.task in VIDEO_TASKS and (args.num_frames < 5 or (args.num_frames - 1) % 4):
        parser.error(f"--num-frames must be 1 + 4k with k ≥ 1 for {args.task} (e.g. 17), got {args.num_frames}")
    if args.task in SOURCE_TASKS and Path(args.data).suffix.lower() == ".txt":
        manifest = {
            "edit": '{"image": source, "prompt": instruction, "target": optional}',
            "image-to-video": '{"image": first frame, "prompt": ...}',
        }[args.task]
        parser.error(
            f"--data {args.data}: a .txt file holds prompts only, but --task {args.task} needs a source image per "
            f"row; pass a JSONL manifest of {manifest} or a dataset"
        )
    if args.task == "edit" and args.reference is not None:
        parser.error("--reference sets FD references for text-to-image; edit metrics compare with each row's target")
    hint = "pass a Hydra-X checkpoint folder (conversion/build_hydrax.py writes one) or a Hub id"
    check_model(parser, "--model", args.model, hint, hydrax=True)
    check_adapter(parser, "--lora", args.lora)
    check_model(parser, "--clip-model", args.clip_model, "pass a CLIP or SigLIP checkpoint folder or Hub id")
    check_model(parser, "--feature-model", args.feature_model, "pass a transformers vision model folder or Hub id")
    check_data(parser, "--data", args.data)
    if args.subset is not None and Path(args.data).exists():
        parser.error(f"--subset {args.subset} names a configuration of a Hub dataset; --data {args.data} is local")
    check_data(parser, "--reference", args.reference, images_folder=True)
    inputs = {"--model": args.model, "--lora": args.lora, "--data": args.data, "--reference": args.reference}
    inputs |= {"--clip-model": args.clip_model, "--feature-model": args.feature_model}
    check_new_output_folder(parser, "--output-dir", args.output_dir, args.force, inputs)
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    try:
        metrics = evaluate(args)
    except EvaluationDataError as error:
        raise SystemExit(f"error: {error}") from None
    if metrics is not None:  # the main process; under accelerate launch the others return None
        print_summary(metrics, args.output_dir)
    state = PartialState()
    state.wait_for_everyone()  # no process exits while the group is still up: gloo aborts a process that does
    state.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
