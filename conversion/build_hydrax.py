"""Write a complete, random-initialised Hydra-X checkpoint folder for a preset, fully offline.

The folder holds everything a Hub checkpoint holds: `config.json` (with `auto_map`), `model.safetensors`,
`generation_config.json`, the processor (image + video processor configs, tokenizer, chat template) and the
remote-code files, so `AutoModel.from_pretrained(folder, trust_remote_code=True)` and
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` work without this package. With diffusers installed
it is a diffusers pipeline folder too (`model_index.json`, `scheduler/` and the pipeline code, no second copy of the
weights): `HydraXPipeline.from_pretrained(folder)` or `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`.

    python conversion/build_hydrax.py --preset tiny --random-init --output outputs/hydrax-tiny
    python conversion/build_hydrax.py --preset hydrax-7b --random-init --tokenizer /path/to/Qwen2.5-7B-Instruct \
        --output outputs/hydrax-7b-random --dtype bfloat16

For `tiny` a small tokenizer with Qwen2.5's special tokens is built here; the real presets take `--tokenizer`
(a Qwen2.5 tokenizer folder). The folder is written next to its destination and renamed into place at the end,
so a failure never leaves a half-written checkpoint.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoTokenizer, GenerationConfig  # noqa: E402

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration  # noqa: E402
from processing_hydrax import (  # noqa: E402
    HydraXImageProcessor,
    HydraXProcessor,
    HydraXVideoProcessor,
    build_tiny_qwen2_tokenizer,
)
from script_args import HelpFormatter, check_folder, check_output_folder  # noqa: E402


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_processor(config: HydraXConfig, tokenizer_path: str | None) -> HydraXProcessor:
    """The processor for `config`: a tiny offline tokenizer when `tokenizer_path` is None, else a Qwen2.5 one."""
    if tokenizer_path is None:
        tokenizer = build_tiny_qwen2_tokenizer(vocab_size=config.text_config.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    processor = HydraXProcessor(HydraXImageProcessor(), tokenizer, HydraXVideoProcessor())
    expected = {
        "image_token_id": processor.image_token_id,
        "video_token_id": processor.video_token_id,
        "vision_start_token_id": processor.vision_start_token_id,
        "vision_end_token_id": processor.vision_end_token_id,
    }
    mismatched = {
        name: (getattr(config, name), value) for name, value in expected.items() if getattr(config, name) != value
    }
    if mismatched:
        raise ValueError(f"The tokenizer's special tokens disagree with the preset (config, tokenizer): {mismatched}.")
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the preset's vocabulary holds "
            f"{config.text_config.vocab_size}; use the matching Qwen2.5 tokenizer."
        )
    return processor


def build_checkpoint(
    preset: str,
    output: Path,
    tokenizer_path: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    **config_overrides,
) -> Path:
    """Build, save and atomically move a random-initialised checkpoint into `output`; returns `output`.
    `config_overrides` replace preset fields (e.g. `vision_config=` of an already fitted Hydra-XTok)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite (overwrite=True) to replace it.")
    config = HydraXConfig.from_preset(preset, **config_overrides)
    if tokenizer_path is None and preset != "tiny":
        raise ValueError(
            f"Preset {preset!r} needs a Qwen2.5 tokenizer: pass --tokenizer PATH (a Qwen2.5 tokenizer folder)."
        )
    processor = build_processor(config, tokenizer_path)
    torch.manual_seed(seed)
    model = HydraXForConditionalGeneration._from_config(config, dtype=DTYPES[dtype])
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=config.text_config.bos_token_id,
        do_sample=False,
        max_new_tokens=128,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        try:
            from modeling_hydrax.pipeline_hydrax import write_pipeline_files
        except ImportError:  # diffusers is optional: the folder stays a transformers checkpoint
            pass
        else:
            write_pipeline_files(staging)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--preset",
        required=True,
        choices=HydraXConfig.available_presets(),
        help="model sizes (modeling_hydrax/presets)",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        required=True,
        help="random weights (converting pretrained SigLIP 2 / Qwen2.5 weights is a separate tool)",
    )
    parser.add_argument("--output", type=Path, required=True, help="checkpoint folder to create")
    parser.add_argument(
        "--tokenizer",
        help="a local Qwen2.5 tokenizer folder, required for the real presets (`tiny` builds its own)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if args.tokenizer is not None:
        hint = "pass a local Qwen2.5 tokenizer folder (one with tokenizer_config.json)"
        check_folder(parser, "--tokenizer", args.tokenizer, hint, required_file="tokenizer_config.json")
    check_output_folder(parser, "--output", args.output)
    try:
        path = build_checkpoint(args.preset, args.output, args.tokenizer, args.dtype, args.seed, args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f"wrote {args.preset} checkpoint to {path}")


if __name__ == "__main__":
    main()
