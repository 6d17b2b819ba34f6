r"""Import a checkpoint in another layout (a future official Hydra-X release, a training framework's state dict) into
a Hydra-X or Hydra-XTok model, through a table of renaming rules.

Rules are `[(pattern, replacement), ...]`, tried in order: the first pattern that matches the whole source key
(`re.fullmatch`) wins, and its replacement, expanded with the match's groups (`\1`, `\g<name>`), names the target
key; a `None` replacement drops the key deliberately (reported). Strict by default: a source key that no rule
matches, or a target tensor that nothing fills and no `new` pattern allows (modules the import leaves newly
initialised), is an error listing the keys; with `strict=False` they are reported instead. A target the model ties to
another (`lm_head.weight` under `tie_word_embeddings`, which `save_pretrained` leaves out) is filled through that one:
it is never missing, and renaming a source key onto it is an error. Two keys renamed to one target, a target the model
lacks, and a shape or dtype mismatch are always errors, naming the key and both shapes.
`transforms` ({target pattern: function}) reshape a tensor on its way in; planning applies them to meta tensors, so a
whole import is checked from names and shapes alone, before any weight is read (conversion/convert_siglip2_to_
hydrax_tok.py builds SigLIP 2's patch embedding into a tubelet one this way).

Sources: a safetensors file, a `.bin` / `.pt` / `.pth` file (read with `torch.load(weights_only=True)` only: a pickle
that holds anything but tensors and plain containers is refused), or a folder with a single such file or a sharded
one (`*.index.json`). The result is written next to the output folder and renamed into place only once it has been
reloaded from disk and every tensor's dtype, shape and value checked. The command line also copies every other file of
the --model-config folder except its weights, model card and conversion report (the processor, tokenizer, chat
template, generation config and pipeline files of a Hydra-X checkpoint folder), so the output loads as that folder
does; it writes no model card (conversion/model_card_hydrax.py writes one for a Hydra-X checkpoint).

    python conversion/checkpoint_importer.py --source trainer/step-100000.pt --state-dict-key model \
        --rules rules.json --model-config outputs/hydrax-tok-config --output outputs/hydrax-tok-imported

rules.json holds the table, and optionally the patterns of target tensors left newly initialised:

    {"rules": [["module\\.blocks\\.(\\d+)\\.(.*)", "gen_vit.encoder.layers.\\1.\\2"], ["ema\\..*", null]],
     "new": ["decompressor\\..*"]}

The command line has no transforms (JSON holds no functions): a layout that needs one gets a small converter of its
own that calls `import_checkpoint` from Python, as the SigLIP 2 converter does.
"""

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_args import HelpFormatter, check_file, check_folder, check_inputs_outside, check_output_folder  # noqa: E402


Rule = tuple[str, str | None]
REPORT_NAME = "conversion_report.json"
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".index.json")
# Files of the --model-config folder that describe its own weights, not the imported ones.
NOT_KEPT = ("README.md", REPORT_NAME)
LISTED_KEYS = 20


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported as asked; the message names the keys or the file at fault."""


def key_list(keys: Iterable[str]) -> str:
    """The first `LISTED_KEYS` of `keys`, sorted, and how many more there are."""
    keys = sorted(keys)
    more = f" … and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
    return ", ".join(keys[:LISTED_KEYS]) + more


@dataclass
class ImportPlan:
    """Where every source tensor goes, from names and shapes alone.

    `sources`: target key → source key; `shapes`: target key → shape after its transform; `transforms`: target key →
    the function applied on the way in; `dropped`: source key → the pattern of the rule that dropped it;
    `unmapped`: source keys no rule matches; `new`: target keys left to their initialisation; `missing`: target keys
    nothing fills that no `new` pattern allows; `tied`: target key → the target key it is tied to (filled through
    it); `errors`: collisions, unknown or tied targets and shape/dtype mismatches.
    """

    sources: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def check(self, strict: bool = True) -> None:
        """Raise `CheckpointImportError` on any error and, when `strict`, on unmapped or missing keys."""
        problems = list(self.errors)
        if strict and self.unmapped:
            problems.append(
                f"{len(self.unmapped)} source tensor(s) match no rule (add a rule, or one mapping them to None to "
                f"drop them): {key_list(self.unmapped)}"
            )
        if strict and self.missing:
            problems.append(
                f"{len(self.missing)} target tensor(s) are filled by no source tensor and allowed by no `new` "
                f"pattern: {key_list(self.missing)}"
            )
        if problems:
            raise CheckpointImportError("Cannot import the checkpoint:\n- " + "\n- ".join(problems))

    def summary(self) -> dict:
        """Counts, the rule that dropped each tensor, and what stayed unmapped or missing (for a JSON report)."""
        return {
            "source_tensors": len(self.sources) + len(self.dropped) + len(self.unmapped),
            "mapped_tensors": len(self.sources),
            "dropped_tensors": len(self.dropped),
            "new_tensors": len(self.new),
            "mapping": {source: target for target, source in sorted(self.sources.items())},
            "transforms": {target: transform.__name__ for target, transform in sorted(self.transforms.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "unmapped": self.unmapped,
            "missing": self.missing,
            "tied": dict(sorted(self.tied.items())),
        }


def compile_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern, str | None]]:
    """Check and compile a rule table; a bad rule is an error naming its index (a replacement naming a group its
    pattern lacks, when a key first takes it: `expand_rule`)."""
    compiled = []
    for index, rule in enumerate(rules):
        if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise CheckpointImportError(f"Rule {index} must be a (pattern, replacement or None) pair, got {rule!r}.")
        pattern, replacement = rule
        if replacement is not None and not isinstance(replacement, str):
            raise CheckpointImportError(f"Rule {index} ({pattern!r}): the replacement must be a string or None.")
        try:
            compiled.append((re.compile(pattern), replacement))
        except re.error as error:
            raise CheckpointImportError(f"Rule {index}: {pattern!r} is not a valid regex ({error}).") from None
    return compiled


def expand_rule(match: re.Match, replacement: str, index: int) -> str:
    """The target key rule `index` makes of `match`, or an error naming the rule (its replacement refers to a group
    its pattern does not have)."""
    try:
        return match.expand(replacement)
    except (re.error, IndexError) as error:
        raise CheckpointImportError(
            f"Rule {index} ({match.re.pattern!r} → {replacement!r}): the replacement is invalid for its pattern "
            f"({error}); refer only to the pattern's groups (\\1 … \\{match.re.groups}, \\g<name>)."
        ) from None


def compile_patterns(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    """`patterns` compiled, or an error naming the one that is not a regex (`what`: where it was given)."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise CheckpointImportError(f"{what}: {pattern!r} is not a valid regex ({error}).") from None
    return compiled


def meta_like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def tied_weights(model: torch.nn.Module) -> dict[str, str]:
    """The tensors `model` ties to another: name → the tensor it shares storage with (`lm_head.weight` → the input
    embedding under `tie_word_embeddings`); `save_pretrained` writes only the latter. A plain `nn.Module` ties none."""
    return dict(getattr(model, "all_tied_weights_keys", None) or {})


def plan_import(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    new: Iterable[str] = (),
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    tied: Mapping[str, str] | None = None,
) -> ImportPlan:
    """Plan importing `source` into `target` (state dicts; meta tensors do): see the module docstring for the rules.

    `new` and the keys of `transforms` are regexes matched against the whole target key; `tied` holds the target's
    tied tensors (`tied_weights`).
    """
    compiled = compile_rules(rules)
    new_patterns = compile_patterns(new, "`new`")
    transform_rules = [(re.compile(pattern), function) for pattern, function in (transforms or {}).items()]
    plan = ImportPlan(tied={name: tied_to for name, tied_to in (tied or {}).items() if name in target})
    for key in sorted(source):
        rule = next(
            (
                (index, match, repl)
                for index, (pattern, repl) in enumerate(compiled)
                if (match := pattern.fullmatch(key))
            ),
            None,
        )
        if rule is None:
            plan.unmapped.append(key)
            continue
        index, match, replacement = rule
        if replacement is None:
            plan.dropped[key] = match.re.pattern
            continue
        name = expand_rule(match, replacement, index)
        if name in plan.sources:
            plan.errors.append(f"{plan.sources[name]!r} and {key!r} both map to {name!r}")
            continue
        if name in plan.tied:
            plan.errors.append(
                f"{key!r} maps to {name!r}, which the target model ties to {plan.tied[name]!r} (they share storage): "
                f"fill {plan.tied[name]!r} and drop {key!r} with a None rule"
            )
            continue
        if name not in target:
            plan.errors.append(f"{key!r} maps to {name!r}, which the target model does not have")
            continue
        plan.sources[name] = key
        converted = meta_like(source[key])
        transform = next((function for pattern, function in transform_rules if pattern.fullmatch(name)), None)
        if transform is not None:
            plan.transforms[name] = transform
            converted = transform(converted)
        plan.shapes[name] = tuple(converted.shape)
        expected = target[name]
        via = f" after {transform.__name__}" if transform is not None else ""
        if converted.shape != expected.shape:
            plan.errors.append(
                f"{key!r} → {name!r}: the source has shape {tuple(converted.shape)}{via}, the target "
                f"{tuple(expected.shape)}"
            )
        elif converted.is_floating_point() != expected.is_floating_point() or (
            not expected.is_floating_point() and converted.dtype != expected.dtype
        ):
            plan.errors.append(f"{key!r} → {name!r}: dtype {converted.dtype}{via} cannot become {expected.dtype}")
    for name in sorted(set(target) - set(plan.sources) - set(plan.tied)):
        (plan.new if any(pattern.fullmatch(name) for pattern in new_patterns) else plan.missing).append(name)
    return plan


def load_planned(model: torch.nn.Module, plan: ImportPlan, source: Mapping[str, torch.Tensor]) -> None:
    """Copy the planned tensors of `source` into `model` (transformed, cast to the target's floating dtype)."""
    target = model.state_dict()
    tensors = {}
    for name, key in plan.sources.items():
        tensor = source[key]
        if name in plan.transforms:
            tensor = plan.transforms[name](tensor)
        tensors[name] = tensor.to(target[name].dtype)
    model.load_state_dict(tensors, strict=False)


def import_checkpoint(
    source: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    rules: Sequence[Rule],
    new: Iterable[str] = (),
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    strict: bool = True,
) -> ImportPlan:
    """Plan, check (see `ImportPlan.check`) and load `source` into `model` in place; returns the plan."""
    plan = plan_import(source, model.state_dict(), rules, new, transforms, tied_weights(model))
    plan.check(strict)
    load_planned(model, plan, source)
    return plan


# ---------------------------------------------------------------- reading checkpoints
def check_safetensors(path: Path) -> list[str]:
    """The tensor names of the safetensors file `path`; a truncated or corrupted file is an error naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as error:
        raise CheckpointImportError(
            f"{path} is not a readable safetensors file ({error}); it is probably truncated or corrupted: copy or "
            "download it again."
        ) from None


def read_weights_file(path: Path, state_dict_key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors or `.bin`/`.pt`/`.pth` file (`state_dict_key` picks a nested state dict)."""
    if path.suffix == ".safetensors":
        if state_dict_key is not None:
            raise CheckpointImportError(
                f"{path}: a safetensors file holds its tensors by name, with no state dict entries to pick "
                f"{state_dict_key!r} from; drop the state dict key (--state-dict-key is for .pt / .bin files)."
            )
        check_safetensors(path)
        return load_file(str(path))
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointImportError(f"{path}: unknown weights format; pass .safetensors, .bin, .pt or .pth files.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise CheckpointImportError(
            f"{path}: torch.load(weights_only=True) refused it ({type(error).__name__}: {error}). Only tensors and "
            "plain containers are read; the file may also be truncated or corrupted."
        ) from None
    if state_dict_key is not None:
        if not isinstance(loaded, dict) or state_dict_key not in loaded:
            keys = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
            raise CheckpointImportError(
                f"{path}: no entry {state_dict_key!r} to read the weights from; it has {keys}."
            )
        loaded = loaded[state_dict_key]
    if not isinstance(loaded, dict):
        raise CheckpointImportError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors.")
    others = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise CheckpointImportError(
            f"{path}: entries that are not tensors: {key_list(map(str, others))}; if the weights sit under one of "
            "them, pass it as the state dict key (--state-dict-key)."
        )
    return loaded


def read_checkpoint(path, state_dict_key: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a weights file, or of a folder holding a sharded one (`*.index.json`) or a single one: the
    standard names first, else the folder's only weights file or index (a trainer's `step-100.pt`)."""
    path = Path(path)
    if path.is_file():
        return read_weights_file(path, state_dict_key)
    index = next((path / name for name in INDEX_NAMES if (path / name).is_file()), None)
    single = next((path / name for name in SINGLE_NAMES if (path / name).is_file()), None)
    if index is None and single is None:
        files = sorted(file for file in path.iterdir() if file.is_file() and file.name.endswith(WEIGHT_SUFFIXES))
        indexes = [file for file in files if file.name.endswith(".index.json")]
        if len(indexes) == 1:
            index = indexes[0]
        elif len(files) == 1:
            single = files[0]
        else:
            found = f"{len(files)} weights files ({key_list(file.name for file in files)})" if files else "no weights"
            raise CheckpointImportError(
                f"{path} holds {found}; pass the weights file itself, or a folder with one weights file, one sharded "
                f"checkpoint's index or {' / '.join(INDEX_NAMES + SINGLE_NAMES)}."
            )
    if index is None:
        return read_weights_file(single, state_dict_key)
    weight_map = json.loads(index.read_text())["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (path / shard).is_file():
            raise CheckpointImportError(f"{index} lists the shard {shard}, which is missing from {path}.")
        tensors.update(read_weights_file(path / shard, state_dict_key))
    absent = set(weight_map) - set(tensors)
    if absent:
        raise CheckpointImportError(f"{index} lists tensors its shards lack: {key_list(absent)}.")
    return tensors


# ---------------------------------------------------------------- writing and checking the result
def module_cover(model: torch.nn.Module, keys: Iterable[str]) -> list[str]:
    """The fewest module names (and stray tensor names) whose tensors are exactly `keys`: a readable list of what
    an import left newly initialised."""
    keys, cover, covered = set(keys), [], set()
    for name, module in model.named_modules():
        own = {f"{name}.{key}" if name else key for key in module.state_dict()}
        if name and own and own <= keys and not own & covered:
            cover.append(name)
            covered |= own
    return cover + sorted(keys - covered)


def check_reloaded(model: torch.nn.Module, reloaded: torch.nn.Module) -> str:
    """Every tensor of `reloaded` has the dtype, shape and value of `model`'s; a mismatch is an error naming it."""
    expected, actual = model.state_dict(), reloaded.state_dict()
    if set(expected) != set(actual):
        difference = set(expected) ^ set(actual)
        raise CheckpointImportError(f"The reloaded checkpoint's tensors differ in name: {key_list(difference)}.")
    for name, tensor in expected.items():
        other = actual[name]
        if other.dtype != tensor.dtype or other.shape != tensor.shape or not torch.equal(other, tensor):
            raise CheckpointImportError(
                f"The reloaded {name!r} is {other.dtype} {tuple(other.shape)}, not the written {tensor.dtype} "
                f"{tuple(tensor.shape)} (or its values differ)."
            )
    return f"reloaded from disk: all {len(expected)} tensors have the written dtype, shape and value"


@contextmanager
def sigterm_as_exit():
    """In the block, SIGTERM (what SLURM, Kubernetes and `timeout` send) raises `SystemExit(143)`, so that cleanups
    run; its default action ends the process on the spot. Only on the main thread, and only where SIGTERM still has
    its default action (a handler of the user's or a launcher's is left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def exit_on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def staged_folder(output: Path):
    """A temporary folder next to `output`, renamed into place (replacing `output`) when the block completes and
    removed when it fails or the process is terminated (`sigterm_as_exit`), so `output` is never half-written and no
    full-size staging folder is left behind. A replaced `output` is first moved aside and deleted only once the new
    folder is in place, so no failure leaves neither. An `output` that is a symbolic link is replaced where it points
    (the link stays). The folder and its files get the modes a plain `mkdir` / `open` give (the umask's, not
    `mkdtemp`'s private 0700 or the 0600 transformers writes safetensors weights with), so other users and serving
    containers can read them."""
    output = output.resolve() if output.is_symlink() else output
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    with sigterm_as_exit():
        try:
            yield staging
            umask = os.umask(0)
            os.umask(umask)
            for path in [staging, *staging.rglob("*")]:
                if not path.is_symlink():
                    path.chmod((path.stat().st_mode | (0o777 if path.is_dir() else 0o666)) & 0o777 & ~umask)
            previous = staging.with_name(f"{staging.name}-previous") if output.exists() else None
            if previous is not None:
                output.rename(previous)
            try:
                staging.rename(output)
            except BaseException:
                if previous is not None:
                    previous.rename(output)
                raise
            if previous is not None:
                shutil.rmtree(previous)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def copy_companion_files(source: Path, folder: Path) -> list[str]:
    """Copy into `folder` every file of the checkpoint folder `source` that `folder` lacks, except weights (and their
    index), the model card, the conversion report and hidden files; returns their paths relative to `folder`. An
    imported checkpoint keeps its processor, tokenizer, chat template, generation config and pipeline files so."""
    copied = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if (
            path.is_dir()
            or path.name in NOT_KEPT
            or path.name.endswith(WEIGHT_SUFFIXES)
            or any(part.startswith(".") for part in relative.parts)
            or (folder / relative).exists()
        ):
            continue
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / relative)
        copied.append(relative.as_posix())
    return copied


def write_model(
    model,
    output,
    report: dict,
    force: bool = False,
    verify: Callable[[torch.nn.Module], list[str]] | None = None,
    add_files: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Save `model` (a `PreTrainedModel`) next to `output`, reload it, check it (`check_reloaded`, then `verify` on
    the reloaded model, whose findings join `report["checks"]`), write `report` as JSON and only then move the folder
    into place. `add_files` writes the folder's other files (a card, the processor) after the model and returns their
    paths, listed in `report["added_files"]`. An existing `output` is replaced only with `force`."""
    output = Path(output)
    if output.exists() and not force:
        raise FileExistsError(f"{output} already exists; pass --force (force=True) to replace it.")
    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        if add_files is not None:
            report["added_files"] = add_files(staging)
        reloaded, info = type(model).from_pretrained(staging, dtype="auto", output_loading_info=True)
        problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
        if problems:
            raise CheckpointImportError(f"Reloading the written checkpoint reported {problems}.")
        checks = [check_reloaded(model, reloaded)]
        if verify is not None:
            checks += verify(reloaded)
        report["checks"] = checks
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return output


# ---------------------------------------------------------------- command line
def read_rules(path: Path) -> tuple[list[Rule], list[str]]:
    """The rule table and `new` patterns of a rules JSON file: `{"rules": [...], "new": [...]}` or a bare list."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise CheckpointImportError(f"{path}: expected {{'rules': [[pattern, replacement], ...], 'new': [...]}}.")
    unknown = set(data) - {"rules", "new"}
    if unknown:
        raise CheckpointImportError(f"{path}: unknown entries {sorted(unknown)}; expected 'rules' and 'new'.")
    compile_rules(data["rules"])
    compile_patterns(data.get("new", []), f"{path}: `new`")
    return data["rules"], list(data.get("new", []))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--source", type=Path, required=True, help="a weights file, or a folder with one or a sharded one"
    )
    parser.add_argument(
        "--rules", type=Path, required=True, help="a JSON file with the renaming rules (and `new` patterns)"
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        required=True,
        help="a folder whose config.json describes the target model (e.g. a Hydra-X or Hydra-XTok checkpoint); its "
        "other files except weights, model card and conversion report (processor, tokenizer, chat template, "
        "generation config, pipeline files) are copied into the output",
    )
    parser.add_argument("--output", type=Path, required=True, help="checkpoint folder to create")
    parser.add_argument("--state-dict-key", help="read the weights from this entry of a .pt/.bin file's dict")
    parser.add_argument(
        "--no-strict",
        action="store_true",
        help="report unmapped source tensors and unfilled target tensors instead of stopping",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the tensors the source does not fill")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        check_file(parser, "--source", args.source, "pass a weights file or a folder holding one")
    check_file(parser, "--rules", args.rules, "pass a rules JSON file")
    hint = "pass a folder with the target model's config.json"
    check_folder(parser, "--model-config", args.model_config, hint, required_file="config.json")
    check_output_folder(parser, "--output", args.output, replaced=True)
    check_inputs_outside(parser, "--output", args.output, {"--source": args.source, "--rules": args.rules})
    if args.output.exists() and not args.force:
        parser.error(f"--output {args.output}: already exists; pass --force to replace it")

    from transformers import AutoConfig, AutoModel, GenerationConfig

    import modeling_hydrax  # noqa: F401  (registers the Hydra-X classes with the Auto* factories)

    try:
        rules, new = read_rules(args.rules)
        source = read_checkpoint(args.source, args.state_dict_key)
        torch.manual_seed(args.seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(args.model_config))
        if (args.model_config / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(args.model_config)
        plan = import_checkpoint(source, model, rules, new, strict=not args.no_strict)
        report = {"source": str(args.source), "rules": str(args.rules), **plan.summary()}
        report["new_modules"] = module_cover(model, plan.new)
        add_files = partial(copy_companion_files, args.model_config)
        write_model(model, args.output, report, force=args.force, add_files=add_files)
    except (CheckpointImportError, json.JSONDecodeError, FileExistsError) as error:
        parser.error(str(error))
    print(
        f"imported {report['mapped_tensors']} of {report['source_tensors']} source tensors into {args.output} "
        f"({report['dropped_tensors']} dropped, {len(plan.unmapped)} unmapped, {len(plan.missing)} missing, "
        f"{report['new_tensors']} newly initialised: {', '.join(report['new_modules']) or 'none'})"
    )
    kept = key_list(report["added_files"]) or "nothing (no processor, tokenizer or generation config to keep)"
    print(f"kept from {args.model_config}: {kept}; not its weights, model card or report: {args.output} has no card")


if __name__ == "__main__":
    main()
