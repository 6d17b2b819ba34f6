"""Evaluate a Hydra-X checkpoint on multiple-choice image and video understanding benchmarks (MMBench, MME, MMMU,
SEED-Bench, MVBench, Video-MME style): score every option's likelihood (cloze scoring, as lm-evaluation-harness does),
or generate an answer to a lettered prompt (VLMEvalKit's format) and parse the letter.

    python evaluation/evaluate_understanding.py --model outputs/run_hydrax/model --data bench.jsonl \\
        --output-dir outputs/eval
    python evaluation/evaluate_understanding.py --model CKPT --data lmms-lab/MMBench --subset en --split dev \\
        --scoring generate --batch-size 8 --device cuda --dtype bfloat16 --output-dir outputs/eval-mmbench
    accelerate launch --num_processes 8 evaluation/evaluate_understanding.py --model CKPT --data lmms-lab/MMBench \\
        --subset en --split dev --dtype bfloat16 --output-dir outputs/eval-mmbench   # one GPU each, every 8th question

Under `accelerate launch` or torchrun each process loads the model on its own device and takes every n-th question;
the main process gathers the records and writes the outputs, the same as one process would (tested with 2 CPU
processes).

Data (`--data`): a JSONL manifest (media paths relative to its folder), a `datasets` `save_to_disk` folder (relative
paths relative to that folder) or a Hub dataset name, loaded with `datasets.load_dataset(name, --subset,
split=--split)` (`--subset` names one of a dataset's configurations, e.g. MMBench's `en`, MMMU's subjects). One row
per question:
- `question`, and an optional `hint` (MMBench), shown before it;
- the options: a list column `options` (also `choices`, `candidates`; MMMU's string of a list is read as one), or
  letter columns `A`, `B`, `C`, ... (MMBench) or `choice_a`, `choice_b`, ... (SEED-Bench); a missing, None, NaN or
  empty letter is no option, and options that carry their own letter (`A. a cat`, Video-MME) lose it;
- `answer`: the option's letter, its 0-based index among the options, or its exact text;
- media: `image` (a PIL image, a path or a `datasets` Image dict, or a list of them), MMMU's `image_1`, `image_2`,
  ... (placed where the question says `<image k>`), `video` (a path, decoded by the processor with PyAV,
  `--num-frames` frames) or none (a text-only question);
- optional `--category-column` (default `category`) for per-category accuracies, and `--group-column` for MME's
  accuracy+ (the share of images whose two questions are both right) and its score, Σ 100·(acc + acc+) over the
  categories;
- rows without options: `--yes-no` makes them Yes / No questions (MME); rows whose options are empty (MMMU's open
  questions) stop the run unless `--skip-open` leaves them out (listed in metrics.json) or `--answer-open` answers
  them (below). An open question's `answer` is its text, or a list of accepted answers (MMMU's string of a list).

Scoring (`--scoring`):
- `likelihood` (default): the prompt is the chat conversation (user turn: media, hint, question; then the generation
  prompt) and each option's text is scored as the assistant's answer, by the sum of its token log-probabilities. The
  prompts of `--batch-size` questions run once, left-padded into one batch with the KV cache; all their options then
  run as one right-padded batch over that cache. `accuracy` takes the best sum, `accuracy_norm` the best sum per
  character of the option (lm-eval's acc_norm).
- `generate`: the prompt lists the lettered options (`Hint: ...`, `Question: ...`, `Options:`, `A. ...`, `Please
  select the correct answer from the options above.`); greedy `generate` in batches of `--batch-size`; an answer that
  is or starts with an option letter (`B`, `B.`, `(B)`, `B) ...`) gives that option, else an answer equal to an
  option's text (case and surrounding punctuation ignored) gives it, else it is `unparsed` (and wrong).

Prompts label no image or video unless `--add-vision-id` labels them as Qwen2.5-VL's template does ("Picture 1: ",
"Video 1: "): for a model trained with `train_hydrax.py --add-vision-id` (its model card's "vision ids" row says so).

Open questions (`--answer-open`, whatever `--scoring`): greedy `generate` on the question followed by `--open-prompt`
(default: lmms-eval's MMMU instruction, "Answer the question using a single word or phrase."), read as MMMU's
evaluation reads it: per sentence, the text after its last answer indicator (`is`, `so`, `thus`, `therefore`, `final`,
`answer`, `result`, `could be`, and `=` in the last sentence), else the whole answer; the numbers in it and the text
itself are the candidates. A candidate number must equal an accepted number (commas dropped, 2 decimals); a
candidate text must contain an accepted text (lower case). `open` in metrics.json holds their accuracy and count, and
`accuracy_all` is MMMU's overall accuracy over both kinds.

Outputs, in `--output-dir` (written beside it and renamed into place, so a failure never leaves a half-written folder;
an existing folder is replaced only with `--force`): `metrics.json` (accuracy, accuracy_norm or unparsed, count, chance
= the mean of 1 / number of options, per-category accuracies and counts, the scoring mode, add_vision_id, model, data,
split and seconds), `predictions.jsonl` (per row: index, answer letter, predicted letter, correct, and the option
scores or the generated text) and `eval_results.json` (for a model card: `conversion/model_card_hydrax.py
--eval-results`).
"""

import argparse
import ast
import json
import math
import re
import string
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "conversion"))
sys.path.insert(0, str(ROOT / "evaluation"))

from accelerate import PartialState  # noqa: E402
from accelerate.utils import gather_object  # noqa: E402
from checkpoint_importer import staged_folder  # noqa: E402
from metrics_hydrax import eval_results  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

import modeling_hydrax  # noqa: E402, F401  (registers Hydra-X with the Auto classes)
import processing_hydrax  # noqa: E402, F401  (and the processor)
from modeling_hydrax.data_hydrax_tok import SAVED_DATASET_FILES, is_saved_dataset  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_adapter,
    check_hydrax_folder,
    check_new_output_folder,
    looks_like_path,
)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LETTERS = string.ascii_uppercase
IMAGE_PLACEHOLDER = re.compile(r"<image (\d+)>")  # MMMU's reference to its `image_k` column inside the text
YES_NO = ("Yes", "No")
LIST_COLUMNS = ("options", "choices", "candidates")
ANSWER_HINT = "give the answer as an option letter, a 0-based option index or an option's exact text"
OPEN_PROMPT = "Answer the question using a single word or phrase."  # lmms-eval's MMMU instruction for open questions
OPEN_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
# The numbers MMMU's evaluation finds in an answer, pattern by pattern (two may find parts of one number, as there):
# with thousands separators, in scientific notation, and plain (`.5` too).
NUMBERS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),
)
TRIVIAL_OPEN_ANSWERS = set(":,.!?;'")


@dataclass(frozen=True)
class RowFormat:
    """How rows are read beyond the fixed columns: the category column, the column that groups questions (MME asks
    two about each image; `accuracy_plus` counts groups answered entirely right), and whether a row without options
    is a yes/no question (MME) or an open question to leave out (MMMU's)."""

    category_column: str = "category"
    group_column: str | None = None
    yes_no: bool = False


class OpenQuestion(ValueError):
    """A row without options: not a multiple-choice question."""


@dataclass
class Sample:
    """One question, normalised: `options` maps letters to texts in order and `answer` is a letter; an open question
    has no options and its accepted answers in `answers` (`answer` is the first)."""

    index: int
    question: str
    options: dict[str, str]
    answer: str
    answers: list[str] = field(default_factory=list)
    hint: str | None = None
    images: list[Image.Image] = field(default_factory=list)
    video: str | None = None
    category: str | None = None
    group: str | None = None


# ------------------------------------------------------------------------------------------------- data


def is_missing(value) -> bool:
    """None, NaN (a pandas gap) or a blank string: the cell holds nothing."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def is_blank_cell(value) -> bool:
    """An option or hint cell that holds nothing: missing, or the text "nan", as MMBench's TSVs store an absent
    option or an empty hint (lmms-eval reads it so too). Only there: "nan" or "none" may be a real answer."""
    return is_missing(value) or (isinstance(value, str) and value.strip().lower() == "nan")


def resolve_path(value, base: Path | None) -> Path:
    """A media path from the data, relative to `base` (the manifest's or dataset's folder) unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def media_file(kind: str, value, base: Path | None, where: str) -> Path | None:
    """The file behind a row's image or video, checked to exist without decoding it; None for an image held in memory
    (a PIL image, or a `datasets` Image dict with its bytes). Errors name the row, the value and the fix."""
    if kind == "image" and isinstance(value, dict):  # a `datasets` Image: in memory, or stored as a path only
        value = value if value.get("bytes") is not None or value.get("path") is None else value["path"]
    in_memory = isinstance(value, Image.Image) or isinstance(value, dict) and value.get("bytes") is not None
    if kind == "image" and in_memory:
        return None
    if not isinstance(value, (str, Path)):
        forms = "the path of a video file" if kind == "video" else "a PIL image, a path or a datasets Image dict"
        raise ValueError(f"{where}: the {kind} is a {type(value).__name__}; give {forms}")
    path = resolve_path(value, base)
    if not path.is_file():
        raise ValueError(
            f"{where}: {kind} {str(value)!r} ({path}) does not exist; paths are relative to the data's folder"
        )
    return path


def load_image(value, base: Path | None, where: str) -> Image.Image:
    """A PIL image from a PIL image, a path, or a `datasets` Image dict (`bytes` and/or `path`), upright by its EXIF
    orientation and in its own mode, as training reads images: the processor converts it (16-bit scaled, transparency
    onto white), which a plain RGB conversion here would get wrong."""
    if isinstance(value, Image.Image):
        return ImageOps.exif_transpose(value)
    path = media_file("image", value, base, where)
    if path is None:
        source, shown = BytesIO(value["bytes"]), f"the image bytes of {value.get('path') or 'the image column'}"
    else:
        source, shown = path, f"image {str(value['path'] if isinstance(value, dict) else value)!r} ({path})"
    try:
        with Image.open(source) as image:
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{where}: {shown} is not a readable image ({error}); pass a PNG, JPEG, ... file") from error


def check_video(value, base: Path | None, where: str) -> str:
    """The path of a video file from the data, checked to open with PyAV and to decode a first video frame."""
    import av

    path = media_file("video", value, base, where)
    shown = f"video {str(value)!r} ({path})"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{where}: {shown} has no video stream; pass a video file")
            next(container.decode(video=0))
    except (av.FFmpegError, OSError, StopIteration) as error:
        raise ValueError(
            f"{where}: {shown} is not a readable video ({error!r}); pass an MP4, WebM, ... file"
        ) from error
    return str(path)


def row_options(row: dict, where: str, yes_no: bool = False) -> dict[str, str]:
    """The options of a row: its `options` list (or the string of one, as MMMU stores it), or its letter columns `A`,
    `B`, ... (missing ones skipped); Yes / No for a row without either when `yes_no` is set. Empty options mark an
    open question (`OpenQuestion`)."""
    options = listed_options(row, where)
    if options:
        return options
    if options is None and yes_no:
        return dict(zip(LETTERS, YES_NO))
    if options is None:
        raise ValueError(
            f"{where} has no options; give an 'options' list column or letter columns 'A', 'B', ... (columns "
            f"found: {sorted(row)}), or pass --yes-no for yes/no questions (MME)"
        )
    raise OpenQuestion(
        f"{where} has empty options (an open question); pass --skip-open to leave such rows out, or --answer-open to "
        "answer them by generation"
    )


def listed_options(row: dict, where: str) -> dict[str, str] | None:
    """The options a row lists, by letter: empty when its options are empty, None when it has no options at all.

    A list column is `options` (MMBench's HF copies, Video-MME, MMMU as the string of a list), `choices` or
    `candidates` (MVBench); letter columns are `A`, `B`, ... (MMBench's TSV) or `choice_a`, `choice_b`, ...
    (SEED-Bench). Options written with their own letter (`"A. a cat"`, Video-MME) lose it."""
    column = next((name for name in LIST_COLUMNS if name in row), None)
    if column is not None and not is_missing(row[column]):
        options = row[column]
        if isinstance(options, str) and options.lstrip().startswith("["):  # MMMU stores "['a', 'b']"
            try:
                options = ast.literal_eval(options)
            except (ValueError, SyntaxError) as error:
                raise ValueError(f"{where}: {column} {options!r} is not a list literal ({error})") from error
        if not isinstance(options, (list, tuple)):
            raise ValueError(
                f"{where}: {column} {options!r} is a {type(options).__name__}; give a list of option texts"
            )
        if len(options) > len(LETTERS):
            raise ValueError(f"{where}: {len(options)} options; at most {len(LETTERS)} (letters A-Z) are supported")
        blank = [index for index, text in enumerate(options) if is_missing(text)]
        if blank:
            raise ValueError(f"{where}: {column} {list(options)!r} has empty entries at {blank}; remove them")
        options = dict(zip(LETTERS, (str(text).strip() for text in options)))
    else:
        columns = {
            letter: name
            for letter in LETTERS
            for name in (letter, f"choice_{letter.lower()}")
            if name in row and not is_blank_cell(row[name])
        }
        if not columns and column is None and not any(letter in row for letter in LETTERS):
            return None
        options = {letter: str(row[name]).strip() for letter, name in columns.items()}
    prefixed = all(re.match(rf"{letter}[.)]\s+\S", text) for letter, text in options.items())
    return {letter: text[2:].strip() for letter, text in options.items()} if options and prefixed else options


def row_answer(value, options: dict[str, str], where: str) -> str:
    """The letter of the answer, given as a letter, a 0-based index (an int) or an option's exact text."""
    listed = ", ".join(f"{letter}: {text!r}" for letter, text in options.items())
    if isinstance(value, bool) or not (isinstance(value, str) or hasattr(value, "__index__")):
        raise ValueError(f"{where}: answer {value!r} is a {type(value).__name__}; {ANSWER_HINT} (options {listed})")
    if not isinstance(value, str):
        index = value.__index__()
        if not 0 <= index < len(options):
            raise ValueError(
                f"{where}: answer index {index} is out of range for {len(options)} options ({listed}); "
                f"give a 0-based index from 0 to {len(options) - 1}"
            )
        return list(options)[index]
    text = value.strip()
    if text in options:
        return text
    matches = [letter for letter, option in options.items() if option == text]
    if not matches:
        raise ValueError(f"{where}: answer {value!r} is not among the options ({listed}); {ANSWER_HINT}")
    return matches[0]


def row_images(row: dict) -> list:
    """The image values of a row, in order: its `image` (one, or a list) then MMMU's `image_1`, `image_2`, ..."""
    values = row.get("image")
    values = [] if is_missing(values) else list(values) if isinstance(values, (list, tuple)) else [values]
    numbered = sorted(
        (int(name.removeprefix("image_")), value)
        for name, value in row.items()
        if re.fullmatch(r"image_\d+", name) and not is_missing(value)
    )
    return values + [value for _, value in numbered]


def open_answers(value, where: str) -> list[str]:
    """The accepted answers of an open question: its answer's text, or the texts of a list (or of MMMU's string of
    one)."""
    given = value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{where}: answer {given!r} is not a list literal ({error})") from error
    answers = [str(item).strip() for item in (value if isinstance(value, (list, tuple)) else [value])]
    if not answers or not all(answers):
        raise ValueError(f"{where}: answer {given!r} holds an empty answer; give each accepted answer some text")
    return answers


def normalize_row(
    row: dict,
    index: int,
    base: Path | None = None,
    row_format: RowFormat = RowFormat(),
    media: bool = True,
    open_question: bool = False,
) -> Sample:
    """A data row as a `Sample`, checked: errors name the row, the bad value and the fix. `base` is the folder that
    relative media paths start from; with `media=False` the images and video are only checked to exist, not decoded,
    and left out of the sample (a quick check of every row). A row without options raises `OpenQuestion` unless
    `row_format.yes_no`; `open_question` reads a row with empty options as an open question."""
    where = f"row {index}"
    for column in ("question", "answer"):
        if column not in row:
            raise ValueError(f"{where} has no {column!r} column (columns found: {sorted(row)}); add one")
        if is_missing(row[column]):
            raise ValueError(f"{where}: {column} is empty ({row[column]!r}); give every row a {column}")
    if open_question:
        options, answers = {}, open_answers(row["answer"], where)
        answer = answers[0]
    else:
        options, answers = row_options(row, where, row_format.yes_no), []
        if len(options) < 2:
            raise ValueError(
                f"{where} has {len(options)} option(s) ({options}); a multiple-choice question needs at least 2"
            )
        answer = row_answer(row["answer"], options, where)
    images, video = row_images(row), None if is_missing(row.get("video")) else row["video"]
    if images and video is not None:
        raise ValueError(f"{where} has both images and a video; give one kind (or neither)")
    for kind, value in [("image", image) for image in images] + [("video", video)] * (video is not None):
        if not media:
            media_file(kind, value, base, where)  # exists and is of a readable kind, without decoding
    question = str(row["question"]).strip()
    for number in map(int, IMAGE_PLACEHOLDER.findall(question) if media else ()):
        if not 1 <= number <= len(images):
            raise ValueError(
                f"{where}: the question refers to <image {number}> but the row has {len(images)} image(s)"
            )
    group = None
    if row_format.group_column is not None:
        if is_missing(row.get(row_format.group_column)):
            raise ValueError(f"{where} has no {row_format.group_column!r} (--group-column); give every row one")
        group = str(row[row_format.group_column])
    category = row.get(row_format.category_column)
    return Sample(
        index=index,
        question=question,
        options=options,
        answer=answer,
        answers=answers,
        hint=None if is_blank_cell(row.get("hint")) else str(row["hint"]).strip(),
        images=[load_image(value, base, where) for value in images] if media else [],
        video=check_video(video, base, where) if media and video is not None else None,
        category=None if is_missing(category) else str(category),
        group=group,
    )


def read_manifest(path: Path) -> list[dict]:
    """The rows of a JSONL manifest, one JSON object a line (blank lines skipped)."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text file ({error}); pass a JSONL manifest") from error
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} line {number} is not valid JSON ({error}); write one JSON object a line"
            ) from error
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number} is a JSON {type(row).__name__}; write one JSON object a line")
        rows.append(row)
    return rows


def load_rows(data: str, split: str | None = None, subset: str | None = None):
    """The rows of `data` (a JSONL manifest, a `save_to_disk` folder or a Hub dataset name, of which `subset` is the
    configuration) as a list or a `Dataset`, the folder that relative media paths start from, and the split used (None
    when the data has no splits)."""
    import datasets

    path = Path(data).expanduser()
    if path.is_file():
        return read_manifest(path), path.parent, None
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{data} has no split {split!r}; pass --split with one of {sorted(loaded)}")
            return loaded[split], path, split
        return loaded, path, None
    return datasets.load_dataset(data, subset, split=split), None, split


def undecoded_rows(rows):
    """Every row of `rows` with its images left undecoded (a `datasets` Image as its `bytes` and `path`), so that each
    row's text and media files can be checked before the model loads, without decoding any image."""
    if isinstance(rows, list):
        yield from rows
        return
    for batch in rows.with_format("arrow").iter(batch_size=256):
        yield from batch.to_pylist()


# ----------------------------------------------------------------------------------------------- prompts


def likelihood_text(sample: Sample) -> str:
    """The user's text for likelihood scoring: the hint (if any), then the question."""
    return f"{sample.hint}\n{sample.question}" if sample.hint else sample.question


def multiple_choice_text(sample: Sample) -> str:
    """The user's text for generation, in VLMEvalKit's multiple-choice format."""
    lines = [f"Hint: {sample.hint}"] if sample.hint else []
    lines += [f"Question: {sample.question}", "Options:"]
    lines += [f"{letter}. {text}" for letter, text in sample.options.items()]
    lines.append("Please select the correct answer from the options above.")
    return "\n".join(lines)


def open_text(sample: Sample, instruction: str = OPEN_PROMPT) -> str:
    """The user's text for an open question: the hint (if any), the question, then `instruction` (if any)."""
    return "\n".join(part for part in (likelihood_text(sample), instruction) if part)


def conversation(sample: Sample, text: str) -> list[dict]:
    """A one-turn user conversation: the sample's video or images, then `text`. Images that `text` refers to as
    `<image k>` (MMMU) stand where the text refers to them; the others come first."""
    referred = {int(number) for number in IMAGE_PLACEHOLDER.findall(text)}
    content = [{"type": "image", "image": image} for k, image in enumerate(sample.images, 1) if k not in referred]
    if sample.video is not None:
        content.append({"type": "video", "video": sample.video})
    parts = IMAGE_PLACEHOLDER.split(text)  # text, number, text, number, ..., text
    for position, part in enumerate(parts):
        if position % 2:
            content.append({"type": "image", "image": sample.images[int(part) - 1]})
        elif part.strip():
            content.append({"type": "text", "text": part})
    return [{"role": "user", "content": content}]


def media_kwargs(processor, max_pixels: int | None = None, num_frames: int | None = None) -> dict:
    """Processor options: a pixel budget for images and video frames (`max_pixels`; the minimum is lowered to it when
    above, so small images are not enlarged past it) and the number of frames sampled from each video."""
    kwargs = {"images_kwargs": {}, "videos_kwargs": {}}
    if max_pixels is not None:
        for name, sub_processor in (
            ("images_kwargs", processor.image_processor),
            ("videos_kwargs", processor.video_processor),
        ):
            min_pixels = min(sub_processor.size["min_pixels"], max_pixels)
            kwargs[name]["size"] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    if num_frames is not None:
        kwargs["videos_kwargs"]["num_frames"] = num_frames
    return kwargs


def prompt_inputs(
    processor, samples: list[Sample], text_of, processor_kwargs: dict | None = None, add_vision_id: bool = False
):
    """The chat-template prompts (with the generation prompt) of `samples`, tokenized with their media, padded; with
    `add_vision_id`, each image and video labelled as Qwen2.5-VL's template does ("Picture 1: ", "Video 1: ")."""
    conversations = [conversation(sample, text_of(sample)) for sample in samples]
    try:
        inputs = processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            add_vision_id=add_vision_id,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, **(processor_kwargs or {})},
        )
    except (ValueError, OSError) as error:
        rows = ", ".join(str(sample.index) for sample in samples)
        raise ValueError(
            f"row(s) {rows}: the processor failed on the prompt ({error}); see --max-pixels and --num-frames"
        ) from error
    inputs.pop("mm_token_type_ids", None)
    return inputs


# ----------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_options(
    model, processor, samples: list[Sample], processor_kwargs: dict | None = None, add_vision_id: bool = False
) -> list[list[float]]:
    """For each sample, the sum of the token log-probabilities of each option's text (in option order) as the
    assistant's answer (`add_vision_id`: see `prompt_inputs`).

    The prompts (with their images or videos) run once, left-padded into one batch, keeping the KV cache and the
    logits of their last position (which score each option's first token); the cache rows are then picked once per
    option of their question and all options of all questions run as one batch over them, right-padded and masked,
    and only the logits that score a token become log-probabilities."""
    kwargs = {**(processor_kwargs or {}), "padding_side": "left"}
    inputs = prompt_inputs(processor, samples, likelihood_text, kwargs, add_vision_id).to(model.device)
    pairs = [
        (question, processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        for question, sample in enumerate(samples)
        for text in sample.options.values()
    ]
    length = max(len(tokens) for _, tokens in pairs)
    ids = torch.zeros(len(pairs), length, dtype=torch.long, device=model.device)  # right padding: never scored
    mask = torch.zeros_like(ids)
    for row, (_, tokens) in enumerate(pairs):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    questions = torch.tensor([question for question, _ in pairs], device=model.device)

    prompt = model(**inputs, cache=DynamicCache(config=model.config.text_config), use_cache=True, logits_to_keep=1)
    scores = prompt.logits[:, -1].float().log_softmax(dim=-1)[questions, ids[:, 0]]
    if length > 1:
        cache = prompt.cache
        cache.batch_select_indices(questions)
        attention_mask = torch.cat([inputs["attention_mask"][questions], mask], dim=1)
        positions = torch.arange(length - 1, device=model.device)  # each predicts the option's next token
        logits = model(input_ids=ids, attention_mask=attention_mask, cache=cache, logits_to_keep=positions).logits
        log_probs = logits.float().log_softmax(dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        scores = scores + (log_probs * mask[:, 1:]).sum(dim=-1)
    counts = [len(sample.options) for sample in samples]
    return [part.tolist() for part in scores.split(counts)]


def is_correct(sample: Sample, prediction: str | None) -> bool:
    """Whether `prediction` (a letter) answers `sample`: the answer's letter, or an option with the answer's very text
    (options of identical text are one answer: with `B` the answer, a model could never get `A` = `B` = "cat" right by
    likelihood, which takes the first of equal scores, and the answer written as "cat" made it always right)."""
    options = sample.options
    return prediction == sample.answer or prediction in options and options[prediction] == options.get(sample.answer)


def chance(sample: Sample) -> float:
    """A uniform guess's accuracy on `sample`: the share of options that `is_correct` takes (1 / options, more when
    options repeat the answer's text)."""
    return sum(is_correct(sample, letter) for letter in sample.options) / len(sample.options)


def prediction_record(sample: Sample, prediction: str | None) -> dict:
    """What every prediction record holds: the row, its category, the answer, the prediction, whether it is right."""
    record = {
        "index": sample.index,
        "category": sample.category,
        "answer": sample.answer,
        "prediction": prediction,
        "correct": is_correct(sample, prediction),
    }
    return record if sample.group is None else {**record, "group": sample.group}


def likelihood_record(sample: Sample, scores: list[float]) -> dict:
    """The prediction record of a likelihood-scored sample: best sum, and best sum per character (lm-eval's acc_norm,
    `len(choice)`; per UTF-8 byte, its `acc_bytes`, would favour CJK options 3 to 1)."""
    letters = list(sample.options)
    normalized = [score / len(text) for score, text in zip(scores, sample.options.values())]
    prediction = letters[max(range(len(scores)), key=scores.__getitem__)]
    prediction_norm = letters[max(range(len(normalized)), key=normalized.__getitem__)]
    return {
        **prediction_record(sample, prediction),
        "prediction_norm": prediction_norm,
        "correct_norm": is_correct(sample, prediction_norm),
        "scores": dict(zip(letters, scores)),
        "scores_norm": dict(zip(letters, normalized)),
    }


def normalize_text(text: str) -> str:
    """Lower case, without surrounding whitespace and punctuation, for comparing answers with option texts."""
    return text.strip().strip(string.punctuation + string.whitespace).lower()


def parse_prediction(text: str, options: dict[str, str]) -> str | None:
    """The option letter a generated answer picks, or None (unparsed).

    An answer that is an option letter, alone or followed by `.`, `)`, `:` or `,` (`B`, `B.`, `B) a cat`), or in
    parentheses (`(B)`, `(B) a cat`), picks that letter; an answer that is not a letter alone but equals an option's
    text (ignoring case and surrounding whitespace and punctuation) picks that option. A letter followed by a space
    (`A cat`) is read as text, not as a letter."""
    text = text.strip()
    match = re.match(r"\(([A-Z])\)", text) or re.match(r"([A-Z])(?:[.):,]|$)", text)
    if match and match.group(1) in options:
        return match.group(1)
    wanted = normalize_text(text)
    for letter, option in options.items():
        if wanted and normalize_text(option) == wanted:
            return letter
    return None


@torch.no_grad()
def generate_answers(
    model,
    processor,
    samples: list[Sample],
    max_new_tokens: int,
    processor_kwargs: dict | None = None,
    text_of=multiple_choice_text,
    add_vision_id: bool = False,
) -> list[str]:
    """Greedy answers to the prompts `text_of` writes for `samples` (default: the lettered multiple-choice prompt), as
    one left-padded batch (`add_vision_id`: see `prompt_inputs`)."""
    kwargs = {**(processor_kwargs or {}), "padding_side": "left"}
    inputs = prompt_inputs(processor, samples, text_of, kwargs, add_vision_id).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in texts]


def generate_record(sample: Sample, text: str) -> dict:
    """The prediction record of a generated answer (`prediction` None when it names no option)."""
    return {**prediction_record(sample, parse_prediction(text, sample.options)), "generated": text}


def normalize_open(value: str) -> list[float | str]:
    """An open answer's forms for matching (MMMU's `normalize_str`): a number without commas, rounded to 2 decimals,
    when it is one; else its lower-case text, a single character as its two word-edge forms (" c" and "c ", so that
    it matches at a word's start or end, e.g. "C atom" for "C")."""
    text = value.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def open_candidates(text: str) -> list[float | str]:
    """What a generated answer to an open question may mean, as MMMU's evaluation (`parse_open_response`) reads it:
    the answer lower-cased, per line the text after its answer indicators (`OPEN_INDICATORS`, and `=` on the last
    line), the shortest one as MMMU picks it, or the whole answer when no line has one; those texts and the numbers in
    them (`NUMBERS`), normalised (`normalize_open`). MMMU also splits at ". " before a capital letter, but only after
    lower-casing, so only line breaks split; so here."""
    answer = text.strip().strip(".").lower()
    lines = answer.split("\n")
    keys = []
    for position, line in enumerate(lines):
        indicators = OPEN_INDICATORS + (("=",) if position == len(lines) - 1 else ())
        shortest = ""
        for tail in (line.split(indicator)[-1].strip() for indicator in indicators if indicator in line):
            if not shortest or len(tail) < len(shortest):  # an empty tail is replaced by the next one, as in MMMU
                shortest = tail
        if shortest and shortest.strip() not in TRIVIAL_OPEN_ANSWERS:
            keys.append(shortest)
    keys = keys or [answer]
    found = keys + [number for key in keys for pattern in NUMBERS for number in pattern.findall(key)]
    return list(dict.fromkeys(form for candidate in found for form in normalize_open(candidate)))


def open_correct(answers: list[str], candidates: list[float | str]) -> bool:
    """Whether a candidate number equals an accepted number, or a candidate text contains an accepted text."""
    accepted = [form for answer in answers for form in normalize_open(answer)]
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(answer, str) and answer in candidate for answer in accepted):
                return True
        elif candidate in accepted:
            return True
    return False


def open_record(sample: Sample, text: str) -> dict:
    """The prediction record of a generated answer to an open question: its candidates and whether one is right."""
    candidates = open_candidates(text)
    record = {
        "index": sample.index,
        "category": sample.category,
        "answer": sample.answers,
        "prediction": candidates,
        "correct": open_correct(sample.answers, candidates),
        "generated": text,
        "open": True,
    }
    return record if sample.group is None else {**record, "group": sample.group}


def summarize_open(records: list[dict]) -> dict:
    """Accuracy and count of open-question records, overall and per category."""
    categories = defaultdict(list)
    for record in records:
        if record["category"] is not None:
            categories[record["category"]].append(record["correct"])
    return {
        "accuracy": sum(record["correct"] for record in records) / len(records),
        "count": len(records),
        "per_category": {
            name: {"accuracy": sum(items) / len(items), "count": len(items)}
            for name, items in sorted(categories.items())
        },
    }


def summarize(records: list[dict], chances: list[float], scoring: str) -> dict:
    """Accuracy (and accuracy_norm or unparsed), count, chance and per-category accuracies of prediction records."""
    keys = ("correct", "correct_norm") if scoring == "likelihood" else ("correct",)

    def accuracies(items):
        return {key.replace("correct", "accuracy"): sum(item[key] for item in items) / len(items) for key in keys}

    metrics = {**accuracies(records), "count": len(records)}
    if scoring == "generate":
        metrics["unparsed"] = sum(record["prediction"] is None for record in records)
    metrics["chance"] = sum(chances) / len(chances)
    categories = defaultdict(list)
    for record in records:
        if record["category"] is not None:
            categories[record["category"]].append(record)
    metrics["per_category"] = {
        name: {**accuracies(items), "count": len(items)} for name, items in sorted(categories.items())
    }
    if records and "group" in records[0]:
        metrics["accuracy_plus"] = accuracy_plus(records)
        for name, items in categories.items():
            metrics["per_category"][name]["accuracy_plus"] = accuracy_plus(items)
        if categories:
            metrics["mme_score"] = sum(
                100 * (entry["accuracy"] + entry["accuracy_plus"]) for entry in metrics["per_category"].values()
            )
    return metrics


def accuracy_plus(records: list[dict]) -> float:
    """The share of groups (e.g. MME's two questions about one image) whose questions are all answered right."""
    groups = defaultdict(list)
    for record in records:
        groups[record["group"]].append(record["correct"])
    return sum(all(answers) for answers in groups.values()) / len(groups)


def answer_open(
    model, processor, rows, base: Path | None, args, row_format: RowFormat, kept: list[int], progress: bool = True
) -> list[dict]:
    """Answer the open questions at `kept` by greedy generation; returns their prediction records."""
    kwargs = media_kwargs(processor, args.max_pixels, args.num_frames)
    records, text_of = [], partial(open_text, instruction=args.open_prompt)
    bar = tqdm(total=len(kept), desc="answering open questions", unit="question", disable=not progress)
    for start in range(0, len(kept), args.batch_size):
        samples = [
            normalize_row(rows[index], index, base, row_format, open_question=True)
            for index in kept[start : start + args.batch_size]
        ]
        texts = generate_answers(model, processor, samples, args.max_new_tokens, kwargs, text_of, args.add_vision_id)
        records += [open_record(sample, text) for sample, text in zip(samples, texts)]
        bar.update(len(samples))
    bar.close()
    return records


def evaluate(
    model, processor, rows, base: Path | None, args, row_format: RowFormat, kept: list[int], progress: bool = True
) -> tuple[list[dict], list[float]]:
    """Score or answer the rows at `kept`; returns the prediction records and each row's `chance`."""
    kwargs = media_kwargs(processor, args.max_pixels, args.num_frames)
    records, chances = [], []
    description = "scoring options" if args.scoring == "likelihood" else "generating answers"
    bar = tqdm(total=len(kept), desc=description, unit="question", disable=not progress)
    for start in range(0, len(kept), args.batch_size):
        samples = [
            normalize_row(rows[index], index, base, row_format) for index in kept[start : start + args.batch_size]
        ]
        if args.scoring == "likelihood":
            scores = score_options(model, processor, samples, kwargs, args.add_vision_id)
            records += [likelihood_record(sample, values) for sample, values in zip(samples, scores)]
        else:
            texts = generate_answers(
                model, processor, samples, args.max_new_tokens, kwargs, add_vision_id=args.add_vision_id
            )
            records += [generate_record(sample, text) for sample, text in zip(samples, texts)]
        chances += [chance(sample) for sample in samples]
        bar.update(len(samples))
    bar.close()
    return records, chances


def load_model(model: str, dtype: torch.dtype, lora: str | None = None):
    """The checkpoint `model` in `dtype`; with `lora`, that PEFT adapter merged into it (PEFT's `merge_and_unload`:
    the evaluation then runs at the base model's speed, with the merged model's scores)."""
    loaded = AutoModel.from_pretrained(model, dtype=dtype)
    if lora is None:
        return loaded
    from peft import PeftModel

    return PeftModel.from_pretrained(loaded, lora).merge_and_unload()


def write_outputs(output_dir: Path, metrics: dict, records: list[dict]) -> None:
    """metrics.json, predictions.jsonl and eval_results.json (the model card's entries), written beside `output_dir`
    and renamed into place."""
    names = ("accuracy", "accuracy_norm", "accuracy_plus", "mme_score", "accuracy_all")
    values = {name: metrics[name] for name in names if name in metrics}
    if "accuracy" in metrics.get("open", {}):
        values["open_accuracy"] = metrics["open"]["accuracy"]
    part = [f"first {metrics['limit']} rows"] if metrics.get("limit") is not None else []
    part += ["without its open questions"] if metrics.get("skipped_open") else []
    # the modes score differently; a part of the benchmark is not the benchmark's score
    settings = {name: ", ".join([f"{metrics['scoring']} scoring", *part]) for name in values}
    results = eval_results(
        "visual-question-answering", metrics["data"], metrics["split"], values, metrics["subset"], settings
    )
    with staged_folder(output_dir) as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        lines = "".join(json.dumps(record) + "\n" for record in records)
        (staging / "predictions.jsonl").write_text(lines)
        (staging / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="a Hydra-X checkpoint folder (or a Hub model id)")
    parser.add_argument(
        "--lora",
        help="a LoRA adapter of --model (folder or Hub id; train_hydrax.py --lora-r's OUTPUT_DIR/adapter), merged "
        "into it before the evaluation",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="a JSONL manifest, a datasets save_to_disk folder, or a Hub dataset name (see above for the columns)",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where metrics.json and predictions.jsonl go")
    parser.add_argument("--force", action="store_true", help="replace an existing --output-dir")
    parser.add_argument(
        "--split", default="test", help="the split of a Hub dataset or of a saved DatasetDict (a manifest has none)"
    )
    parser.add_argument(
        "--subset",
        help="the subset (configuration) of a Hub dataset that has several, e.g. en for lmms-lab/MMBench: "
        "datasets.load_dataset(name, subset, split=--split)",
    )
    parser.add_argument(
        "--scoring",
        choices=("likelihood", "generate"),
        default="likelihood",
        help="likelihood: score every option's text as the answer; generate: answer a lettered prompt and parse it",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="questions per forward (likelihood) or generate call (generate)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, help="longest generated answer in tokens (--scoring generate)"
    )
    parser.add_argument(
        "--device", help="where the model runs (default: this process's GPU when there is one, else cpu)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the model's weights dtype")
    parser.add_argument(
        "--max-pixels",
        type=int,
        help="largest pixel count of an image or video frame (default: the processor's); the processor's minimum is "
        "lowered to it, so e.g. 4096 keeps a 64×64 image at 64×64",
    )
    parser.add_argument(
        "--num-frames", type=int, help="frames sampled from each video, 1 + 4k (default: the processor's, 17)"
    )
    parser.add_argument(
        "--category-column", default="category", help="the column whose values get per-category accuracies"
    )
    parser.add_argument(
        "--group-column",
        help="a column grouping questions (MME: the image, `question_id`): adds accuracy_plus, the share of groups "
        "answered entirely right, and with categories MME's score, Σ 100·(accuracy + accuracy_plus) over them",
    )
    parser.add_argument("--yes-no", action="store_true", help="rows without options are Yes / No questions (MME)")
    parser.add_argument(
        "--add-vision-id",
        action="store_true",
        help='label each image and video of a prompt as Qwen2.5-VL\'s template does ("Picture 1: ", "Video 1: "), '
        "for a model trained that way (train_hydrax.py --add-vision-id; its model card says so)",
    )
    open_questions = parser.add_mutually_exclusive_group()
    open_questions.add_argument(
        "--skip-open", action="store_true", help="leave out rows whose options are empty (MMMU's open questions)"
    )
    open_questions.add_argument(
        "--answer-open",
        action="store_true",
        help="answer rows whose options are empty (MMMU's open questions) by generation, matched as MMMU does",
    )
    parser.add_argument(
        "--open-prompt",
        default=OPEN_PROMPT,
        help="the instruction after an open question (--answer-open); '' for the bare question",
    )
    args = parser.parse_args(argv)
    for option, value in (
        ("--limit", args.limit),
        ("--batch-size", args.batch_size),
        ("--max-new-tokens", args.max_new_tokens),
        ("--max-pixels", args.max_pixels),
        ("--num-frames", args.num_frames),
    ):
        if value is not None and value < 1:
            parser.error(f"{option} must be ≥ 1, got {value}")
    if args.device is not None and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine; pass --device cpu")
    if looks_like_path(args.model):
        hint = "pass a checkpoint folder written by conversion/build_hydrax.py or examples/run_hydrax.py"
        check_hydrax_folder(parser, "--model", args.model, hint)
    check_adapter(parser, "--lora", args.lora)
    if looks_like_path(args.data):
        data = Path(args.data).expanduser()
        hint = "pass a JSONL manifest, a datasets save_to_disk folder or a Hub dataset name (org/name)"
        if data.is_dir() and not is_saved_dataset(data):
            parser.error(f"--data {args.data}: a folder without {' or '.join(SAVED_DATASET_FILES)}; {hint}")
        if not data.exists():
            parser.error(f"--data {args.data}: no such file or folder; {hint}")
        if args.subset is not None:
            parser.error(f"--subset {args.subset} names a configuration of a Hub dataset; --data {args.data} is local")
    inputs = {"--model": args.model, "--lora": args.lora, "--data": args.data}
    check_new_output_folder(parser, "--output-dir", args.output_dir, args.force, inputs)
    return args


def read_questions(args, row_format: RowFormat) -> tuple:
    """The benchmark's rows (the first `--limit`), the folder media paths start from, the split, the limit that cut
    it (None for the whole benchmark), and the indices of its multiple-choice and open questions: every row is
    checked before the model loads."""
    rows, base, split = load_rows(args.data, args.split, args.subset)
    limit = args.limit if args.limit is not None and args.limit < len(rows) else None  # None: the whole benchmark
    if limit is not None:
        rows = rows[:limit] if isinstance(rows, list) else rows.select(range(limit))
    if not len(rows):
        raise SystemExit(f"--data {args.data} holds no rows; nothing to evaluate")
    kept, open_rows = [], []
    for index, row in enumerate(undecoded_rows(rows)):  # every row is checked before the model loads
        try:
            normalize_row(row, index, base, row_format, media=False)
        except OpenQuestion:
            if not (args.skip_open or args.answer_open):
                raise
            if args.answer_open:
                normalize_row(row, index, base, row_format, media=False, open_question=True)
            open_rows.append(index)
            continue
        kept.append(index)
    if not kept and not args.answer_open:
        raise SystemExit(f"--data {args.data}: every row is an open question; nothing to evaluate")
    return rows, base, split, limit, kept, open_rows


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    row_format = RowFormat(args.category_column, args.group_column, args.yes_no)
    try:
        rows, base, split, limit, kept, open_rows = read_questions(args, row_format)
    except ValueError as error:  # what is wrong with the data, found before the model loads
        raise SystemExit(f"error: {error}") from None

    # Under `accelerate launch` / torchrun each process takes every n-th question; the main process writes the outputs
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())  # gloo between CPU processes
    model = load_model(args.model, DTYPES[args.dtype], args.lora).to(args.device or state.device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    share = slice(state.process_index, None, state.num_processes)
    records, chances = evaluate(model, processor, rows, base, args, row_format, kept[share], state.is_main_process)
    opened = answer_open(model, processor, rows, base, args, row_format, open_rows[share] if args.answer_open else [])
    pairs = sorted(gather_object(list(zip(records, chances))), key=lambda pair: pair[0]["index"])
    opened = gather_object(opened)
    if state.is_main_process:
        records = [record for record, _ in pairs]
        metrics = summarize(records, [chance for _, chance in pairs], args.scoring) if records else {"count": 0}
        if args.answer_open:
            metrics["open"] = summarize_open(opened) if opened else {"count": 0}  # e.g. MMBench: none are open
            metrics["accuracy_all"] = sum(record["correct"] for record in records + opened) / len(records + opened)
        metrics.update(
            scoring=args.scoring,
            add_vision_id=args.add_vision_id,
            model=str(args.model),
            lora=args.lora,
            data=str(args.data),
            subset=args.subset,
            split=split,
            skipped_open=open_rows if args.skip_open else [],
            limit=limit,
            batch_size=args.batch_size,
            dtype=args.dtype,
            processes=state.num_processes,
            seconds=round(time.perf_counter() - started, 1),
        )
        write_outputs(args.output_dir, metrics, sorted(records + opened, key=lambda record: record["index"]))
        print_summary(metrics, args.output_dir)
    state.wait_for_everyone()  # no process exits while the group is still up: gloo aborts a process that does
    state.destroy_process_group()


def print_summary(metrics: dict, output_dir: Path) -> None:
    """The accuracies, what was left out, and where the outputs went."""
    if metrics["count"]:
        details = [f"accuracy {metrics['accuracy']:.3f}"]
        if metrics["scoring"] == "likelihood":
            details.append(f"accuracy_norm {metrics['accuracy_norm']:.3f}")
        else:
            details.append(f"unparsed {metrics['unparsed']}")
        print(f"{', '.join(details)} on {metrics['count']} questions (chance {metrics['chance']:.3f})")
    if metrics.get("open", {}).get("count"):
        opened = metrics["open"]
        print(f"open questions: accuracy {opened['accuracy']:.3f} on {opened['count']}")
        print(f"accuracy_all {metrics['accuracy_all']:.3f} (both kinds: MMMU's overall accuracy)")
    elif "open" in metrics:
        print("open questions: none in the data (--answer-open had nothing to answer)")
    if "accuracy_plus" in metrics:
        score = f", MME score {metrics['mme_score']:.1f}" if "mme_score" in metrics else ""
        print(f"accuracy_plus {metrics['accuracy_plus']:.3f} (groups answered entirely right){score}")
    if metrics["skipped_open"]:
        print(f"{len(metrics['skipped_open'])} open question(s) left out (--skip-open), listed in metrics.json")
    for name, category in metrics.get("per_category", {}).items():
        print(f"  {name}: accuracy {category['accuracy']:.3f} on {category['count']}")
    print(f"metrics: {output_dir / 'metrics.json'}\npredictions: {output_dir / 'predictions.jsonl'}")


if __name__ == "__main__":
    main()
