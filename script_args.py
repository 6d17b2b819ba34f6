"""What the scripts in examples/, conversion/ and bench/ share: up-front checks of path arguments (a bad path stops the
script in argparse, naming the option and the path, before any work starts), the help formatter, and the command line
and run of the pipeline examples (examples/text_to_image.py, text_to_video.py, image_to_video.py, edit_image.py).

The examples write MP4s with PyAV (the `video` / `dev` extra): diffusers' `export_to_video` needs `imageio-ffmpeg`,
or OpenCV when imageio is missing, and only the `dev` extra installs imageio-ffmpeg.
"""

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path


PATCH_SIZE = 16  # pixels per latent token side in every Hydra-X preset


def check_folder(parser: argparse.ArgumentParser, option: str, path, hint: str, required_file: str | None = None):
    """`parser.error` unless `path` is a folder (holding `required_file`, when given); `hint` says what to pass."""
    path = Path(path)
    if not path.is_dir():
        problem = "not a folder" if path.exists() else "no such folder"
    elif required_file is not None and not (path / required_file).is_file():
        problem = f"a folder without {required_file}"
    else:
        return
    parser.error(f"{option} {path}: {problem}; {hint}")


def check_hydrax_folder(parser: argparse.ArgumentParser, option: str, path, hint: str) -> None:
    """`check_folder` for a Hydra-X checkpoint, also refusing a folder of another model type (transformers would only
    warn, and build a Hydra-X model of default sizes around it): a Hydra-XTok (visual tokenizer) folder, which the
    quickstart and examples/train_tokenizer.py write as `model/` too, gets the command that builds a Hydra-X one."""
    check_folder(parser, option, path, hint, required_file="config.json")
    model_type = config_model_type(path)
    if model_type == "hydrax_tok":
        parser.error(
            f"{option} {path}: a Hydra-XTok visual tokenizer, not a Hydra-X checkpoint; build one around it with "
            f"`python conversion/build_hydrax.py --vision {path} --llm QWEN2.5 --output FOLDER` (or `python "
            f"examples/run_hydrax.py --tokenizer {path}` for a tiny one)"
        )
    if model_type not in (None, "hydrax"):
        parser.error(f"{option} {path}: a {model_type!r} checkpoint (config.json's model_type), not Hydra-X; {hint}")


def check_tokenizer_folder(parser: argparse.ArgumentParser, option: str, path, hint: str) -> None:
    """`check_folder` for a Hydra-XTok checkpoint, also refusing a folder of another model type up front (loading
    failed with a traceback after the run's first work); a unified Hydra-X checkpoint holds one and is accepted."""
    check_folder(parser, option, path, hint, required_file="config.json")
    model_type = config_model_type(path)
    if model_type not in (None, "hydrax_tok", "hydrax"):
        parser.error(
            f"{option} {path}: a {model_type!r} checkpoint (config.json's model_type), not a Hydra-XTok tokenizer or "
            f"a Hydra-X model; {hint}"
        )


def config_model_type(path) -> str | None:
    """config.json's `model_type` in the folder `path`; None when it cannot be read (loading reports it in full)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def finite_float(text: str) -> float:
    """argparse `type` of every float option: `inf` and `nan` pass every comparison check, and a script that hands
    them on fails late, under another script's usage."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def check_at_least(parser: argparse.ArgumentParser, minimum: int, **values) -> None:
    """`parser.error` naming the first option below `minimum`. Each keyword is an option (`repeats=args.repeats` is
    --repeats); None (an option left at its "not given" default) passes."""
    for name, value in values.items():
        if value is not None and value < minimum:
            parser.error(f"--{name.replace('_', '-')} must be ≥ {minimum}, got {value}")


def check_positive(parser: argparse.ArgumentParser, **values) -> None:
    """`parser.error` naming the first option that is not > 0 (keywords as `check_at_least`'s)."""
    for name, value in values.items():
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {value}")


def check_hidden_size(parser: argparse.ArgumentParser, hidden_size: int, head_width: int) -> None:
    """`parser.error` unless a benchmark LLM's --hidden-size splits into its max(1, hidden_size // head_width)
    attention heads of an even width (rotary embeddings turn pairs of channels)."""
    check_at_least(parser, 1, hidden_size=hidden_size)
    heads = max(1, hidden_size // head_width)
    if hidden_size % (2 * heads):
        parser.error(
            f"--hidden-size {hidden_size}: does not split into {heads} attention heads of an even width; pass "
            f"{head_width // 2} or a multiple of {head_width}"
        )


def check_file(parser: argparse.ArgumentParser, option: str, path, hint: str):
    """`parser.error` unless `path` is a file; `hint` says what to pass."""
    path = Path(path)
    if not path.is_file():
        parser.error(f"{option} {path}: {'not a file' if path.exists() else 'no such file'}; {hint}")


def check_image(parser: argparse.ArgumentParser, option: str, path) -> None:
    """`parser.error` unless `path` is a file that PIL reads as an image."""
    from PIL import Image

    hint = "pass an image file (PNG, JPEG, …)"
    check_file(parser, option, path, hint)
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:
        parser.error(f"{option} {path}: not an image PIL can read ({error}); {hint}")


def check_adapter(parser: argparse.ArgumentParser, option: str, value, hub_ids: bool = True) -> None:
    """`parser.error` unless a LoRA adapter option names a folder holding adapter_config.json; with `hub_ids`, a
    value that does not look like a path is taken as a Hub id."""
    if value is None or (hub_ids and not looks_like_path(str(value))):
        return
    hint = "pass an adapter folder such as examples/train_hydrax.py --lora-r's OUTPUT_DIR/adapter"
    hint += ", or a Hub id" if hub_ids else ""
    check_folder(parser, option, value, hint, required_file="adapter_config.json")


def looks_like_path(value: str) -> bool:
    """A value meant as a local path rather than a Hub id (`org/name`)."""
    return Path(value).exists() or value.startswith((".", "/", "~")) or value.count("/") != 1


def missing_local_source(value: str) -> bool:
    """Whether a data source is meant as a local path (a `.jsonl` name, one starting `.`, `/` or `~`, or one with more
    than one `/`) that does not exist; the scripts would look it up as a Hub dataset id (`mnist`, `org/name`)."""
    meant_local = value.lower().endswith(".jsonl") or value.startswith((".", "/", "~")) or value.count("/") > 1
    return meant_local and not Path(value).expanduser().exists()


def check_media_sources(parser: argparse.ArgumentParser, option: str, sources: list[str], hub_ids=True) -> None:
    """`parser.error` naming the first of a tokenizer script's data `sources` that is a local path which does not
    exist, or a file other than a `.jsonl` manifest: `datasets` would look either up on the Hub. Without `hub_ids`
    (as the evaluation scripts read `--data`) only `org/name` may be a Hub dataset: `photos` is a missing folder."""
    for source in sources:
        exists = Path(source).expanduser().exists()
        if missing_local_source(source) if hub_ids else looks_like_path(source) and not exists:
            problem = "no such file or folder"
        elif exists and Path(source).expanduser().is_file() and not source.lower().endswith(".jsonl"):
            problem = "a file, not a folder or a .jsonl manifest"
        else:
            continue
        parser.error(
            f"{option} {source}: {problem}; pass a folder of images or videos, a .jsonl manifest, a save_to_disk "
            f"folder or a Hub dataset id{'' if hub_ids else ' (org/name)'}"
        )


def command_line(script: str, argv=None) -> str:
    """How `script` (a path from the repository root) was run, for a report: `python script args…`, shell-quoted;
    `argv` as `main(argv)` got it (None: the process's own arguments)."""
    return shlex.join(["python", script, *map(str, sys.argv[1:] if argv is None else argv)])


def check_output_folder(parser: argparse.ArgumentParser, option: str, path, given=None, replaced: bool = False):
    """`parser.error` unless `path` is a folder, or can be created as one, that this user can write to; the message
    names `given` (default `path`), the value passed to `option`. A folder the run `replaced` as a whole may not be
    the working folder or one above it (`.`, `..`: the rename into place failed after all the work)."""
    path = Path(path)
    given = path if given is None else given
    if replaced and Path.cwd().is_relative_to(path.resolve()):
        parser.error(
            f"{option} {given}: the working folder or one above it, which this run would replace as a whole; pass a "
            "new folder"
        )
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        parser.error(f"{option} {given}: {existing} is a file, not a folder; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{option} {given}: {existing} is not writable; pass a folder you can write to")


def check_new_output_folder(parser: argparse.ArgumentParser, option: str, path, force: bool, inputs=None):
    """`check_output_folder`, and `parser.error` when `path` is a folder with contents and `force` is off: an output
    folder is replaced as a whole at the end of a run, so an existing one goes only when asked (`--force`). `inputs`
    (option → a path or a list of them, None for options not given) are the run's own inputs, which must not lie in
    the folder that its end replaces."""
    check_output_folder(parser, option, path, replaced=True)
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not force:
        parser.error(f"{option} {path}: already exists; pass --force to replace it, or a new folder")
    check_inputs_outside(parser, option, path, inputs or {})


def check_inputs_outside(parser: argparse.ArgumentParser, option: str, path, inputs: dict, parts=(".",)) -> None:
    """`parser.error` when one of the run's `inputs` (option → a path or a list of them, None for options not given)
    lies in what the run replaces or deletes when it saves: the output folder `path`, or only its sub-folders
    `parts` (a training run's `model`, `adapter` and `work`). The input would be lost, e.g. a stage-1 model trained on
    into its own output folder."""
    replaced = [(Path(path) / part).resolve() for part in parts]
    for name, values in inputs.items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            resolved = Path(value).resolve() if value is not None and Path(value).exists() else None
            if resolved is not None and any(resolved.is_relative_to(folder) for folder in replaced):
                parser.error(
                    f"{option} {path}: holds {name} {value}, which this run's output would replace or delete; pass "
                    "another output folder"
                )


def check_output_file(parser: argparse.ArgumentParser, option: str, path, suffix: str):
    """`parser.error` unless `path` ends in `suffix`, is not a folder, and its folder is (or can be made) writable."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        parser.error(f"{option} {path}: the file name must end in {suffix}")
    if path.is_dir():
        parser.error(f"{option} {path}: a folder; pass a file path ending in {suffix}")
    check_output_folder(parser, option, path.parent, given=path)


@contextlib.contextmanager
def given_or_temporary_folder(path, prefix: str):
    """`path` when given (the user keeps it), else a temporary folder deleted with everything in it on exit: a
    full-size check writes tens of GB there."""
    if path is not None:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(default: …)" to options whose default is a value."""

    def _get_help_string(self, action):
        no_value = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if action.help is None or no_value or "%(default)" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def pipeline_parser(
    description: str, prompt: str, output: str, video: bool = False, source: bool = False, edit: bool = False
) -> argparse.ArgumentParser:
    """The command line of a pipeline example: `video` adds --num-frames and --fps, `source` --image, `edit`
    --image-guidance-scale."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        help="a Hydra-X checkpoint folder (default: a tiny model with random weights, built in a temporary folder: "
        "its output is noise)",
    )
    parser.add_argument("--prompt", default=prompt, help="what to generate" if not edit else "the edit instruction")
    parser.add_argument(
        "--output", type=Path, default=Path(output), help=f"the {'MP4' if video else 'PNG'} file to write"
    )
    if source:
        parser.add_argument(
            "--image",
            type=Path,
            help=f"the {'source' if edit else 'first frame'}, center-cropped and resized to --height × --width "
            "(default: scikit-image's astronaut photo)",
        )
    parser.add_argument("--height", type=int, default=64, help=f"output height in pixels, a multiple of {PATCH_SIZE}")
    parser.add_argument("--width", type=int, default=64, help=f"output width in pixels, a multiple of {PATCH_SIZE}")
    if video:
        parser.add_argument("--num-frames", type=int, default=9, help="video length: 1 + 4k frames, k ≥ 1")
        parser.add_argument("--fps", type=int, default=8, help="frames per second of the MP4, ≥ 1")
    parser.add_argument("--steps", type=int, default=4, help="denoising (Euler) steps")
    parser.add_argument(
        "--guidance-scale",
        type=finite_float,
        default=4.0,
        help="classifier-free guidance on the prompt; ≤ 1 turns it off",
    )
    if edit:
        parser.add_argument(
            "--image-guidance-scale",
            type=finite_float,
            default=1.5,
            help="guidance on the source image (how closely the edit follows it); ≤ 1 turns it off",
        )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument(
        "--lora",
        type=Path,
        help="a LoRA adapter folder of the model (examples/train_hydrax.py --lora-r writes OUTPUT_DIR/adapter), "
        "loaded onto the pipeline with `load_lora_weights`",
    )
    parser.add_argument(
        "--lora-scale", type=finite_float, help="weight of the --lora adapter's update (default: 1.0; needs --lora)"
    )
    return parser


def parse_pipeline_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse and check a pipeline example's arguments (see `pipeline_parser`) before any work starts."""
    args = parser.parse_args(argv)
    for option, value in (("--height", args.height), ("--width", args.width)):
        if value < PATCH_SIZE or value % PATCH_SIZE:
            parser.error(f"{option} must be a positive multiple of {PATCH_SIZE}, got {value}")
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    video = hasattr(args, "num_frames")
    if video and (args.num_frames < 5 or (args.num_frames - 1) % 4):
        parser.error(f"--num-frames must be 1 + 4k with k ≥ 1 (5, 9, 13, …), got {args.num_frames}")
    if video and args.fps < 1:
        parser.error(f"--fps must be ≥ 1, got {args.fps}")
    if args.model is not None:
        hint = "pass a checkpoint folder written by conversion/build_hydrax.py or examples/run_hydrax.py"
        check_hydrax_folder(parser, "--model", args.model, hint)
    if getattr(args, "image", None) is not None:
        check_image(parser, "--image", args.image)
    check_adapter(parser, "--lora", args.lora, hub_ids=False)
    if args.lora_scale is not None and args.lora is None:
        parser.error(f"--lora-scale {args.lora_scale} without --lora: pass the adapter folder with --lora")
    args.lora_scale = 1.0 if args.lora_scale is None else args.lora_scale
    check_output_file(parser, "--output", args.output, ".mp4" if video else ".png")
    return args


def load_pipeline(pipeline_class, model: Path | None):
    """`pipeline_class` from the checkpoint folder `model`, or from a tiny random-weight one built in a temporary
    folder (conversion/build_hydrax.py must be importable)."""
    if model is not None:
        return pipeline_class.from_pretrained(model)
    import tempfile

    from build_hydrax import build_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        pipe = pipeline_class.from_pretrained(build_checkpoint("tiny", Path(folder) / "hydrax-tiny"))
    print("no --model: using a tiny Hydra-X with random weights, built on the fly; its output is noise")
    return pipe


def load_source(path: Path | None, height: int, width: int):
    """The image at `path` (default: scikit-image's astronaut photo), turned upright by its EXIF orientation, in RGB
    as the processor reads it (`rgb_image`), center-cropped and resized to height × width."""
    from PIL import Image, ImageOps

    from processing_hydrax.image_processing_hydrax import rgb_image

    if path is None:
        from skimage import data

        image = Image.fromarray(data.astronaut())
    else:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
    return ImageOps.fit(rgb_image(image), (width, height), Image.Resampling.BICUBIC)


def write_atomically(path: Path, write) -> None:
    """`write(partial_path)` beside `path`, then renamed into place, so a failure never leaves a half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_video(frames, path: Path, fps: int) -> None:
    """PIL frames → an H.264 MP4 at `path`, with PyAV (written atomically)."""
    import av

    def encode(partial: Path) -> None:
        with av.open(str(partial), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames[0].size
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_image(frame)))
            container.mux(stream.encode())

    write_atomically(path, encode)


def run_example(pipeline_class, description: str, argv=None, **parser_options) -> None:
    """A pipeline example from its command line to its output file: parse and check the arguments (see
    `pipeline_parser` for `parser_options`), load the pipeline, generate, write the PNG or MP4 and print where."""
    import torch

    parser = pipeline_parser(description, **parser_options)
    args = parse_pipeline_args(parser, argv)
    inputs = {}
    if hasattr(args, "num_frames"):
        inputs["num_frames"] = args.num_frames
    if hasattr(args, "image"):
        inputs["image"] = load_source(args.image, args.height, args.width)
    if hasattr(args, "image_guidance_scale"):
        inputs["image_guidance_scale"] = args.image_guidance_scale
    pipe = load_pipeline(pipeline_class, args.model)
    if args.lora is not None:
        pipe.load_lora_weights(args.lora, adapter_name="lora")
        pipe.set_adapters("lora", args.lora_scale)
    output = pipe(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
        **inputs,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if output.frames is not None:
        write_video(output.frames[0], args.output, args.fps)
    else:
        write_atomically(args.output, lambda partial: output.images[0].save(partial, format="PNG"))
    print(f"wrote {args.output}")
