"""examples/train_hydrax.py: the three stages on Trainer, the on-the-fly collator's labels and masks, the data mixture,
LoRA, bad data and resuming. The script runs in-process on a tiny checkpoint built once."""

import argparse
import base64
import json
import logging
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, pipeline_row
from PIL import Image
from transformers import AutoModel, AutoProcessor, get_linear_schedule_with_warmup

from modeling_hydrax import HydraXPipeline
from modeling_hydrax.data_collator_hydrax import BadSampleError, HydraXDataCollator, find_problem


SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_hydrax.py"
SIZE = {"images_kwargs": {"size": {"min_pixels": 32 * 32, "max_pixels": 32 * 32}}}


train_hydrax = load_script(SCRIPT)


@pytest.fixture(scope="module")
def processor(checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return train_hydrax.write_demo_data(tmp_path_factory.mktemp("demo"))


def train(checkpoint, out, *args):
    argv = ["--model", str(checkpoint), "--output-dir", str(out), "--max-steps", "2", "--logging-steps", "1"]
    return train_hydrax.main([*argv, *map(str, args)])


def write_manifest(path: Path, conversations) -> Path:
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in conversations))
    return path


def understanding(image_path, answer="a cat"):
    return [
        train_hydrax.user([{"type": "image", "path": image_path}, train_hydrax.text("What is it?")]),
        train_hydrax.assistant([train_hydrax.text(answer)]),
    ]


def text_to_image(image_path, reply="ok"):
    return [
        train_hydrax.user([train_hydrax.text("Draw a cat")]),
        train_hydrax.assistant([train_hydrax.text(reply), {"type": "image", "path": image_path}]),
    ]


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_hydrax.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--stage",
        "--data",
        "--flow-logit-mean",
        "--image-to-video-prob",
        "--lora-r",
        "--on-bad-sample",
        "--resume-from-checkpoint",
    ):
        assert option in out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_and_writes_a_loadable_checkpoint(stage, checkpoint, demo, tmp_path):
    out = tmp_path / "out"
    extra = ["--eval-data", demo] if stage == 2 else []
    trainer = train(
        checkpoint,
        out,
        "--stage",
        stage,
        "--flow-logit-mean",
        2.5,
        "--image-to-video-prob",
        0.25,
        "--data",
        demo,
        *extra,
    )
    expected = train_hydrax.STAGE_LEARNING_RATES[stage]
    rates = {group["name"].removesuffix("_no_decay"): group["initial_lr"] for group in trainer.optimizer.param_groups}
    assert rates == expected
    history = trainer.state.log_history
    assert any("lm_loss" in entry for entry in history) and any("flow_loss" in entry for entry in history)
    if stage == 2:
        evaluated = [entry for entry in history if "eval_lm_loss" in entry and "eval_flow_loss" in entry]
        assert evaluated and all(  # the large-batch definition, as the training `loss`, at any evaluation batching
            entry["eval_loss"] == pytest.approx(entry["eval_lm_loss"] + entry["eval_flow_loss"]) for entry in evaluated
        )

    before = AutoModel.from_pretrained(checkpoint).state_dict()
    model = AutoModel.from_pretrained(out / "model")
    assert model.config.flow_logit_mean == 2.5 and model.config.image_to_video_prob == 0.25
    for name, value in model.state_dict().items():
        group = train_hydrax.parameter_group(name)
        changed = not torch.equal(value, before[name])
        if group == "frozen" or group not in expected:
            assert not changed, f"stage {stage} must not change {name}"
    assert not torch.equal(model.model.flow_head.out_proj.weight, before["model.flow_head.out_proj.weight"])
    assert HydraXPipeline.from_pretrained(out / "model").model.config.flow_logit_mean == 2.5
    assert not [path.name for path in out.iterdir() if path.name.startswith(".model")], "staging left behind"


def test_one_batch_mixes_questions_text_to_image_and_edits(checkpoint, demo, tmp_path, monkeypatch):
    """The demo set (4 questions, 4 captions → images, 1 edit) in one batch: both losses, from one forward."""
    batches = []
    monkeypatch.setattr(HydraXDataCollator, "__call__", record_calls(HydraXDataCollator.__call__, batches))
    size = ("--min-pixels", 32 * 32, "--max-pixels", 32 * 32)
    trainer = train(checkpoint, tmp_path / "out", "--stage", 2, "--data", demo, "--batch-size", 9, *size)
    assert int(batches[0]["target_mask"].any(dim=1).sum()) == 5, "the 4 text-to-image samples and the edit"
    logged = [entry for entry in trainer.state.log_history if "flow_loss" in entry and "lm_loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["flow_loss"]) for entry in logged)


def test_add_vision_id_trains_on_labelled_inputs_and_the_card_says_so(
    checkpoint, processor, demo, tmp_path, monkeypatch
):
    """--add-vision-id: the demo set's inputs (4 questions' images, the edit's source) are labelled "Picture 1: " as
    `apply_chat_template(..., add_vision_id=True)` labels them, its generation targets (4 drawings, the edit's result)
    are not; the model card says so."""
    batches = []
    monkeypatch.setattr(HydraXDataCollator, "__call__", record_calls(HydraXDataCollator.__call__, batches))
    size = ("--min-pixels", 32 * 32, "--max-pixels", 32 * 32)
    out = tmp_path / "out"
    train(checkpoint, out, "--stage", 2, "--data", demo, "--batch-size", 9, "--add-vision-id", *size)
    texts = processor.batch_decode(batches[0]["input_ids"])
    labels = {True: [], False: []}  # labels per sample, by whether it has a generation target
    for text, target in zip(texts, batches[0]["target_mask"].any(dim=1).tolist()):
        labels[target].append(text.count("Picture 1: <|vision_start|>"))
    assert labels[False] == [1] * 4 and sorted(labels[True]) == [0] * 4 + [1], texts
    assert "Picture 2" not in "".join(texts), texts
    card = (out / "model" / "README.md").read_text()
    assert '| vision ids | "Picture 1: ", "Video 1: " before each image and video of a user turn' in card


def test_one_batch_holds_targets_of_different_sizes(checkpoint, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for name, height in (("tall.png", 64), ("square.png", 32)):
        Image.fromarray(rng.integers(0, 255, (height, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    manifest = write_manifest(
        tmp_path / "mixed.jsonl", [text_to_image(str(tmp_path / name)) for name in ("tall.png", "square.png") * 2]
    )
    batches = []
    monkeypatch.setattr(HydraXDataCollator, "__call__", record_calls(HydraXDataCollator.__call__, batches))
    size = ("--min-pixels", 32 * 32, "--max-pixels", 64 * 32)
    trainer = train(checkpoint, tmp_path / "out", "--stage", 2, "--data", manifest, "--batch-size", 4, *size)
    assert sorted(batches[0]["target_mask"].sum(dim=1).tolist()) == [4, 4, 8, 8], "2×2 and 4×2 latent grids"
    logged = [entry for entry in trainer.state.log_history if "flow_loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["flow_loss"]) for entry in logged)


def record_calls(function, outputs: list):
    """`function`, appending each of its results to `outputs`."""

    def wrapped(*args, **kwargs):
        outputs.append(function(*args, **kwargs))
        return outputs[-1]

    return wrapped


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_trainable_sets_and_learning_rates_per_stage(stage, checkpoint):
    model = AutoModel.from_pretrained(checkpoint)
    rates = train_hydrax.stage_learning_rates(stage, scale=2.0, sem_vit=1e-3)
    train_hydrax.set_trainable(model, rates)
    trainable = {train_hydrax.parameter_group(n) for n, p in model.named_parameters() if p.requires_grad}
    frozen = {train_hydrax.parameter_group(n) for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable == ({"vision_head", "sem_vit"} if stage == 1 else {"vision_head", "sem_vit", "llm"})
    assert "frozen" in frozen and (("llm" in frozen) == (stage == 1))
    for prefix in ("model.vision_tower.gen_vit", "model.vision_tower.decoder"):
        assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix))
    groups = train_hydrax.optimizer_groups(model, rates, weight_decay=0.1)
    by_name = {group["name"]: group for group in groups}
    assert by_name["vision_head"]["lr"] == 2 * train_hydrax.STAGE_LEARNING_RATES[stage]["vision_head"]
    assert by_name["sem_vit"]["lr"] == 1e-3
    assert by_name["vision_head_no_decay"]["weight_decay"] == 0.0 and by_name["vision_head"]["weight_decay"] == 0.1
    assert sum(len(group["params"]) for group in groups) == sum(p.requires_grad for p in model.parameters())
    if stage == 1:
        with pytest.raises(ValueError, match="Stage 1 freezes llm"):
            train_hydrax.stage_learning_rates(1, llm=1e-5)


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("seen.png", "drawn.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


def sample(messages, root, origin="test.jsonl:1"):
    return {"messages": json.dumps(messages), "origin": origin, "root": str(root)}


def labelled_tokens(processor, labels) -> list[str]:
    return processor.tokenizer.convert_ids_to_tokens(labels[labels != -100].tolist())


def test_collator_labels_only_assistant_text_and_marks_targets(processor, pictures):
    collator = HydraXDataCollator(processor, SIZE)
    samples = [
        sample(understanding("seen.png", "a small cat"), pictures),
        sample(text_to_image("drawn.png"), pictures),
    ]
    batch = collator(samples)
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    # right padding: the shorter row ends in padding, never labelled
    assert not attention.all() and (attention.diff(dim=1) <= 0).all() and (labels[attention == 0] == -100).all()
    # hand-checked: the answer "a cat" and the end of turn; for the drawing, its text, the block markers, end of turn
    assert "".join(labelled_tokens(processor, labels[0])) == "aĠsmallĠcat<|im_end|>"
    assert labelled_tokens(processor, labels[1]) == ["ok", "<|vision_start|>", "<|vision_end|>", "<|im_end|>"]
    placeholders = ids == processor.image_token_id
    assert (labels[placeholders] == -100).all() and placeholders.sum(dim=1).tolist() == [4, 4]
    # the drawing's image is its generation target; the understanding sample's image is an input
    assert batch["target_mask"].bool().equal(placeholders & torch.tensor([[False], [True]]))
    again = collator(samples)
    assert again["input_ids"].equal(ids), "the collator itself drops no text: the model does, once"


def test_collator_passes_chat_template_kwargs(processor, pictures):
    """`chat_template_kwargs={"add_vision_id": True}`: the user turn's image is labelled "Picture 1: ", unlabelled for
    the loss; the rest of the batch is as without it."""
    samples = [sample(understanding("seen.png", "a small cat"), pictures)]
    plain = HydraXDataCollator(processor, SIZE)(samples)
    labelled = HydraXDataCollator(processor, SIZE, chat_template_kwargs={"add_vision_id": True})(samples)
    text = processor.batch_decode(labelled["input_ids"])[0]
    assert "Picture 1: <|vision_start|>" in text and "Picture" not in processor.batch_decode(plain["input_ids"])[0]
    assert labelled_tokens(processor, labelled["labels"][0]) == labelled_tokens(processor, plain["labels"][0])
    assert torch.equal(labelled["pixel_values"], plain["pixel_values"])


def test_collator_never_labels_video_placeholders(processor, pictures):
    """A video question's and a text-to-video target's `<|video_pad|>` placeholders are -100, as image ones are (the
    model masks visual blocks again, but a custom loss reads the labels)."""
    import av

    with av.open(str(pictures / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(17):  # the processor's frame budget: nothing to round
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 12 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    clip = {"type": "video", "path": "clip.mp4"}
    question = [
        train_hydrax.user([clip, train_hydrax.text("What happens?")]),
        train_hydrax.assistant([train_hydrax.text("it brightens")]),
    ]
    drawing = [train_hydrax.user([train_hydrax.text("Film a sunrise")]), train_hydrax.assistant([clip])]
    batch = HydraXDataCollator(processor, SIZE)([sample(question, pictures), sample(drawing, pictures)])
    placeholders = batch["input_ids"] == processor.video_token_id
    assert placeholders.sum(dim=1).gt(0).all() and (batch["labels"][placeholders] == -100).all()
    assert "".join(labelled_tokens(processor, batch["labels"][0])) == "itĠbrightens<|im_end|>"


def test_a_file_name_as_the_image_value_is_relative_to_the_manifest_as_a_path_is(processor, pictures):
    """`{"type": "image", "image": "seen.png"}` (as the processor and the model cards write blocks) resolves against
    the manifest's folder, not the working directory, and a missing one is found up front as a bad sample."""
    by_path = HydraXDataCollator(processor, SIZE)([sample(understanding("seen.png"), pictures)])
    as_value = understanding("seen.png")
    as_value[0]["content"][0] = {"type": "image", "image": "seen.png"}
    by_value = HydraXDataCollator(processor, SIZE)([sample(as_value, pictures)])
    assert by_value.keys() == by_path.keys() and all(by_value[key].equal(by_path[key]) for key in by_path)
    as_value[0]["content"][0] = {"type": "image", "image": "missing.png"}
    with pytest.raises(BadSampleError, match=r"test.jsonl:1: image .*missing.png: no such file"):
        HydraXDataCollator(processor, SIZE)([sample(as_value, pictures)])


def test_a_home_relative_image_path_is_expanded(pictures, monkeypatch, processor):
    """`~/seen.png` is looked up in the home folder, whatever `root` is."""
    monkeypatch.setenv("HOME", str(pictures))
    messages = understanding("~/seen.png")
    assert find_problem(messages, root="/nonexistent") is None
    loaded = HydraXDataCollator(processor).load_sample({"messages": messages, "root": "/nonexistent"})
    assert loaded[0]["content"][0]["image"].size == (32, 32)


@pytest.mark.parametrize(
    "value", ["https://example.com/cat.png", "http://example.com/cat.png", "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"]
)
def test_urls_and_base64_image_values_are_not_file_names(value):
    """An image block whose value is a URL or base64 data is left to the processor, not looked up as a file."""
    messages = understanding(None)
    messages[0]["content"][0] = {"type": "image", "image": value}
    assert find_problem(messages, root="/nonexistent") is None


def test_a_missing_video_file_is_found_up_front(pictures):
    """A video block's missing file is a bad sample before any decoding, as a missing image is."""
    messages = understanding("clip.mp4")
    messages[0]["content"][0]["type"] = "video"
    assert find_problem(messages, str(pictures)) == f"video {pictures / 'clip.mp4'}: no such file"


def test_a_folder_is_not_an_image_file(pictures):
    """A path naming a folder is reported as no such file."""
    (pictures / "folder.png").mkdir()
    assert find_problem(understanding("folder.png"), str(pictures)) == f"image {pictures / 'folder.png'}: no such file"


def test_a_dropped_sample_never_counts_in_the_lm_loss(processor, pictures, checkpoint, monkeypatch):
    model = AutoModel.from_pretrained(checkpoint).train()
    batch = HydraXDataCollator(processor, SIZE)(
        [sample(understanding("seen.png"), pictures), sample(text_to_image("drawn.png"), pictures)]
    )
    scored = []
    loss_function = model.loss_function
    monkeypatch.setattr(
        model, "loss_function", lambda **kw: scored.append(kw["shift_labels"].tolist()) or loss_function(**kw)
    )
    answer = processor.tokenizer("a cat", add_special_tokens=False)["input_ids"]
    im_end, start, end, ok = processor.tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|vision_start|>", "<|vision_end|>", "ok"]
    )
    model.config.text_dropout_prob = 0.0
    model(**batch)
    assert scored[-1] == answer + [im_end] + [ok, start, end, im_end]
    # every sample with a target is dropped: its text "ok" leaves the input and the labels; the understanding sample
    # (no target, nothing to guide) keeps its text
    model.config.text_dropout_prob = 0.5
    monkeypatch.setattr(torch, "rand", lambda size, device=None: torch.zeros(size, device=device))
    output = model(**batch)
    assert scored[-1] == answer + [im_end] + [start, end, im_end]
    assert torch.isfinite(output.lm_loss) and output.flow_loss is not None


def trl_layout(pictures: Path) -> list[dict]:
    """TRL's vision-language rows: bare `{"type": "image"}` blocks and the images in an `images` column."""
    seen, drawn = (Image.open(pictures / name).convert("RGB") for name in ("seen.png", "drawn.png"))
    bare = {"type": "image"}
    return [
        {"messages": [train_hydrax.user([bare, train_hydrax.text("What is it?")]),
                      train_hydrax.assistant([train_hydrax.text("a cat")])], "images": [seen]},
        {"messages": [train_hydrax.user([train_hydrax.text("Draw a cat")]),
                      train_hydrax.assistant([train_hydrax.text("ok"), bare])], "images": [drawn]},
    ]  # fmt: skip


def test_trl_layout_datasets_train_like_manifests(checkpoint, processor, pictures, tmp_path):
    """A `datasets` dataset in TRL's layout (images in an `images` column, bare image blocks) gives the collator the
    batch the same conversations give as a manifest with paths, interleaves with manifests, and trains."""
    import datasets

    rows = trl_layout(pictures)
    folder = tmp_path / "trl"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    manifest = write_manifest(
        tmp_path / "paths.jsonl", [understanding("seen.png"), text_to_image("drawn.png")]
    )  # the same two conversations, by path
    collator = HydraXDataCollator(processor, SIZE)
    from_trl = collator(list(train_hydrax.load_source(str(folder), "error")))
    from_paths = collator(list(train_hydrax.load_source(str(manifest), "error")))
    assert from_trl.keys() == from_paths.keys()
    for key, value in from_trl.items():
        assert torch.equal(value, from_paths[key]), key

    prompt_completion = [
        {"prompt": row["messages"][:1], "completion": row["messages"][1:], "images": row["images"]} for row in rows
    ]  # TRL's conversational prompt-completion layout
    datasets.Dataset.from_list(prompt_completion).save_to_disk(str(tmp_path / "trl_pc"))
    from_pc = collator(list(train_hydrax.load_source(str(tmp_path / "trl_pc"), "error")))
    assert all(torch.equal(value, from_paths[key]) for key, value in from_pc.items())
    datasets.Dataset.from_list([{"text": "hi"}]).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="neither a `messages` column nor TRL's conversational `prompt` and"):
        train_hydrax.load_source(str(tmp_path / "plain"), "error")

    train_set, _ = train_hydrax.build_datasets([(str(folder), 1.0), (str(manifest), 1.0)], [], 0.0, "error", seed=0)
    kinds = {len(images) for images in train_set["images"]}
    assert kinds == {0, 1} and len(train_set) >= 4
    with pytest.raises(BadSampleError, match="1 image block\\(s\\) without a .* or `base64`, but 2 image"):
        collator([{"messages": rows[0]["messages"], "images": rows[0]["images"] * 2, "origin": "row 7"}])

    out = tmp_path / "out"
    train(checkpoint, out, "--data", folder, manifest, "--min-pixels", 1024, "--max-pixels", 1024)
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("streaming", [False, True])
def test_trl_single_image_column_and_plain_string_turns_collate_as_paths_do(processor, pictures, tmp_path, streaming):
    """TRL's other vision layout: one image per row in an `image` column and turns written as plain strings (TRL puts
    the row's images before the first user text) give the batch of the same conversation written with paths."""
    import datasets

    seen = Image.open(pictures / "seen.png").convert("RGB")
    plain = [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "a cat"}]
    datasets.Dataset.from_list([{"messages": plain, "image": seen}] * 2).save_to_disk(str(tmp_path / "single"))
    collator = HydraXDataCollator(processor, SIZE)
    rows = list(train_hydrax.load_source(str(tmp_path / "single"), "error", streaming=streaming))
    assert [len(row["images"]) for row in rows] == [1, 1]
    manifest = write_manifest(tmp_path / "paths.jsonl", [understanding("seen.png")] * 2)
    expected = collator(list(train_hydrax.load_source(str(manifest), "error")))
    for key, value in collator(rows).items():
        assert torch.equal(value, expected[key]), key
    # the collator on its own, as TRL's collators take such rows; a row without an image keeps its plain turns
    direct = collator([{"messages": plain, "image": str(pictures / "seen.png")}] * 2)
    assert all(torch.equal(value, expected[key]) for key, value in direct.items())
    assert collator.load_sample({"messages": plain, "image": None})[0]["content"] == "What is it?"
    # `messages` stored as JSON strings, and TRL's standard layout (`prompt` and `completion` as plain strings)
    datasets.Dataset.from_list([{"messages": json.dumps(plain), "image": seen}] * 2).save_to_disk(str(tmp_path / "js"))
    standard = [{"prompt": "What is it?", "completion": "a cat", "image": seen}] * 2
    datasets.Dataset.from_list(standard).save_to_disk(str(tmp_path / "standard"))
    for name in ("js", "standard"):
        rows = list(train_hydrax.load_source(str(tmp_path / name), "error", streaming=streaming))
        assert all(torch.equal(value, expected[key]) for key, value in collator(rows).items()), name
    datasets.Dataset.from_list([{"messages": plain, "image": 7}]).save_to_disk(str(tmp_path / "ids"))
    assert next(iter(train_hydrax.load_source(str(tmp_path / "ids"), "error")))["images"] == []  # an id, not an image
    # a plain-string prompt whose bare image block is the assistant's target: the image fills the target
    draw = [
        {"role": "user", "content": "Draw a cat"},
        train_hydrax.assistant([train_hydrax.text("ok"), {"type": "image"}]),
    ]
    expected = collator(
        list(
            train_hydrax.load_source(
                str(write_manifest(tmp_path / "t2i.jsonl", [text_to_image("drawn.png")])), "error"
            )
        )
    )
    drawn = collator([{"messages": draw, "image": str(pictures / "drawn.png")}])
    assert all(torch.equal(value, expected[key]) for key, value in drawn.items())


def test_trl_images_as_bytes_or_pil_are_rotated_by_their_exif_as_files_are(processor, tmp_path):
    """A phone photo in portrait is a landscape JPEG tagged "rotate 90°": stored as `datasets` bytes (how
    train_hydrax.py keeps an `images` column) or decoded to a PIL image (a decoded `datasets.Image` column) it must
    reach the model upright, as the same file given by path does."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(
        tmp_path / "portrait.jpg", exif=exif
    )
    conversation = trl_layout_messages("a cat")
    by_path = HydraXDataCollator(processor).load_sample(
        {"messages": conversation, "images": [str(tmp_path / "portrait.jpg")]}
    )
    as_bytes = {"bytes": (tmp_path / "portrait.jpg").read_bytes(), "path": "portrait.jpg"}
    by_bytes = HydraXDataCollator(processor).load_sample({"messages": conversation, "images": [as_bytes]})
    as_pil = Image.open(tmp_path / "portrait.jpg")
    by_pil = HydraXDataCollator(processor).load_sample({"messages": conversation, "images": [as_pil]})
    upright = [sample[0]["content"][0]["image"] for sample in (by_path, by_bytes, by_pil)]
    assert [picture.size for picture in upright] == [(32, 64)] * 3
    assert all(np.array_equal(np.asarray(upright[0]), np.asarray(picture)) for picture in upright[1:])


def test_16_bit_images_collate_to_the_same_pixels_by_path_bytes_or_pil(processor, tmp_path):
    """A 16-bit PNG is scaled to 8 bits by the processor however it arrives; an RGB conversion on the way would
    saturate it to white."""
    gray = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16)  # up to 61400
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    conversation = trl_layout_messages("a ramp")
    sources = [
        str(tmp_path / "gray16.png"),
        {"bytes": (tmp_path / "gray16.png").read_bytes(), "path": None},
        Image.open(tmp_path / "gray16.png"),
    ]
    collator = HydraXDataCollator(processor)
    pixels = [collator([{"messages": conversation, "images": [source]}])["pixel_values"] for source in sources]
    assert all(torch.equal(pixels[0], other) for other in pixels[1:])
    assert (pixels[0] >= 0.999).float().mean() < 0.05  # not saturated


def trl_layout_messages(answer: str, images: int = 1) -> list[dict]:
    question = train_hydrax.user([*({"type": "image"} for _ in range(images)), train_hydrax.text("What is it?")])
    return [question, train_hydrax.assistant([train_hydrax.text(answer)])]


def test_a_stream_of_unknown_features_keeps_its_images(monkeypatch, pictures, processor):
    """Some streams do not declare their features; their `images` column still comes through, and the collator
    loads it."""
    import datasets

    rows = [{"messages": trl_layout_messages("a cat"), "images": [str(pictures / "seen.png")]}] * 2
    stream = datasets.IterableDataset.from_generator(lambda: iter(rows)).map(lambda row: row)
    assert stream.features is None
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: stream)
    (row, _) = list(train_hydrax.load_source("someone/a-stream", "error", streaming=True))
    assert row["origin"] == "someone/a-stream row 0" and json.loads(row["messages"]) == rows[0]["messages"]
    loaded = HydraXDataCollator(processor).load_sample(row)[0]["content"][0]["image"]
    assert np.array_equal(np.asarray(loaded), np.asarray(Image.open(pictures / "seen.png").convert("RGB")))


def test_an_array_in_images_fills_its_bare_block(processor):
    """TRL `images` entries may be arrays: they pass to the processor as they are."""
    array = np.zeros((32, 32, 3), np.uint8)
    loaded = HydraXDataCollator(processor).load_sample({"messages": trl_layout_messages("a cat"), "images": [array]})
    assert loaded[0]["content"][0]["image"] is array


def test_a_non_empty_images_list_wins_over_a_single_image(pictures, processor):
    """A sample with both `images` and `image` takes `images` (TRL would silently drop them)."""
    seen, drawn = (str(pictures / name) for name in ("seen.png", "drawn.png"))
    row = {"messages": trl_layout_messages("a cat"), "images": [seen], "image": drawn}
    loaded = HydraXDataCollator(processor).load_sample(row)
    assert np.array_equal(np.asarray(loaded[0]["content"][0]["image"]), np.asarray(Image.open(seen)))


def test_images_fill_the_bare_blocks_in_order(pictures, processor):
    """The n-th bare image block takes the n-th entry of `images`."""
    paths = [str(pictures / name) for name in ("seen.png", "drawn.png")]
    loaded = HydraXDataCollator(processor).load_sample({"messages": trl_layout_messages("same", 2), "images": paths})
    for block, path in zip(loaded[0]["content"][:2], paths, strict=True):
        assert np.array_equal(np.asarray(block["image"]), np.asarray(Image.open(path))), path


def test_more_bare_image_blocks_than_images_is_a_bad_sample(pictures, processor):
    """Two bare image blocks and one image in `images` is a bad sample naming both counts."""
    row = {"messages": trl_layout_messages("same", 2), "images": [str(pictures / "seen.png")], "origin": "row 3"}
    with pytest.raises(BadSampleError, match=r"^row 3: 2 image block\(s\) without a `path`, .*, but 1 image"):
        HydraXDataCollator(processor).load_sample(row)


def test_collator_reads_base64_blocks_refuses_fileless_videos_and_keeps_the_asked_padding(pictures, processor):
    """A base64 image block is an input as the processor reads it (it was counted as bare and the sample refused); a
    video block without a file, even a generation target, is a bad sample (it crashed `forward` in the training step);
    `images` given as one array or tensor is a bad sample, not a crash; `processor_kwargs` padding is kept."""
    encoded = base64.b64encode((pictures / "seen.png").read_bytes()).decode()
    question = [
        {"role": "user", "content": [{"type": "image", "base64": encoded}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A picture."}]},
    ]
    by_path = json.loads(json.dumps(question).replace(f'"base64": "{encoded}"', f'"path": "{pictures / "seen.png"}"'))
    collator = HydraXDataCollator(processor)
    from_base64, from_path = collator([{"messages": question}]), collator([{"messages": by_path}])
    assert all(torch.equal(from_base64[key], value) for key, value in from_path.items())
    video_target = [
        {"role": "user", "content": [{"type": "text", "text": "Waves."}]},
        {"role": "assistant", "content": [{"type": "video", "num_frames": 5, "height": 32, "width": 32}]},
    ]
    with pytest.raises(BadSampleError, match=r"^v: a video block in the assistant turn has no file .*; give it a"):
        collator.load_sample({"messages": video_target, "origin": "v"})
    for images in (np.zeros((2, 32, 32, 3), np.uint8), torch.zeros(2, 3, 32, 32)):
        with pytest.raises(BadSampleError, match=f"`images` holds one {type(images).__name__}, not a list of images"):
            collator.load_sample({"messages": question, "images": images, "origin": "a"})
    fixed = HydraXDataCollator(processor, processor_kwargs={"padding": "max_length", "max_length": 300})
    batch = fixed([{"messages": question}])
    length = from_path["labels"].shape[1]
    assert batch["input_ids"].shape == (1, 300) and (batch["labels"][:, length:] == -100).all()
    assert torch.equal(batch["labels"][:, :length], from_path["labels"])


def test_arrow_none_keys_do_not_hide_bare_image_blocks(pictures, processor):
    """Blocks read back from Arrow carry `None` for the keys other blocks have (`path: None`); a bare image block
    with them still takes the sample's `images`."""
    seen = str(pictures / "seen.png")
    messages = [
        {"role": "user", "content": [{"type": "image", "path": None, "text": None},
                                     {"type": "text", "text": "What?", "path": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a cat", "path": None}]},
    ]  # fmt: skip
    loaded = HydraXDataCollator(processor).load_sample({"messages": messages, "images": [seen]})
    assert loaded[0]["content"][0].keys() == {"type", "image"}
    assert np.array_equal(np.asarray(loaded[0]["content"][0]["image"]), np.asarray(Image.open(seen)))


def test_plain_string_turns_get_the_images_in_the_first_user_turn(pictures, processor):
    """In a multi-turn plain-string conversation the images go before the first user text, as TRL puts them."""
    messages = [
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "yes"},
    ]
    loaded = HydraXDataCollator(processor).load_sample({"messages": messages, "image": str(pictures / "seen.png")})
    assert [block["type"] for block in loaded[0]["content"]] == ["image", "text"]
    assert loaded[2]["content"] == "Sure?"


def test_streaming_reads_every_source_row_and_trains(checkpoint, processor, pictures, tmp_path):
    """`--streaming`: the sources become one shuffled `IterableDataset` whose rows collate as the map-style ones do."""
    import datasets

    folder = tmp_path / "trl"
    datasets.Dataset.from_list(trl_layout(pictures)).save_to_disk(str(folder))
    manifest = write_manifest(tmp_path / "paths.jsonl", [understanding("seen.png"), text_to_image("drawn.png")] * 3)
    sources = [(str(folder), 1.0), (str(manifest), 1.0)]
    stream, _ = train_hydrax.build_datasets(sources, [], 0.0, "error", seed=0, streaming=True)
    whole, _ = train_hydrax.build_datasets(sources, [], 0.0, "error", seed=0)
    assert isinstance(stream, datasets.IterableDataset) and isinstance(whole, datasets.Dataset)
    streamed = {row["origin"]: row for row in stream}
    assert set(streamed) == set(whole["origin"])  # 2 + 6 rows, whatever the shuffle
    collator = HydraXDataCollator(processor, SIZE)
    by_origin = {row["origin"]: row for row in whole}
    for origin in (f"{folder} row 1", f"{manifest}:4"):
        a, b = collator([streamed[origin]]), collator([by_origin[origin]])
        assert all(torch.equal(a[key], b[key]) for key in a), origin

    out = tmp_path / "out"
    train(checkpoint, out, "--data", folder, manifest, "--streaming", "--log-samples", "--min-pixels", 1024)
    assert len((out / "samples_rank0.txt").read_text().splitlines()) >= 2
    with pytest.raises(SystemExit):
        train_hydrax.parse_args(["--streaming", "--eval-split", "0.1"])


def test_mixture_ratios_are_respected(tmp_path, pictures):
    first = write_manifest(tmp_path / "a.jsonl", [understanding(str(pictures / "seen.png"))] * 400)
    second = write_manifest(tmp_path / "b.jsonl", [understanding(str(pictures / "seen.png"), "b")] * 400)
    train_set, eval_set = train_hydrax.build_datasets(
        [(str(first), 3.0), (str(second), 1.0)], [], 0.0, "error", seed=0
    )
    origins = [origin.split(":")[0] for origin in train_set["origin"]]
    share = origins.count(str(first)) / len(origins)
    assert eval_set is None and len(origins) >= 1000 and 0.70 < share < 0.80, share
    assert train_hydrax.parse_source(f"{first}:3") == (str(first), 3.0)
    assert train_hydrax.parse_source("org/name") == ("org/name", 1.0)
    assert train_hydrax.parse_source("mnist:2") == ("mnist", 2.0)  # a Hub id without an owner is not a path


def test_lora_adapter_loads_back_onto_the_base_checkpoint(checkpoint, demo, tmp_path, processor, monkeypatch):
    from peft import PeftModel

    out = tmp_path / "out"
    monkeypatch.chdir(checkpoint.parent)  # --model given relative to the working folder
    train(Path(checkpoint.name), out, "--stage", 2, "--lora-r", 4, "--llm-lr", 1e-2, "--data", demo)
    assert (out / "adapter" / "adapter_config.json").is_file()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == train_hydrax.DEFAULT_LORA_TARGETS
    assert config["base_model_name_or_path"] == str(checkpoint.resolve()), "AutoPeftModel loads it from anywhere"
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(checkpoint), out / "adapter").eval()
    merged = AutoModel.from_pretrained(out / "model").eval()
    base = AutoModel.from_pretrained(checkpoint).eval()
    rows = [json.loads(line) | {"root": str(demo.parent)} for line in demo.read_text().splitlines()[:2]]
    batch = HydraXDataCollator(processor, SIZE)(rows)
    flow = {"timesteps": torch.tensor([0.5]), "noise": torch.randn(1, 8, 1, 2, 2)}
    with torch.no_grad():
        outputs = [model(**batch, **flow, logits_to_keep=0) for model in (adapted, merged, base)]
    torch.testing.assert_close(outputs[0].logits, outputs[1].logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs[0].velocity, outputs[1].velocity, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(outputs[0].logits, outputs[2].logits), "the adapter must change the model"

    # both folders carry a model card with the run's details: the adapter's for PEFT, the merged model's
    from huggingface_hub import ModelCard

    cards = {name: ModelCard.load(out / name / "README.md") for name in ("adapter", "model")}
    assert cards["adapter"].data.library_name == "peft" and cards["model"].data.library_name == "transformers"
    for card in cards.values():
        assert "| stage | 2 |" in card.text and "| LoRA | rank 4, alpha 16 |" in card.text
        assert "| vision ids | none |" in card.text
        assert "[!WARNING]" not in card.text
    assert f'pipe.load_lora_weights("{(out / "adapter").resolve()}")' in cards["adapter"].text

    # the pipelines load the adapter onto the base checkpoint and sample as the merged model does
    pipes = [HydraXPipeline.from_pretrained(folder) for folder in (checkpoint, out / "model")]
    pipes[0].load_lora_weights(out / "adapter")
    samples = []
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        samples.append(
            pipe(
                "an astronaut", height=32, width=32, num_inference_steps=2, generator=generator, output_type="pt"
            ).images
        )
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=1e-5)

    # a --force LoRA run whose model save fails leaves the earlier run's adapter and model together (the new adapter
    # was put in place first); a --force run without LoRA removes the adapter its model does not go with
    saved = {name: (out / name / "README.md").read_text() for name in ("adapter", "model")}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_hydrax, "save_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(Path(checkpoint.name), out, "--stage", 2, "--lora-r", 2, "--data", demo, "--force")
    assert {name: (out / name / "README.md").read_text() for name in ("adapter", "model")} == saved
    monkeypatch.undo()
    monkeypatch.chdir(checkpoint.parent)
    train(Path(checkpoint.name), out, "--stage", 2, "--data", demo, "--force")
    assert sorted(path.name for path in out.iterdir()) == ["model", "work"]


def test_bad_samples_are_reported_then_skipped_or_fatal(tmp_path, pictures, processor, caplog):
    (pictures / "broken.png").write_bytes(b"not a png")
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            understanding("seen.png"),
            understanding("missing.png"),
            [train_hydrax.user([train_hydrax.text("hello")])],
            understanding("broken.png"),
        ],
    )
    with pytest.raises(ValueError, match=rf"{manifest}:2: image {pictures / 'missing.png'}: no such file"):
        train_hydrax.read_manifest(manifest, "error")
    with caplog.at_level(logging.WARNING):
        dataset = train_hydrax.read_manifest(manifest, "skip")
    assert f"{manifest}:2: image {pictures / 'missing.png'}: no such file" in caplog.text
    assert f"{manifest}:3: the conversation has no assistant turn" in caplog.text
    assert dataset["origin"] == [f"{manifest}:1", f"{manifest}:4"]
    rows = list(dataset)
    with pytest.raises(BadSampleError, match=rf"{manifest}:4: image {pictures / 'broken.png'} cannot be read"):
        HydraXDataCollator(processor, SIZE)(rows)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        batch = HydraXDataCollator(processor, SIZE, on_bad_sample="skip")(rows)
    assert batch["input_ids"].shape[0] == 1 and f"{manifest}:4: image {pictures / 'broken.png'}" in caplog.text


def test_a_batch_of_bad_samples_only_trains_on_the_last_good_sample_when_skipping(pictures, processor, caplog):
    """At batch size 1 a corrupt image is only found here: skipping it must not end the run, so the last good sample
    stands in for the batch; before any good sample there is nothing to train on."""
    (pictures / "broken.png").write_bytes(b"not a png")
    good, bad = (
        sample(understanding(name), pictures, f"m.jsonl:{i}") for i, name in enumerate(["seen.png", "broken.png"])
    )
    collator = HydraXDataCollator(processor, SIZE, on_bad_sample="skip")
    with pytest.raises(BadSampleError, match=r"Every sample of this batch is bad \(m\.jsonl:1\), and no good sample"):
        collator([bad])
    expected = collator([good])
    with caplog.at_level(logging.WARNING):
        stand_in = collator([bad])
    assert "Every sample of this batch is bad (m.jsonl:1); training on the last good sample, m.jsonl:0" in caplog.text
    assert all(torch.equal(value, expected[key]) for key, value in stand_in.items())


def numbered(pictures: Path, *conversations) -> list[dict]:
    """`sample`s of `conversations` as the lines 0, 1, … of m.jsonl."""
    return [sample(messages, pictures, f"m.jsonl:{i}") for i, messages in enumerate(conversations)]


def test_the_stand_in_is_the_last_good_sample_of_the_last_batch(pictures, processor):
    """A batch of bad samples only trains on the LAST good sample collated, not the first of its batch."""
    (pictures / "broken.png").write_bytes(b"not a png")
    first, last, bad = numbered(
        pictures, understanding("seen.png"), understanding("drawn.png", "a dog"), understanding("broken.png", "x")
    )
    collator = HydraXDataCollator(processor, SIZE, on_bad_sample="skip")
    collator([first, last])
    expected = HydraXDataCollator(processor, SIZE)([last])
    stand_in = collator([bad])
    assert all(torch.equal(value, expected[key]) for key, value in stand_in.items())


@pytest.mark.parametrize("option", ["continue_final_message", "sanitize_control_tokens", "processor_kwargs"])
def test_template_options_a_training_batch_cannot_take_are_refused_up_front(processor, option):
    """They failed every sample ("the processor refuses it"), so a skipping run dropped all its data."""
    with pytest.raises(ValueError, match=rf"`chat_template_kwargs` cannot set \['{option}'\]: the collator"):
        HydraXDataCollator(processor, chat_template_kwargs={option: True, "add_vision_id": True})


def test_an_unknown_on_bad_sample_is_refused(processor):
    """`on_bad_sample` takes "error" or "skip" only."""
    with pytest.raises(ValueError, match=r"`on_bad_sample` must be 'error' or 'skip', got 'ignore'"):
        HydraXDataCollator(processor, on_bad_sample="ignore")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"images": [{"bytes": b"not an image", "path": "x.png"}]}, "image 0 of `images` cannot be read"),
        ({"messages": '[{"role": "user"', "images": []}, "`messages` is not a conversation"),
        ({"messages": None, "images": []}, "`messages` is not a conversation (a conversation is a list of messages"),
        ({"images": "seen.png"}, "`images` holds one str, not a list of images; pass it as `image` or in a list"),
        ({"images": [None]}, "image 0 of `images` cannot be read (got a NoneType; pass a PIL image, a path"),
    ],
)
def test_unreadable_rows_are_bad_samples_named_by_origin(row, message, pictures, processor):
    """Corrupt bytes, bad JSON, a missing conversation or malformed `images` are reported as bad samples naming the
    row, so --on-bad-sample skips them as it does missing files."""
    row = {"messages": trl_layout_messages("a cat"), "origin": "ds row 7", "root": str(pictures), **row}
    with pytest.raises(BadSampleError, match=f"^ds row 7: {re.escape(message)}"):
        HydraXDataCollator(processor, SIZE)([row])
    good = {"messages": trl_layout_messages("a cat"), "images": ["seen.png"], "root": str(pictures)}
    assert HydraXDataCollator(processor, SIZE, on_bad_sample="skip")([good, row])["input_ids"].shape[0] == 1


def test_evaluation_leaves_the_training_unchanged(checkpoint, demo, tmp_path):
    """Evaluation draws flow times and noise from a forked RNG: the training losses equal a run without it."""
    argv = ["--stage", 2, "--max-steps", 3, "--batch-size", 3, "--data", demo, "--text-dropout-prob", 0.5]
    plain = train(checkpoint, tmp_path / "plain", *argv)
    evaluated = train(checkpoint, tmp_path / "evaluated", *argv, "--eval-data", demo, "--eval-steps", 1)
    train_losses = [
        [(entry["loss"], entry.get("flow_loss")) for entry in trainer.state.log_history if "loss" in entry]
        for trainer in (plain, evaluated)
    ]
    assert len(train_losses[0]) == 3 and train_losses[0] == train_losses[1]
    assert sum("eval_flow_loss" in entry for entry in evaluated.state.log_history) == 3


def test_logged_terms_are_averaged_over_the_batches_of_every_process(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    trainer = train_hydrax.HydraXTrainer(model=torch.nn.Linear(2, 2), args=args, learning_rates={})
    trainer.loss_sums["train"] = {"lm_loss": (3.0, 2)}  # this process: 2 batches with text, none with a target
    other = torch.tensor([[4.0, 2.0], [6.0, 3.0]], dtype=torch.float64)  # another's (sum, count) of lm and flow
    reduced = []
    trainer.accelerator.reduce = lambda tensor, reduction: reduced.append(reduction) or tensor + other
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert reduced == ["sum"] and logs["lm_loss"] == 7 / 4 and logs["flow_loss"] == 2.0
    assert trainer.loss_sums["train"] == {}


def test_resuming_from_an_incompatible_checkpoint_says_why(checkpoint, demo, tmp_path):
    out = tmp_path / "out"
    train(checkpoint, out, "--stage", 1, "--save-steps", 2, "--data", demo)
    saved = out / "work" / "checkpoint-2"
    assert (saved / train_hydrax.RUN_FILE).is_file() and (saved / "processor_config.json").is_file()
    with pytest.raises(ValueError, match=r"trained differently \(stage: checkpoint 1, this run 2"):
        train(checkpoint, out, "--stage", 2, "--resume-from-checkpoint", saved, "--data", demo)
    with pytest.raises(ValueError, match=r"learning_rates: checkpoint \{'vision_head': 0.0001, 'sem_vit': 5e-05\}"):
        train(checkpoint, out, "--vision-head-lr", "3e-4", "--resume-from-checkpoint", saved, "--data", demo)
    with pytest.raises(ValueError, match=r"weight_decay: checkpoint 0.0, this run 0.5"):  # ignored: the optimizer's
        train(checkpoint, out, "--weight-decay", 0.5, "--resume-from-checkpoint", saved, "--data", demo)
    with pytest.raises(ValueError, match=r"seed: checkpoint 0, this run 1"):  # another data order
        train(checkpoint, out, "--seed", 1, "--resume-from-checkpoint", saved, "--data", demo)
    budget = tmp_path / "budget"
    train(checkpoint, budget, "--max-minutes", 1e-5, "--data", demo)  # ends at step 1 with checkpoint-1
    with pytest.raises(ValueError, match=r"max_minutes: checkpoint 1e-05, this run None"):  # the clock's schedule
        train(checkpoint, budget, "--resume-from-checkpoint", "last", "--data", demo)
    record = json.loads((saved / train_hydrax.RUN_FILE).read_text())
    (out / "work" / "checkpoint-4").mkdir()  # a save cut short: no run record, which is written last
    assert train_hydrax.resume_checkpoint("last", out / "work", record) == str(saved)
    assert [p.name for p in saved.glob(".*")] == [], "the run record is written whole (no partial file left)"
    (saved / train_hydrax.RUN_FILE).write_text("")  # damaged after it was written
    with pytest.raises(ValueError, match="its hydrax_training.json is not valid JSON"):
        train_hydrax.resume_checkpoint("last", out / "work", record)
    (saved / train_hydrax.RUN_FILE).unlink()
    with pytest.raises(ValueError, match="has no hydrax_training.json, so it is not a checkpoint of"):
        train(checkpoint, out, "--stage", 1, "--resume-from-checkpoint", saved, "--data", demo)
    with pytest.raises(ValueError, match="no complete checkpoint-N folder"):
        train_hydrax.resume_checkpoint("last", out / "work", record)


def test_validation_prompts_are_sampled_into_every_checkpoint_without_touching_training(checkpoint, demo, tmp_path):
    """--validation-prompts: each checkpoint holds samples.png, one image per prompt in a row, equal to what the
    pipeline samples from that checkpoint's weights with the same seed; the losses equal a run without them (the
    sampling leaves the training RNG as it was), and the model is back in training mode."""
    prompts = ["an astronaut", "a cup of coffee"]
    argv = ["--stage", 2, "--data", demo, "--max-steps", 4, "--save-steps", 2, "--text-dropout-prob", 0.5]
    sampling = ["--validation-size", 32, "--validation-inference-steps", 3, "--validation-guidance-scale", 3.0]
    validating = train(checkpoint, tmp_path / "with", *argv, *sampling, "--validation-prompts", *prompts)
    plain = train(checkpoint, tmp_path / "without", *argv)
    logged = [[entry["loss"] for entry in run.state.log_history if "loss" in entry] for run in (validating, plain)]
    assert len(logged[0]) == 4 and logged[0] == logged[1]
    assert validating.model.training

    for step in (2, 4):
        folder = tmp_path / "with" / "work" / f"checkpoint-{step}"
        saved = np.asarray(Image.open(folder / train_hydrax.SAMPLES_FILE))
        assert np.array_equal(saved, pipeline_row(folder, prompts, size=32, steps=3, guidance_scale=3.0))
    assert not (tmp_path / "without" / "work" / "checkpoint-2" / train_hydrax.SAMPLES_FILE).exists()


def test_validation_videos_are_written_as_a_row_per_frame(checkpoint, tmp_path):
    """--validation-num-frames 5: each checkpoint holds samples.mp4, the prompts' videos side by side, 5 frames (the
    images' path is compared with the pipeline exactly above; H.264 keeps these frames only approximately)."""
    import av

    argv = ["--max-steps", 2, "--validation-prompts", "a cat", "a dog", "--validation-num-frames", 5]
    train(checkpoint, tmp_path / "out", *argv, "--validation-inference-steps", 2, "--validation-size", 32)
    folder = tmp_path / "out" / "work" / "checkpoint-2"
    with av.open(str(folder / train_hydrax.VIDEO_SAMPLES_FILE)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].size == (64, 32)
    assert not (folder / train_hydrax.SAMPLES_FILE).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--validation-prompts", "a cat", " "], "--validation-prompts holds an empty prompt"),
        (["--validation-prompts", "a cat", "--validation-num-frames", "4"], "must be 1 or 1 + 4k (5, 9, …), got 4"),
        (["--validation-prompts", "a cat", "--validation-inference-steps", "0"], "must be ≥ 1, got 0"),
        (["--eval-data", "data/x.jsonl:3"], "takes no ':WEIGHT'; pass 'data/x.jsonl'"),
        (["--data", "missing.jsonl"], "'missing.jsonl': no such file or folder; pass a .jsonl manifest"),
        (["--data", "./missing:2"], "'./missing': no such file or folder"),
        (["--eval-data", "data/sets/missing"], "'data/sets/missing': no such file or folder"),
        (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be ≥ 1, got 0"),
        (["--save-steps", "0"], "--save-steps must be ≥ 1, got 0"),
        (["--eval-steps", "5"], "--eval-steps needs evaluation data: pass --eval-data or --eval-split"),
        (["--lora-r", "4", "--stage", "2", "--eval-split", "0.1"], "--eval-split needs --data"),
        (["--max-minutes", "0"], "--max-minutes must be a positive number of minutes, got 0.0"),
        (["--max-minutes", "nan"], "argument --max-minutes: must be a finite number, got nan"),
        (["--max-minutes", "5", "--resume-from-checkpoint", "last"], "--max-minutes cannot resume a run"),
        (["--learning-rate-scale", "-1"], "--learning-rate-scale must be ≥ 0, got -1.0"),
        (["--llm-lr", "inf"], "argument --llm-lr: must be a finite number, got inf"),
        (["--sem-vit-lr", "nan"], "argument --sem-vit-lr: must be a finite number, got nan"),
        (["--vision-head-lr", "-0.1"], "--vision-head-lr must be ≥ 0, got -0.1"),
        (["--weight-decay", "-1"], "--weight-decay must be ≥ 0, got -1.0"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must be ≥ 0, got -1.0"),
        (["--lora-alpha", "0"], "--lora-alpha must be ≥ 1 (the adapters' update is scaled by alpha / r), got 0"),
        # these failed after the model was built, in PEFT's or re's words, or not at all (--min-pixels)
        (["--stage", "2", "--lora-r", "0"], "--lora-r must be ≥ 1, got 0"),
        (["--lora-dropout", "1.5"], "--lora-dropout must lie in [0, 1), got 1.5"),
        (["--lora-target-modules", "(q_proj"], "--lora-target-modules '(q_proj' is not a valid regex"),
        (["--min-pixels", "-5"], "--min-pixels must be ≥ 1, got -5"),
        # config fields, refused before any work (a NaN flow-time mean trained a NaN model, logged as loss 0)
        (["--flow-logit-mean", "nan"], "argument --flow-logit-mean: must be a finite number, got nan"),
        (["--flow-logit-std", "0"], "--flow-logit-std must be > 0, got 0.0"),
        (["--lm-loss-weight", "-1"], "--lm-loss-weight must be ≥ 0, got -1.0"),
        (["--flow-loss-weight", "inf"], "argument --flow-loss-weight: must be a finite number, got inf"),
        (["--text-dropout-prob", "1"], "--text-dropout-prob must lie in [0, 1), got 1.0"),
        (["--source-dropout-prob", "nan"], "argument --source-dropout-prob: must be a finite number, got nan"),
        (["--image-to-video-prob", "1.5"], "--image-to-video-prob must lie in [0, 1], got 1.5"),
        (["--min-pixels", "5000", "--max-pixels", "1000"], "--min-pixels 5000 exceeds --max-pixels 1000"),
        (["--max-pixels", "100"], "--max-pixels must hold one 16×16 patch (≥ 256 pixels), got 100"),
    ],
)
def test_bad_validation_arguments_stop_in_argparse(args, message, capsys):
    with pytest.raises(SystemExit):
        train_hydrax.parse_args(args)
    assert message in capsys.readouterr().err


def test_flow_loss_weights_count_only_each_rows_target_block(checkpoint, processor, pictures):
    """A conversation with two assistant images trains only the last (the first is clean context), but every marked
    token was counted: under accumulation and in evaluation its flow loss was weighted by both blocks (batch 2 and
    2 × 1 accumulated differed in loss and gradient norm)."""
    two_turns = [
        *text_to_image(str(pictures / "seen.png")),
        train_hydrax.user([train_hydrax.text("Another")]),
        train_hydrax.assistant([{"type": "image", "path": str(pictures / "drawn.png")}]),
    ]
    rows = [sample(two_turns, pictures), sample(text_to_image(str(pictures / "drawn.png")), pictures)]
    batch = HydraXDataCollator(processor, SIZE)(rows)
    model = AutoModel.from_pretrained(checkpoint)
    target, _, _ = model._generation_masks(batch["input_ids"], False, target_mask=batch["target_mask"])
    assert int(batch["target_mask"].sum()) > int(target.sum()), "the first row has a context image"
    assert train_hydrax.loss_token_counts(batch)[1] == int(target.sum())


def test_the_trained_cards_keep_the_starting_checkpoints_base_models_and_licence(checkpoint, demo, tmp_path):
    """A fine-tune of a converted checkpoint derives from the same Hub models under the same licence: its cards (the
    merged model's and the adapter's) named no `base_model` and took the default licence, so the Hub lost the lineage
    and a Qwen research-licence model was relabelled. The adapter's base is the local `start`: none named."""
    from huggingface_hub import ModelCard

    start = shutil.copytree(checkpoint, tmp_path / "start")
    bases = ["Qwen/Qwen2.5-3B-Instruct", "google/siglip2-so400m-patch16-naflex"]
    config = AutoModel.from_pretrained(start).config
    card = train_hydrax.build_model_card("me/start", config, "converted", base_models=bases, license="other")
    card.save(start / "README.md")
    train(start, tmp_path / "out", "--stage", 2, "--lora-r", 2, "--data", demo)
    cards = {name: ModelCard.load(tmp_path / "out" / name / "README.md").data for name in ("model", "adapter")}
    assert (cards["model"].base_model, cards["model"].license) == (bases, "other")
    assert (cards["adapter"].base_model, cards["adapter"].license) == (None, "other"), "it applies to `start` only"
    train(checkpoint, tmp_path / "plain", "--data", demo)  # a starting folder without a card: the defaults
    assert ModelCard.load(tmp_path / "plain" / "model" / "README.md").data.base_model is None


def test_a_time_budget_ends_the_run_saves_the_model_and_says_so_in_the_card(checkpoint, demo, tmp_path, capsys):
    """`--max-minutes`: a budget spent within the first step ends the run there, as the last step would: evaluated,
    checkpointed, the model saved and the card naming the budget; its bar replaces the step bar. A budget that
    outlasts the steps changes neither."""
    trainer = train(checkpoint, tmp_path / "short", "--max-steps", 50, "--max-minutes", 1e-5, "--eval-data", demo)
    assert trainer.state.global_step == 1 and trainer.time_budget.ran_out
    assert [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry] == [1]
    assert (tmp_path / "short" / "work" / "checkpoint-1" / "trainer_state.json").is_file()
    card = (tmp_path / "short" / "model" / "README.md").read_text()
    assert "| steps | 1 (the 1e-05-minute time budget ran out) |" in card
    assert "s of the time budget" in capsys.readouterr().err
    trainer = train(checkpoint, tmp_path / "long", "--max-minutes", 60)
    assert trainer.state.global_step == 2 and not trainer.time_budget.ran_out
    assert "| steps | 2 |" in (tmp_path / "long" / "model" / "README.md").read_text()


def test_the_time_budget_schedule_decays_linearly_with_whichever_runs_out_first():
    """The Trainer's "linear" schedule with warm-up, exactly, while the time fraction stays behind (a budget that never
    runs out changed the rates: the warm-up was multiplied into a decay that had already started); after the warm-up
    the larger of the step and time fractions counts. The time is the main process's, read at the last step's end."""
    budget = train_hydrax.TimeBudget(1.0, 10, 2, "training", train_hydrax.linear_decay)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer_schedule = get_linear_schedule_with_warmup(optimizer, 2, 10).lr_lambdas[0]
    assert [budget.factor(step) for step in range(11)] == pytest.approx([trainer_schedule(s) for s in range(11)])
    assert [budget.factor(step) for step in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    budget.elapsed = 45.0  # three quarters of the minute: ahead of the steps
    assert [budget.factor(step) for step in (2, 9)] == pytest.approx([0.25, 0.125])
    budget.start -= 600  # the local clock is not read: only the broadcast elapsed time counts
    assert budget.factor(2) == pytest.approx(0.25) and not budget.ran_out


def test_a_validation_size_off_the_patch_grid_stops_before_training(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--validation-size 40 is not a multiple of the tokenizer's patch size 16"):
        train(checkpoint, tmp_path / "out", "--validation-prompts", "a cat", "--validation-size", 40)
    assert not (tmp_path / "out" / "work").exists()


def test_an_earlier_runs_checkpoints_are_resumed_or_replaced_never_mixed(checkpoint, tmp_path, capsys):
    """`last` must not pick up another run's checkpoint: a new run in a folder holding one stops in argparse, unless it
    resumes or passes --force (which removes the earlier checkpoints first)."""
    out = tmp_path / "out"
    train(checkpoint, out, "--save-steps", 1)
    assert (out / "work" / "checkpoint-2").is_dir()
    with pytest.raises(SystemExit):
        train(checkpoint, out)
    newest = out / "work" / "checkpoint-2"
    assert f"holds the checkpoints of an earlier run (newest: {newest})" in capsys.readouterr().err
    train(checkpoint, out, "--force", "--max-steps", 1, "--save-steps", 1)
    assert sorted(path.name for path in (out / "work").glob("checkpoint-*")) == ["checkpoint-1"]


def test_lora_targets_in_the_frozen_tokenizer_are_refused(checkpoint, tmp_path):
    with pytest.raises(
        ValueError, match=r"matches \d+ modules of the frozen Gen-ViT and pixel decoder \(e\.g\. model"
    ):
        train(checkpoint, tmp_path / "out", "--stage", 2, "--lora-r", 4, "--lora-target-modules", r".*\.q_proj")


def test_a_datasets_rows_are_checked_before_training(tmp_path, caplog):
    """A `save_to_disk` row without an assistant turn or with bad JSON is reported by its row before step 0 (as a
    manifest line is), then fatal or skipped, not found by the collator hours into the run."""
    import datasets

    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    rows = [good, json.dumps([{"role": "user", "content": "hi"}]), '[{"role": ', good]
    datasets.Dataset.from_dict({"messages": rows}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"row 1: the conversation has no assistant turn.*--on-bad-sample skip"):
        train_hydrax.load_source(str(tmp_path / "ds"), "error")
    with caplog.at_level(logging.WARNING):
        kept = train_hydrax.load_source(str(tmp_path / "ds"), "skip")
    assert kept["origin"] == [f"{tmp_path / 'ds'} row 0", f"{tmp_path / 'ds'} row 3"]
    assert "row 2: `messages` is not a conversation" in caplog.text


def test_trl_images_are_checked_before_training_and_paths_resolve_as_datasets_opens_them(
    processor, pictures, tmp_path, monkeypatch, caplog
):
    """TRL's `images` are checked up front too: a count that differs from the bare blocks', or a path-only image whose
    file is missing, crashed the collator mid-run (with `--on-bad-sample skip` too). A path-only `datasets` image is
    read as `datasets` reads it, from the working directory (it was joined to the dataset's folder), else from the
    dataset's folder; and a manifest line with bare blocks (TRL's layout, which manifests do not take) is refused."""
    import datasets

    rows = trl_layout(pictures)
    image = datasets.Image(decode=False)
    monkeypatch.chdir(pictures.parent)
    relative = str(Path(pictures.name) / "seen.png")  # from the working directory, as `datasets` opens it
    messages = json.dumps(rows[0]["messages"])
    text_only = json.dumps([train_hydrax.user("hi"), train_hydrax.assistant("hello")])
    table = {"messages": [messages] * 3 + [text_only], "images": [[relative], [relative] * 2, ["gone.png"], None]}
    dataset = datasets.Dataset.from_dict(table).cast_column("images", datasets.List(image))
    (tmp_path / "pq").mkdir()
    dataset.to_parquet(str(tmp_path / "pq" / "train.parquet"))  # path-only images, as `to_parquet` writes them
    with pytest.raises(ValueError, match=r"pq row 1: 1 image block\(s\) without a .* but 2 image\(s\)"):
        train_hydrax.load_source(str(tmp_path / "pq"), "error")
    with caplog.at_level(logging.WARNING):
        kept = train_hydrax.load_source(str(tmp_path / "pq"), "skip")
    assert kept["origin"] == [f"{tmp_path / 'pq'} row 0", f"{tmp_path / 'pq'} row 3"], "a text-only row's images: None"
    assert f"row 2: image {tmp_path / 'pq' / 'gone.png'}: no such file" in caplog.text
    batch = HydraXDataCollator(processor, SIZE)(list(kept))
    assert batch["pixel_values"].shape[0] == 1
    line = {"messages": rows[0]["messages"], "images": [str(pictures / "seen.png")]}
    plain = {"messages": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "a"}]}
    for record in (line, plain | {"images": line["images"]}, plain | {"image": line["images"][0]}):
        (tmp_path / "trl.jsonl").write_text(json.dumps(record) + "\n")  # the images were left out, silently
        with pytest.raises(ValueError, match="a manifest's image blocks name their files"):
            train_hydrax.load_source(str(tmp_path / "trl.jsonl"), "error")
    named = {"messages": understanding(str(pictures / "seen.png")), "image": "id-7"}  # the blocks name their files
    (tmp_path / "named.jsonl").write_text(json.dumps(named) + "\n")
    assert len(train_hydrax.load_source(str(tmp_path / "named.jsonl"), "error")) == 1
    bad_path = [train_hydrax.user([{"type": "image", "path": 5}]), train_hydrax.assistant("a")]
    assert train_hydrax.find_problem(bad_path, None).startswith("image 5 is not a file path"), "was an AttributeError"


def test_a_file_url_is_read_as_its_path(processor, pictures, tmp_path):
    """`file:///…/seen.png` names the file (it was joined to the manifest's folder as `…/file:/…`), percent-encoded
    as `Path.as_uri` writes it (a space was `%20`, no such file), as a block's `url` too (which the processor's
    `load_image` refuses mid-run)."""
    spaced = shutil.copy(pictures / "seen.png", tmp_path / "my photo.png")
    hashed = shutil.copy(pictures / "seen.png", tmp_path / "a#1%41.png")  # written as it is, not as a URL
    batch = []
    blocks = [{"path": f"file://{pictures / 'seen.png'}"}, {"path": spaced.as_uri()}, {"url": spaced.as_uri()}]
    for block in [*blocks, {"path": f"file://{hashed}"}]:
        question = train_hydrax.user([{"type": "image", **block}, train_hydrax.text("What?")])
        messages = [question, train_hydrax.assistant("a")]
        assert train_hydrax.find_problem(messages, str(tmp_path)) is None
        batch.append({"messages": json.dumps(messages), "origin": "data.jsonl:1", "root": str(tmp_path / "elsewhere")})
    assert HydraXDataCollator(processor, SIZE)(batch)["pixel_values"].shape[0] == 4


def test_samples_the_processor_refuses_are_bad_samples_named_by_origin(processor, pictures, caplog):
    """A video file that does not decode and an image beyond the processor's aspect-ratio limit fail only when the
    processor renders the batch: each is found, named by its origin and skipped (or raised), as a corrupt image is."""
    (pictures / "corrupt.mp4").write_bytes(b"not a video at all" * 10)
    Image.new("RGB", (4000, 16), "red").save(pictures / "sliver.png")

    def sample(block, origin):
        messages = [train_hydrax.user([block, train_hydrax.text("What?")]), train_hydrax.assistant("a thing")]
        return {"messages": messages, "origin": origin, "root": str(pictures)}

    good = sample({"type": "image", "path": "seen.png"}, "data.jsonl:1")
    video = sample({"type": "video", "path": "corrupt.mp4"}, "data.jsonl:2")
    sliver = sample({"type": "image", "path": "sliver.png"}, "data.jsonl:3")
    expected = HydraXDataCollator(processor, SIZE)([good])
    for bad in (video, sliver):
        with pytest.raises(BadSampleError, match=f"^{bad['origin']}: the processor refuses it"):
            HydraXDataCollator(processor, SIZE)([good, bad])
        collator = HydraXDataCollator(processor, SIZE, on_bad_sample="skip")
        with caplog.at_level(logging.WARNING):
            batch = collator([good, bad])
        assert f"Skipping a bad training sample: {bad['origin']}: the processor refuses it" in caplog.text
        assert all(torch.equal(value, expected[key]) for key, value in batch.items())
        with caplog.at_level(logging.WARNING):
            stand_in = collator([bad])  # a batch of it alone trains on the last good sample
        assert all(torch.equal(value, expected[key]) for key, value in stand_in.items())


def test_skipping_a_sample_the_processor_refuses_keeps_every_good_one(pictures, processor):
    """When the processor refuses the batch, only the refused sample leaves it: the good ones all stay, in order."""
    Image.new("RGB", (4000, 16), "red").save(pictures / "sliver.png")
    first, second, sliver = numbered(
        pictures, understanding("seen.png"), understanding("drawn.png", "a dog"), understanding("sliver.png", "x")
    )
    expected = HydraXDataCollator(processor, SIZE)([first, second])
    batch = HydraXDataCollator(processor, SIZE, on_bad_sample="skip")([first, sliver, second])
    assert batch.keys() == expected.keys() and all(torch.equal(value, expected[key]) for key, value in batch.items())


def test_gradient_accumulation_gives_the_step_of_one_large_batch(checkpoint, demo, tmp_path):
    """A question and a text-to-image sample as one batch of 2, or as 2 accumulated batches of 1: the same loss and
    gradient. Each micro-batch's `lm_loss` / `flow_loss` is weighted by its share of the step's text and target tokens;
    as plain per-batch means, the batch without a target halved the flow term (loss 7.94 against 8.98)."""
    rows = [json.loads(line) for line in demo.read_text().splitlines()]
    caption_to_image = [rows[1]["messages"][0], train_hydrax.assistant([{"type": "image", "path": "astronaut.png"}])]
    two = write_manifest(demo.parent / "two.jsonl", [rows[0]["messages"], caption_to_image])
    argv = ["--stage", 2, "--max-steps", 1, "--data", two, "--text-dropout-prob", 0, "--max-grad-norm", 1e9]
    steps = []
    for name, layout in (
        ("one", ["--batch-size", 2]),
        ("accumulated", ["--batch-size", 1, "--gradient-accumulation-steps", 2]),
    ):
        trainer = train(checkpoint, tmp_path / name, *argv, *layout)
        steps.append(next(entry for entry in trainer.state.log_history if "loss" in entry))
    assert steps[0]["loss"] == pytest.approx(steps[1]["loss"], rel=1e-4)
    assert steps[0]["grad_norm"] == pytest.approx(steps[1]["grad_norm"], rel=1e-4)
    for term in ("lm_loss", "flow_loss"):  # logged as token-weighted means: the large batch's values too
        assert steps[0][term] == pytest.approx(steps[1][term], rel=1e-4), term
    assert steps[0]["loss"] == pytest.approx(steps[0]["lm_loss"] + steps[0]["flow_loss"], rel=1e-4)


def test_a_bf16_checkpoint_trains_float32_master_weights_and_is_saved_in_bf16(checkpoint, demo, tmp_path):
    """conversion/build_hydrax.py --dtype bfloat16 writes bf16 weights, which load in bf16 by default; the model is
    trained in float32 (--bf16 computes in bf16: AdamW's state shows it) and saved back in bf16, at its size."""
    bf16 = tmp_path / "bf16"
    shutil.copytree(checkpoint, bf16)
    AutoModel.from_pretrained(checkpoint, dtype=torch.bfloat16).save_pretrained(bf16)
    trainer = train(bf16, tmp_path / "out", "--stage", 2, "--data", demo, "--max-steps", 1)
    assert {state["exp_avg"].dtype for state in trainer.optimizer.state.values()} == {torch.float32}
    saved = AutoModel.from_pretrained(tmp_path / "out" / "model")
    assert {param.dtype for param in saved.parameters()} == {torch.bfloat16} and saved.config.dtype == torch.bfloat16


def test_a_manifest_must_be_jsonl_and_a_source_too_small_to_split_is_named(demo, tmp_path):
    (tmp_path / "qa.json").write_text(demo.read_text())  # JSON lines under another suffix: looked up on the Hub
    with pytest.raises(argparse.ArgumentTypeError, match=r"qa.json': a manifest must be a .jsonl file.*pass the fold"):
        train_hydrax.parse_source(f"{tmp_path / 'qa.json'}:2")
    assert train_hydrax.parse_source(f"{demo}:2") == (str(demo), 2.0)
    for weight in ("nan", "inf"):  # they passed `<= 0` and failed in interleave_datasets ("probability 0")
        with pytest.raises(argparse.ArgumentTypeError, match="the weight after ':' must be a positive finite number"):
            train_hydrax.parse_source(f"{demo}:{weight}")
    timed = tmp_path / "run_12:30"  # an existing path ending in ":NUMBER" is a path, not a weight
    timed.mkdir()
    assert train_hydrax.parse_source(str(timed)) == (str(timed), 1.0)
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    shutil.copy(demo, home / "data" / "qa.jsonl")
    with pytest.MonkeyPatch.context() as patch:  # a quoted `~` the shell did not expand
        patch.setenv("HOME", str(home))
        assert train_hydrax.parse_source("~/data/qa.jsonl:3") == (str(home / "data" / "qa.jsonl"), 3.0)
    one = demo.parent / "one.jsonl"
    one.write_text(demo.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=rf"--eval-split 0.02: cannot hold out part of --data {one} \(1 rows\)"):
        train_hydrax.build_datasets([(str(demo), 1.0), (str(one), 1.0)], [], 0.02, "error", seed=0)


def test_stage_learning_rates_are_the_papers():
    """The stage table holds the paper's learning rates (the other tests compare the optimizer with the table)."""
    assert train_hydrax.STAGE_LEARNING_RATES == {
        1: {"vision_head": 1e-4, "sem_vit": 5e-5},
        2: {"vision_head": 5e-5, "llm": 2e-5, "sem_vit": 2e-5},
        3: {"vision_head": 5e-5, "llm": 2e-5, "sem_vit": 2e-5},
    }


def test_lora_adapts_every_llm_projection_with_its_alpha_and_trains_the_stage_groups_in_full(checkpoint):
    """`--lora-r`: adapters on all seven projections of every LLM layer with `--lora-alpha`'s scaling, while the
    stage's vision head and Sem-ViT train in full (`modules_to_save`; without it PEFT freezes them)."""
    from peft.tuners.lora import LoraLayer

    model = AutoModel.from_pretrained(checkpoint)
    rates = train_hydrax.stage_learning_rates(2)
    train_hydrax.set_trainable(model, rates)
    groups_of = {name: train_hydrax.parameter_group(name) for name, _ in model.named_parameters()}
    full = {name for name, group in groups_of.items() if group in ("vision_head", "sem_vit")}
    args = argparse.Namespace(
        lora_r=4, lora_alpha=16, lora_dropout=0.0, lora_target_modules=train_hydrax.DEFAULT_LORA_TARGETS
    )
    peft_model = train_hydrax.add_lora(model, args, rates)
    config = peft_model.peft_config["default"]
    assert config.r == 4 and config.lora_alpha == 16
    adapted = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    layers = model.config.text_config.num_hidden_layers
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip
    assert set(adapted) == {f"model.language_model.layers.{i}.{p}" for i in range(layers) for p in projections}
    assert all(module.scaling["default"] == 16 / 4 for module in adapted.values())
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    groups = Counter(train_hydrax.parameter_group(name) for name in trainable)
    assert set(groups) == {"vision_head", "sem_vit", "llm"}, groups
    assert all("lora_" in name for name in trainable if train_hydrax.parameter_group(name) == "llm")
    # every vision-head and Sem-ViT tensor of the base model has a trainable full copy
    copies = {name.removeprefix("base_model.model.").replace(".modules_to_save.default", "") for name in trainable
              if ".modules_to_save.default." in name}  # fmt: skip
    assert copies == full


def test_validation_samples_follow_the_seed(checkpoint, tmp_path):
    """`--seed` seeds the validation samples (seed 0 alone cannot tell a seed that is ignored)."""
    model = AutoModel.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    images = train_hydrax.sample_prompts(model, processor, ["a cat", "a dog"], 32, 2, 3.0, seed=7)
    row = np.concatenate([np.asarray(image) for image in images], axis=1)
    assert np.array_equal(
        row, pipeline_row(checkpoint, ["a cat", "a dog"], size=32, steps=2, guidance_scale=3.0, seed=7)
    )
    assert not np.array_equal(row, pipeline_row(checkpoint, ["a cat", "a dog"], size=32, steps=2, guidance_scale=3.0))


def write_checkpoint(folder: Path, record: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / train_hydrax.RUN_FILE).write_text(json.dumps(record))
    return folder


RECORD = {
    "stage": 2,
    "learning_rates": {"vision_head": 5e-5, "llm": 2e-5, "sem_vit": 2e-5},
    "lora": {"r": 4, "alpha": 16, "dropout": 0.0, "targets": "x"},
    "architecture": {},
    "trainable_tensors": 7,
}


def test_resume_last_takes_the_newest_complete_checkpoint(tmp_path):
    """With several complete checkpoints `last` is the newest by step (not by name order)."""
    work = tmp_path / "work"
    for step in (2, 10, 4):
        write_checkpoint(work / f"checkpoint-{step}", RECORD)
    assert train_hydrax.resume_checkpoint("last", work, RECORD) == str(work / "checkpoint-10")


def test_resuming_with_other_lora_settings_says_why(tmp_path):
    """Every field of the run record is checked, the LoRA settings too (a resume restores the checkpoint's
    adapter, so a changed rank or alpha would be silently ignored)."""
    saved = write_checkpoint(tmp_path / "work" / "checkpoint-2", RECORD)
    other = {**RECORD, "lora": {**RECORD["lora"], "alpha": 32}}
    with pytest.raises(ValueError, match=r"trained differently \(lora: checkpoint"):
        train_hydrax.resume_checkpoint(str(saved), tmp_path / "work", other)


def test_a_resume_runs_only_the_remaining_steps(checkpoint, tmp_path, monkeypatch):
    """A resumed run executes only the steps after its checkpoint: a run from scratch with the same seed gives the
    same losses and weights, so only the steps it runs tell a resume from a rerun."""
    from conftest import interrupting

    demo = train_hydrax.write_demo_data(tmp_path / "demo")
    argv = ["--model", checkpoint, "--data", demo, "--max-steps", 3, "--save-steps", 2, "--logging-steps", 1,
            "--report-to", "none", "--output-dir", tmp_path / "out"]  # fmt: skip
    argv = list(map(str, argv))
    with monkeypatch.context() as patch:
        patch.setattr(train_hydrax, "RunRecordCallback", interrupting(train_hydrax.RunRecordCallback))
        assert train_hydrax.main(argv).state.global_step == 2
    ran = []

    class Steps(train_hydrax.RunRecordCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            ran.append(state.global_step + 1)

    monkeypatch.setattr(train_hydrax, "RunRecordCallback", Steps)
    resumed = train_hydrax.main([*argv, "--resume-from-checkpoint", "last"])
    assert ran == [3] and resumed.state.global_step == 3


def test_a_resume_keeps_the_built_tiny_model_it_trained_on(tmp_path):
    """Without --model a resume rebuilt OUTPUT_DIR/initial with its own --seed: a LoRA run (its checkpoints hold the
    adapter only) continued on other base weights, with no warning. The seed is part of the run record now, and the
    initial model is built once."""
    out = tmp_path / "out"
    argv = list(map(str, ["--output-dir", out, "--stage", 2, "--lora-r", 2, "--save-steps", 1]))
    train_hydrax.main([*argv, "--max-steps", "1"])
    weights = (out / "initial" / "model.safetensors").read_bytes()
    resume = [*argv, "--max-steps", "2", "--resume-from-checkpoint", "last"]
    with pytest.raises(ValueError, match=r"seed: checkpoint 0, this run 1"):
        train_hydrax.main([*resume, "--seed", "1"])
    assert train_hydrax.main(resume).state.global_step == 2
    assert (out / "initial" / "model.safetensors").read_bytes() == weights


def test_the_seed_picks_the_held_out_split(tmp_path):
    """`--eval-split` holds out a seeded random part of every source."""
    manifest = train_hydrax.write_demo_data(tmp_path / "demo")
    held_out = [
        tuple(train_hydrax.build_datasets([(str(manifest), 1.0)], [], 0.5, "error", seed=seed)[1]["origin"])
        for seed in range(4)
    ]
    assert len(set(held_out)) > 1, held_out


def test_the_seed_orders_a_streamed_mixture():
    """`endless_stream` shuffles with the run's seed."""
    import datasets

    stream = datasets.Dataset.from_dict({"origin": [str(i) for i in range(50)]}).to_iterable_dataset()
    orders = [
        [row["origin"] for _, row in zip(range(50), train_hydrax.endless_stream(stream, seed))] for seed in (0, 1)
    ]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(str(i) for i in range(50))
    assert orders[0] != orders[1]
