r"""Model cards (README.md) for Hydra-X checkpoint folders, written with huggingface_hub's `ModelCard`.

The metadata follows what the Hub expects of a unified model (`pipeline_tag: any-to-any`, `library_name:
transformers`, `base_model`, tags, licence, `model-index` when evaluation results are given). The body says where the
weights came from, how to use the checkpoint (understanding, generation and editing snippets that run as written
against the folder or repo they name), the training details and results when given, and the limitations: a card of a
random-initialised or freshly converted (not yet trained) checkpoint says so at the top.

    from model_card_hydrax import build_model_card
    card = build_model_card("you/hydrax-7b", config, weights="converted", base_models=["Qwen/Qwen2.5-7B-Instruct"])
    card.save("outputs/hydrax-7b/README.md")

conversion/build_hydrax.py writes a card into every folder it builds, and examples/train_hydrax.py one with the run's
training details. After training, rewrite a folder's card with its Hub id and results (`--eval-results` takes JSON
lists of `huggingface_hub.EvalResult` fields, such as the `eval_results.json` each evaluation/ script writes); the
card's "Training details" and results are kept unless `--training-details` / `--eval-results` give new ones:

    python conversion/model_card_hydrax.py --model outputs/hydrax-7b-sft/model --model-id you/hydrax-7b-sft \
        --base-model Qwen/Qwen2.5-7B-Instruct \
        --eval-results outputs/eval-mmbench/eval_results.json outputs/eval-t2i/eval_results.json

A LoRA adapter folder (`examples/train_hydrax.py --lora-r`'s OUTPUT_DIR/adapter) gets an adapter card (`library_name:
peft`; snippets that load the base checkpoint and apply the adapter; `base_model`: the base's Hub id):

    python conversion/model_card_hydrax.py --model outputs/sft/adapter --model-id you/hydrax-7b-style-lora \
        --base-id you/hydrax-7b

`card.validate()` asks the Hub; offline, parse the text back with `ModelCard(text).data.to_dict()`.
"""

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_args import HelpFormatter, check_file, check_folder, check_hydrax_folder, write_atomically  # noqa: E402


HYDRAX_TAGS = [
    "hydrax",
    "multimodal",
    "text-to-image",
    "image-to-image",
    "text-to-video",
    "image-text-to-text",
    "video-text-to-text",
]
PAPER_URL = "https://arxiv.org/abs/2606.13289"
WEIGHT_ORIGINS = ("random", "converted", "trained")
DEFAULT_LICENSE = "apache-2.0"
CARD_TEMPLATE = "---\n{{ card_data }}\n---\n{{ body }}\n"

WARNINGS = {
    "random": (
        "> [!WARNING]\n> **Random weights.** Every weight of this checkpoint is random (`conversion/build_hydrax.py "
        "--random-init`): it answers with gibberish and generates noise. It exists to test loading, fine-tuning and "
        "serving code, not to be used as a model."
    ),
    "converted": (
        "> [!WARNING]\n> **Not trained as a multimodal model yet.** The language model and the vision tower are "
        "pretrained weights copied exactly, but the projector, the timestep embedding and the flow head are newly "
        "initialised (see `conversion_report.json`). Text-only prompts give the source language model's outputs (the "
        "chat template is Hydra-X's, in Qwen2.5-VL's format, without tool calling); image and video understanding, "
        "generation and editing produce meaningless output until Hydra-X's training stages have run."
    ),
}


# The end of every understanding snippet: `model` and `processor` answer a question about photo.jpg.
ANSWER_A_QUESTION = textwrap.dedent("""\
        image = Image.open("photo.jpg")
        content = [{"type": "image", "image": image}, {"type": "text", "text": "Describe this image."}]
        messages = [{"role": "user", "content": content}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(model.device)
        output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
        print(processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0])
        """)
CITATION = (
    "## Citation\n\n```bibtex\n@article{hydrax2026,\n  title = {Native Unified Multimodal Models with Holistic "
    "Visual Tokenizers},\n  journal = {arXiv preprint arXiv:2606.13289},\n  year = {2026}\n}\n```"
)
LIMITATIONS = [
    "Hydra-X is a research model: its outputs can be wrong, biased or unsafe, as those of the models it is built from "
    "can be.",
    "Video frames come in 1 + 4k; images and videos are resized to multiples of the patch size.",
]


def usage_snippets(model_id: str, image_size: int) -> dict[str, str]:
    """Runnable Python for understanding, generation and editing with the checkpoint `model_id` (a Hub id or a
    folder), through the remote code the checkpoint carries (no Hydra-X package needed). `image_size` is the
    resolution the snippets ask for."""
    understanding = textwrap.dedent(f"""\
        from PIL import Image
        from transformers import AutoModel, AutoProcessor

        model_id = {json.dumps(model_id)}
        model = AutoModel.from_pretrained(model_id, dtype="auto", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
        """)
    understanding += ANSWER_A_QUESTION
    generation = f"""\
        import torch
        from diffusers import DiffusionPipeline

        model_id = {json.dumps(model_id)}
        pipe = DiffusionPipeline.from_pretrained(model_id, trust_remote_code=True)  # HydraXPipeline
        generator = torch.Generator().manual_seed(0)
        image = pipe(
            "A red fox in the snow", height={image_size}, width={image_size}, num_inference_steps=30,
            guidance_scale=4.0, generator=generator,
        ).images[0]
        image.save("fox.png")
        video = pipe(
            "A red fox running through the snow", height={image_size}, width={image_size}, num_frames=17,
            num_inference_steps=30, generator=generator,
        ).frames[0]  # 1 + 4k frames
        video[0].save("fox.gif", save_all=True, append_images=video[1:], duration=125, loop=0)
        """
    editing = f"""\
        from diffusers import DiffusionPipeline
        from PIL import Image

        model_id = {json.dumps(model_id)}
        edit = DiffusionPipeline.from_pretrained(
            model_id, custom_pipeline="pipeline_hydrax_edit", trust_remote_code=True
        )  # HydraXEditPipeline
        source = Image.open("photo.jpg").convert("RGB").resize(({image_size}, {image_size}))
        edited = edit(source, "Make it night", guidance_scale=4.0, image_guidance_scale=1.5, num_inference_steps=30)
        edited.images[0].save("night.png")
        """
    snippets = {"understanding": understanding, "generation": generation, "editing": editing}
    return {name: textwrap.dedent(code) for name, code in snippets.items()}


def eval_results_from_json(path) -> list[EvalResult]:
    """Evaluation results from a JSON file: a list of objects with `EvalResult`'s fields (`task_type`,
    `dataset_type`, `dataset_name`, `metric_type`, `metric_value`, optionally `metric_name`, `dataset_split`, …)."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(
            f"{path}: expected a JSON list of objects with EvalResult fields, got {type(entries).__name__}."
        )
    try:
        return [EvalResult(**entry) for entry in entries]
    except TypeError as error:
        raise ValueError(
            f"{path}: {error}; each entry needs task_type, dataset_type, dataset_name, metric_type and metric_value"
        ) from error


def architecture_section(config) -> str:
    """What the checkpoint is made of, read from its `HydraXConfig`."""
    text, vision = config.text_config, config.vision_config
    rows = {
        "language model (Qwen2)": f"hidden {text.hidden_size}, {text.num_hidden_layers} layers, "
        f"{text.num_attention_heads} heads ({text.num_key_value_heads} KV), vocabulary {text.vocab_size}, "
        f"{'tied' if text.tie_word_embeddings else 'untied'} embeddings",
        "Hydra-XTok": f"width {vision.hidden_size}, Gen-ViT {vision.num_gen_layers} + Sem-ViT {vision.num_sem_layers} "
        f"layers, decoder {vision.num_decoder_layers} layers, patch {vision.patch_size}, "
        f"{vision.latent_channels} latent channels",
        "flow head": f"{config.flow_head_num_layers} AdaLN blocks, width {config.flow_head_hidden_size}",
    }
    table = "\n".join(f"| {part} | {size} |" for part, size in rows.items())
    return (
        f"## Model\n\nHydra-X is a native unified multimodal model ([paper]({PAPER_URL})): one Qwen2.5 language model "
        "that understands images and videos, generates images and videos from text, and edits images from an "
        "instruction. All visual input and output goes through one visual tokenizer, Hydra-XTok; the language model "
        "sees only its semantic (Sem-ViT) features, through a 2-layer MLP projector. Generation is rectified flow on "
        f"Hydra-XTok's {vision.latent_channels}-channel latents, predicted by an AdaLN flow head on the language "
        f"model's hidden states.\n\n| part | size |\n| --- | --- |\n{table}"
    )


def build_model_card(
    model_id: str,
    config,
    weights: str,
    base_models: list[str] | None = None,
    sources: dict[str, str] | None = None,
    license: str | None = None,
    training_details: str | None = None,
    eval_results: list[EvalResult] | None = None,
    model_name: str | None = None,
) -> ModelCard:
    """The model card of a Hydra-X checkpoint.

    `model_id` is what the usage snippets load (the Hub repo, or the folder); `config` its `HydraXConfig`; `weights`
    one of `random`, `converted` (pretrained parts, new modules untrained) or `trained`. `sources` maps each part
    (e.g. "language model") to where its weights came from. `training_details` is Markdown; `eval_results` go to the
    `model-index` metadata and to a table.
    """
    if weights not in WEIGHT_ORIGINS:
        raise ValueError(f"`weights` must be one of {WEIGHT_ORIGINS}, got {weights!r}.")
    model_name = model_name or Path(model_id).name
    # 1. Title, warning and provenance
    parts = [f"# {model_name}"]
    if weights in WARNINGS:
        parts.append(WARNINGS[weights])
    parts.append(architecture_section(config))
    if sources:
        rows = "\n".join(f"| {part} | `{origin}` |" for part, origin in sources.items())
        parts.append(f"## Weights\n\n| part | from |\n| --- | --- |\n{rows}")
    # 2. Usage
    image_size = config.vision_config.patch_size * config.vision_config.position_embedding_size
    usage = usage_snippets(model_id, image_size)
    parts.append(
        "## Usage\n\nThe checkpoint carries its code: transformers and diffusers load it with "
        "`trust_remote_code=True`, no Hydra-X package needed. Images are sampled at the tokenizer's native "
        f"{image_size}² here; any multiple of {config.vision_config.patch_size} pixels works."
    )
    titles = {
        "understanding": "Understanding (image or video in, text out)",
        "generation": "Generation (text to image, text to video)",
        "editing": "Editing (image + instruction to image)",
    }
    parts.extend(f"### {titles[name]}\n\n```python\n{code}```" for name, code in usage.items())
    # 3. Training, evaluation, limitations and citation
    limitations = list(LIMITATIONS)
    if weights != "trained":
        limitations.insert(0, WARNINGS[weights].split("**")[1] + " See the warning above.")
    data = dict(model_name=model_name, library_name="transformers", tags=list(HYDRAX_TAGS))
    return assemble_card(data, parts, base_models, license, training_details, eval_results, limitations)


def assemble_card(
    data: dict, parts: list[str], base_models, license, training_details, eval_results, limitations
) -> ModelCard:
    """A Hydra-X card: the `ModelCardData` fields in `data` (with `pipeline_tag: any-to-any`, `base_models`, the
    licence and the `model-index`), then the body `parts` followed by the training details, the evaluation table, the
    `limitations` and the citation."""
    parts = list(parts)
    if training_details:
        parts.append(f"## Training details\n\n{training_details.strip()}")
    if eval_results:
        rows = "\n".join(
            f"| {result.dataset_name} | {result.metric_name or result.metric_type} | {result.metric_value} |"
            for result in eval_results
        )
        parts.append(f"## Evaluation\n\n| dataset | metric | value |\n| --- | --- | --- |\n{rows}")
    parts.append("## Limitations\n\n" + "\n".join(f"- {line}" for line in limitations))
    parts.append(CITATION)
    card_data = ModelCardData(
        **data,
        license=license or DEFAULT_LICENSE,
        pipeline_tag="any-to-any",
        base_model=list(base_models) if base_models else None,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(card_data, template_str=CARD_TEMPLATE, body="\n\n".join(parts))


def adapter_snippets(adapter_id: str, base_id: str, image_size: int) -> dict[str, str]:
    """Runnable Python that applies the LoRA adapter `adapter_id` to the Hydra-X checkpoint `base_id` (Hub ids or
    folders): generation through the base's diffusers pipeline (`load_lora_weights`), understanding through PEFT."""
    generation = f"""\
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({json.dumps(base_id)}, trust_remote_code=True)  # HydraXPipeline
        pipe.load_lora_weights({json.dumps(adapter_id)})
        generator = torch.Generator().manual_seed(0)
        image = pipe(
            "A red fox in the snow", height={image_size}, width={image_size}, num_inference_steps=30,
            generator=generator,
        ).images[0]
        image.save("fox.png")
        pipe.fuse_lora()  # optional: sample at the base model's speed from here on
        """
    understanding = textwrap.dedent(f"""\
        from peft import PeftModel
        from PIL import Image
        from transformers import AutoModel, AutoProcessor

        base = AutoModel.from_pretrained({json.dumps(base_id)}, dtype="auto", trust_remote_code=True)
        model = PeftModel.from_pretrained(base, {json.dumps(adapter_id)})
        processor = AutoProcessor.from_pretrained({json.dumps(base_id)}, trust_remote_code=True)
        """)
    understanding += ANSWER_A_QUESTION
    return {"generation": textwrap.dedent(generation), "understanding": textwrap.dedent(understanding)}


def build_adapter_card(
    adapter_id: str,
    base_id: str,
    config,
    lora: dict,
    license: str | None = None,
    training_details: str | None = None,
    eval_results: list[EvalResult] | None = None,
    base_models: list[str] | None = None,
) -> ModelCard:
    """The model card of a LoRA adapter of a Hydra-X checkpoint (`examples/train_hydrax.py --lora-r`'s
    OUTPUT_DIR/adapter).

    `adapter_id` and `base_id` are what the usage snippets load; `config` is the base's `HydraXConfig`; `lora` holds
    the adapter's `r`, `lora_alpha`, `target_modules` and `modules_to_save` (its `adapter_config.json`).
    `base_models` (Hub ids) go to the `base_model` metadata; by default `base_id` when it is a Hub id, not a local
    folder (the Hub lists an adapter under the base its metadata names).
    """
    if base_models is None and not Path(base_id).is_dir():
        base_models = [base_id]
    name = Path(adapter_id).name
    copies = ", ".join(f"`{module}`" for module in lora.get("modules_to_save") or []) or "none"
    parts = [
        f"# {name}",
        f"A LoRA adapter of the Hydra-X checkpoint `{base_id}`: rank {lora['r']} (alpha {lora['lora_alpha']}) updates "
        f"of the modules matching `{lora['target_modules']}`, and full fine-tuned copies of {copies} "
        "(`modules_to_save`).",
        architecture_section(config),
    ]
    image_size = config.vision_config.patch_size * config.vision_config.position_embedding_size
    usage = adapter_snippets(adapter_id, base_id, image_size)
    parts.append(
        "## Usage\n\nThe base checkpoint carries its code (`trust_remote_code=True`): diffusers' pipeline takes the "
        "adapter with `load_lora_weights` (then `set_adapters`, `fuse_lora`, `unload_lora_weights`), transformers' "
        "model with PEFT. `set_adapters(name, weight)` scales the low-rank updates; the full copies are used whole."
    )
    parts.append(f"### Generation\n\n```python\n{usage['generation']}```")
    parts.append(f"### Understanding\n\n```python\n{usage['understanding']}```")
    data = dict(model_name=name, library_name="peft", tags=[*HYDRAX_TAGS, "lora", "peft"])
    return assemble_card(data, parts, base_models, license, training_details, eval_results, LIMITATIONS)


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-card options that conversion/build_hydrax.py shares with this script."""
    parser.add_argument(
        "--base-model",
        action="append",
        help="a Hub id the weights derive from, for the card's `base_model` (repeat for several; default: the "
        "sources' Hub ids where known, never a local path)",
    )
    parser.add_argument(
        "--license", help=f"the card's licence, a Hub licence id (default: the folder card's, else {DEFAULT_LICENSE})"
    )
    parser.add_argument("--training-details", type=Path, help="a Markdown file describing the training, for the card")
    parser.add_argument(
        "--eval-results",
        type=Path,
        nargs="+",
        help="JSON files, each a list of evaluation results (huggingface_hub.EvalResult fields), for the card: e.g. "
        "the eval_results.json that every evaluation/ script writes",
    )


def card_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """`build_model_card` keyword arguments from the options of `add_card_arguments`, checked up front."""
    if args.training_details is not None:
        check_file(parser, "--training-details", args.training_details, "pass a Markdown file")
    eval_results = None
    for path in args.eval_results or []:
        check_file(parser, "--eval-results", path, "pass a JSON file")
        try:
            eval_results = (eval_results or []) + eval_results_from_json(path)
        except (ValueError, json.JSONDecodeError) as error:
            parser.error(f"--eval-results {path}: {error}")
    return {
        "base_models": args.base_model,
        "license": args.license,
        "training_details": args.training_details.read_text() if args.training_details is not None else None,
        "eval_results": eval_results,
    }


def card_section(text: str, title: str) -> str | None:
    """The Markdown under the heading `## {title}` of a card's `text` (up to the next `## ` heading), if any."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1).strip() if match else None


def card_lineage(folder) -> dict:
    """`base_models` and `license` from the card in `folder` (`README.md`), if it has one: a model derived from that
    checkpoint (a rewritten card, a fine-tune) keeps the Hub ids its weights came from and the licence they carry."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return {"base_models": None, "license": None}
    data = read_card(path).data
    base = [data.base_model] if isinstance(data.base_model, str) else data.base_model or []
    if not isinstance(base, list) or not all(isinstance(name, str) for name in base):
        raise ValueError(f"{path}: base_model must be a Hub id or a list of them, got {data.base_model!r}; fix it")
    if not isinstance(data.license, (str, type(None))):
        raise ValueError(f"{path}: license must be a licence id such as 'apache-2.0', got {data.license!r}; fix it")
    hub_ids = [name for name in base if is_hub_id(name)]  # PEFT's own card names a local base by its path
    return {"base_models": hub_ids or None, "license": data.license}


def is_hub_id(name: str) -> bool:
    """Whether `name` can be a Hub repo id (`org/name` or `name`), not a local path."""
    try:
        validate_repo_id(name)
    except HFValidationError:  # an absolute or relative path, `a/b/c`, spaces
        return False
    return True


def read_card(path: Path) -> ModelCard:
    """`ModelCard.load`, with an error naming the card and the fix when its metadata cannot be read."""
    try:
        return ModelCard.load(path)
    except (yaml.YAMLError, ValueError) as error:  # a UnicodeDecodeError is a ValueError
        raise ValueError(
            f"{path}: the card's metadata cannot be read ({type(error).__name__}: {error}); fix the YAML between "
            "its '---' lines, or remove the card"
        ) from error


def check_card(parser: argparse.ArgumentParser, option: str, folder) -> None:
    """`parser.error` when the card in `folder` cannot be read for `card_lineage` (a script that reads it when saving
    lost the run's work)."""
    try:
        card_lineage(folder)
    except ValueError as error:
        parser.error(f"{option} {folder}: {error}")


def card_weights(text: str) -> str:
    """Where a card written by `build_model_card` says the weights stand: its warning's (found by the warning's bold
    headline, which outlives rewordings of the rest), else `trained`."""
    return next((origin for origin, warning in WARNINGS.items() if warning.split("**")[1] in text), "trained")


def card_sources(text: str) -> dict[str, str] | None:
    """The `sources` of a card's "Weights" table (`build_model_card`), if it has one."""
    section = card_section(text, "Weights") or ""
    rows = re.findall(r"^\| (.+?) \| `(.+)` \|$", section, re.MULTILINE)
    return dict(rows) or None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="the Hydra-X checkpoint folder, or LoRA adapter folder (adapter_config.json), whose card to write",
    )
    parser.add_argument("--model-id", help="what the usage snippets load: the Hub repo id (default: the folder)")
    parser.add_argument(
        "--base-id",
        help="adapters: the base checkpoint the snippets load (default: the adapter's base_model_name_or_path); a "
        "Hub id also becomes the base_model_name_or_path of adapter_config.json",
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHT_ORIGINS,
        help="where the weights stand (sets the card's warning; default: what the folder's card says, else trained)",
    )
    add_card_arguments(parser)
    args = parser.parse_args(argv)
    adapter = args.model / "adapter_config.json"
    required = adapter.name if adapter.is_file() else "config.json"
    hint = "pass a Hydra-X checkpoint folder or a LoRA adapter folder"
    check_folder(parser, "--model", args.model, hint, required_file=required)
    if not adapter.is_file():
        check_hydrax_folder(parser, "--model", args.model, hint)
    kwargs = card_arguments(parser, args)
    weights, sources = args.weights or "trained", None
    if (args.model / "README.md").is_file():  # a rewrite (for the Hub id, new results) keeps what the card says
        check_card(parser, "--model", args.model)
        existing = read_card(args.model / "README.md")
        if kwargs["training_details"] is None:
            kwargs["training_details"] = card_section(existing.text, "Training details")
        if kwargs["eval_results"] is None:
            kwargs["eval_results"] = existing.data.eval_results
        lineage = card_lineage(args.model)
        kwargs["base_models"] = kwargs["base_models"] or lineage["base_models"]
        kwargs["license"] = kwargs["license"] or lineage["license"]
        weights, sources = args.weights or card_weights(existing.text), card_sources(existing.text)
    from modeling_hydrax import HydraXConfig

    model_id = args.model_id or str(args.model.resolve())
    if adapter.is_file():
        lora = json.loads(adapter.read_text())
        base_id = args.base_id or lora["base_model_name_or_path"]
        if Path(base_id).is_dir():
            hint = "pass --base-id with the Hydra-X checkpoint folder or Hub id the adapter was trained on"
            check_hydrax_folder(parser, "--base-id", base_id, hint)
        try:
            config = HydraXConfig.from_pretrained(base_id)
        except OSError as error:
            parser.error(
                f"--base-id {base_id}: cannot read the base checkpoint's config ({error}); pass --base-id with its "
                "folder, or a Hub id this machine can reach"
            )
        if args.base_id is not None and not Path(base_id).is_dir():  # the base named now, by its Hub id
            if args.base_model is None:
                kwargs["base_models"] = [base_id]  # not the one the old card named
            lora["base_model_name_or_path"] = base_id  # what PEFT's AutoPeftModel loads (train_hydrax wrote a path)
            config_text = json.dumps(lora, indent=2, sort_keys=True) + "\n"
            write_atomically(adapter, lambda partial: partial.write_text(config_text))
        card = build_adapter_card(model_id, base_id, config, lora, **kwargs)
    else:
        config = HydraXConfig.from_pretrained(args.model)
        card = build_model_card(model_id, config, weights, sources=sources, **kwargs)
    card.save(args.model / "README.md")
    print(f"wrote {args.model / 'README.md'}")


if __name__ == "__main__":
    main()
