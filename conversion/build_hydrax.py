r"""Write a complete Hydra-X checkpoint folder, fully offline: random-initialised for a preset, or built from
pretrained parts (a Hydra-XTok tokenizer checkpoint and a Qwen2.5-Instruct checkpoint).

The folder holds everything a Hub checkpoint holds: `config.json` (with `auto_map`), safetensors shards,
`generation_config.json`, the processor (image + video processor configs, tokenizer, chat template), the remote-code
files and a model card (README.md), so `AutoModel.from_pretrained(folder, trust_remote_code=True)` and
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` work without this package. With diffusers installed
it is a diffusers pipeline folder too (`model_index.json`, `scheduler/` and the pipeline code, no second copy of the
weights): `HydraXPipeline.from_pretrained(folder)` or `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`.

    python conversion/build_hydrax.py --preset tiny --random-init --output outputs/hydrax-tiny
    python conversion/build_hydrax.py --preset hydrax-7b --random-init --tokenizer /path/to/Qwen2.5-7B-Instruct \
        --output outputs/hydrax-7b-random --dtype bfloat16
    python conversion/build_hydrax.py --vision outputs/hydrax-tok --llm Qwen/Qwen2.5-7B-Instruct \
        --output outputs/hydrax-7b --dtype bfloat16 [--push-to-hub you/hydrax-7b --private]

Random weights: for `tiny` a small tokenizer with Qwen2.5's special tokens is built here; the real presets take
`--tokenizer` (a Qwen2.5 tokenizer folder).

Pretrained parts (`--vision`, a `HydraXTokModel.save_pretrained` folder; `--llm`, a `Qwen2ForCausalLM` folder or Hub id
with its tokenizer): the configuration comes from the two checkpoints (text_config from Qwen's, vision_config from the
tokenizer's, the special token ids from Qwen's tokenizer) and the model keeps Qwen's vocabulary (152,064 rows for 7B,
more than the tokenizer's ~151,665 tokens). The LLM weights are copied exactly (`model.*` → `model.language_model.*`,
`lm_head` → `lm_head`, or tied to the embeddings when Qwen's config ties them), the vision tower exactly from the
tokenizer (its training-only Decompressor is dropped), and the projector, timestep embedding and flow head are newly
initialised. Every source tensor is copied or deliberately dropped; anything else stops the build. The report
(printed, and saved as `conversion_report.json` in the folder) lists every tensor's fate and the checks: before the
folder moves into place it is reloaded from disk and every tensor's dtype and shape checked, every copied tensor
compared with its source, text-only logits compared with the source Qwen2's, and the vision tower's `encode` with the
source tokenizer's.

The folder is written next to its destination and renamed into place at the end, so a failure never leaves a
half-written checkpoint; an existing folder is replaced only with `--force`.
"""

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoint_importer import staged_folder, tied_weights  # noqa: E402
from huggingface_hub import HfApi, ModelCard, snapshot_download  # noqa: E402
from huggingface_hub.utils import HFValidationError, validate_repo_id  # noqa: E402
from model_card_hydrax import (  # noqa: E402
    add_card_arguments,
    build_model_card,
    card_arguments,
    card_lineage,
    check_card,
)
from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from modeling_hydrax import (  # noqa: E402
    HydraXConfig,
    HydraXForConditionalGeneration,
    HydraXTokConfig,
    HydraXTokModel,
)
from processing_hydrax import (  # noqa: E402
    HYDRAX_CHAT_TEMPLATE,
    HydraXImageProcessor,
    HydraXProcessor,
    HydraXVideoProcessor,
    build_tiny_qwen2_tokenizer,
)
from script_args import (  # noqa: E402
    HelpFormatter,
    check_folder,
    check_inputs_outside,
    check_output_folder,
    looks_like_path,
)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
DEFAULT_MAX_SHARD_SIZE = "5GB"
REPORT_FILE = "conversion_report.json"
# What a Hub id's snapshot needs: configs, weights, tokenizer files, chat template.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
# Keys that describe a whole checkpoint, not a sub-model: left out of the sub-configs of the built config.
CHECKPOINT_KEYS = ("architectures", "auto_map", "dtype", "transformers_version", "_name_or_path")
LLM = {"option": "--llm", "model_type": "qwen2", "architecture": "Qwen2ForCausalLM", "what": "a Qwen2.5 causal LM"}
VISION = {"option": "--vision", "model_type": HydraXTokConfig.model_type, "what": "a Hydra-XTok tokenizer"}
LLM_TARGET_PREFIX = "model.language_model."
VISION_TARGET_PREFIX = "model.vision_tower."
NEW_MODULES = ("model.projector.", "model.timestep_embedding.", "model.flow_head.")
DROPPED_VISION = {"decompressor.": "Hydra-XTok's training-only Decompressor (video-teacher distillation)"}
CHECK_PROMPT = "Hydra-X reads and writes images and videos through one visual tokenizer. The answer is 42."
# Saved tokenizers pad on the left, ready for batched generation (transformers' `pipeline(batch_size=...)` pads with
# the tokenizer's side), as LLaVA and Qwen-VL checkpoints do; the training collator pads on the right per call.
PADDING_SIDE = "left"
# Text-only logits through Hydra-X vs the source Qwen2: the same weights and ops, so they agree to rounding.
LOGITS_ATOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


class TensorEntry(NamedTuple):
    """One tensor of a safetensors checkpoint, from the file headers only."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


@dataclass
class WeightPlan:
    """The fate of every tensor: `copied` maps a built-model name to its source (`"llm:<name>"` / `"vision:<name>"`),
    `dropped` a source to why it is left out, `tied` a built-model name to the one it shares storage with, and
    `initialised` lists the newly initialised built-model tensors."""

    copied: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- shared by both routes
def special_token_ids(processor: HydraXProcessor) -> dict[str, int | None]:
    """The `HydraXConfig` special token ids that `processor`'s tokenizer defines."""
    return {
        "image_token_id": processor.image_token_id,
        "video_token_id": processor.video_token_id,
        "vision_start_token_id": processor.vision_start_token_id,
        "vision_end_token_id": processor.vision_end_token_id,
        "pad_token_id": processor.tokenizer.pad_token_id,
    }


def check_vocabulary(tokenizer, vocab_size: int) -> None:
    """The model's embedding must hold every token id the tokenizer can produce (it may hold more: Qwen2.5-7B has
    152,064 rows for ~151,665 tokens, and the rows are kept, never resized)."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds {vocab_size}; use the "
            "matching Qwen2.5 tokenizer."
        )


def hydrax_processor(tokenizer, patch_size: int) -> HydraXProcessor:
    """The Hydra-X processor around `tokenizer`, cutting images and frames into the vision tower's `patch_size`."""
    return HydraXProcessor(
        HydraXImageProcessor(patch_size=patch_size), tokenizer, HydraXVideoProcessor(patch_size=patch_size)
    )


def build_processor(config: HydraXConfig, tokenizer_path: str | None) -> HydraXProcessor:
    """The processor for `config`: a tiny offline tokenizer when `tokenizer_path` is None, else a Qwen2.5 one. Its
    tokenizer is saved padding on the left (`PADDING_SIDE`)."""
    if tokenizer_path is None:
        tokenizer = build_tiny_qwen2_tokenizer(vocab_size=config.text_config.vocab_size, padding_side=PADDING_SIDE)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, padding_side=PADDING_SIDE)
    processor = hydrax_processor(tokenizer, config.vision_config.patch_size)
    mismatched = {
        name: (getattr(config, name), value)
        for name, value in special_token_ids(processor).items()
        if name != "pad_token_id" and getattr(config, name) != value
    }
    if mismatched:
        raise ValueError(f"The tokenizer's special tokens disagree with the preset (config, tokenizer): {mismatched}.")
    check_vocabulary(tokenizer, config.text_config.vocab_size)
    return processor


def default_generation_config(tokenizer, bos_token_id: int | None) -> GenerationConfig:
    """Greedy decoding that stops at `<|im_end|>`, for checkpoints without a generation config of their own."""
    return GenerationConfig(
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=bos_token_id,
        do_sample=False,
        max_new_tokens=128,
    )


def check_new_output(output: Path, overwrite: bool) -> Path:
    """`output` as a Path; refuses an existing one unless `overwrite`."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --force (overwrite=True) to replace it.")
    return output


def save_folder(folder: Path, model, processor: HydraXProcessor, card: ModelCard, max_shard_size) -> None:
    """Write the model (safetensors shards, config, generation config, remote code), the processor, the diffusers
    pipeline files (when diffusers is installed) and the model card into `folder`."""
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    processor.save_pretrained(folder)
    try:
        from modeling_hydrax.pipeline_hydrax import write_pipeline_files
    except ImportError:  # diffusers is optional: the folder stays a transformers checkpoint
        pass
    else:
        write_pipeline_files(folder)
    card.save(folder / "README.md")


def target_layout(config: HydraXConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Every tensor name and shape of the `HydraXForConditionalGeneration` for `config`, and its tied names, from a
    model on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        model = HydraXForConditionalGeneration(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return shapes, tied_weights(model)


def checkpoint_tensors(folder: Path) -> dict[str, TensorEntry]:
    """Every tensor of a safetensors checkpoint folder (one file, or shards with an index), read from the headers.
    A missing, truncated or corrupted file, or an index that disagrees with its shards, is a clear error."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
    elif (folder / "model.safetensors").is_file():
        weight_map, files = None, [folder / "model.safetensors"]
    else:
        raise ValueError(f"{folder} has no model.safetensors nor model.safetensors.index.json: no weights to read.")
    tensors = {}
    for file in files:
        if not file.is_file():
            raise ValueError(f"{index} lists {file.name}, which is missing from {folder}: the download is incomplete.")
        try:
            with safe_open(file, "pt") as handle:
                for name in handle.keys():
                    piece = handle.get_slice(name)
                    tensors[name] = TensorEntry(file, tuple(piece.get_shape()), piece.get_dtype())
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{file} is not a readable safetensors file ({error}): truncated or corrupted; download it again."
            ) from error
    if weight_map is not None and set(weight_map) != set(tensors):
        differ = sorted(set(weight_map) ^ set(tensors))
        raise ValueError(f"{index} and its shards disagree on {len(differ)} tensors, e.g. {differ[:3]}.")
    return tensors


def check_saved_tensors(folder: Path, config: HydraXConfig, dtype: torch.dtype) -> int:
    """Re-read the written safetensors headers: exactly the model's tensors (tied ones saved once), each with the
    model's shape and dtype `dtype`. Returns how many tensors were checked."""
    shapes, tied = target_layout(config)
    expected = {name: shape for name, shape in shapes.items() if name not in tied}
    saved = checkpoint_tensors(folder)
    problems = [f"missing {name}" for name in sorted(set(expected) - set(saved))]
    problems += [f"unexpected {name}" for name in sorted(set(saved) - set(expected))]
    problems += [
        f"{name}: {entry.dtype} {list(entry.shape)}, expected {SAFETENSORS_DTYPES[dtype]} {list(expected[name])}"
        for name, entry in saved.items()
        if name in expected and (entry.shape != expected[name] or entry.dtype != SAFETENSORS_DTYPES[dtype])
    ]
    if problems:
        raise ValueError(f"The written checkpoint in {folder} is wrong: {problems[:10]}.")
    return len(saved)


def build_checkpoint(
    preset: str,
    output: Path,
    tokenizer_path: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    model_id: str | None = None,
    card_kwargs: dict | None = None,
    **config_overrides,
) -> Path:
    """Build, save and atomically move a random-initialised checkpoint into `output`; returns `output`.
    `config_overrides` replace preset fields (e.g. `vision_config=` of an already fitted Hydra-XTok); `model_id` (the
    Hub repo, default the folder) and `card_kwargs` (see `model_card_hydrax.build_model_card`) go to the model card."""
    output = check_new_output(output, overwrite)
    config = HydraXConfig.from_preset(preset, **config_overrides)
    if tokenizer_path is None and preset != "tiny":
        raise ValueError(
            f"Preset {preset!r} needs a Qwen2.5 tokenizer: pass --tokenizer PATH (a Qwen2.5 tokenizer folder)."
        )
    processor = build_processor(config, tokenizer_path)
    torch.manual_seed(seed)
    model = HydraXForConditionalGeneration._from_config(config, dtype=DTYPES[dtype])
    model.generation_config = default_generation_config(processor.tokenizer, config.text_config.bos_token_id)
    card = build_model_card(model_id or str(output.resolve()), config, "random", **(card_kwargs or {}))
    with staged_folder(output) as staging:
        save_folder(staging, model, processor, card, max_shard_size)
        check_saved_tensors(staging, config, DTYPES[dtype])
    return output


# ---------------------------------------------------------------------------------------- from pretrained parts
@contextmanager
def quiet_transformers():
    """transformers logs only errors inside the block."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def resolve_checkpoint(option: str, path_or_id: str) -> Path:
    """The local folder of a checkpoint given as a folder or a Hub id (offline: from the local Hub cache)."""
    if Path(path_or_id).is_dir():
        return Path(path_or_id)
    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=CHECKPOINT_PATTERNS))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{option} {path_or_id}: not a folder, and not a Hub model available here ({type(error).__name__}: "
            f"{error})."
        ) from error


def check_model_type(source: dict, path_or_id: str, folder: Path) -> None:
    """Stop unless `folder` holds the checkpoint kind `source` (`LLM` or `VISION`) describes; name what it holds."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{source['option']} {path_or_id}: no config.json; pass {source['what']} checkpoint.")
    config = json.loads(config_file.read_text())
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    wrong_architecture = "architecture" in source and source["architecture"] not in architectures
    if model_type != source["model_type"] or wrong_architecture:
        wanted = f"{source['model_type']!r}" + (f", {source['architecture']}" if "architecture" in source else "")
        classes = ", ".join(architectures) or "no architectures listed"
        raise ValueError(
            f"{source['option']} {path_or_id} holds a {model_type!r} checkpoint ({classes}), not {source['what']} "
            f"({wanted})."
        )


def pretrained_processor(path_or_id: str, folder: Path, patch_size: int) -> HydraXProcessor:
    """The Hydra-X processor around the LLM checkpoint's own tokenizer (saved padding on the left, `PADDING_SIDE`),
    which must have Qwen2.5's vision tokens; `patch_size` is the vision tower's."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"--llm {path_or_id} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); pass the Qwen2.5-Instruct "
            "checkpoint together with its tokenizer files."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side=PADDING_SIDE)
    try:
        return hydrax_processor(tokenizer, patch_size)
    except ValueError as error:
        raise ValueError(
            f"--llm {path_or_id}: {error} Hydra-X marks images and videos with Qwen2.5's vision tokens "
            "(<|vision_start|>, <|vision_end|>, <|vision_pad|>, <|image_pad|>, <|video_pad|>)."
        ) from error


def sub_config_dict(config) -> dict:
    """`config` as a sub-config dict: without the keys that describe a whole checkpoint (`CHECKPOINT_KEYS`)."""
    return {key: value for key, value in config.to_dict().items() if key not in CHECKPOINT_KEYS}


def derive_config(qwen_config: Qwen2Config, tok_config: HydraXTokConfig, token_ids: dict) -> HydraXConfig:
    """The `HydraXConfig` of a Hydra-X built from these parts: text_config is Qwen's (its pad id from the tokenizer
    when Qwen's config names none), vision_config the tokenizer's (the Decompressor turned off), special token ids
    from the tokenizer, everything else the `HydraXConfig` defaults."""
    text_config = sub_config_dict(qwen_config)
    if text_config.get("pad_token_id") is None:
        text_config["pad_token_id"] = token_ids["pad_token_id"]
    return HydraXConfig(text_config=text_config, vision_config=sub_config_dict(tok_config), **token_ids)


def source_target(source: str, name: str, tied: dict[str, str]) -> tuple[str | None, str | None]:
    """Where source tensor `name` of `source` ("llm" / "vision") goes in Hydra-X: `(target, None)`, or `(None,
    reason)` when it is deliberately dropped, or `(None, None)` when it fits nowhere."""
    if source == "vision":
        for prefix, reason in DROPPED_VISION.items():
            if name.startswith(prefix):
                return None, reason
        return VISION_TARGET_PREFIX + name, None
    if name == "lm_head.weight":
        if name in tied:
            return None, f"tied to {tied[name]} (tie_word_embeddings): the embedding is the LM head"
        return name, None
    if name.startswith("model."):
        return LLM_TARGET_PREFIX + name.removeprefix("model."), None
    return None, None


def plan_weights(
    llm_shapes: dict[str, tuple[int, ...]],
    vision_shapes: dict[str, tuple[int, ...]],
    target_shapes: dict[str, tuple[int, ...]],
    tied: dict[str, str],
) -> WeightPlan:
    """Map the sources' tensors onto Hydra-X's by name and shape only, so it runs on meta tensors or safetensors
    headers. Stops (ValueError, listing every problem) on a source tensor that fits nowhere, a shape mismatch, or a
    Hydra-X tensor that is neither copied, tied nor part of the newly initialised modules (`NEW_MODULES`)."""
    plan, problems = WeightPlan(), []
    for source, shapes in (("llm", llm_shapes), ("vision", vision_shapes)):
        for name, shape in shapes.items():
            target, reason = source_target(source, name, tied)
            if reason is not None:
                plan.dropped[f"{source}:{name}"] = reason
            elif target not in target_shapes:
                problems.append(f"{source} tensor {name} {list(shape)} has no place in Hydra-X")
            elif tuple(shape) != tuple(target_shapes[target]):
                problems.append(f"{source} tensor {name} {list(shape)} vs {target} {list(target_shapes[target])}")
            else:
                plan.copied[target] = f"{source}:{name}"
    plan.tied = {name: tied_to for name, tied_to in tied.items() if name in target_shapes}
    problems += [
        f"{name} is tied to {to}, which no source provides" for name, to in plan.tied.items() if to not in plan.copied
    ]
    rest = sorted(set(target_shapes) - set(plan.copied) - set(plan.tied))
    plan.initialised = [name for name in rest if name.startswith(NEW_MODULES)]
    problems += [
        f"{name} {list(target_shapes[name])}: no source provides it"
        for name in rest
        if not name.startswith(NEW_MODULES)
    ]
    if problems:
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError("The checkpoints do not fit Hydra-X:\n  " + "\n  ".join(problems[:20]) + more)
    return plan


def read_copied(plan: WeightPlan, tensors: dict[str, dict[str, TensorEntry]], dtype: torch.dtype):
    """Yield `(target, tensor)` for every copied tensor, read from its source file (one file open at a time) and
    cast to `dtype`."""
    by_file = {}
    for target, origin in plan.copied.items():
        source, name = origin.split(":", 1)
        by_file.setdefault(tensors[source][name].file, []).append((target, name))
    for file, pairs in by_file.items():
        with safe_open(file, "pt") as handle:
            for target, name in pairs:
                yield target, handle.get_tensor(name).to(dtype)


def verify_folder(
    folder: Path, config: HydraXConfig, plan: WeightPlan, dtype: torch.dtype, sources, tensors, tokenizer
):
    """Reload the written checkpoint from disk and check it against its sources; returns the measurements for the
    report and stops (ValueError) on any difference beyond rounding.

    1. every tensor's dtype and shape (from the files), 2. every copied tensor equal to its source, 3. a text-only
    prompt's logits (`logits_to_keep=0`: every position) equal to the source Qwen2's, 4. the vision tower's `encode`
    equal to the source tokenizer's, 5. the saved processor's image question runs through the built model (its
    placeholders match the vision tower's patches).
    """
    # 1. Files
    checks = {"tensors_checked": check_saved_tensors(folder, config, dtype)}
    # 2. Copied tensors, exactly
    built = HydraXForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
    state = built.state_dict()
    unequal = [
        target for target, tensor in read_copied(plan, tensors, dtype) if not torch.equal(state[target], tensor)
    ]
    unequal += [name for name, tied_to in plan.tied.items() if not torch.equal(state[name], state[tied_to])]
    if unequal:
        raise ValueError(f"Reloaded tensors differ from their sources: {unequal[:10]}.")
    checks["copied_tensors_equal"] = len(plan.copied)
    # 3. and 4. The same prompt and pixels through the built model and through the sources, one model in memory
    input_ids = tokenizer(CHECK_PROMPT, return_tensors="pt").input_ids
    patch = config.vision_config.patch_size
    pixels = (torch.rand(1, 3, 5, 2 * patch, 2 * patch, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
    question = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (2 * patch, 2 * patch))}]}]
    image_inputs = HydraXProcessor.from_pretrained(folder).apply_chat_template(
        question, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        built_logits = built(input_ids=input_ids, logits_to_keep=0).logits
        built_latents = built.model.vision_tower.encode(pixels).latents
        built(**image_inputs.to(dtype=dtype), logits_to_keep=1)  # raises if the placeholders and patches disagree
        checks["image_question_tokens"] = image_inputs["input_ids"].shape[1]
        del built, state
        source_lm = Qwen2ForCausalLM.from_pretrained(sources["llm"], dtype=dtype).eval()
        source_logits = source_lm(input_ids=input_ids).logits
        del source_lm
        source_latents = HydraXTokModel.from_pretrained(sources["vision"], dtype=dtype).eval().encode(pixels).latents
    checks["text_logits_max_abs_diff"] = (built_logits.float() - source_logits.float()).abs().max().item()
    checks["vision_encode_max_abs_diff"] = (built_latents.float() - source_latents.float()).abs().max().item()
    if built_logits.shape != source_logits.shape or checks["text_logits_max_abs_diff"] > LOGITS_ATOL[dtype]:
        raise ValueError(
            f"Text-only logits differ from the source Qwen2's: shapes {list(built_logits.shape)} vs "
            f"{list(source_logits.shape)}, max |Δ| {checks['text_logits_max_abs_diff']:.3g} (allowed "
            f"{LOGITS_ATOL[dtype]})."
        )
    if not torch.equal(built_latents, source_latents):
        raise ValueError(
            f"The vision tower's encode differs from the source tokenizer's: max |Δ| "
            f"{checks['vision_encode_max_abs_diff']:.3g}."
        )
    return checks


def default_base_models(llm: str, vision_folder: Path) -> list[str]:
    """The card's `base_model`, Hub ids only: `llm` when it is a Hub id (a local folder names none: pass
    --base-model), and what the Hydra-XTok checkpoint's own card names as its base (the SigLIP 2 id that
    conversion/convert_siglip2_to_hydrax_tok.py records)."""
    vision_bases = card_lineage(vision_folder)["base_models"]
    return [*([] if Path(llm).is_dir() else [str(llm)]), *(vision_bases or [])]


def build_from_pretrained(
    vision: str,
    llm: str,
    output: Path,
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    model_id: str | None = None,
    card_kwargs: dict | None = None,
) -> tuple[Path, dict]:
    """Build a Hydra-X folder from a Hydra-XTok checkpoint (`vision`, a folder) and a Qwen2.5-Instruct checkpoint
    (`llm`, a folder or Hub id), check it (see `verify_folder`) and move it into `output`. Returns `output` and the
    report (also saved there as `conversion_report.json`)."""
    # 1. Check the sources and derive the configuration
    output = check_new_output(output, overwrite)
    folders = {"llm": resolve_checkpoint("--llm", llm), "vision": resolve_checkpoint("--vision", vision)}
    check_model_type(LLM, llm, folders["llm"])
    check_model_type(VISION, vision, folders["vision"])
    tok_config = HydraXTokConfig.from_pretrained(folders["vision"])
    processor = pretrained_processor(llm, folders["llm"], tok_config.patch_size)
    llm_template = processor.tokenizer.chat_template  # replaced by Hydra-X's, which the report says
    config = derive_config(Qwen2Config.from_pretrained(folders["llm"]), tok_config, special_token_ids(processor))
    check_vocabulary(processor.tokenizer, config.text_config.vocab_size)
    # 2. Plan every tensor from the file headers
    tensors = {source: checkpoint_tensors(folder) for source, folder in folders.items()}
    shapes = {source: {name: entry.shape for name, entry in entries.items()} for source, entries in tensors.items()}
    plan = plan_weights(shapes["llm"], shapes["vision"], *target_layout(config))
    # 3. Build: copied tensors loaded, the new modules initialised by the model's own `_init_weights`
    torch_dtype = DTYPES[dtype]
    torch.manual_seed(seed)
    state_dict = dict(read_copied(plan, tensors, torch_dtype))
    with quiet_transformers():  # its "MISSING" table repeats the plan's `initialised`, which the report lists
        model, info = HydraXForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state_dict, dtype=torch_dtype, output_loading_info=True
        )
    del state_dict
    initialised = set(info["missing_keys"]) - set(plan.tied)
    if initialised != set(plan.initialised) or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ValueError(f"Loading the copied tensors went wrong: {info}.")
    generation_file = folders["llm"] / "generation_config.json"
    if generation_file.is_file():
        model.generation_config = GenerationConfig.from_pretrained(folders["llm"])
    else:
        model.generation_config = default_generation_config(processor.tokenizer, config.text_config.bos_token_id)
    # 4. Write, verify from disk, report, move into place
    card_kwargs = dict(card_kwargs or {})
    card_kwargs["base_models"] = card_kwargs.get("base_models") or default_base_models(llm, folders["vision"])
    named = {"llm": source_name(llm), "vision": source_name(vision)}
    parts = {"language model (Qwen2.5)": named["llm"], "vision tower (Hydra-XTok)": named["vision"]}
    parts["projector, timestep embedding, flow head"] = "newly initialised"
    card = build_model_card(model_id or str(output.resolve()), config, "converted", sources=parts, **card_kwargs)
    with staged_folder(output) as staging:
        save_folder(staging, model, processor, card, max_shard_size)
        del model
        checks = verify_folder(staging, config, plan, torch_dtype, folders, tensors, processor.tokenizer)
        report = {
            "sources": named,
            "dtype": dtype,
            "chat_template": chat_template_note(llm_template),
            **asdict(plan),
            "checks": checks,
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return output, report


def source_name(source) -> str:
    """How the card and the report (both uploaded by --push-to-hub) name a source: a Hub id as given, a local folder
    by its name and the Hub ids its card names as bases, never by its absolute path on this machine."""
    if not Path(source).is_dir():
        return str(source)
    try:
        bases = card_lineage(source)["base_models"]
    except ValueError:  # an LLM folder's unreadable card (--vision's is checked up front): named by the folder alone
        bases = None
    return f"local folder {Path(source).resolve().name}" + (f" (from {', '.join(bases)})" if bases else "")


def chat_template_note(llm_template: str | None) -> str:
    """What the report says of the chat template: always Hydra-X's (it places visual blocks and generation targets),
    and whether it replaced a different one the LLM's tokenizer had (Qwen2.5-Instruct's has tool calling and another
    default system prompt)."""
    note = "Hydra-X's (Qwen2.5-VL's format: default system prompt \"You are a helpful assistant.\", no tools)"
    if llm_template is None or llm_template == HYDRAX_CHAT_TEMPLATE:
        return note
    return f"{note}; it replaces the language model's own template"


def summarize_report(report: dict) -> str:
    """The report in a few lines: counts of copied tensors, and every dropped, tied and newly initialised one."""
    lines = [
        f"copied exactly: {sum(origin.startswith(f'{source}:') for origin in report['copied'].values())} tensors "
        f"from {location}"
        for source, location in report["sources"].items()
    ]
    lines.append(f"chat template: {report['chat_template']}")
    lines += [f"dropped {name}: {reason}" for name, reason in report["dropped"].items()]
    lines += [f"tied {name} → {tied_to}" for name, tied_to in report["tied"].items()]
    lines += [f"newly initialised: {name}" for name in report["initialised"]]
    lines += [f"check {name}: {value}" for name, value in report["checks"].items()]
    return "\n".join(lines)


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Upload a finished checkpoint folder to the Hub model repo `repo_id` (created if needed) as one commit that
    mirrors it: files of an earlier upload that the folder lacks are deleted (an earlier single `model.safetensors`
    beside a new sharded index would be the one transformers loads); returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message="Upload Hydra-X checkpoint",
        delete_patterns="*",  # every remote file the folder does not hold (the Hub keeps .gitattributes)
    )
    return commit.commit_url


# ---------------------------------------------------------------------------------------------------- command line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--random-init", action="store_true", help="random weights for --preset (instead of --vision and --llm)"
    )
    parser.add_argument(
        "--preset", choices=HydraXConfig.available_presets(), help="model sizes for --random-init (modeling_hydrax)"
    )
    parser.add_argument(
        "--tokenizer", help="with --random-init: a local Qwen2.5 tokenizer folder, required for the real presets"
    )
    parser.add_argument("--vision", help="a Hydra-XTok checkpoint folder (HydraXTokModel.save_pretrained)")
    parser.add_argument(
        "--llm", help="a Qwen2.5-Instruct checkpoint (Qwen2ForCausalLM with its tokenizer): folder or Hub id"
    )
    parser.add_argument("--output", type=Path, required=True, help="checkpoint folder to create")
    parser.add_argument("--force", "--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random (or newly initialised) weights")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest safetensors shard, e.g. 2GB")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the finished folder to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    add_card_arguments(parser)
    args = parser.parse_args(argv)
    # 1. Exactly one source of weights, with the options it takes
    pretrained = args.vision is not None or args.llm is not None
    if args.random_init and pretrained:
        parser.error("pass either --random-init (random weights) or --vision and --llm (pretrained weights), not both")
    if not args.random_init and not pretrained:
        parser.error("pass --random-init --preset NAME for random weights, or --vision PATH --llm PATH_OR_ID")
    if args.random_init and args.preset is None:
        parser.error(f"--random-init needs --preset (one of {', '.join(HydraXConfig.available_presets())})")
    if pretrained and (args.vision is None or args.llm is None):
        parser.error(
            "building from pretrained weights needs both --vision and --llm; missing "
            + ("--llm" if args.llm is None else "--vision")
        )
    if pretrained and (args.preset is not None or args.tokenizer is not None):
        parser.error(
            "--preset and --tokenizer go with --random-init; with --vision/--llm the sizes and the tokenizer come "
            "from the checkpoints"
        )
    if args.private and args.push_to_hub is None:
        parser.error("--private goes with --push-to-hub REPO_ID")
    if args.push_to_hub is not None:
        try:  # the ids the Hub refuses: before the build (hours for the 7B), not after it
            validate_repo_id(args.push_to_hub)
        except HFValidationError as error:
            parser.error(f"--push-to-hub {args.push_to_hub}: not a Hub repo id ({error})")
    # 2. Paths, before any work
    if args.tokenizer is not None:
        hint = "pass a local Qwen2.5 tokenizer folder (one with tokenizer_config.json)"
        check_folder(parser, "--tokenizer", args.tokenizer, hint, required_file="tokenizer_config.json")
    if args.vision is not None:
        hint = "pass a Hydra-XTok checkpoint folder (written by HydraXTokModel.save_pretrained)"
        check_folder(parser, "--vision", args.vision, hint, required_file="config.json")
        check_card(parser, "--vision", args.vision)  # its base_model goes into the card, after the build
    if args.llm is not None and looks_like_path(args.llm):
        hint = "pass a Qwen2.5-Instruct checkpoint folder or a Hub id such as Qwen/Qwen2.5-7B-Instruct"
        check_folder(parser, "--llm", args.llm, hint, required_file="config.json")
    check_output_folder(parser, "--output", args.output, replaced=True)
    llm = args.llm if args.llm is not None and looks_like_path(args.llm) else None
    check_inputs_outside(
        parser, "--output", args.output, {"--vision": args.vision, "--llm": llm, "--tokenizer": args.tokenizer}
    )
    card_kwargs = card_arguments(parser, args)
    # 3. Build (and push)
    common = {"dtype": args.dtype, "seed": args.seed, "overwrite": args.force, "max_shard_size": args.max_shard_size}
    common.update(model_id=args.push_to_hub, card_kwargs=card_kwargs)
    try:
        if args.random_init:
            path = build_checkpoint(args.preset, args.output, args.tokenizer, **common)
            print(f"wrote {args.preset} checkpoint to {path}")
        else:
            path, report = build_from_pretrained(args.vision, args.llm, args.output, **common)
            print(summarize_report(report))
            print(f"wrote the Hydra-X checkpoint to {path} (report: {path / REPORT_FILE})")
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    if args.push_to_hub is not None:
        print(f"uploaded {path} to {args.push_to_hub}: {push_folder(path, args.push_to_hub, args.private)}")


if __name__ == "__main__":
    main()
