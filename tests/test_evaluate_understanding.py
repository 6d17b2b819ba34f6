"""evaluation/evaluate_understanding.py: cached option scores equal an uncached forward, a trained model's knowledge is
found (likelihood and generate), the data forms agree, bad rows and paths stop with clear errors, outputs are whole."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCHRUN, load_script, run_processes, run_script
from PIL import Image
from transformers import AutoModel, AutoProcessor

from modeling_hydrax.modeling_hydrax import HYDRAX_FROZEN_MODULES
from script_args import write_video


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "evaluation" / "evaluate_understanding.py"
RUN_HYDRAX = ROOT / "examples" / "run_hydrax.py"
SIZE = 32  # pixels of the test images and video frames: a 2×2 latent grid
TRAINED_SIZE = 64  # examples/run_hydrax.py --size: as fast as 32 and a little more robust (see the learning test)
FRAMES = 5  # 1 + 4k frames: two latent frames


@pytest.fixture(scope="module")
def evaluator():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def run_hydrax():
    return load_script(RUN_HYDRAX)


@pytest.fixture(scope="module")
def random_model(checkpoint):
    return AutoModel.from_pretrained(checkpoint).eval(), AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, run_hydrax):
    """A 5-frame MP4 of the rocket photo sliding sideways."""
    rocket = run_hydrax.load_images(SIZE)["rocket"]
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video([Image.fromarray(np.roll(rocket, 4 * k, axis=1)) for k in range(FRAMES)], path, fps=5)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """examples/run_hydrax.py's tiny Hydra-X, trained 150 steps to answer "What is in the image?" with a caption."""
    folder = tmp_path_factory.mktemp("run_hydrax")
    out = folder / "out"
    result = run_script(
        RUN_HYDRAX, "--size", str(TRAINED_SIZE), "--sampling-steps", "1", "--output-dir", str(out), cwd=folder
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["train_caption_exact_match"] == "4/4"
    return out / "model"


def caption_rows(run_hydrax) -> list[dict]:
    """run_hydrax's four training questions, the four captions as options (JSONL rows without the image)."""
    captions = list(run_hydrax.CAPTIONS.values())
    return [
        {
            "question": run_hydrax.QUESTION,
            "options": captions,
            "answer": caption,
            "category": "animal" if name == "chelsea" else "thing",
        }
        for name, caption in run_hydrax.CAPTIONS.items()
    ]


def write_manifest(folder: Path, rows: list[dict], images: dict) -> Path:
    """`rows` as a JSONL manifest in `folder`, each `images[i]` (if any) saved beside it as a PNG and referenced."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        if index in images:
            Image.fromarray(images[index]).save(folder / f"image-{index}.png")
            row["image"] = f"image-{index}.png"
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_outputs(folder: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return metrics, predictions


def check_consistent(metrics: dict, predictions: list[dict], count: int, chance: float) -> None:
    """The metrics agree with the prediction records they summarise."""
    assert metrics["count"] == len(predictions) == count
    assert metrics["chance"] == pytest.approx(chance)
    assert metrics["accuracy"] == pytest.approx(sum(p["correct"] for p in predictions) / count)
    assert [p["index"] for p in predictions] == list(range(count))
    per_category = metrics["per_category"]
    assert sum(category["count"] for category in per_category.values()) == count
    correct = sum(category["accuracy"] * category["count"] for category in per_category.values())
    assert correct == pytest.approx(metrics["accuracy"] * count)


def fine_tune_on_lettered_prompt(model, processor, samples, evaluator, run_hydrax, steps: int) -> None:
    """Train `model` to answer the generate mode's lettered prompt about each sample with its answer's text."""
    conversations = [
        evaluator.conversation(sample, evaluator.multiple_choice_text(sample))
        + [{"role": "assistant", "content": [{"type": "text", "text": sample.options[sample.answer]}]}]
        for sample in samples
    ]
    batch = run_hydrax.chat_batch(processor, conversations, TRAINED_SIZE, return_assistant_tokens_mask=True)
    labels = batch["input_ids"].masked_fill(batch.pop("assistant_masks") == 0, -100)
    trainable = [p for name, p in model.named_parameters() if not name.startswith(HYDRAX_FROZEN_MODULES)]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


# ------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("media", ["image", "two images", "video", "text"])
def test_cached_option_scores_equal_an_uncached_forward(evaluator, run_hydrax, random_model, clip, media):
    model, processor = random_model
    options = ["a rocket", "a cup of hot coffee on a wooden table", "a"]  # 5, 22 and 1 tokens
    photos = [Image.fromarray(image) for image in run_hydrax.load_images(SIZE).values()]
    sample = evaluator.Sample(
        index=0,
        question="Which of <image 2> and <image 1> is warmer?" if media == "two images" else "What is shown?",
        options=dict(zip("ABC", options)),
        answer="A",
        hint="Look closely.",
        images={"image": photos[:1], "two images": photos[:2]}.get(media, []),
        video=str(clip) if media == "video" else None,
    )
    kwargs = evaluator.media_kwargs(processor, SIZE * SIZE, FRAMES)
    cached = evaluator.score_options(model, processor, [sample], kwargs)[0]

    inputs = evaluator.prompt_inputs(processor, [sample], evaluator.likelihood_text, kwargs)
    tokens = {"image": 4, "two images": 8, "video": 8, "text": 0}[media]  # 2×2 latent grids; the clip has 2 frames
    visual = model.config.video_token_id if media == "video" else model.config.image_token_id
    assert int((inputs["input_ids"] == visual).sum()) == tokens
    option_ids = [processor.tokenizer(text, add_special_tokens=False)["input_ids"] for text in options]
    assert len({len(ids) for ids in option_ids}) == 3, "the options must differ in token length"
    prompt_length = inputs["input_ids"].shape[1]
    for ids, score in zip(option_ids, cached):
        full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1))
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        with torch.no_grad():
            log_probs = model(**full).logits[0].float().log_softmax(dim=-1)
        expected = sum(log_probs[prompt_length - 1 + k, token] for k, token in enumerate(ids))
        assert score == pytest.approx(expected.item(), abs=1e-4)


def test_accuracy_norm_divides_by_characters_as_lm_evals_acc_norm(evaluator):
    """lm-eval's acc_norm ranks by the sum per character of the option (`len(choice)`); per UTF-8 byte (its
    acc_bytes) picked the CJK option: "是的" is 2 characters but 6 bytes."""
    sample = evaluator.Sample(0, "Is it?", {"A": "yes", "B": "是的"}, "A")
    record = evaluator.likelihood_record(sample, [-3.0, -2.4])
    assert record["scores_norm"] == {"A": -1.0, "B": -1.2} and record["prediction_norm"] == "A"
    assert record["prediction"] == "B" and record["correct_norm"] and not record["correct"]


def test_options_of_identical_text_are_one_answer(evaluator):
    """With `A` = `B` = "cat" and the answer `B`, likelihood (first of equal scores) and a generated "cat" both gave A,
    marked wrong: a perfect model could not get the row right, and the answer written as "cat" (resolved to A) was
    always right. The option's text decides."""
    sample = evaluator.Sample(0, "What is it?", {"A": "cat", "B": "cat", "C": "dog"}, "B")
    assert evaluator.chance(sample) == pytest.approx(2 / 3), "a uniform guess is right twice in three"
    assert evaluator.likelihood_record(sample, [-1.0, -1.0, -5.0])["correct"]
    assert [evaluator.prediction_record(sample, letter)["correct"] for letter in ("A", "B", "C", None)] == [
        True,
        True,
        False,
        False,
    ]


def test_a_batch_of_questions_scores_as_each_question_alone(evaluator, run_hydrax, random_model, clip):
    """Left-padded prompts of different lengths and media, with different numbers of options, in one batch."""
    model, processor = random_model
    photos = [Image.fromarray(image) for image in run_hydrax.load_images(SIZE).values()]
    samples = [
        evaluator.Sample(
            0, "What is shown here, in a few words?", {"A": "a rocket", "B": "a cat"}, "A", images=photos[:1]
        ),
        evaluator.Sample(1, "Which?", {"A": "a", "B": "a cup of hot coffee", "C": "two cats"}, "B", hint="Look."),
        evaluator.Sample(2, "What moves?", {"A": "the rocket", "B": "nothing at all"}, "A", video=str(clip)),
        evaluator.Sample(3, "Is <image 2> like <image 1>?", {"A": "yes", "B": "no"}, "B", images=photos[1:3]),
    ]
    kwargs = evaluator.media_kwargs(processor, SIZE * SIZE, FRAMES)
    batched = evaluator.score_options(model, processor, samples, kwargs)
    assert [len(scores) for scores in batched] == [2, 3, 2, 2]
    for sample, scores in zip(samples, batched):
        assert scores == pytest.approx(evaluator.score_options(model, processor, [sample], kwargs)[0], abs=1e-4)


# ------------------------------------------------------------------------------------------------- learning


def test_trained_model_is_found_to_know_its_answers(evaluator, run_hydrax, trained, checkpoint, tmp_path):
    images = run_hydrax.load_images(TRAINED_SIZE)
    data = write_manifest(tmp_path / "data", caption_rows(run_hydrax), dict(enumerate(images.values())))
    common = ["--data", str(data), "--max-pixels", str(TRAINED_SIZE * TRAINED_SIZE)]

    # Likelihood: 4/4 (accuracy and accuracy_norm 1.0) measured for 10 of 10 trained models (5 seeds × 64 and 32 px);
    # the untrained checkpoints of those seeds scored 0.25
    evaluator.main(["--model", str(trained), "--output-dir", str(tmp_path / "trained"), *common])
    metrics, predictions = read_outputs(tmp_path / "trained")
    check_consistent(metrics, predictions, count=4, chance=0.25)
    assert metrics["accuracy"] == metrics["accuracy_norm"] == 1.0, predictions
    assert metrics["per_category"] == {
        "animal": {"accuracy": 1.0, "accuracy_norm": 1.0, "count": 1},
        "thing": {"accuracy": 1.0, "accuracy_norm": 1.0, "count": 3},
    }

    # The random checkpoint runs through the same path; its numbers are valid, not meaningful
    evaluator.main(["--model", str(checkpoint), "--output-dir", str(tmp_path / "random"), *common])
    random_metrics, random_predictions = read_outputs(tmp_path / "random")
    check_consistent(random_metrics, random_predictions, count=4, chance=0.25)
    for known, unknown in zip(predictions, random_predictions):
        assert known["scores"][known["answer"]] > unknown["scores"][unknown["answer"]] + 1

    # Generate: run_hydrax trains on the bare question; the same 10 models answered the lettered prompt with 0-0.75
    # accuracy (chance 0.25). After 40 steps on the lettered prompt (~1 s) all 10 answered 4/4 with the caption text
    model, processor = AutoModel.from_pretrained(trained), AutoProcessor.from_pretrained(trained)
    rows = data.read_text().splitlines()
    samples = [evaluator.normalize_row(json.loads(row), index, data.parent) for index, row in enumerate(rows)]
    fine_tune_on_lettered_prompt(model, processor, samples, evaluator, run_hydrax, steps=40)
    model.save_pretrained(tmp_path / "tuned")
    processor.save_pretrained(tmp_path / "tuned")
    evaluator.main(
        ["--model", str(tmp_path / "tuned"), "--output-dir", str(tmp_path / "gen"), "--scoring", "generate", *common]
    )
    metrics, predictions = read_outputs(tmp_path / "gen")
    check_consistent(metrics, predictions, count=4, chance=0.25)
    assert metrics["accuracy"] >= 0.75 and metrics["unparsed"] == 0, predictions
    assert {p["generated"] for p in predictions if p["correct"]} <= set(run_hydrax.CAPTIONS.values())


# ------------------------------------------------------------------------------------------------- data forms


def test_manifest_saved_dataset_and_video_rows_agree(evaluator, run_hydrax, checkpoint, clip, tmp_path):
    import datasets

    images = run_hydrax.load_images(SIZE)
    # The same five questions: two images (one with three options), a video, text only with a hint, an image again
    content = [
        ("What is in the image?", ["an astronaut", "a cat", "a rocket", "a cup of coffee"], 0, "astronaut", None),
        ("Which animal is this?", ["a dog", "a cat", "a bird"], 1, "chelsea", None),
        ("What moves in the video?", ["a rocket", "a cat", "a cup", "nothing"], 0, None, "clip.mp4"),
        ("What colour is the sky on a clear day?", ["green", "blue"], 1, None, None),
        ("What is this?", ["a cup of coffee", "an astronaut"], 0, "coffee", None),
    ]
    hints = {3: "Think of noon."}
    manifest_rows, letter_rows = [], []
    for index, (question, options, answer, image, video) in enumerate(content):
        common = {"question": question, "hint": hints.get(index), "category": "video" if video else "still"}
        manifest_answer = answer if index % 2 else options[answer]  # 0-based index and exact text
        manifest_rows.append({**common, "options": options, "answer": manifest_answer, "video": video})
        letters = {letter: (options[k] if k < len(options) else None) for k, letter in enumerate("ABCD")}
        letter_image = Image.fromarray(images[image]) if image else None
        letter_rows.append({**common, **letters, "answer": "ABCD"[answer], "image": letter_image, "video": video})
    manifest = write_manifest(
        tmp_path / "manifest", manifest_rows, {i: images[c[3]] for i, c in enumerate(content) if c[3]}
    )
    (manifest.parent / "clip.mp4").write_bytes(clip.read_bytes())

    features = datasets.Features(
        {
            **{name: datasets.Value("string") for name in ("question", "hint", "category", "A", "B", "C", "D")},
            "answer": datasets.Value("string"),
            "image": datasets.Image(),
            "video": datasets.Value("string"),
        }
    )
    columns = {name: [row[name] for row in letter_rows] for name in features}
    saved = tmp_path / "saved"
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(columns, features=features)}).save_to_disk(saved)
    (saved / "clip.mp4").write_bytes(clip.read_bytes())  # relative paths start from the dataset folder

    media = ["--max-pixels", str(SIZE * SIZE), "--num-frames", str(FRAMES), "--model", str(checkpoint)]
    evaluator.main(["--data", str(manifest), "--output-dir", str(tmp_path / "from-manifest"), *media])
    evaluator.main(
        ["--data", str(saved), "--split", "validation", "--output-dir", str(tmp_path / "from-saved"), *media]
    )
    manifest_metrics, from_manifest = read_outputs(tmp_path / "from-manifest")
    saved_metrics, from_saved = read_outputs(tmp_path / "from-saved")
    chance = (1 / 4 + 1 / 3 + 1 / 4 + 1 / 2 + 1 / 2) / 5
    check_consistent(manifest_metrics, from_manifest, count=5, chance=chance)
    check_consistent(saved_metrics, from_saved, count=5, chance=chance)
    assert (manifest_metrics["split"], saved_metrics["split"]) == (None, "validation")
    assert [p["answer"] for p in from_manifest] == [p["answer"] for p in from_saved] == list("ABABA")
    for one, other in zip(from_manifest, from_saved):
        assert one["prediction"] == other["prediction"] and one["prediction_norm"] == other["prediction_norm"]
        assert one["scores"].keys() == other["scores"].keys()
        for letter, score in one["scores"].items():
            assert score == pytest.approx(other["scores"][letter], abs=1e-5)
    assert list(from_saved[1]["scores"]) == ["A", "B", "C"], "a None letter is no option"

    # Generate mode: a left-padded batch mixing images, a video and text gives what one question at a time gives
    generate = ["--data", str(saved), "--split", "validation", "--scoring", "generate", "--max-new-tokens", "6"]
    evaluator.main([*generate, "--batch-size", "5", "--output-dir", str(tmp_path / "batched"), *media])
    evaluator.main([*generate, "--batch-size", "1", "--output-dir", str(tmp_path / "single"), *media])
    batched_metrics, batched = read_outputs(tmp_path / "batched")
    _, single = read_outputs(tmp_path / "single")
    check_consistent(batched_metrics, batched, count=5, chance=chance)
    assert [p["generated"] for p in batched] == [p["generated"] for p in single]
    assert batched_metrics["unparsed"] == sum(p["prediction"] is None for p in batched)


# ------------------------------------------------------------------------------------------------- parsing and errors


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B)", "B"),
        ("B: a cup of coffee", "B"),
        ("(C) a cat", "C"),
        ("  D\n", "D"),
        ("a cat", "C"),
        ("A Cat.", "C"),  # a letter followed by a space is text
        ('"a cup of coffee"', "B"),
        ("a rocket!", "D"),
        ("E", None),  # not an option's letter
        ("a dog", None),
        ("", None),
        ("b", None),  # letters are capitals
    ],
)
def test_parse_prediction(evaluator, text, expected):
    options = {"A": "an astronaut", "B": "a cup of coffee", "C": "a cat", "D": "A rocket"}
    assert evaluator.parse_prediction(text, options) == expected


@pytest.mark.parametrize("scoring", ["likelihood", "generate"])
def test_add_vision_id_labels_the_image_of_every_prompt(
    evaluator, run_hydrax, checkpoint, tmp_path, monkeypatch, scoring
):
    """--add-vision-id: every prompt the model reads (the options' or the lettered prompt, and an open question's)
    labels its image "Picture 1: " as `train_hydrax.py --add-vision-id` trains; without it none is labelled;
    metrics.json says which."""
    images = list(run_hydrax.load_images(SIZE).values())
    rows = caption_rows(run_hydrax)[:2]
    rows.append({**rows[0], "options": []})
    data = write_manifest(tmp_path / "data", rows, {0: images[0], 1: images[1], 2: images[0]})
    argv = ["--model", str(checkpoint), "--data", str(data), "--max-pixels", str(SIZE * SIZE), "--scoring", scoring]
    argv += ["--answer-open", "--max-new-tokens", "2"]
    processor = AutoProcessor.from_pretrained(checkpoint)
    prompt_inputs, prompts = evaluator.prompt_inputs, []

    def recorded(*args, **kwargs):
        prompts.append(prompt_inputs(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(evaluator, "prompt_inputs", recorded)
    for flags, labels in (([], 0), (["--add-vision-id"], 1)):
        prompts.clear()
        out = tmp_path / f"out-{labels}"
        evaluator.main([*argv, *flags, "--output-dir", str(out)])
        texts = [text for inputs in prompts for text in processor.batch_decode(inputs["input_ids"])]
        assert [text.count("Picture 1: <|vision_start|>") for text in texts] == [labels] * 3, texts
        assert "Picture 2" not in "".join(texts)
        assert read_outputs(out)[0]["add_vision_id"] is bool(flags)


def test_mmmu_rows_place_each_image_where_the_question_refers_to_it(evaluator, run_hydrax, tmp_path):
    images = list(run_hydrax.load_images(SIZE).values())
    for number in (1, 2):
        Image.fromarray(images[number]).save(tmp_path / f"{number}.png")
    row = {
        "question": "Is <image 2> bigger than <image 1>?",
        "options": "['yes', 'no', \"can't tell\"]",  # MMMU stores its options as the string of a list
        "answer": "C",
        "image_2": "2.png",
        "image_1": "1.png",
        "image_3": None,
    }
    sample = evaluator.normalize_row(row, 0, tmp_path)
    assert sample.options == {"A": "yes", "B": "no", "C": "can't tell"} and sample.answer == "C"
    content = evaluator.conversation(sample, sample.question)[0]["content"]
    assert [part["type"] for part in content] == ["text", "image", "text", "image", "text"]
    assert [part["text"] for part in content if part["type"] == "text"] == ["Is ", " bigger than ", "?"]
    pixels = [np.asarray(part["image"]) for part in content if part["type"] == "image"]
    assert np.array_equal(pixels[0], images[2]) and np.array_equal(pixels[1], images[1])
    with pytest.raises(ValueError, match=r"row 0: the question refers to <image 3> but the row has 2 image\(s\)"):
        evaluator.normalize_row({**row, "question": "And <image 3>?"}, 0, tmp_path)


@pytest.mark.parametrize(
    "row",
    [
        {"question": "Q?", "A": "a cat", "B": "a dog", "C": None, "D": float("nan"), "answer": "B"},  # MMBench
        {"question": "Q?", "choice_a": "a cat", "choice_b": "a dog", "answer": "B"},  # SEED-Bench
        {"question": "Q?", "candidates": ["a cat", "a dog"], "answer": "a dog"},  # MVBench
        {"question": "Q?", "options": ["A. a cat", "B. a dog"], "answer": "B"},  # Video-MME
        {"question": "Q?", "options": "['a cat', 'a dog']", "answer": "B"},  # MMMU
        {"question": "Q?", "choices": ["a cat", "a dog"], "answer": 1},
    ],
)
def test_benchmark_column_layouts_read_alike(evaluator, row):
    sample = evaluator.normalize_row(row, 0)
    assert sample.options == {"A": "a cat", "B": "a dog"} and sample.answer == "B"


def test_mme_yes_no_groups_and_open_questions(evaluator, run_hydrax, checkpoint, tmp_path):
    """MME: yes/no rows without options, two questions per image (`question_id`); accuracy+ and the MME score follow
    from the predictions. MMMU's open questions are left out with --skip-open and listed."""
    images = run_hydrax.load_images(SIZE)
    rows, pictures = [], {}
    for number, (name, image) in enumerate(images.items()):
        for question in (f"Is this {name}?", "Is this a dog?"):
            pictures[len(rows)] = image
            rows.append(
                {
                    "question": question,
                    "answer": "Yes" if name in question else "No",
                    "question_id": f"{name}.png",
                    "category": "animals" if name == "chelsea" else "objects",
                }
            )
    rows.append({"question": "How many?", "options": [], "answer": "3", "question_id": "open", "category": "x"})
    data = write_manifest(tmp_path / "mme", rows, pictures)
    argv = ["--model", str(checkpoint), "--data", str(data), "--max-pixels", str(SIZE * SIZE)]
    with pytest.raises(SystemExit, match="row 0 has no options.*pass --yes-no for yes/no questions"):
        evaluator.main([*argv, "--output-dir", str(tmp_path / "stopped")])
    assert not (tmp_path / "stopped").exists()

    out = tmp_path / "scored"
    with pytest.raises(SystemExit, match="row 8 has empty options .an open question.; pass --skip-open"):
        evaluator.main([*argv, "--yes-no", "--output-dir", str(tmp_path / "stopped")])
    evaluator.main([*argv, "--yes-no", "--group-column", "question_id", "--skip-open", "--output-dir", str(out)])
    metrics, predictions = read_outputs(out)
    check_consistent(metrics, predictions, count=8, chance=0.5)
    assert metrics["skipped_open"] == [8]
    both_right = {}
    for record in predictions:
        both_right[record["group"]] = both_right.get(record["group"], True) and record["correct"]
    assert metrics["accuracy_plus"] == pytest.approx(sum(both_right.values()) / 4)
    animals = metrics["per_category"]["animals"]
    assert animals["accuracy_plus"] == float(both_right["chelsea.png"]) and animals["count"] == 2
    expected = sum(100 * (entry["accuracy"] + entry["accuracy_plus"]) for entry in metrics["per_category"].values())
    assert metrics["mme_score"] == pytest.approx(expected)
    assert all(set(record["scores"]) == {"A", "B"} for record in predictions)


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"question": "Q?", "options": ["a", "b"], "answer": "c"},
            "row 7: answer 'c' is not among the options (A: 'a', B: 'b')",
        ),
        ({"question": "Q?", "options": ["a"], "answer": "a"}, "row 7 has 1 option(s) ({'A': 'a'}); a multiple"),
        ({"question": "Q?", "A": "a", "B": float("nan"), "answer": "A"}, "row 7 has 1 option(s)"),
        (
            {"prompt": "Q?", "options": ["a", "b"], "answer": "a"},
            "row 7 has no 'question' column (columns found: ['answer', 'options', 'prompt'])",
        ),
        ({"question": "Q?", "answer": "a"}, "give an 'options' list column or letter columns 'A', 'B'"),
        ({"question": "Q?", "options": ["a", "b"], "answer": 2}, "row 7: answer index 2 is out of range for 2"),
        ({"question": "Q?", "options": ["a", "b"], "answer": "a", "image": "gone.png"}, "image 'gone.png' ("),
        ({"question": "Q?", "options": ["a", "b"], "answer": "a", "image": "bad.png"}, "is not a readable image"),
        ({"question": "Q?", "options": ["a", "b"], "answer": "a", "video": "bad.png"}, "is not a readable video"),
    ],
)
def test_bad_rows_are_named(evaluator, tmp_path, row, message):
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError) as error:
        evaluator.normalize_row(row, 7, tmp_path)
    assert message in str(error.value)


def test_help_and_bad_paths_stop_up_front(evaluator, checkpoint, tmp_path, capsys):
    result = run_script(SCRIPT, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for option in ("--model", "--data", "--output-dir", "--split", "--scoring", "--limit", "--batch-size"):
        assert option in result.stdout
    assert "accuracy_norm" in result.stdout and "(default: likelihood)" in result.stdout

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "Q?", "options": ["a", "b"], "answer": "a"}) + "\n")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    cases = [
        (["--model", str(tmp_path / "missing")], f"--model {tmp_path / 'missing'}: no such folder; pass a"),
        (["--model", str(tmp_path)], f"--model {tmp_path}: a folder without config.json"),
        (["--data", str(tmp_path / "gone.jsonl")], f"--data {tmp_path / 'gone.jsonl'}: no such file or folder"),
        (["--data", str(tmp_path / "busy")], "a folder without dataset_info.json or state.json or dataset_dict.json"),
        (["--output-dir", str(tmp_path / "busy")], "already exists; pass --force to replace it, or a new folder"),
        (["--output-dir", str(data / "out")], f"--output-dir {data / 'out'}: {data} is a file"),
        (["--limit", "0"], "--limit must be ≥ 1, got 0"),
        (["--subset", "en"], f"--subset en names a configuration of a Hub dataset; --data {data} is local"),
    ]
    for args, message in cases:
        argv = {"--model": str(checkpoint), "--data": str(data), "--output-dir": str(tmp_path / "out")}
        argv.update(zip(args[::2], args[1::2]))
        with pytest.raises(SystemExit) as exit_info:
            evaluator.parse_args([item for pair in argv.items() for item in pair])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, args
    with pytest.raises(SystemExit):  # --force would replace a folder that holds the run's own data
        evaluator.parse_args(
            ["--model", str(checkpoint), "--data", str(data), "--output-dir", str(tmp_path), "--force"]
        )
    assert f"holds --data {data}, which this run's output would replace" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- outputs


def test_outputs_are_whole_and_a_failure_leaves_none(evaluator, run_hydrax, checkpoint, tmp_path, monkeypatch):
    images = run_hydrax.load_images(SIZE)
    rows = caption_rows(run_hydrax)
    data = write_manifest(tmp_path / "data", rows, dict(enumerate(images.values())))
    out = tmp_path / "results" / "eval"
    argv = ["--model", str(checkpoint), "--data", str(data), "--max-pixels", str(SIZE * SIZE), "--limit", "3"]
    for force in ([], ["--force"]):  # the second run replaces the first evaluation's folder
        evaluator.main([*argv, "--output-dir", str(out), *force])
        assert sorted(path.name for path in out.iterdir()) == [
            "eval_results.json",
            "metrics.json",
            "predictions.jsonl",
        ]
        assert [path.name for path in out.parent.iterdir()] == ["eval"], "no staging folder may be left"
    metrics, predictions = read_outputs(out)
    check_consistent(metrics, predictions, count=3, chance=0.25)
    assert metrics["scoring"] == "likelihood" and metrics["data"] == str(data) and metrics["seconds"] > 0
    assert metrics["limit"] == 3  # a part of the benchmark: the card's entries say so
    entries = json.loads((out / "eval_results.json").read_text())
    assert {entry["metric_config"] for entry in entries} == {"likelihood scoring, first 3 rows"}
    evaluator.main([*argv[:-1], "99", "--output-dir", str(tmp_path / "all")])  # a limit that cuts nothing
    assert read_outputs(tmp_path / "all")[0]["limit"] is None
    entries = json.loads((tmp_path / "all" / "eval_results.json").read_text())
    assert {entry["metric_config"] for entry in entries} == {"likelihood scoring"}
    for record in predictions:
        best = max(record["scores"], key=record["scores"].get)
        assert record["prediction"] == best and record["correct"] == (best == record["answer"])
        assert set(record["scores_norm"]) == set(record["scores"]) == set("ABCD")

    # An unreadable image in the third row stops the run after two rows: nothing is written
    (data.parent / "image-2.png").write_text("not an image")
    failed = tmp_path / "results" / "failed"
    with pytest.raises(ValueError, match="row 2: image 'image-2.png' .* is not a readable image"):
        evaluator.main([*argv, "--output-dir", str(failed)])
    assert [path.name for path in failed.parent.iterdir()] == ["eval"]

    # A bad row's text stops the run before the model loads
    monkeypatch.setattr(evaluator.AutoModel, "from_pretrained", pytest.fail)
    data.write_text(data.read_text() + json.dumps({"question": "Q?", "options": ["a", "b"], "answer": "z"}) + "\n")
    with pytest.raises(SystemExit, match="row 4: answer 'z' is not among the options"):
        evaluator.main(["--model", str(checkpoint), "--data", str(data), "--output-dir", str(failed)])


# ------------------------------------------------------------------------------------------------- scale-out


def test_two_processes_split_the_questions_and_write_the_single_process_results(
    evaluator, run_hydrax, checkpoint, tmp_path
):
    """Under torchrun (gloo, CPU) each process scores every other question; the main process gathers them and writes
    the same predictions as one process, in row order."""

    rows = caption_rows(run_hydrax) + caption_rows(run_hydrax)[:1]  # 5 questions: one process gets 3, the other 2
    images = list(run_hydrax.load_images(SIZE).values())
    data = write_manifest(tmp_path / "data", rows, dict(enumerate(images + images[:1])))
    argv = ["--model", str(checkpoint), "--data", str(data), "--max-pixels", str(SIZE * SIZE)]
    evaluator.main([*argv, "--output-dir", str(tmp_path / "one")])

    result = run_processes(*TORCHRUN, SCRIPT, *argv, "--output-dir", tmp_path / "two", ACCELERATE_USE_CPU="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (one, single), (two, split) = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "two")
    assert two["processes"] == 2 and one["processes"] == 1 and two["count"] == 5
    assert [record["index"] for record in split] == list(range(5))
    for first, second in zip(single, split):
        assert first["prediction"] == second["prediction"]
        assert first["scores"] == pytest.approx(second["scores"], abs=1e-4)
    ignored = ("processes", "seconds")
    assert {key: value for key, value in one.items() if key not in ignored} == {
        key: value for key, value in two.items() if key not in ignored
    }


def test_eval_results_go_into_a_model_card(evaluator, run_hydrax, checkpoint, tmp_path):
    """eval_results.json holds the model card's entries: conversion/model_card_hydrax.py puts them in `model-index`."""
    import shutil
    import sys

    from huggingface_hub import ModelCard

    sys.path.insert(0, str(ROOT / "conversion"))
    from model_card_hydrax import main as write_card

    data = write_manifest(
        tmp_path / "data", caption_rows(run_hydrax), dict(enumerate(run_hydrax.load_images(SIZE).values()))
    )
    out = tmp_path / "eval"
    evaluator.main(
        ["--model", str(checkpoint), "--data", str(data), "--max-pixels", str(SIZE * SIZE), "--output-dir", str(out)]
    )
    metrics, _ = read_outputs(out)
    entries = json.loads((out / "eval_results.json").read_text())
    assert {entry["metric_type"]: entry["metric_value"] for entry in entries} == pytest.approx(
        {"accuracy": metrics["accuracy"], "accuracy_norm": metrics["accuracy_norm"]}
    )
    assert {entry["task_type"] for entry in entries} == {"visual-question-answering"}
    assert {entry["dataset_name"] for entry in entries} == {"data"}

    card_folder = tmp_path / "card"
    card_folder.mkdir()
    shutil.copy(Path(checkpoint) / "config.json", card_folder)
    write_card(
        ["--model", str(card_folder), "--eval-results", str(out / "eval_results.json"), str(out / "eval_results.json")]
    )
    results = ModelCard.load(card_folder / "README.md").data.eval_results
    assert (
        len(results) == 4
        and results[0].metric_type == "accuracy"
        and results[0].task_type == "visual-question-answering"
    )


# ------------------------------------------------------------------------------------------------ open questions


@pytest.mark.parametrize(
    "generated, answer, correct",
    [
        ("The answer is 24.", "24", True),
        ("So x = 3.50", "3.5", True),
        ("There are 1,000 apples", "1000", True),
        ("about 2.5e3 metres", "2500", True),
        ("25", "24", False),
        ("It is a cat.", "cat", True),
        ("A dog", "cat", False),
        ("The answer is b.", "B", True),  # a single letter matches at a word's edge: " b" or "b " (MMMU)
        ("C atom", "C", True),
        ("the variable x", "x", True),
        ("a bird", "b", True),  # MMMU's reading too: " b" starts "bird"
        ("abc", "b", False),
        ("Thus the result is 12. It was hard.", "12", True),
        ("6 or 7", "['7', '7.0']", True),  # MMMU's list of accepted answers
        ("The mass is 5 kg. So the answer is 10.", "10", True),
        ("The mass is 5 kg. So the answer is 10.", "5", False),  # MMMU lower-cases first: one sentence, one tail
        ("It is a cat. The answer is dog.", "cat", False),
        ("The answer is .5", "0.5", True),
        ("The answer is 0.5", ".5", True),
        ("The mass is 5 kg.\nSo the answer is 10.", "5", True),  # a line break does split
        ("It is 1,234", "234", True),  # MMMU's plain-number pattern also finds the digits after the comma
    ],
)
def test_open_answers_are_matched_as_mmmu_does(evaluator, generated, answer, correct):
    answers = evaluator.open_answers(answer, "row 0")
    assert evaluator.open_correct(answers, evaluator.open_candidates(generated)) is correct


def test_open_questions_are_answered_by_generation(evaluator, run_hydrax, trained, checkpoint, tmp_path):
    """--answer-open: run_hydrax's model, asked its training question as an open question about each photo (the bare
    question, --open-prompt ''), answers every caption; beside the multiple-choice rows, `accuracy_all` counts both
    kinds. The untrained checkpoint names none of them."""
    images = run_hydrax.load_images(TRAINED_SIZE)
    rows = caption_rows(run_hydrax)
    rows += [{**row, "options": [], "category": "open"} for row in caption_rows(run_hydrax)]
    data = write_manifest(tmp_path / "data", rows, dict(enumerate([*images.values(), *images.values()])))
    argv = [
        "--data",
        str(data),
        "--max-pixels",
        str(TRAINED_SIZE * TRAINED_SIZE),
        "--answer-open",
        "--open-prompt",
        "",
    ]
    evaluator.main(["--model", str(trained), "--output-dir", str(tmp_path / "trained"), *argv])
    metrics, predictions = read_outputs(tmp_path / "trained")
    assert [record.get("open", False) for record in predictions] == [False] * 4 + [True] * 4
    assert metrics["count"] == 4 and metrics["accuracy"] == 1.0
    assert metrics["open"] == {"accuracy": 1.0, "count": 4, "per_category": {"open": {"accuracy": 1.0, "count": 4}}}
    assert metrics["accuracy_all"] == 1.0
    assert [record["generated"] for record in predictions[4:]] == list(run_hydrax.CAPTIONS.values())

    evaluator.main(["--model", str(checkpoint), "--output-dir", str(tmp_path / "random"), *argv])
    metrics, predictions = read_outputs(tmp_path / "random")
    assert metrics["open"]["accuracy"] == 0.0, predictions[4:]
    correct = sum(record["correct"] for record in predictions)
    assert metrics["accuracy_all"] == pytest.approx(correct / 8)

    argv[1] = str(write_manifest(tmp_path / "closed", rows[:4], dict(enumerate(images.values()))))
    evaluator.main(["--model", str(checkpoint), "--output-dir", str(tmp_path / "closed-out"), *argv])  # none open
    metrics, _ = read_outputs(tmp_path / "closed-out")
    assert metrics["open"] == {"count": 0} and metrics["accuracy_all"] == metrics["accuracy"]
    entries = json.loads((tmp_path / "closed-out" / "eval_results.json").read_text())
    assert "open_accuracy" not in {entry["metric_type"] for entry in entries}


def test_subset_names_a_hub_datasets_configuration(evaluator, checkpoint, tmp_path, monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_dict({"question": ["Is it red?"], "A": ["yes"], "B": ["no"], "answer": ["A"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "eval"
    evaluator.main(
        ["--model", str(checkpoint), "--data", "lmms-lab/MMBench", "--subset", "en", "--split", "dev"]
        + ["--output-dir", str(out)]
    )
    assert calls == [("lmms-lab/MMBench", "en", "dev")]
    metrics, _ = read_outputs(out)
    assert metrics["subset"] == "en" and metrics["split"] == "dev" and metrics["count"] == 1
    entries = json.loads((out / "eval_results.json").read_text())
    assert {(entry["dataset_name"], entry["dataset_config"], entry["dataset_split"]) for entry in entries} == {
        ("lmms-lab/MMBench", "en", "dev")
    }


def test_open_question_options_stop_up_front(evaluator, checkpoint, tmp_path, capsys):
    data = write_manifest(tmp_path, [{"question": "How many?", "options": [], "answer": "[]"}], {})
    argv = ["--model", str(checkpoint), "--data", str(data), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"row 0: answer '\[\]' holds an empty answer"):
        evaluator.main([*argv, "--answer-open"])
    with pytest.raises(SystemExit):
        evaluator.parse_args([*argv, "--answer-open", "--skip-open"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_lora_adapter_is_scored_as_the_model_it_merges_into(evaluator, run_hydrax, checkpoint, tmp_path):
    """--lora merges an adapter into --model before scoring: the scores equal those of the merged model's folder, and
    differ from the base's."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(AutoModel.from_pretrained(checkpoint), lora)
    adapted.save_pretrained(tmp_path / "adapter")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(checkpoint).save_pretrained(tmp_path / "merged")
    images = run_hydrax.load_images(SIZE)
    data = write_manifest(tmp_path / "data", caption_rows(run_hydrax), dict(enumerate(images.values())))
    common = ["--data", str(data), "--max-pixels", str(SIZE * SIZE)]
    runs = {
        "adapter": ["--model", str(checkpoint), "--lora", str(tmp_path / "adapter")],
        "merged": ["--model", str(tmp_path / "merged")],
        "base": ["--model", str(checkpoint)],
    }
    scores = {}
    for name, model in runs.items():
        evaluator.main([*model, *common, "--output-dir", str(tmp_path / f"{name}-eval")])
        metrics, predictions = read_outputs(tmp_path / f"{name}-eval")
        scores[name] = [score for record in predictions for score in record["scores"].values()]
    assert metrics["lora"] is None
    assert json.loads((tmp_path / "adapter-eval" / "metrics.json").read_text())["lora"] == str(tmp_path / "adapter")
    assert scores["adapter"] == pytest.approx(scores["merged"], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(scores["adapter"], scores["base"])) > 1e-2


def test_mmbench_nan_strings_are_missing_and_missing_media_stop_before_the_model_loads(evaluator, tmp_path):
    """MMBench's TSVs write an empty hint or an absent option as the text "nan" (lmms-eval and VLMEvalKit read it as
    missing); and a row's image path that does not exist is found in the text check, before any question is scored."""
    row = {"question": "Q?", "A": "yes", "B": "None", "C": "nan", "D": "NaN", "hint": "nan", "answer": "B"}
    sample = evaluator.normalize_row(row, 0, media=False)
    assert sample.options == {"A": "yes", "B": "None"} and sample.hint is None and sample.answer == "B"
    assert evaluator.normalize_row({"question": "Q?", "answer": "none"}, 1, media=False, open_question=True)
    missing = {"question": "Q?", "options": ["a", "b"], "answer": "a", "image": "typo.png"}
    with pytest.raises(ValueError, match=r"row 3: image 'typo.png' \(.*typo.png\) does not exist"):
        evaluator.normalize_row(missing, 3, tmp_path, media=False)
    settings = evaluator.eval_results("vqa", "data", None, {"accuracy": 0.5}, None, {"accuracy": "likelihood scoring"})
    assert settings[0]["metric_name"] == "accuracy (likelihood scoring)"
    assert settings[0]["metric_config"] == "likelihood scoring"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "data.jsonl is not a text file"),  # a traceback in UTF-8's words
        (b"not json\n", "data.jsonl line 1 is not valid JSON"),
        (b'{"question": "Q?", "options": ["a", "b"], "answer": "a"}\n', "row 0 has no 'subject'"),
    ],
)
def test_bad_data_stops_with_a_message_not_a_traceback(content, message, evaluator, checkpoint, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    argv = ["--model", str(checkpoint), "--data", str(data), "--group-column", "subject"]
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        evaluator.main([*argv, "--output-dir", str(tmp_path / "out")])


def test_saved_dataset_media_are_checked_before_the_model_loads(evaluator, checkpoint, tmp_path, monkeypatch):
    """A saved dataset's video paths are checked with the text of every row, before the model loads (a missing file
    used to stop the run only when its batch was reached), as are images stored as paths and videos given as frames."""
    import datasets

    rows = {"question": ["Q?", "Q?"], "options": [["a", "b"]] * 2, "answer": ["a", "b"], "video": [None, "typo.mp4"]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "saved")
    monkeypatch.setattr(evaluator, "load_model", lambda *args: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit, match=r"row 1: video 'typo.mp4' \(.*saved/typo.mp4\) does not exist"):
        evaluator.main(
            ["--data", str(tmp_path / "saved"), "--model", str(checkpoint), "--output-dir", str(tmp_path / "out")]
        )
    question = {"question": "Q?", "options": ["a", "b"], "answer": "a"}
    with pytest.raises(ValueError, match=r"row 2: image 'gone.png' \(.*gone.png\) does not exist"):
        evaluator.normalize_row({**question, "image": {"bytes": None, "path": "gone.png"}}, 2, tmp_path, media=False)
    with pytest.raises(ValueError, match="row 3: the video is a list; give the path of a video file"):
        evaluator.normalize_row({**question, "video": ["f.png"]}, 3, media=False)
