"""evaluation/evaluate_generation.py on the tiny random checkpoint with tiny random CLIP and DINOv2 models, offline:
text-to-image from a .txt file (as a script) and from a JSONL manifest with reference images, instruction editing with
and without targets, outputs that do not depend on the batch size, metrics equal to hand computations on the saved
PNGs, skipped metrics that name what enables them, and bad inputs that stop with a message naming the fix. About 35 s
on 2 busy CPU cores, a third of it the one script run's start-up."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCHRUN, load_script, run_processes, run_script, tiny_clip, tiny_dinov2
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "evaluation" / "evaluate_generation.py"
evaluation = load_script(SCRIPT)  # puts evaluation/ on sys.path, for metrics_hydrax below

from metrics_hydrax import HydraXClipScore, HydraXFeatureStatistics, HydraXImageFeatures, frechet_distance  # noqa: E402


HEIGHT, WIDTH = 32, 48
SMALL = ["--height", str(HEIGHT), "--width", str(WIDTH), "--num-inference-steps", "2"]
PROMPTS = ["a red fox in the snow", "a cat on a mat", "a lighthouse at night"]


def random_png(path: Path, height: int, width: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny CLIP / DINOv2 folders, a prompt file with a blank line, a text-to-image manifest with reference images
    (40×56, not the output size), a folder of reference images, and an edit manifest: two rows with a target (at the
    output size) and a target caption (one names the instruction `instruction`), one with neither."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "references").mkdir()
    for index in range(3):
        random_png(folder / "references" / f"{index}.png", 40, 56, seed=index)
    (folder / "prompts.txt").write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n{PROMPTS[2]}\n")
    t2i = [
        {"prompt": prompt, "image": random_png(folder / f"ref{i}.png", 40, 56, 10 + i)}
        for i, prompt in enumerate(PROMPTS)
    ]
    edit = [
        {
            "image": "ref0.png",
            "prompt": "make it red",
            "target": random_png(folder / "target0.png", HEIGHT, WIDTH, 20),
            "target_caption": "a red square",
        },
        {
            "image": "ref1.png",
            "instruction": "make it blue",
            "target": random_png(folder / "target1.png", HEIGHT, WIDTH, 21),
            "target_caption": "a blue square",
        },
        {"image": "ref2.png", "prompt": "add snow"},
    ]
    return {
        "folder": folder,
        "clip": tiny_clip(folder / "clip"),
        "dinov2": tiny_dinov2(folder / "dinov2"),
        "txt": str(folder / "prompts.txt"),
        "t2i": write_jsonl(folder / "t2i.jsonl", t2i),
        "edit": write_jsonl(folder / "edit.jsonl", edit),
        "i2v": write_jsonl(folder / "i2v.jsonl", [{"image": row["image"], "prompt": row["prompt"]} for row in t2i]),
        "references": str(folder / "references"),
    }


def evaluate(output: Path, *args) -> Path:
    """The script's `main` in this process; returns the output folder."""
    evaluation.main([*map(str, args), "--output-dir", str(output)])
    return output


def read_outputs(output: Path) -> tuple[dict, list[dict]]:
    samples = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    return json.loads((output / "metrics.json").read_text()), samples


def png(output: Path, record: dict) -> np.ndarray:
    return np.array(Image.open(output / record["file"]).convert("RGB"))


@pytest.fixture(scope="module")
def t2i_run(checkpoint, data, tmp_path_factory):
    """Text-to-image from the manifest: 2 images per prompt, batches of 2 prompts, FD against the manifest's images."""
    models = ["--clip-model", data["clip"], "--feature-model", data["dinov2"]]
    run = ["--model", checkpoint, "--data", data["t2i"], *SMALL, "--num-images-per-prompt", "2", *models]
    return evaluate(tmp_path_factory.mktemp("t2i") / "out", *run, "--batch-size", "2"), run


@pytest.fixture(scope="module")
def edit_run(checkpoint, data, tmp_path_factory):
    run = ["--task", "edit", "--model", checkpoint, "--data", data["edit"], *SMALL, "--batch-size", "2"]
    models = ["--clip-model", data["clip"], "--feature-model", data["dinov2"]]
    return evaluate(tmp_path_factory.mktemp("edit") / "out", *run, *models)


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return evaluation.load_pipeline(str(checkpoint), "text-to-image")


def test_text_to_image_from_a_prompt_file_as_a_script(checkpoint, data, tmp_path):
    models = ["--clip-model", data["clip"], "--feature-model", data["dinov2"], "--reference", data["references"]]
    output = tmp_path / "out"
    args = ["--model", checkpoint, "--data", data["txt"], *SMALL, *models, "--output-dir", output]
    result = run_script(SCRIPT, *map(str, args), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-3:] == [
        f"images: {output / 'images'}",
        f"metrics: {output / 'metrics.json'}",
        f"samples: {output / 'samples.jsonl'}",
    ]
    metrics, samples = read_outputs(output)
    assert metrics["metrics"]["clip_score"]["count"] == 3 and metrics["skipped"] == {}
    fd = metrics["metrics"]["fd_dinov2"]
    assert fd["count"] == 3 and fd["reference_count"] == 3 and fd["value"] > 0
    assert [sample["prompt"] for sample in samples] == PROMPTS  # the blank line is no prompt
    assert [sample["origin"] for sample in samples] == [f"{data['txt']}:{line}" for line in (1, 3, 4)]
    assert sorted(path.name for path in (output / "images").iterdir()) == ["00000_0.png", "00001_0.png", "00002_0.png"]
    assert all(Image.open(output / sample["file"]).size == (WIDTH, HEIGHT) for sample in samples)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"], "a staging folder was left behind"


def test_text_to_image_from_a_manifest_with_reference_images(t2i_run, checkpoint, data):
    output, _ = t2i_run
    metrics, samples = read_outputs(output)
    assert [(s["row"], s["sample"], s["seed"]) for s in samples] == [(i // 2, i % 2, i) for i in range(6)]
    assert [s["prompt"] for s in samples] == [prompt for prompt in PROMPTS for _ in range(2)]
    assert sorted(s["file"] for s in samples) == sorted(f"images/{p.name}" for p in (output / "images").iterdir())
    assert all(Image.open(output / s["file"]).size == (WIDTH, HEIGHT) for s in samples)
    clip_score = metrics["metrics"]["clip_score"]
    assert clip_score["count"] == 6
    assert clip_score["mean"] == pytest.approx(np.mean([s["clip_score"] for s in samples]))
    fd = metrics["metrics"]["fd_dinov2"]
    assert (fd["count"], fd["reference_count"]) == (6, 3) and "equal image counts" in fd["note"]
    settings = metrics["settings"]
    assert (settings["height"], settings["width"], settings["num_inference_steps"]) == (HEIGHT, WIDTH, 2)
    assert (settings["model"], settings["data"], settings["seed"], settings["guidance_scale"]) == (
        str(checkpoint),
        data["t2i"],
        0,
        4.0,
    )
    assert "image_guidance_scale" not in settings and metrics["rows"] == 3 and metrics["images"] == 6
    assert metrics["seconds"] > 0
    entries = json.loads((output / "eval_results.json").read_text())  # the model card's model-index entries
    assert {entry["metric_type"]: entry["metric_value"] for entry in entries} == pytest.approx(
        {"clip_score": clip_score["mean"], "fd_dinov2": fd["value"]}, abs=1e-6
    )
    assert {(entry["task_type"], entry["dataset_name"], entry["dataset_split"]) for entry in entries} == {
        ("text-to-image", "t2i", None)
    }


def test_outputs_do_not_depend_on_the_batch_size(t2i_run, pipe, data, tmp_path):
    output, run = t2i_run
    single = evaluate(tmp_path / "single", *run, "--batch-size", "1")
    _, samples = read_outputs(output)
    _, single_samples = read_outputs(single)
    for sample, single_sample in zip(samples, single_samples, strict=True):
        assert sample["file"] == single_sample["file"]
        # the float outputs agree to ~1e-7 (below); rounding to 8 bits may flip a value sitting on a half level
        difference = np.abs(png(output, sample).astype(int) - png(single, single_sample).astype(int))
        assert difference.max() <= 1
        assert sample["clip_score"] == pytest.approx(single_sample["clip_score"], abs=1e-3)

    rows = evaluation.read_rows(data["t2i"], "text-to-image")
    settings = evaluation.GenerationSettings(HEIGHT, WIDTH, 2, num_images_per_prompt=2)
    together = evaluation.generate_batch(pipe, "text-to-image", [rows[0], rows[1]], settings)
    apart = torch.cat([evaluation.generate_batch(pipe, "text-to-image", [rows[i]], settings) for i in (0, 1)])
    assert together.shape == (4, 3, HEIGHT, WIDTH) and 0 <= together.min() and together.max() <= 1
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)
    # seeds are seed + row·K + sample: a seed further than rows·K away shares no noise
    other = evaluation.GenerationSettings(HEIGHT, WIDTH, 2, num_images_per_prompt=2, seed=1000)
    reseeded = evaluation.generate_batch(pipe, "text-to-image", [rows[0], rows[1]], other)
    assert (reseeded - together).abs().flatten(1).amax(1).min() > 1e-2


def test_clip_score_equals_a_clip_forward_on_the_saved_pngs(t2i_run, data):
    """The script scores the pixels it saves (the pipeline's output rounded to 8 bits), so a CLIP forward on the PNG
    files, outside metrics_hydrax, gives the same scores."""
    from transformers import CLIPModel, CLIPProcessor

    output, _ = t2i_run
    _, samples = read_outputs(output)
    model, processor = CLIPModel.from_pretrained(data["clip"]).eval(), CLIPProcessor.from_pretrained(data["clip"])
    inputs = processor(
        text=[s["prompt"] for s in samples],
        images=[png(output, s) for s in samples],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        result = model(**inputs)
    expected = 100 * (result.image_embeds * result.text_embeds).sum(-1).clamp_min(0)
    scores = torch.tensor([s["clip_score"] for s in samples])
    assert (scores > 0).any(), "every cosine was negative: the comparison would only check zeros"
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def test_fd_equals_frechet_distance_of_features_computed_by_hand(t2i_run, data):
    from transformers import AutoImageProcessor, Dinov2Model

    output, _ = t2i_run
    metrics, samples = read_outputs(output)
    model, processor = (
        Dinov2Model.from_pretrained(data["dinov2"]).eval(),
        AutoImageProcessor.from_pretrained(data["dinov2"]),
    )
    references = [np.array(Image.open(data["folder"] / f"ref{i}.png").convert("RGB")) for i in range(3)]
    statistics = []
    for images in ([png(output, s) for s in samples], references):
        with torch.no_grad():
            features = model(**processor(images=images, return_tensors="pt")).pooler_output
        statistics.append(HydraXFeatureStatistics())
        statistics[-1].update(features)
    assert metrics["metrics"]["fd_dinov2"]["value"] == pytest.approx(frechet_distance(*statistics), rel=1e-4)


def test_edit_reports_magicbrush_metrics_with_and_without_targets(edit_run, data):
    metrics, samples = read_outputs(edit_run)
    counts = {name: entry["count"] for name, entry in metrics["metrics"].items()}
    assert counts == {
        "l1": 2,
        "clip_i": 2,
        "dino": 2,
        "clip_t": 2,
        "clip_t_instruction": 1,
        "source_l1": 1,
        "source_clip_i": 1,
        "source_dino": 1,
    }
    assert metrics["skipped"] == {} and metrics["settings"]["image_guidance_scale"] == 1.5
    with_target, _, without_target = samples
    assert with_target["target_caption"] == "a red square" and samples[1]["prompt"] == "make it blue"
    assert set(without_target) >= {"source_l1", "source_clip_i", "source_dino", "clip_t_instruction"}
    assert not set(without_target) & {"l1", "clip_i", "dino", "clip_t"}
    for sample in samples:
        assert Image.open(edit_run / sample["file"]).size == (WIDTH, HEIGHT)
        for name, value in sample.items():
            if name.endswith("l1"):
                assert 0 < value < 1
            elif name.endswith(("clip_i", "dino")) or name.startswith("clip_t"):  # cosines (MagicBrush's scale)
                assert -1 <= value <= 1
    for index, sample in enumerate(samples[:2]):  # L1 by hand: targets are at the output size, so no resize
        target = np.array(Image.open(data["folder"] / f"target{index}.png").convert("RGB")).astype(float)
        expected = np.abs(png(edit_run, sample).astype(float) - target).mean() / 255
        assert sample["l1"] == pytest.approx(expected, abs=1e-6)


def test_edit_scores_of_outputs_against_themselves(data):
    clip = HydraXClipScore.from_pretrained(data["clip"])
    features = HydraXImageFeatures.from_pretrained(data["dinov2"])
    pixels = torch.rand(3, 3, HEIGHT, WIDTH) * 2 - 1
    instructions, captions = ["make it red", "make it blue", "add snow"], ["a red square", None, None]
    scores = evaluation.score_edits(
        pixels, instructions, pixels, [pixels[0], pixels[1], None], captions, clip, features
    )
    for score in scores[:2]:
        assert score["l1"] == 0 and score["clip_i"] == pytest.approx(1, abs=1e-5)
        assert score["dino"] == pytest.approx(1, abs=1e-5)
    assert scores[2]["source_l1"] == 0 and scores[2]["source_dino"] == pytest.approx(1, abs=1e-5)
    assert ("clip_t" in scores[0], "clip_t_instruction" in scores[1]) == (True, True)
    assert scores[0]["clip_t"] == pytest.approx(float(clip.cosine(pixels[:1], ["a red square"])[0]), abs=1e-6)
    assert evaluation.l1_distance(-torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4)).tolist() == [1.0]


def test_skipped_metrics_name_what_enables_them(checkpoint, data, tmp_path, capsys):
    output = evaluate(tmp_path / "out", "--model", checkpoint, "--data", data["txt"], *SMALL, "--limit", "1")
    metrics, samples = read_outputs(output)
    assert metrics["metrics"] == {} and len(samples) == 1 and metrics["settings"]["limit"] == 1
    assert "--clip-model" in metrics["skipped"]["clip_score"]
    assert "--feature-model" in metrics["skipped"]["fd"] and "--reference" in metrics["skipped"]["fd"]
    assert re.search(r"\n  clip_score +skipped: no --clip-model", capsys.readouterr().out)
    requirements = evaluation.edit_requirements({"target", "caption"}, clip=False, features=True)
    assert "--clip-model" in requirements["clip_i"][0] and requirements["dino"] == [None, None]
    assert "every row has a target" in requirements["source_l1"][0]


def test_a_failure_leaves_no_output_folder(checkpoint, data, tmp_path, monkeypatch):
    calls = []

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return generate_batch(*args, **kwargs)

    generate_batch = evaluation.generate_batch
    monkeypatch.setattr(evaluation, "generate_batch", fail_on_second_batch)
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(tmp_path / "out", "--model", checkpoint, "--data", data["txt"], *SMALL, "--batch-size", "1")
    assert list(tmp_path.iterdir()) == []


def test_missing_columns_and_unreadable_images_name_the_row_and_the_fix(data, tmp_path):
    import datasets

    manifest = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"caption_text": "a cat", "image": "x.png"}])
    with pytest.raises(
        evaluation.EvaluationDataError, match=r"bad.jsonl:2: no prompt \(the line has \['caption_text'"
    ):
        evaluation.read_rows(manifest, "text-to-image")
    folder = tmp_path / "dataset"
    datasets.Dataset.from_dict({"caption_text": ["a cat"], "id": [0]}).save_to_disk(str(folder))
    with pytest.raises(evaluation.EvaluationDataError) as error:
        evaluation.read_rows(str(folder), "text-to-image")
    assert "no prompt column among ['caption_text', 'id']" in str(error.value)
    assert "`prompt` / `caption` / `text`: rename a column" in str(error.value)

    (tmp_path / "broken.png").write_text("not an image")
    manifest = write_jsonl(tmp_path / "edit.jsonl", [{"image": "broken.png", "instruction": "make it red"}])
    with pytest.raises(
        evaluation.EvaluationDataError, match=r"edit.jsonl:1: image .*broken.png is not a readable image"
    ):
        evaluation.read_rows(manifest, "edit")
    manifest = write_jsonl(tmp_path / "missing.jsonl", [{"image": "nowhere.png", "prompt": "make it red"}])
    with pytest.raises(
        evaluation.EvaluationDataError, match="missing.jsonl:1: image file .*nowhere.png does not exist"
    ):
        evaluation.read_rows(manifest, "edit")


def test_empty_or_undecodable_dataset_images_and_a_prompt_file_as_reference_name_the_row(tmp_path):
    """A dataset row without its source image passed the checks and crashed halfway through generating
    (`'NoneType' object has no attribute 'read'`); an image that does not decode raised PIL's error without the row;
    a .txt file as --reference gave zero reference images and a "pass more" FD message."""
    import datasets

    red = Image.new("RGB", (8, 8), "red")
    features = datasets.Features({"image": datasets.Image(), "instruction": datasets.Value("string")})
    for name, second in (("empty", None), ("broken", {"bytes": b"not an image", "path": None})):
        table = {"image": [red, second], "instruction": ["make it blue", "add snow"]}
        datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / name))
    with pytest.raises(
        evaluation.EvaluationDataError, match=r"empty row 1: no image \(an empty cell\); the edit task"
    ):
        evaluation.read_rows(str(tmp_path / "empty"), "edit")
    rows = evaluation.read_rows(str(tmp_path / "broken"), "edit")
    assert rows[0]["image"].size == (8, 8)
    with pytest.raises(evaluation.EvaluationDataError, match=r"broken row 1: an image does not decode"):
        rows[1]
    (tmp_path / "prompts.txt").write_text("a cat\n")
    with pytest.raises(evaluation.EvaluationDataError, match="a .txt file holds prompts only, and --reference needs"):
        evaluation.read_rows(str(tmp_path / "prompts.txt"), "reference")


def test_instructpix2pix_columns_are_read_and_a_limit_is_known_to_cut_or_not(tmp_path):
    """InstructPix2Pix's own columns (`original_image`, `edit_prompt`, `edited_image`, `edited_prompt`) were refused
    (no image column); a --limit at or above the row count was labelled "first N rows" in the card entries."""
    import datasets

    red = Image.new("RGB", (8, 8), "red")
    table = {"original_prompt": ["a box"], "original_image": [red], "edit_prompt": ["make it blue"]}
    table |= {"edited_prompt": ["a blue box"], "edited_image": [red]}
    datasets.Dataset.from_dict(table).save_to_disk(str(tmp_path / "ip2p"))
    rows = evaluation.read_rows(str(tmp_path / "ip2p"), "edit")
    assert rows[0]["prompt"] == "make it blue" and rows.present == {"prompt", "image", "target", "target_caption"}
    (tmp_path / "prompts.txt").write_text("a\n\nb\nc\n")
    cut = {
        limit: evaluation.read_rows(str(tmp_path / "prompts.txt"), "text-to-image", limit=limit).truncated
        for limit in (None, 2, 3, 9)
    }
    assert cut == {None: False, 2: True, 3: False, 9: False}
    assert evaluation.read_rows(str(tmp_path / "ip2p"), "edit", limit=1).truncated is False


def test_dataset_folders_give_pil_images_and_their_split(tmp_path):
    import datasets

    images = [Image.new("RGB", (40, 24), color) for color in ("red", "blue")]
    split = datasets.Dataset.from_dict({"caption": ["a red box", "a blue box"], "image": images})
    datasets.DatasetDict({"test": split}).save_to_disk(str(tmp_path / "dataset"))
    rows = evaluation.read_rows(str(tmp_path / "dataset"), "text-to-image", split="test", limit=1)
    assert len(rows) == 1 and rows.present == {"prompt", "image"}
    assert rows[0]["prompt"] == "a red box" and rows[0]["origin"] == f"{tmp_path / 'dataset'} row 0"
    assert evaluation.load_image(rows[0]["image"], rows[0]["origin"], "image").getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(evaluation.EvaluationDataError, match=r"no split 'train'; pass --split with one of \['test'\]"):
        evaluation.read_rows(str(tmp_path / "dataset"), "text-to-image")


def test_reference_folders_relative_paths_suffixes_and_hub_subsets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "refs" / "nested").mkdir(parents=True)
    for name in ("0.png", "nested/1.PNG"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "data" / "refs" / name, format="PNG")
    rows = evaluation.read_rows("data/refs", "reference")  # a relative folder, searched recursively
    assert [Path(row["image"]).resolve() for row in rows] == [
        tmp_path / "data" / "refs" / "0.png",
        tmp_path / "data" / "refs" / "nested" / "1.PNG",
    ]
    assert all(evaluation.load_image(row["image"], row["origin"], "image").size == (8, 8) for row in rows)
    (tmp_path / "prompts.TXT").write_text("a red box\n")
    assert [row["prompt"] for row in evaluation.read_rows("prompts.TXT", "text-to-image")] == ["a red box"]

    calls = []

    def load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_dict({"caption": ["a blue box"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    rows = evaluation.read_rows("org/bench", "text-to-image", split="dev", subset="en")
    assert calls == [("org/bench", "en", "dev")] and rows[0]["prompt"] == "a blue box"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subset", "en"], "--subset en names a configuration of a Hub dataset; --data {txt} is local"),
        (["--task", "edit"], "--data {txt}: a .txt file holds prompts only, but --task edit needs a source image"),
        (
            ["--task", "image-to-video"],
            "--data {txt}: a .txt file holds prompts only, but --task image-to-video needs a source image per row; "
            'pass a JSONL manifest of {{"image": first frame, "prompt": ...}}',
        ),
        (["--model", "{tmp}/no/model"], "--model {tmp}/no/model: no such folder; pass a Hydra-X checkpoint folder"),
        (["--clip-model", "{tmp}"], "--clip-model {tmp}: a folder without config.json; pass a CLIP or SigLIP"),
        (["--data", "{tmp}/prompts.csv"], "--data {tmp}/prompts.csv: no such file or folder; pass a .txt or .jsonl"),
        (["--output-dir", "{tmp}"], "--output-dir {tmp}: already exists; pass --force to replace it"),
        (["--height", "40"], "--height must be a positive multiple of 16, got 40"),
        (["--lora", "{tmp}"], "--lora {tmp}: a folder without adapter_config.json; pass an adapter folder"),
        (["--task", "edit", "--data", "{edit}", "--reference", "{tmp}"], "--reference sets FD references for text"),
    ],
)
def test_bad_command_lines_stop_before_any_work(args, message, checkpoint, data, tmp_path, capsys):
    (tmp_path / "existing").write_text("")
    paths = {"tmp": tmp_path, "txt": data["txt"], "edit": data["edit"]}
    base = {"--model": str(checkpoint), "--data": data["txt"], "--output-dir": str(tmp_path / "out")}
    argv = [arg.format(**paths) for arg in args]
    argv += [item for option, value in base.items() if option not in argv for item in (option, value)]
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(argv)
    assert exit_info.value.code == 2 and message.format(**paths) in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing"]


def test_help_shows_the_metrics_and_their_caveats(capsys):
    """Every option's help is checked for every script by tests/test_scripts_cli.py; this is the description."""
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0 and "FD is biased upward on small sets" in help_text
    assert "VBench's temporal consistency" in help_text and "MagicBrush's metrics" in help_text


def test_text_to_video_writes_mp4s_and_scores_every_frame(checkpoint, data, tmp_path):
    """Text-to-video: 5-frame MP4s, CLIPSIM, VBench's consistencies and frame FD equal to hand computations on the
    pipeline's 8-bit frames (the MP4s are lossy, so not on them); the same frames with batch sizes 1 and 2."""
    import av

    models = ["--clip-model", data["clip"], "--feature-model", data["dinov2"], "--reference", data["references"]]
    run = ["--task", "text-to-video", "--num-frames", "5", "--model", checkpoint, "--data", data["txt"], *SMALL]
    output = evaluate(tmp_path / "out", *run, *models, "--batch-size", "2")
    metrics, samples = read_outputs(output)
    assert metrics["settings"]["num_frames"] == 5 and metrics["settings"]["fps"] == 8 and metrics["skipped"] == {}
    names = ("clip_sim", "background_consistency", "subject_consistency")
    assert all(metrics["metrics"][name]["count"] == 3 for name in names)
    assert metrics["metrics"]["fd_dinov2"]["count"] == 15 and metrics["metrics"]["fd_dinov2"]["reference_count"] == 3
    for record in samples:
        with av.open(str(output / record["file"])) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(frames) == 5 and frames[0].shape == (HEIGHT, WIDTH, 3)

    pipe = evaluation.load_pipeline(str(checkpoint), "text-to-video")
    settings = evaluation.GenerationSettings(height=HEIGHT, width=WIDTH, num_inference_steps=2, num_frames=5)
    rows = list(evaluation.read_rows(data["txt"], "text-to-video"))
    batches = [rows[:2], rows[2:]]  # as --batch-size 2 ran them: 8-bit frames are exact only for the same batches
    frames = [evaluation.quantize(evaluation.generate_batch(pipe, "text-to-video", b, settings)) for b in batches]
    videos = evaluation.uint8_to_pixels(torch.cat(frames))
    clip = HydraXClipScore.from_pretrained(data["clip"])
    dinov2 = HydraXImageFeatures.from_pretrained(data["dinov2"])
    generated, references = HydraXFeatureStatistics(), HydraXFeatureStatistics()
    for record, frames, row in zip(samples, videos, rows):
        assert record["clip_sim"] == pytest.approx(float(clip.score(frames, [row["prompt"]] * 5).mean()), abs=1e-4)
        for name, embeddings in (
            ("background_consistency", clip.image_features(frames)),
            ("subject_consistency", dinov2(frames)),
        ):
            unit = torch.nn.functional.normalize(embeddings, dim=-1)
            expected = np.mean([(unit[t] @ unit[0] + unit[t] @ unit[t - 1]).item() / 2 for t in range(1, 5)])
            assert record[name] == pytest.approx(expected, abs=1e-5)
        generated.update(dinov2(frames))
    for path in sorted(Path(data["references"]).iterdir()):
        references.update(
            dinov2(evaluation.uint8_to_pixels(evaluation.pil_to_uint8([Image.open(path).convert("RGB")])))
        )
    assert metrics["metrics"]["fd_dinov2"]["value"] == pytest.approx(frechet_distance(generated, references), rel=1e-4)

    single = evaluate(tmp_path / "single", *run, "--batch-size", "1")
    assert [record["seed"] for record in read_outputs(single)[1]] == [record["seed"] for record in samples]
    assert set(read_outputs(single)[0]["skipped"]) == {*names, "fd"}


def vbench_i2v(frames: torch.Tensor, image: torch.Tensor) -> float:
    """VBench-I2V's i2v_subject loop over one video's frame features and its input image's, as VBench writes it."""
    frames, image = torch.nn.functional.normalize(frames, dim=-1), torch.nn.functional.normalize(image, dim=-1)
    conformity, consecutive = [], []
    for index in range(len(frames)):
        if index:
            consecutive.append(max(0.0, torch.dot(frames[index - 1], frames[index]).item()))
        conformity.append(max(0.0, torch.dot(image, frames[index]).item()))
    return 0.4 * max(conformity) + 0.3 * np.mean(consecutive) + 0.3 * min(consecutive)


def test_image_to_video_animates_each_rows_image_and_scores_its_adherence(checkpoint, data, tmp_path):
    """Image-to-video: 5-frame MP4s from each row's image; VBench-I2V's i2v_subject (DINOv2) and i2v_background (CLIP)
    equal VBench's own loop on the pipeline's 8-bit frames, beside the text-to-video metrics; the row images are the
    FD references."""
    import av

    models = ["--clip-model", data["clip"], "--feature-model", data["dinov2"]]
    run = ["--task", "image-to-video", "--num-frames", "5", "--model", checkpoint, "--data", data["i2v"], *SMALL]
    output = evaluate(tmp_path / "out", *run, *models, "--batch-size", "3")
    metrics, samples = read_outputs(output)
    names = ("clip_sim", "background_consistency", "subject_consistency", "i2v_background", "i2v_subject")
    assert all(metrics["metrics"][name]["count"] == 3 for name in names) and metrics["skipped"] == {}
    assert metrics["metrics"]["fd_dinov2"]["count"] == 15 and metrics["metrics"]["fd_dinov2"]["reference_count"] == 3
    with av.open(str(output / samples[0]["file"])) as container:
        assert len(list(container.decode(video=0))) == 5

    pipe = evaluation.load_pipeline(str(checkpoint), "image-to-video")
    settings = evaluation.GenerationSettings(height=HEIGHT, width=WIDTH, num_inference_steps=2, num_frames=5)
    rows = list(evaluation.read_rows(data["i2v"], "image-to-video"))
    sources = [evaluation.load_image(row["image"], row["origin"], "source", (WIDTH, HEIGHT)) for row in rows]
    videos = evaluation.uint8_to_pixels(
        evaluation.quantize(evaluation.generate_batch(pipe, "image-to-video", rows, settings, sources))
    )
    inputs = evaluation.uint8_to_pixels(evaluation.pil_to_uint8(sources))
    clip = HydraXClipScore.from_pretrained(data["clip"])
    dinov2 = HydraXImageFeatures.from_pretrained(data["dinov2"])
    for record, frames, image in zip(samples, videos, inputs):
        subject = vbench_i2v(dinov2(frames), dinov2(image[None])[0])
        background = vbench_i2v(clip.image_features(frames), clip.image_features(image[None])[0])
        assert record["i2v_subject"] == pytest.approx(subject, abs=1e-5)
        assert record["i2v_background"] == pytest.approx(background, abs=1e-5)
    still = inputs[:1].expand(5, -1, -1, -1)  # the input image held still: full adherence
    assert evaluation.image_adherence(dinov2(still), dinov2(inputs[:1])[0]) == pytest.approx(1.0)


def test_video_consistency_of_a_still_video_is_one():
    still = torch.randn(1, 8).expand(5, 8)
    assert evaluation.consistency(still) == pytest.approx(1.0)
    assert evaluation.consistency(torch.eye(3)) == pytest.approx(0.0)
    # VBench clamps each cosine at 0: frame 2 opposes the first and previous frame, (0 + 0) / 2, not −1; frame 3 is
    # the first again and opposes the previous, (1 + 0) / 2; the mean over frames 2 and 3 is 0.25 (unclamped: −0.5)
    flipping = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    assert evaluation.consistency(flipping) == pytest.approx(0.25)


def test_two_processes_split_the_rows_and_write_what_one_process_writes(checkpoint, data, tmp_path):
    """Under torchrun (gloo, CPU) each process generates every other row into the main process's folder; the main
    process gathers the records and the FD statistics: the same files and metrics as one process."""

    models = ["--clip-model", data["clip"], "--feature-model", data["dinov2"]]
    run = ["--model", str(checkpoint), "--data", data["t2i"], *SMALL, *models, "--batch-size", "1"]
    single = evaluate(tmp_path / "one", *run)
    result = run_processes(*TORCHRUN, SCRIPT, *run, "--output-dir", tmp_path / "two", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (one, first), (two, second) = read_outputs(single), read_outputs(tmp_path / "two")
    assert two["settings"]["processes"] == 2 and [record["row"] for record in second] == [0, 1, 2]
    for a, b in zip(first, second):
        assert np.array_equal(png(single, a), png(tmp_path / "two", b))
        assert a["clip_score"] == pytest.approx(b["clip_score"], abs=1e-5)
    assert two["metrics"]["fd_dinov2"]["value"] == pytest.approx(one["metrics"]["fd_dinov2"]["value"], rel=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"], "no staging folder may be left"


def test_a_lora_adapter_is_evaluated_as_the_model_it_merges_into(checkpoint, data, tmp_path):
    """--lora loads an adapter onto the pipeline: the images equal those of the merged model (to one 8-bit level),
    and --lora-scale 0 gives the base model's (the adapter's flow-head copy is untouched here)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["flow_head"], init_lora_weights=False)
    adapted = get_peft_model(AutoModel.from_pretrained(checkpoint), lora)
    adapted.save_pretrained(tmp_path / "adapter")
    merged = evaluation.load_pipeline(str(checkpoint), "text-to-image")
    merged.model = adapted.merge_and_unload().eval()
    merged.save_pretrained(tmp_path / "merged")
    run = ["--data", data["txt"], *SMALL, "--limit", "2"]
    adapter = ["--model", checkpoint, "--lora", tmp_path / "adapter"]
    outputs = {
        "adapter": evaluate(tmp_path / "adapter-run", *adapter, *run),
        "merged": evaluate(tmp_path / "merged-run", "--model", tmp_path / "merged", *run),
        "off": evaluate(tmp_path / "off-run", *adapter, "--lora-scale", 0, *run),
        "base": evaluate(tmp_path / "base-run", "--model", checkpoint, *run),
    }
    pixels = {name: [png(output, sample) for sample in read_outputs(output)[1]] for name, output in outputs.items()}
    metrics, _ = read_outputs(outputs["adapter"])
    assert metrics["settings"]["lora"] == str(tmp_path / "adapter") and metrics["settings"]["lora_scale"] == 1.0
    for name, reference, differs in (("merged", "adapter", False), ("off", "base", False), ("adapter", "base", True)):
        for image, other in zip(pixels[name], pixels[reference], strict=True):
            difference = np.abs(image.astype(int) - other.astype(int)).max()
            assert difference > 8 if differs else difference <= 1, (name, reference, difference)


def test_fd_on_clip_features_is_labelled_with_its_own_model(checkpoint, data, tmp_path):
    """clip-FID: a CLIP as `--feature-model` beside another `--clip-model`; the FD entry names the feature model."""
    features = tmp_path / "clip-features"
    shutil.copytree(data["clip"], features)
    models = ["--clip-model", data["clip"], "--feature-model", features]
    output = evaluate(tmp_path / "out", "--model", checkpoint, "--data", data["t2i"], *SMALL, *models)
    entries = {entry["metric_type"]: entry for entry in json.loads((output / "eval_results.json").read_text())}
    assert entries["fd_clip-features"]["metric_config"] == "clip-features"
    assert entries["clip_score"]["metric_config"] == Path(data["clip"]).name
