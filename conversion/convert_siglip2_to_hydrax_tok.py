r"""Convert a SigLIP 2 checkpoint into a Hydra-XTok checkpoint initialised from it, as the paper initialises Hydra-XTok
(from SigLIP 2 so400m-patch16-naflex).

The source is a transformers `Siglip2VisionModel` or full `Siglip2Model`, a local folder or a Hub id. What goes where
(one rule table, `conversion_rules`, applied by conversion/checkpoint_importer.py):

    embeddings.patch_embedding        → gen_vit.patch_embedding. SigLIP 2 embeds p·p·C pixels, Hydra-XTok 2-frame
                                        tubelets in which an image (the anchor) is preceded by a zero frame: the
                                        anchor's slot gets SigLIP 2's weights and the padding's slot zeros, so an image
                                        embeds exactly as in SigLIP 2 (a video tubelet starts out seeing its second
                                        frame only; training learns the first frame's weights)
    embeddings.position_embedding     → gen_vit.position_embedding (resized with SigLIP 2's own interpolation when
                                        --config sets another position_embedding_size)
    encoder.layers.0 … G-1            → gen_vit.encoder.layers.0 … G-1
    encoder.layers.G … L-1            → sem_vit.encoder.layers.0 … L-G-1
    post_layernorm                    → sem_vit.post_layernorm (the Sem-ViT ends as SigLIP 2 does)
    head, text_model, logit_scale/bias → dropped: the attention-pooling head, a full model's text tower
Newly initialised: the Gen-ViT's temporal fold, final norm and bottleneck, the Sem-ViT's latent projection, the pixel
decoder and the Decompressor.

The config follows the source: width, heads, MLP, activation, LayerNorm eps and patch size are SigLIP 2's (--config
cannot change them); its L layers split into Gen-ViT and Sem-ViT in the default 13 : 14 proportion (27 → 13 + 14, the
second temporal fold after layer 6) and the decoder gets L layers. --config (a JSON object, inline or in a file)
overrides any other Hydra-XTok field; a layer count it sets moves the fold (or the decoder's unfold) to the same
proportion of the new depth, unless it sets that layer too. Hydra-XTok's 3D RoPE (use_rope) has no SigLIP 2
counterpart: the copied layers compute what SigLIP 2's do on the same input, and the rotation on top is learned in
training.

The conversion ends by reloading the written folder and checking every tensor's dtype, shape and value, that the
converted tokenizer embeds an image as SigLIP 2 does, and that each copied layer and the post-layernorm give the
source's output on the same input. The report (counts, dropped tensors, new modules, checks) is printed and written
into the folder as conversion_report.json, beside a model card whose `base_model` is the SigLIP 2 Hub id (none for a
local folder), which conversion/build_hydrax.py carries into the Hydra-X card. The folder is written next to --output
and renamed into place only when complete; an existing --output is replaced only with --force.

    python conversion/convert_siglip2_to_hydrax_tok.py --siglip google/siglip2-so400m-patch16-naflex \
        --output outputs/hydrax-tok-siglip2
"""

import argparse
import json
import math
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint_importer import (  # noqa: E402
    REPORT_NAME,
    CheckpointImportError,
    ImportPlan,
    Rule,
    check_safetensors,
    load_planned,
    module_cover,
    plan_import,
    write_model,
)
from model_card_hydrax import CARD_TEMPLATE  # noqa: E402
from transformers import Siglip2Model, Siglip2VisionModel  # noqa: E402
from transformers.configuration_utils import PreTrainedConfig  # noqa: E402
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches  # noqa: E402
from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings  # noqa: E402

from modeling_hydrax import HydraXTokConfig, HydraXTokModel  # noqa: E402
from script_args import (  # noqa: E402
    HelpFormatter,
    check_file,
    check_folder,
    check_inputs_outside,
    check_output_folder,
    looks_like_path,
)


SIGLIP2_CLASSES = {"siglip2": Siglip2Model, "siglip2_vision_model": Siglip2VisionModel}
# Config fields the SigLIP 2 weights fix: copied from the source, never overridden.
SOURCE_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "num_channels",
    "patch_size",
    "attention_dropout",
)
VISION = r"(?:vision_model\.)?"  # a full Siglip2Model nests the vision tower under `vision_model.`
DROPPED = {
    VISION + r"head\..*": "SigLIP 2's attention-pooling head (Hydra-XTok keeps every patch token)",
    r"text_model\..*": "the text tower of a full Siglip2Model",
    r"logit_(?:scale|bias)": "the image-text logit scale and bias of a full Siglip2Model",
}
POSITIONS_OFF = "SigLIP 2's position embedding (the config sets use_abs_pos_embed=False)"
NEW_MODULES = (
    r"gen_vit\.encoder\.temporal_fold\..*",
    r"gen_vit\.norm\..*",
    r"gen_vit\.bottleneck\..*",
    r"sem_vit\.latent_proj\..*",
    r"decoder\..*",
    r"decompressor\..*",
)
POSITION_GRID = "gen_vit.position_embedding.position_embedding.weight"
TOKENS_CHECKED = 6  # tokens of the random input each copied layer is compared on


# ---------------------------------------------------------------- planning: names → names + transforms, no weights
def siglip2_vision_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision config of a SigLIP 2 config; any other model type is an error naming it."""
    if config.model_type not in SIGLIP2_CLASSES:
        raise ValueError(
            f"Expected a SigLIP 2 config (model_type {' or '.join(map(repr, SIGLIP2_CLASSES))}), got "
            f"{config.model_type!r}."
        )
    return config.vision_config if config.model_type == "siglip2" else config


def layer_split(
    num_layers: int, num_gen_layers: int | None = None, num_decoder_layers: int | None = None
) -> dict[str, int]:
    """Hydra-XTok's layer counts for a SigLIP 2 encoder of `num_layers` layers, in the proportions of the defaults
    (27 = 13 Gen-ViT with the fold after 6 + 14 Sem-ViT; a 27-layer decoder unfolding after 14). A given
    `num_gen_layers` / `num_decoder_layers` is kept, and its fold / unfold layer follows it."""
    if num_layers < 2:
        raise ValueError(f"A SigLIP 2 encoder of {num_layers} layer(s) cannot fill both a Gen-ViT and a Sem-ViT.")
    if num_gen_layers is not None and not 1 <= num_gen_layers < num_layers:
        raise ValueError(
            f"--config: num_gen_layers must be 1 to {num_layers - 1} (SigLIP 2's {num_layers} layers fill the Gen-ViT "
            f"and then the Sem-ViT), got {num_gen_layers}."
        )
    paper = HydraXTokConfig
    total = paper.num_gen_layers + paper.num_sem_layers
    if num_gen_layers is None:
        num_gen_layers = min(max(round(num_layers * paper.num_gen_layers / total), 1), num_layers - 1)
    if num_decoder_layers is None:
        num_decoder_layers = round(num_layers * paper.num_decoder_layers / total)
    return {
        "num_gen_layers": num_gen_layers,
        "gen_fold_layer": round(num_gen_layers * paper.gen_fold_layer / paper.num_gen_layers),
        "num_sem_layers": num_layers - num_gen_layers,
        "num_decoder_layers": num_decoder_layers,
        "decoder_unfold_layer": round(num_decoder_layers * paper.decoder_unfold_layer / paper.num_decoder_layers),
    }


def derive_config(vision: PreTrainedConfig, overrides: dict | None = None) -> HydraXTokConfig:
    """The Hydra-XTok config of a SigLIP 2 vision config (see the module docstring); `overrides` replace the fields
    the SigLIP 2 weights leave free."""
    overrides = dict(overrides or {})
    fields = HydraXTokConfig.__annotations__
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"--config: {unknown} are not Hydra-XTok config fields; the fields are {sorted(fields)}.")
    fixed = {name: getattr(vision, name) for name in SOURCE_FIELDS} | {"attention_bias": True}
    conflicts = {
        name: {"--config": value, "SigLIP 2": fixed[name]}
        for name, value in overrides.items()
        if name in fixed and value != fixed[name]
    }
    if conflicts:
        raise ValueError(f"--config cannot change what the SigLIP 2 weights fix: {conflicts}.")
    grid = math.isqrt(vision.num_patches)
    if grid * grid != vision.num_patches:
        raise ValueError(f"SigLIP 2's num_patches ({vision.num_patches}) is not a square grid of positions.")
    depths = {name: overrides.get(name) for name in ("num_gen_layers", "num_decoder_layers")}
    for name, value in depths.items():
        if value is not None and not isinstance(value, int):
            raise ValueError(f"--config: {name} must be an integer, got {value!r}.")
    split = layer_split(vision.num_hidden_layers, **depths)
    try:
        config = HydraXTokConfig(**{**fixed, "position_embedding_size": grid, **split, **overrides})
    except StrictDataclassError as error:
        raise ValueError(f"--config: the Hydra-XTok config rejects {overrides}: {error}") from None
    if config.num_gen_layers + config.num_sem_layers != vision.num_hidden_layers:
        raise ValueError(
            f"num_gen_layers ({config.num_gen_layers}) + num_sem_layers ({config.num_sem_layers}) must equal "
            f"SigLIP 2's {vision.num_hidden_layers} layers, so that every layer is used exactly once."
        )
    return config


def dropped_patterns(config: HydraXTokConfig) -> dict[str, str]:
    """Source patterns deliberately dropped, with the reason the report gives."""
    dropped = dict(DROPPED)
    if not config.use_abs_pos_embed:
        dropped[VISION + r"embeddings\.position_embedding\.weight"] = POSITIONS_OFF
    return dropped


def conversion_rules(config: HydraXTokConfig, num_layers: int) -> list[Rule]:
    """The rule table (see conversion/checkpoint_importer.py): SigLIP 2 names → Hydra-XTok names, or dropped."""
    rules = [(VISION + r"embeddings\.patch_embedding\.(weight|bias)", r"gen_vit.patch_embedding.\1")]
    if config.use_abs_pos_embed:
        rules.append((VISION + r"embeddings\.position_embedding\.weight", POSITION_GRID))
    for index in range(num_layers):
        gen = index < config.num_gen_layers
        target = (
            f"gen_vit.encoder.layers.{index}" if gen else f"sem_vit.encoder.layers.{index - config.num_gen_layers}"
        )
        rules.append((VISION + rf"encoder\.layers\.{index}\.(.*)", rf"{target}.\1"))
    rules.append((VISION + r"post_layernorm\.(weight|bias)", r"sem_vit.post_layernorm.\1"))
    return rules + [(pattern, None) for pattern in dropped_patterns(config)]


def tubelet_patch_embedding(temporal_patch_size: int):
    """The transform of SigLIP 2's patch embedding weight `[D, p·p·C]` into a tubelet one `[D, tp·p·p·C]`."""

    def anchor_slot_zero_padding(weight: torch.Tensor) -> torch.Tensor:
        # Hydra-XTok's `patchify` flattens a tubelet (frame, row, column, channel) and puts the anchor last, after
        # its zero padding; SigLIP 2's processor flattens a patch (row, column, channel).
        tubelet = weight.new_zeros(weight.shape[0], temporal_patch_size, weight.shape[1])
        tubelet[:, -1] = weight
        return tubelet.flatten(1)

    return anchor_slot_zero_padding


def resized_position_grid(size: int):
    """The transform of SigLIP 2's learned position grid `[g·g, D]` to `[size·size, D]`, with SigLIP 2's own
    interpolation (bilinear, antialiased; `Siglip2VisionEmbeddings.resize_positional_embeddings`)."""

    def siglip2_resize_positional_embeddings(weight: torch.Tensor) -> torch.Tensor:
        grid = math.isqrt(weight.shape[0])
        shapes = torch.tensor([[size, size]])
        return Siglip2VisionEmbeddings.resize_positional_embeddings(weight.view(grid, grid, -1), shapes, size**2)[0]

    return siglip2_resize_positional_embeddings


def plan_conversion(
    source_config: PreTrainedConfig, source_state: dict[str, torch.Tensor], overrides: dict | None = None
) -> tuple[HydraXTokConfig, ImportPlan]:
    """The Hydra-XTok config and the checked import plan for a SigLIP 2 config and state dict; needs no weights
    (meta tensors do): every source tensor is mapped or dropped, every target tensor filled or listed as new."""
    vision = siglip2_vision_config(source_config)
    config = derive_config(vision, overrides)
    with torch.device("meta"):
        target = HydraXTokModel(config).state_dict()
    transforms = {r"gen_vit\.patch_embedding\.weight": tubelet_patch_embedding(config.first_temporal_patch_size)}
    if config.position_embedding_size != math.isqrt(vision.num_patches):
        transforms[POSITION_GRID.replace(".", r"\.")] = resized_position_grid(config.position_embedding_size)
    rules = conversion_rules(config, vision.num_hidden_layers)
    plan = plan_import(source_state, target, rules, NEW_MODULES, transforms)
    plan.check(strict=True)
    return config, plan


# ---------------------------------------------------------------- loading, converting, checking
def load_siglip2(siglip: str):
    """The SigLIP 2 model in `siglip` (folder or Hub id), loaded strictly: every checkpoint tensor is a model tensor
    and the other way round."""
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(siglip)
    except OSError as error:
        raise ValueError(
            f"--siglip {siglip}: no such local folder, and not a Hub model id that can be fetched ({error})"
        ) from None
    model_type = config_dict.get("model_type")
    if model_type not in SIGLIP2_CLASSES:
        classes = ", ".join(config_dict.get("architectures") or ["no architectures listed"])
        raise ValueError(
            f"--siglip {siglip} holds a {model_type!r} checkpoint ({classes}), not SigLIP 2: pass a "
            f"Siglip2VisionModel or Siglip2Model checkpoint (model_type {' or '.join(map(repr, SIGLIP2_CLASSES))})."
        )
    for shard in sorted(Path(siglip).glob("*.safetensors")) if Path(siglip).is_dir() else ():
        check_safetensors(shard)
    try:
        model, info = SIGLIP2_CLASSES[model_type].from_pretrained(siglip, dtype="auto", output_loading_info=True)
    except SafetensorError as error:
        raise CheckpointImportError(f"--siglip {siglip}: a weights file is unreadable ({error}).") from None
    except OSError as error:  # a shard missing, or no weights at all
        raise CheckpointImportError(
            f"--siglip {siglip}: its weights cannot be read ({error}); the download may be incomplete: fetch the "
            "checkpoint again (e.g. `hf download ORG/NAME --local-dir FOLDER`)."
        ) from None
    problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    if problems:
        raise CheckpointImportError(f"--siglip {siglip}: its weights do not match its own config: {problems}.")
    return model.eval()


def max_difference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    """The largest absolute difference of two tensors that must agree (`torch.testing.assert_close` tolerances)."""
    try:
        torch.testing.assert_close(actual, expected)
    except AssertionError as error:
        raise CheckpointImportError(f"Check failed: {what} differs from SigLIP 2's.\n{error}") from None
    return (actual.float() - expected.float()).abs().max().item()


def gen_vit_input(model: HydraXTokModel, image: torch.Tensor) -> torch.Tensor:
    """The Gen-ViT stack's input `[B, N, W]` for one image: its patch (+ position) embedding, read before the first
    block whatever follows it (the temporal fold comes first when `gen_fold_layer` is 0)."""
    captured = []
    hook = model.gen_vit.encoder.register_forward_pre_hook(lambda module, args: captured.append(args[0][:, 0]))
    try:
        model.encode(image)
    finally:
        hook.remove()
    return captured[0]


@torch.no_grad()
def verify_equivalences(siglip, model: HydraXTokModel) -> list[str]:
    """The by-construction equivalences of a converted `model` with its source vision tower `siglip`."""
    config, dtype = model.config, model.dtype
    generator = torch.Generator().manual_seed(0)
    source_grid = siglip.embeddings.position_embedding_size
    resized = config.position_embedding_size != source_grid
    checks = []
    # 1. An image embeds as in SigLIP 2: Hydra-XTok's own encode path (the Gen-ViT's input) against SigLIP 2's
    #    embeddings of the same pixels in its processor's patch order.
    for rows, cols in ((source_grid, source_grid), (2, 3)):
        image = torch.rand(
            1, config.num_channels, rows * config.patch_size, cols * config.patch_size, generator=generator
        )
        image = (image * 2 - 1).to(dtype)
        embedded = gen_vit_input(model, image)
        patches = convert_image_to_patches(image[0], config.patch_size)[None]
        if config.use_abs_pos_embed and not resized:
            expected, what = siglip.embeddings(patches, torch.tensor([[rows, cols]])), "patch + position embedding"
        else:
            expected, what = siglip.embeddings.patch_embedding(patches), "patch embedding"
            if config.use_abs_pos_embed:
                embedded = embedded - model.gen_vit.position_embedding(rows, cols, embedded.device)
        difference = max_difference(embedded, expected, f"the {what} of a {rows}×{cols}-patch image")
        checks.append(f"{what} of a {rows}×{cols}-patch image equals SigLIP 2's (max |Δ| {difference:.2e})")
    # 2. A resized position grid is SigLIP 2's own resize of its grid.
    if config.use_abs_pos_embed and resized:
        grid = model.gen_vit.position_embedding.position_embedding.weight
        expected = resized_position_grid(config.position_embedding_size)(siglip.embeddings.position_embedding.weight)
        max_difference(grid, expected, "the resized position grid")
        checks.append(f"position grid {source_grid}² → {config.position_embedding_size}² is SigLIP 2's own resize")
    # 3. Each copied layer, and the post-layernorm, gives the source's output on the same input (one frame, no RoPE).
    hidden = torch.randn(1, TOKENS_CHECKED, config.hidden_size, generator=generator).to(dtype)
    layers = [(f"gen_vit.encoder.layers.{i}", layer) for i, layer in enumerate(model.gen_vit.encoder.layers)]
    layers += [(f"sem_vit.encoder.layers.{i}", layer) for i, layer in enumerate(model.sem_vit.encoder.layers)]
    worst = 0.0
    for index, ((name, layer), source_layer) in enumerate(zip(layers, siglip.encoder.layers, strict=True)):
        output = layer(hidden[:, None])[0][:, 0]
        worst = max(worst, max_difference(output, source_layer(hidden, None), f"{name} (SigLIP 2 layer {index})"))
    checks.append(
        f"each of the {len(layers)} copied layers gives SigLIP 2's output without RoPE (max |Δ| {worst:.2e}); "
        "Hydra-XTok's 3D RoPE on top is learned in training"
    )
    difference = max_difference(model.sem_vit.post_layernorm(hidden), siglip.post_layernorm(hidden), "post_layernorm")
    checks.append(f"sem_vit.post_layernorm equals SigLIP 2's post_layernorm (max |Δ| {difference:.2e})")
    return checks


def conversion_report(siglip: str, source, config: HydraXTokConfig, plan: ImportPlan, model, overrides) -> dict:
    """What the conversion did, for printing and for conversion_report.json."""
    vision = siglip2_vision_config(source.config)
    gen, layers = config.num_gen_layers, vision.num_hidden_layers
    grid = math.isqrt(vision.num_patches)
    reasons = dropped_patterns(config)
    groups = Counter(plan.dropped.values())
    hierarchical = config.temporal_compression == "hierarchical"
    fold = f" (second temporal fold after layer {config.gen_fold_layer})" if hierarchical else ""
    return {
        "source": siglip,
        "source_architecture": type(source).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "config_overrides": overrides or {},
        "layer_split": {
            "gen_vit": f"SigLIP 2 encoder layers 0-{gen - 1}{fold}",
            "sem_vit": f"SigLIP 2 encoder layers {gen}-{layers - 1}",
        },
        "position_embedding": {
            "source_grid": grid,
            "grid": config.position_embedding_size,
            "dropped": not config.use_abs_pos_embed,
            "resized": config.use_abs_pos_embed and config.position_embedding_size != grid,
            "interpolation": "SigLIP 2's own: Siglip2VisionEmbeddings.resize_positional_embeddings (bilinear, "
            "antialiased)",
        },
        **plan.summary(),
        "dropped_groups": [
            {"rule": pattern, "reason": reasons[pattern], "tensors": count} for pattern, count in groups.items()
        ],
        "new_modules": module_cover(model, plan.new),
    }


def write_card(siglip: str, new_modules: list[str], folder: Path) -> list[str]:
    """Write the tokenizer's model card into `folder`. Its `base_model` is SigLIP 2's Hub id, never a local path (a
    local `siglip` folder names none): conversion/build_hydrax.py carries it into the Hydra-X card."""
    hub_id = None if Path(siglip).is_dir() else siglip
    origin = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else "a local SigLIP 2 checkpoint"
    body = (
        "# Hydra-XTok from SigLIP 2\n\n> [!WARNING]\n> **Not trained yet.** A Hydra-XTok visual tokenizer "
        f"initialised from {origin} by `conversion/convert_siglip2_to_hydrax_tok.py`: SigLIP 2's encoder layers "
        f"are copied into the Gen-ViT and the Sem-ViT; {', '.join(new_modules)} are newly initialised and need "
        "Hydra-XTok's training stages. `conversion_report.json` lists every tensor's fate and the checks.\n\n"
        "Load it with `AutoModel.from_pretrained(folder, trust_remote_code=True)`."
    )
    data = ModelCardData(
        library_name="transformers", base_model=[hub_id] if hub_id else None, tags=["hydrax", "hydrax-tok"]
    )
    ModelCard.from_template(data, template_str=CARD_TEMPLATE, body=body).save(folder / "README.md")
    return ["README.md"]


def convert(siglip, output, overrides: dict | None = None, force: bool = False, seed: int = 0) -> dict:
    """Convert the SigLIP 2 checkpoint `siglip` (folder or Hub id) into a Hydra-XTok checkpoint folder `output`;
    returns the report (also written into the folder)."""
    output = Path(output)
    if output.exists() and not force:
        raise FileExistsError(f"{output} already exists; pass --force (force=True) to replace it.")
    # 1. The source, loaded strictly.
    source = load_siglip2(str(siglip))
    state = source.state_dict()
    # 2. Names → names + transforms, checked before any weight moves.
    config, plan = plan_conversion(source.config, state, overrides)
    # 3. The tokenizer: SigLIP 2's tensors copied in, the new modules initialised from `seed`.
    torch.manual_seed(seed)
    model = HydraXTokModel._from_config(config, dtype=source.dtype).eval()
    load_planned(model, plan, state)
    # 4. Written next to `output`, reloaded, checked, moved into place.
    report = conversion_report(str(siglip), source, config, plan, model, overrides)
    siglip_vision = source.vision_model if isinstance(source, Siglip2Model) else source
    verify = partial(verify_equivalences, siglip_vision)
    add_files = partial(write_card, str(siglip), report["new_modules"])
    write_model(model, output, report, force, verify=verify, add_files=add_files)
    return report


def format_report(report: dict, output: Path) -> str:
    """The report as a few readable lines."""
    positions = report["position_embedding"]
    grid = f"{positions['source_grid']}² grid " + (
        "dropped (use_abs_pos_embed=False)"
        if positions["dropped"]
        else f"resized to {positions['grid']}² with {positions['interpolation']}"
        if positions["resized"]
        else "kept"
    )
    lines = [
        f"{report['source_architecture']} {report['source']} → Hydra-XTok {output} ({report['dtype']})",
        f"  source tensors: {report['source_tensors']} = {report['mapped_tensors']} mapped + "
        f"{report['dropped_tensors']} dropped",
        f"  Gen-ViT ← {report['layer_split']['gen_vit']}; Sem-ViT ← {report['layer_split']['sem_vit']}",
        f"  position embedding: {grid}",
        *(f"  dropped {group['tensors']} × {group['rule']}: {group['reason']}" for group in report["dropped_groups"]),
        f"  new ({report['new_tensors']} tensors, initialised): {', '.join(report['new_modules'])}",
        *(f"  check: {check}" for check in report["checks"]),
        f"  report: {output / REPORT_NAME}",
    ]
    return "\n".join(lines)


def parse_overrides(parser: argparse.ArgumentParser, text: str | None) -> dict:
    """--config: a JSON object, inline (`{"use_rope": false}`) or in a file."""
    if text is None:
        return {}
    if not text.lstrip().startswith("{"):
        check_file(parser, "--config", text, "pass a JSON file or an inline JSON object")
        text = Path(text).read_text()
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"--config: not valid JSON ({error})")
    if not isinstance(overrides, dict):
        parser.error(f"--config: expected a JSON object of Hydra-XTok config fields, got {type(overrides).__name__}")
    return overrides


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--siglip",
        required=True,
        help="a SigLIP 2 checkpoint: a local folder or a Hub id (Siglip2VisionModel or Siglip2Model)",
    )
    parser.add_argument("--output", type=Path, required=True, help="Hydra-XTok checkpoint folder to create")
    parser.add_argument(
        "--config",
        help="Hydra-XTok config fields to override, as a JSON object or a JSON file (e.g. '{\"use_rope\": false}')",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the newly initialised modules")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if looks_like_path(args.siglip):
        hint = "pass a SigLIP 2 checkpoint folder or a Hub id such as google/siglip2-so400m-patch16-naflex"
        check_folder(parser, "--siglip", Path(args.siglip), hint, required_file="config.json")
    overrides = parse_overrides(parser, args.config)
    check_output_folder(parser, "--output", args.output, replaced=True)
    siglip = args.siglip if looks_like_path(args.siglip) else None
    check_inputs_outside(parser, "--output", args.output, {"--siglip": siglip})
    if args.output.exists() and not args.force:
        parser.error(f"--output {args.output}: already exists; pass --force to replace it")
    try:
        report = convert(args.siglip, args.output, overrides, args.force, args.seed)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(format_report(report, args.output))


if __name__ == "__main__":
    main()
