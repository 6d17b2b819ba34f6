"""examples/train_tokenizer.py: the three stages on Trainer (what each trains, logs and saves), the latent statistics,
exact resuming, two processes under torchrun (gloo, CPU), bad data, and the data module's buckets, batches and crops.

Everything is tiny and offline: 32×32 crops of a few 48×64 / 64×48 PNGs and a 12-frame MP4, a `tiny` tokenizer,
random SigLIP 2 / V-JEPA 2 teachers and a tiny LPIPS saved to folders once per module. The script runs in-process.
"""

import argparse
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TORCHRUN, interrupting, load_script, run_processes, tiny_siglip2, tiny_vjepa2
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, get_cosine_schedule_with_warmup

import modeling_hydrax.data_hydrax_tok as data_module
from modeling_hydrax import HydraXTokConfig, HydraXTokModel
from modeling_hydrax.data_hydrax_tok import (
    HydraXTokBadSample,
    HydraXTokBucketBatchSampler,
    HydraXTokClipDataset,
    HydraXTokStreamDataset,
    collate_clips,
    list_source,
    parse_resolution,
)
from modeling_hydrax.losses_hydrax_tok import HydraXTokLPIPS


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_tokenizer.py"
VIDEO_FRAMES = 12  # frame t of the test clip is uniformly grey, level 16·t + 8

train_tokenizer = load_script(SCRIPT)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and two threads on a 2-core machine that is also busy elsewhere
    slow a step down a hundredfold (OpenMP's spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------------ data
def write_images(folder: Path, count: int = 6) -> None:
    """`count` PNGs, alternately 48×64 (landscape) and 64×48 (portrait): colour ramps plus noise."""
    rng = np.random.default_rng(0)
    for number in range(count):
        height, width = (48, 64) if number % 2 == 0 else (64, 48)
        y, x = np.mgrid[0:height, 0:width]
        noise = rng.integers(0, 256, (height, width))
        pixels = np.stack([x * 255 // width, y * 255 // height, noise], axis=-1).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image{number}.png")


def write_video(path: Path, frames: int = VIDEO_FRAMES, height: int = 48, width: int = 64) -> Path:
    """A grey MP4 whose frame t is uniformly 16·t + 8 (R = G = B and flat: the codec keeps it nearly exactly, and
    any crop of a frame has its level as mean, so a clip's frames can be told from its pixels)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", 10**7
        for t in range(frames):
            pixels = np.full((height, width, 3), 16 * t + 8, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_data(folder: Path) -> Path:
    """6 images and one 12-frame video: 7 items, 4 batches of 2 per epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    write_images(folder)
    write_video(folder / "clip.mp4")
    return folder


def write_helpers(folder: Path) -> Path:
    """Random tiny teachers (SigLIP 2 image, V-JEPA 2 video) and a tiny LPIPS, saved as folders."""
    torch.manual_seed(0)
    tiny_siglip2(hidden_size=16).save_pretrained(folder / "image")
    tiny_vjepa2(hidden_size=24).save_pretrained(folder / "video")
    HydraXTokLPIPS(channels=(4, 8, 8, 8, 8)).save_pretrained(folder / "lpips")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def helpers(tmp_path_factory) -> Path:
    return write_helpers(tmp_path_factory.mktemp("helpers"))


def common(data, out, *args) -> list[str]:
    argv = ["--data", data, "--output-dir", out, "--size", 32, "--num-frames", 5, "--batch-size", 2]
    argv += ["--max-steps", 4, "--save-steps", 2, "--logging-steps", 1, "--report-to", "none", *args]
    return list(map(str, argv))


def teacher_args(helpers) -> list:
    return ["--image-teacher", helpers / "image", "--video-teacher", helpers / "video", "--lpips", helpers / "lpips"]


def train(data, out, *args):
    return train_tokenizer.main(common(data, out, *args))


def state_dict(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModel.from_pretrained(folder).state_dict()


def train_log(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(scope="module")
def stage1(data, helpers, tmp_path_factory):
    """A new tiny tokenizer, 4 steps of stage 1 with teachers, LPIPS and an evaluation at the end (the training data
    again): (output folder, trainer)."""
    out = tmp_path_factory.mktemp("stage1")
    return out, train(data, out, "--preset", "tiny", "--eval-data", data, *teacher_args(helpers))


@pytest.fixture(scope="module")
def stage2(data, helpers, stage1, tmp_path_factory):
    """Stage 2 from stage 1's model; the discriminator's initial weights are recorded as it is built."""
    out = tmp_path_factory.mktemp("stage2")
    initial = []

    def build_objective(*args, **kwargs):
        objective = build(*args, **kwargs)
        initial.append({name: value.clone() for name, value in objective.discriminator.state_dict().items()})
        return objective

    build = train_tokenizer.build_objective
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_tokenizer, "build_objective", build_objective)
        trainer = train(
            data, out, "--model", stage1[0] / "model", "--stage", 2, "--discriminator-lr", 3e-4, *teacher_args(helpers)
        )
    return out, trainer, initial[0]


@pytest.fixture(scope="module")
def stage3(data, helpers, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage3")
    return out, train(data, out, "--model", stage1[0] / "model", "--stage", 3, *teacher_args(helpers))


# ----------------------------------------------------------------------------------------------------------- the CLI
def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_tokenizer.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--stage", "--lpips", "--no-teachers", "--compute-latent-stats", "--resolutions", "--video-ratio"):
        assert option in out, option


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-frames", "6"], "--num-frames must be 1 + 4k"),
        (["--resolutions", "40"], "resolutions must be multiples of 16"),
        (["--resolutions", "32", "64"], "--resolutions: resolutions 32x32 and 64x64 have the same aspect ratio"),
        (["--resolutions", "32x48", "64x96"], "resolutions 32x48 and 64x96 have the same aspect ratio"),
        (["--stage", "3", "--no-teachers"], "stage 3 trains the Sem-ViT by distillation only"),
        (["--learning-rate", "-0.5"], "--learning-rate must be ≥ 0, got -0.5"),
        (["--discriminator-lr", "nan"], "argument --discriminator-lr: must be a finite number, got nan"),
        (["--weight-decay", "-0.01"], "--weight-decay must be ≥ 0, got -0.01"),
        (["--max-grad-norm", "inf"], "argument --max-grad-norm: must be a finite number, got inf"),
        (["--data", "./gone"], "--data ./gone: no such file or folder; pass a folder of images or videos"),
        (["--eval-data", "missing.jsonl"], "--eval-data missing.jsonl: no such file or folder"),
        (["--eval-data", "data/sets/missing"], "--eval-data data/sets/missing: no such file or folder"),
        (["--resume-from-checkpoint", "nowhere"], "--resume-from-checkpoint nowhere: no such folder"),
    ],
)
def test_bad_arguments_stop_in_argparse(argv, message, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_tokenizer.parse_args(["--data", str(data), "--output-dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_file_that_is_not_a_manifest_is_refused_as_data(data, tmp_path, capsys):
    """An image file as --data was looked up as a Hub dataset id (a ConnectionError offline, after the setup)."""
    image = sorted(data.glob("*.png"))[0]
    with pytest.raises(SystemExit) as exit_info:
        train_tokenizer.parse_args(["--data", str(image), "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and f"--data {image}: a file, not a folder or a .jsonl manifest" in (
        capsys.readouterr().err
    )


def test_hub_dataset_ids_and_checkpoint_folders_pass_argparse(data, tmp_path, capsys):
    checkpoint = tmp_path / "work" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    with pytest.raises(SystemExit):  # a folder without trainer_state.json is no checkpoint
        train_tokenizer.parse_args(["--data", str(data), "--resume-from-checkpoint", str(checkpoint)])
    assert "a folder without trainer_state.json" in capsys.readouterr().err
    (checkpoint / "trainer_state.json").write_text("{}")
    argv = ["--data", str(data), "mnist", "--eval-data", "org/name", "--output-dir", str(tmp_path)]
    args = train_tokenizer.parse_args([*argv, "--resume-from-checkpoint", str(checkpoint)])
    assert args.data == [str(data), "mnist"] and args.eval_data == ["org/name"]


# -------------------------------------------------------------------------------------------------------- the stages
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_logs_its_losses_and_saves_a_loadable_model(stage, request):
    out, trainer = request.getfixturevalue(f"stage{stage}")[:2]
    model = AutoModel.from_pretrained(out / "model")
    assert type(model) is HydraXTokModel
    assert not [path.name for path in out.iterdir() if path.name.startswith(".model")], "staging left behind"
    for step in (2, 4):
        checkpoint = out / "work" / f"checkpoint-{step}"
        assert (checkpoint / train_tokenizer.PREVIEW_FILE).is_file()
        assert json.loads((checkpoint / "hydrax_training.json").read_text())["stage"] == stage
    with Image.open(out / "work" / "checkpoint-4" / train_tokenizer.PREVIEW_FILE) as preview:
        # the first 4 centred crops (the image bucket comes first), each original above its reconstruction
        assert preview.size == (32, 8 * 32)

    log = train_log(trainer)
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    weights = trainer.model.loss_fn.config
    expected = train_tokenizer.STAGE_WEIGHTS[stage]
    assert {term: getattr(weights, f"{term}_weight") for term in expected} == expected
    active = {term for term, weight in expected.items() if weight > 0}  # a term off is logged as 0
    for entry in log:
        assert set(train_tokenizer.LOGGED_TERMS) - {"discriminator", "distill_video"} <= set(entry), entry
        assert ("discriminator" in entry) == (stage == 2), entry
        assert all(math.isfinite(entry[term]) for term in train_tokenizer.LOGGED_TERMS if term in entry), entry
        assert entry["psnr"] > 5, entry
        for term in ("l1", "lpips", "kl", "distill_image"):
            assert (entry[term] > 0) == (term in active), (term, entry)
        assert (entry["gan"] != 0) == (stage == 2) and entry.get("distill_video", 0) >= 0, entry
    if stage == 2:
        assert all(entry["discriminator"] > 0 for entry in log)
    else:  # an image batch has no video term: it is left out of the logged mean, not counted as 0
        videos = [entry["distill_video"] for entry in log if "distill_video" in entry]
        assert 0 < len(videos) < len(log) and all(value > 0 for value in videos), log


def test_stage_1_trains_the_whole_tokenizer_and_sizes_the_heads_for_the_teachers(stage1, helpers):
    out, trainer = stage1
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["image_teacher_hidden_size"] == 16 and config["video_teacher_hidden_size"] == 24
    assert config["image_teacher_name"] == str(helpers / "image")
    trainable = {name.split(".")[1] for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert trainable == {"gen_vit", "sem_vit", "decoder", "decompressor"}
    rates = {group["name"]: group["initial_lr"] for group in trainer.optimizer.param_groups}
    assert rates == {"tokenizer": 2e-4, "tokenizer_no_decay": 2e-4}
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 1 and evaluations[0]["step"] == 4
    assert {"eval_l1", "eval_psnr", "eval_distill_image"} <= set(evaluations[0]) and evaluations[0]["eval_psnr"] > 5


@pytest.mark.parametrize("stage, frozen", [(1, set()), (2, {"gen_vit", "sem_vit"}), (3, {"gen_vit", "decoder"})])
def test_parts_a_stage_freezes_stay_in_eval_mode(stage, frozen, tmp_path):
    """Trainer's `model.train()` leaves the parts a stage freezes whole in eval mode: with attention dropout, a frozen
    Gen-ViT in train mode gave the decoder (stage 2) and the Sem-ViT (stage 3) other latents than `encode` gives."""
    args = train_tokenizer.parse_args(["--data", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    tokenizer = HydraXTokModel(train_tokenizer.tokenizer_config("tiny", 32))
    tokenizer.config.attention_dropout = 0.5
    tokenizer = HydraXTokModel(tokenizer.config)
    tokenizer.set_training_stage(stage)
    objective = train_tokenizer.build_objective(args, train_tokenizer.loss_weights(args), tokenizer.config)
    module = train_tokenizer.HydraXTokTrainingModel(tokenizer, objective, None).train()
    assert {name for name, part in tokenizer.named_children() if not part.training} == frozen
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    if stage > 1:  # the frozen encoder's latents in training are the ones `encode` gives
        means = [tokenizer.encode(pixels).latent_dist.mean for _ in range(2)]
        torch.testing.assert_close(means[0], means[1], rtol=0, atol=0)
    assert not module.eval().tokenizer.gen_vit.training and not module.tokenizer.decoder.training


def test_stage_2_trains_only_the_decoder_and_the_discriminator(stage1, stage2):
    out, trainer, initial_discriminator = stage2
    before, after = state_dict(stage1[0] / "model"), state_dict(out / "model")
    assert before.keys() == after.keys()
    changed = [name for name in after if not torch.equal(after[name], before[name])]
    assert changed and all(name.startswith("decoder.") for name in changed), changed
    assert any(name.startswith("decoder.") and name.endswith("weight") for name in changed)

    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert set(groups) == {"tokenizer", "tokenizer_no_decay", "discriminator_no_decay"}
    assert groups["discriminator_no_decay"]["initial_lr"] == 3e-4 and groups["tokenizer"]["initial_lr"] == 1e-4
    assert groups["discriminator_no_decay"]["betas"] == (0.5, 0.9)
    assert groups["discriminator_no_decay"]["weight_decay"] == 0.0
    discriminator = trainer.model.loss_fn.discriminator
    in_groups = {id(param) for group in groups.values() for param in group["params"]}
    assert {id(param) for param in discriminator.parameters()} <= in_groups
    trained = [name for name, param in trainer.model.tokenizer.named_parameters() if id(param) in in_groups]
    assert trained and all(name.startswith("decoder.") for name in trained), trained

    final = discriminator.state_dict()
    assert initial_discriminator.keys() == final.keys()
    moved = [name for name in final if not torch.equal(final[name], initial_discriminator[name])]
    assert any(name.endswith("weight") for name in moved), "the discriminator did not train"


def test_stage_3_trains_only_the_sem_vit_and_decompressor(stage1, stage3):
    out = stage3[0]
    before, after = state_dict(stage1[0] / "model"), state_dict(out / "model")
    changed = {name.split(".")[0] for name in after if not torch.equal(after[name], before[name])}
    assert changed == {"sem_vit", "decompressor"}


# ------------------------------------------------------------------------------------------------ latent statistics
@pytest.fixture(scope="module")
def latent_stats(data, stage1, tmp_path_factory):
    """`--compute-latent-stats` on stage 1's model: no training, the model saved with its statistics."""
    out = tmp_path_factory.mktemp("stats")
    assert train(data, out, "--model", stage1[0] / "model", "--compute-latent-stats", "--no-teachers") is None
    assert not (out / "work").exists()
    return out


def test_the_saved_tokenizer_keeps_its_sources_base_model_and_licence(data, stage1, tmp_path):
    """A tokenizer trained from a converted SigLIP 2 was saved without a card: conversion/build_hydrax.py, which takes
    the vision tower's base models from that card, dropped SigLIP 2 from the Hydra-X card's `base_model`."""
    from huggingface_hub import ModelCard, ModelCardData

    sys.path.insert(0, str(ROOT / "conversion"))
    from build_hydrax import default_base_models
    from model_card_hydrax import CARD_TEMPLATE

    source = shutil.copytree(stage1[0] / "model", tmp_path / "converted")
    data_card = ModelCardData(base_model=["google/siglip2-base-patch16-naflex"], license="apache-2.0")
    ModelCard.from_template(data_card, template_str=CARD_TEMPLATE, body="# converted").save(source / "README.md")
    train(data, tmp_path / "out", "--model", source, "--compute-latent-stats", "--no-teachers")
    card = ModelCard.load(tmp_path / "out" / "model" / "README.md")
    assert (card.data.base_model, card.data.license) == (["google/siglip2-base-patch16-naflex"], "apache-2.0")
    assert default_base_models("Qwen/Qwen2.5-1.5B", tmp_path / "out" / "model")[1:] == card.data.base_model


def normalised_latent_moments(folder: Path, dataset: HydraXTokClipDataset, batch_size: int = 2):
    """Per-channel mean and (population) variance of the model's normalised latents `encode(...).latents` over the
    centred crops of `dataset`, batched as compute_latent_stats batches them, over all tokens (B, F, h, w)."""
    model = AutoModel.from_pretrained(folder).eval()
    total = total_sq = 0
    count = 0
    with torch.no_grad():
        for batch in train_tokenizer.eval_batches(dataset, batch_size):
            pixels = torch.stack([dataset[index]["pixel_values"] for index, seed in batch])
            latents = model.encode(pixels).latents.double()
            total = total + latents.sum(dim=(0, 2, 3, 4))
            total_sq = total_sq + latents.pow(2).sum(dim=(0, 2, 3, 4))
            count += latents[:, 0].numel()
    mean = total / count
    return mean, total_sq / count - mean.pow(2)


@pytest.mark.parametrize("source", ["latent_stats", "stage3"])
def test_the_saved_statistics_normalise_the_training_latents(source, request, data, latent_stats):
    out = request.getfixturevalue(source)
    out = out[0] if isinstance(out, tuple) else out
    config = json.loads((out / "model" / "config.json").read_text())
    dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5)
    assert config["latents_stats_samples"] == len(dataset) == 7
    assert len(config["latents_mean"]) == len(config["latents_std"]) == config["latent_channels"] == 8
    # the raw latents are far from normalised, so the check below means something
    assert max(abs(value) for value in config["latents_mean"]) > 0.05
    assert max(abs(value - 1) for value in config["latents_std"]) > 0.05
    # stage 3 computes the same statistics first (same model, same data), then trains only the Sem-ViT side
    reference = json.loads((latent_stats / "model" / "config.json").read_text())
    for key in ("latents_mean", "latents_std"):
        torch.testing.assert_close(torch.tensor(config[key]), torch.tensor(reference[key]), rtol=1e-5, atol=1e-6)

    mean, variance = normalised_latent_moments(out / "model", dataset)
    # measured: |mean| ≤ 2e-8 and |variance - 1| ≤ 1e-7 (float32 latents, float64 statistics)
    assert mean.abs().max() < 1e-5, mean
    assert (variance - 1).abs().max() < 1e-5, variance


def test_stage_1_drops_the_latent_statistics_it_makes_stale(data, latent_stats, tmp_path, capsys):
    out = tmp_path / "out"
    train(data, out, "--model", latent_stats / "model", "--no-teachers", "--max-steps", 1, "--save-steps", 1)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["latents_mean"] is None and config["latents_std"] is None and not config["latents_stats_samples"]
    assert "the latent statistics of" in capsys.readouterr().out


def test_the_statistics_use_at_most_stats_samples_items(data, stage1, latent_stats, tmp_path):
    """Without --no-teachers too: the pass saves the weights it was given, Decompressor included, unchanged."""
    out = tmp_path / "out"
    train(data, out, "--model", stage1[0] / "model", "--compute-latent-stats", "--stats-samples", 3)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["latents_stats_samples"] == 3
    saved, given = (load_file(folder / "model" / "model.safetensors") for folder in (out, stage1[0]))
    assert saved.keys() == given.keys() and all(torch.equal(saved[name], given[name]) for name in given)
    full = json.loads((latent_stats / "model" / "config.json").read_text())
    assert not torch.allclose(torch.tensor(config["latents_mean"]), torch.tensor(full["latents_mean"]))
    # 3 items drawn at random over the whole dataset (--seed 0), not the first 3 of a folder sorted by class or kind
    dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5)
    keys = [key for batch in train_tokenizer.eval_batches(dataset, 2, 3, seed=0) for key in batch]
    drawn = torch.randperm(7, generator=torch.Generator().manual_seed(0))[:3].tolist()
    assert {index for index, _ in keys} == set(drawn)
    assert keys != [(0, None), (1, None), (2, None)]
    draws = {tuple(key for batch in train_tokenizer.eval_batches(dataset, 2, 3, seed=seed) for key in batch)
             for seed in range(20)}  # fmt: skip
    assert any((6, None) in draw for draw in draws)  # the video (item 6, listed last) is drawn too
    tokenizer = AutoModel.from_pretrained(stage1[0] / "model")
    mean, std, used = train_tokenizer.compute_latent_stats(tokenizer, dataset, 3, 2, seed=0)
    assert used == 3
    torch.testing.assert_close(torch.tensor(mean), torch.tensor(config["latents_mean"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(std), torch.tensor(config["latents_std"]), rtol=1e-5, atol=1e-6)


def test_the_statistics_pass_loads_no_teacher(data, tmp_path):
    """--compute-latent-stats without --no-teachers on a new model: the default teachers are Hub downloads the pass
    does not need (offline it failed), and no Decompressor is added to the saved model."""
    out = tmp_path / "out"
    assert train(data, out, "--preset", "tiny", "--compute-latent-stats", "--stats-samples", 2) is None
    assert not any(name.startswith("decompressor.") for name in load_file(out / "model" / "model.safetensors"))


def test_the_statistics_leave_out_files_that_fail_to_decode(stage1, tmp_path):
    """A file that fails to decode is left out of the statistics and their count (the training data replaces it by
    another item of its bucket, which counted that item twice)."""
    write_images(tmp_path, count=3)
    data = (tmp_path / "image2.png").read_bytes()
    (tmp_path / "image2.png").write_bytes(data[: len(data) // 2])  # the header probes, the pixels do not decode
    tokenizer = AutoModel.from_pretrained(stage1[0] / "model")
    dataset = HydraXTokClipDataset([tmp_path], resolutions=[(32, 32)], num_frames=5)
    assert len(dataset) == 3
    mean, _, used = train_tokenizer.compute_latent_stats(tokenizer, dataset, 10, 2)
    (tmp_path / "image2.png").unlink()
    readable = HydraXTokClipDataset([tmp_path], resolutions=[(32, 32)], num_frames=5)
    expected, _, expected_used = train_tokenizer.compute_latent_stats(tokenizer, readable, 10, 2)
    assert used == expected_used == 2
    torch.testing.assert_close(torch.tensor(mean), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_stage_3_from_a_model_trained_without_teachers_adds_a_decompressor(data, helpers, tmp_path, capsys):
    """A stage-1 model trained with --no-teachers has no Decompressor (whose heads are sized for the teachers):
    stage 3 builds a new one for the teachers it loads instead of stopping on their widths."""
    first = tmp_path / "stage1"
    train(data, first, "--preset", "tiny", "--no-teachers", "--max-steps", 1, "--save-steps", 1)
    assert AutoModel.from_pretrained(first / "model").decompressor is None
    third = tmp_path / "stage3"
    train(data, third, "--model", first / "model", "--stage", 3, "--max-steps", 1, "--save-steps", 1,
          *teacher_args(helpers))  # fmt: skip
    assert "had no Decompressor" in capsys.readouterr().out
    model = AutoModel.from_pretrained(third / "model")
    assert model.decompressor is not None
    assert model.config.image_teacher_hidden_size == 16 and model.config.video_teacher_hidden_size == 24
    before, after = state_dict(first / "model"), model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items() if name.startswith("gen_vit."))


# ------------------------------------------------------------------------------------------------------- resuming
def losses(trainer, after: int = 0) -> list[tuple]:
    terms = ("loss", "l1", "lpips", "kl", "psnr")
    return [tuple(entry[key] for key in ("step", *terms)) for entry in train_log(trainer) if entry["step"] > after]


def test_resuming_from_the_last_checkpoint_continues_the_same_losses(data, helpers, tmp_path, monkeypatch):
    # 7 items, 2 per batch: 4 batches an epoch, so steps 4-6 finish epoch 0 after the skipped batches and start
    # epoch 1's draws; the posterior is sampled, so the restored global RNG counts as well
    argv = ["--preset", "tiny", "--no-teachers", "--lpips", helpers / "lpips", "--max-steps", 6, "--save-steps", 3]
    whole = train(data, tmp_path / "whole", *argv)

    with monkeypatch.context() as patch:
        patch.setattr(train_tokenizer, "RunRecordCallback", interrupting(train_tokenizer.RunRecordCallback))
        stopped = train(data, tmp_path / "split", *argv)
    assert stopped.state.global_step == 3
    assert (tmp_path / "split" / "work" / "checkpoint-3" / "hydrax_training.json").is_file()

    class Steps(train_tokenizer.RunRecordCallback):
        """Records the steps this process runs (a run from scratch would reproduce the losses too)."""

        def on_step_begin(self, args, state, control, **kwargs):
            ran.append(state.global_step + 1)

    ran = []
    torch.manual_seed(1234)  # whatever the global RNG holds now, the resume restores the checkpoint's
    with monkeypatch.context() as patch:
        patch.setattr(train_tokenizer, "RunRecordCallback", Steps)
        resumed = train(data, tmp_path / "split", *argv, "--resume-from-checkpoint", "last")
    assert ran == [4, 5, 6]

    assert whole.state.epoch > 1 and len(losses(whole)) == 6
    assert losses(stopped) == losses(whole)[:3]
    assert [entry[0] for entry in losses(resumed, 3)] == [4, 5, 6]
    assert losses(resumed, 3) == losses(whole, 3)
    expected = state_dict(tmp_path / "whole" / "model")
    for name, value in state_dict(tmp_path / "split" / "model").items():
        assert torch.equal(value, expected[name]), name


# ---------------------------------------------------------------------------------------------------- torchrun
LAUNCHER = """
import importlib.util, json, os, sys
from pathlib import Path

# examples/train_tokenizer.py's main, with every training sample's (index, seed) key and the final weights logged
spec = importlib.util.spec_from_file_location("train_tokenizer", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
logs, rank = Path(sys.argv[2]), os.environ["RANK"]
getitem = script.HydraXTokClipDataset.__getitem__

def logged(self, key):
    if isinstance(key, tuple) and key[1] is not None:
        with open(logs / f"keys_rank{rank}.jsonl", "a") as file:
            file.write(json.dumps(list(key)) + "\\n")
    return getitem(self, key)

script.HydraXTokClipDataset.__getitem__ = logged
trainer = script.main(sys.argv[3:])
tokenizer = trainer.accelerator.unwrap_model(trainer.model).tokenizer
sums = {name: param.detach().double().sum().item() for name, param in tokenizer.named_parameters()}
(logs / f"weights_rank{rank}.json").write_text(json.dumps(sums))
"""


def test_the_adaptive_gan_factor_is_saved_in_checkpoints_and_restored_on_resume(data, helpers, tmp_path):
    """Evaluation applies the last training step's adaptive GAN factor; a resume restores it from the checkpoint (it
    was not saved: an evaluation before the resumed run's first step applied 1). It is kept beside the weights, whose
    state dict FSDP loads strictly. A finished run resumed trains no step past --max-steps (the Trainer's epoch loop
    ran one)."""
    argv = ["--preset", "tiny", "--no-teachers", "--lpips", helpers / "lpips", "--gan-weight", 0.1]
    argv += ["--adaptive-gan-weight", "--max-steps", 2, "--save-steps", 2]
    trained = train(data, tmp_path, *argv).model.loss_fn.adaptive_gan_factor
    saved = json.loads((tmp_path / "work" / "checkpoint-2" / train_tokenizer.LOSS_STATE_FILE).read_text())
    assert float(trained) != 1.0 and saved["adaptive_gan_factor"] == float(trained)
    resumed = train(data, tmp_path, *argv, "--resume-from-checkpoint", "last")  # already at its last step
    assert resumed.state.global_step == 2 and torch.equal(resumed.model.loss_fn.adaptive_gan_factor, trained)


def train_two_processes(data, tmp_path, *args) -> tuple[Path, Path]:
    """3 steps on 2 gloo processes under torchrun (LAUNCHER): (logs, output dir), after checking that both ended with
    the weights the saved model holds."""
    launcher, logs, out = tmp_path / "launch.py", tmp_path / "logs", tmp_path / "out"
    launcher.write_text(LAUNCHER)
    logs.mkdir()
    argv = [SCRIPT, logs, *common(data, out, "--preset", "tiny", "--no-teachers", "--lpips-weight", 0)]
    result = run_processes(*TORCHRUN, launcher, *argv, "--max-steps", 3, *args, ACCELERATE_USE_CPU="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    held = [json.loads((logs / f"weights_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert held[0] == held[1], "the processes ended with different weights"
    saved = AutoModel.from_pretrained(out / "model")
    assert type(saved) is HydraXTokModel
    assert {name: param.double().sum().item() for name, param in saved.named_parameters()} == held[0]
    return logs, out


def test_two_processes_train_on_different_batches_and_save_one_model(data, tmp_path):
    logs, _ = train_two_processes(data, tmp_path)

    # accelerate deals the sampler's batches out in turn: rank r gets batches r, r + 2, … of every epoch (a sampler
    # for 2 processes: each step's two batches of one kind)
    dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5)
    sampler = HydraXTokBucketBatchSampler(dataset, 2, 0.5, seed=0, num_processes=2)
    dealt = {0: [], 1: []}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for number, batch in enumerate(sampler):
            dealt[number % 2].append([list(key) for key in batch])
    seen = {
        rank: [json.loads(line) for line in (logs / f"keys_rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }
    for rank in (0, 1):
        # 3 steps (and maybe a batch the loader read ahead), in the dealt order
        expected = [key for batch in dealt[rank] for key in batch]
        assert len(seen[rank]) >= 6 and seen[rank] == expected[: len(seen[rank])], (rank, seen[rank])
    assert not {tuple(key) for key in seen[0]} & {tuple(key) for key in seen[1]}


def test_two_processes_evaluate_each_batch_once(data, tmp_path):
    """Five held-out images in batches of 2 (3 batches) on two processes: accelerate would give the second process the
    first batch again, counted twice in the logged evaluation. Padded and marked, the logged evaluation equals one
    process's (learning rate 0: the same weights)."""
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for image in sorted(data.glob("*.png"))[:5]:
        shutil.copy(image, held_out)
    args = ["--eval-data", held_out, "--learning-rate", 0, "--max-steps", 2, "--save-steps", 2]
    _, out = train_two_processes(data, tmp_path, *args)
    train(data, tmp_path / "one", "--preset", "tiny", "--no-teachers", "--lpips-weight", 0, *args)

    def evaluation(folder: Path) -> dict:
        state = json.loads((folder / "work" / "checkpoint-2" / "trainer_state.json").read_text())
        entry = next(entry for entry in state["log_history"] if "eval_loss" in entry)
        return {name: value for name, value in entry.items() if name.startswith("eval_") and "_per_second" not in name}

    two, one = evaluation(out), evaluation(tmp_path / "one")
    two.pop("eval_runtime"), one.pop("eval_runtime")
    assert two == pytest.approx(one, rel=1e-5) and "eval_psnr" in two


# ------------------------------------------------------------------------------------------------------ streaming
def test_a_stream_batches_by_bucket_reshuffles_per_epoch_and_splits_among_processes(data, tmp_path):
    """`HydraXTokStreamDataset` on a `datasets` image dataset (read undecoded) and a folder of images and a video:
    one bucket and kind per batch, every row in a pass, the same batches for the same epoch and other ones for the
    next, disjoint process shares that cover the rows, and centred crops equal to the probed dataset's."""
    import datasets

    images = sorted(data.glob("*.png"))
    datasets.Dataset.from_dict({"image": [str(path) for path in images]}).cast_column(
        "image", datasets.Image()
    ).save_to_disk(str(tmp_path / "photos"))
    sources, buckets = [tmp_path / "photos", data], [(32, 48), (48, 32)]
    stream = HydraXTokStreamDataset(sources, buckets, batch_size=2, num_frames=5, seed=0, buffer_size=8)
    assert stream.kinds() == {"image", "video"}
    passes = []
    for epoch in (0, 0, 1):
        stream.set_epoch(epoch)
        passes.append([batch["pixel_values"] for batch in stream])
    shapes = {tuple(batch.shape[1:]) for batch in passes[0]}
    assert shapes == {(3, 32, 48), (3, 48, 32), (3, 5, 32, 48)}  # landscape, portrait, and the landscape clip
    assert all(torch.equal(a, b) for a, b in zip(passes[0], passes[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(passes[0], passes[2]))
    rows = {row["origin"] for row in stream.rows}
    assert {f"{tmp_path / 'photos'} row {number}" for number in range(6)} <= rows and str(data / "clip.mp4") in rows
    shares = [
        [row["origin"] for row in HydraXTokStreamDataset(sources, buckets, 2, num_frames=5, process_index=rank,
                                                          num_processes=2, augment=False).rows]
        for rank in (0, 1)
    ]  # fmt: skip
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) == 13  # 6 + 6 images, 1 video

    one_photo = tmp_path / "one-photo"
    one_photo.mkdir()
    shutil.copy(images[0], one_photo)
    for shuffle in (False, True):  # sources of one kind but of different sizes: each row once, the small one too
        rows = HydraXTokStreamDataset([tmp_path / "photos", one_photo], buckets, 2, augment=False, shuffle=shuffle)
        origins = sorted(row["origin"] for row in rows.rows)
        assert origins == sorted(
            [f"{tmp_path / 'photos'} row {n}" for n in range(6)] + [str(one_photo / images[0].name)]
        )

    centred = HydraXTokStreamDataset([tmp_path / "photos"], buckets, batch_size=3, num_frames=5, augment=False)
    probed = HydraXTokClipDataset([tmp_path / "photos"], buckets, num_frames=5)
    expected = [
        torch.stack([probed[index]["pixel_values"] for index in indices]) for indices in ([0, 2, 4], [1, 3, 5])
    ]
    assert all(torch.equal(a["pixel_values"], b) for a, b in zip(centred, expected, strict=True))


def test_a_datasets_video_column_is_read_with_pyav_from_its_embedded_bytes(data, tmp_path):
    """A `datasets.Video` column, which `datasets` would decode with torchcodec, is read undecoded: the file's bytes
    that `save_to_disk` embeds go to PyAV. Probed and streamed, it gives the folder's clip."""
    import datasets

    video = datasets.Dataset.from_dict({"video": [str(data / "clip.mp4")]}).cast_column("video", datasets.Video())
    video.save_to_disk(str(tmp_path / "videos"))
    stored = datasets.load_from_disk(str(tmp_path / "videos")).cast_column("video", datasets.Video(decode=False))
    assert stored[0]["video"]["bytes"] == (data / "clip.mp4").read_bytes()  # embedded: no path to fall back on
    folder = HydraXTokClipDataset([data], BUCKETS, num_frames=5)
    probed = HydraXTokClipDataset([tmp_path / "videos"], BUCKETS, num_frames=5)
    assert probed.buckets == {("video", 32, 48): [0]}
    assert torch.equal(probed[(0, 7)]["pixel_values"], folder[(6, 7)]["pixel_values"])  # a random clip and crop
    streamed = HydraXTokStreamDataset([tmp_path / "videos"], BUCKETS, 1, num_frames=5, augment=False)
    assert torch.equal(next(iter(streamed))["pixel_values"][0], folder[6]["pixel_values"])  # the centred clip


def test_streaming_trains_resumes_with_the_same_losses_and_computes_the_same_statistics(data, tmp_path, monkeypatch):
    """`--streaming`: a run interrupted within its first pass resumes with the losses of an uninterrupted one, and the
    latent statistics over a stream equal those over the probed data (every item once, centred)."""
    argv = ["--preset", "tiny", "--no-teachers", "--lpips-weight", 0, "--streaming", "--max-steps", 4]
    whole = train(data, tmp_path / "whole", *argv)
    with monkeypatch.context() as patch:
        patch.setattr(train_tokenizer, "RunRecordCallback", interrupting(train_tokenizer.RunRecordCallback))
        stopped = train(data, tmp_path / "split", *argv)
    assert stopped.state.global_step == 2
    resumed = train(data, tmp_path / "split", *argv, "--resume-from-checkpoint", "last")
    assert len(losses(whole)) == 4 and losses(stopped) == losses(whole)[:2]
    assert losses(resumed, 2) == losses(whole, 2)

    for folder, extra in (("probed", []), ("streamed", ["--streaming"])):
        train(data, tmp_path / folder, "--preset", "tiny", "--no-teachers", "--compute-latent-stats", *extra)
    configs = [json.loads((tmp_path / name / "model" / "config.json").read_text()) for name in ("probed", "streamed")]
    assert configs[0]["latents_stats_samples"] == configs[1]["latents_stats_samples"] == 7
    for key in ("latents_mean", "latents_std"):
        assert configs[1][key] == pytest.approx(configs[0][key], abs=1e-9), key


def test_two_processes_stream_their_shares_and_save_one_model(data, tmp_path):
    train_two_processes(data, tmp_path, "--streaming")  # the shares are disjoint: see the stream test above


# ------------------------------------------------------------------------------------------------------- bad data
@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """Two good images and a file that is not a PNG; a folder with a 3-frame video."""
    folder = tmp_path_factory.mktemp("bad")
    write_images(folder, 2)
    (folder / "broken.png").write_bytes(b"not a png at all")
    short = tmp_path_factory.mktemp("short")
    write_video(short / "short.mp4", frames=3)
    return folder, short


def test_an_unreadable_image_is_reported_and_skipped(bad_data, tmp_path, caplog):
    folder, _ = bad_data
    with caplog.at_level(logging.WARNING):
        trainer = train(folder, tmp_path, "--preset", "tiny", "--no-teachers", "--lpips-weight", 0, "--max-steps", 1)
    assert f"Skipping {folder / 'broken.png'}: unreadable image" in caplog.text
    assert trainer.state.global_step == 1 and len(trainer.train_dataset) == 2
    assert type(AutoModel.from_pretrained(tmp_path / "model")) is HydraXTokModel


def test_an_unreadable_image_is_fatal_with_on_bad_sample_error(bad_data, tmp_path):
    folder, _ = bad_data
    with pytest.raises(HydraXTokBadSample, match=re.escape(f"{folder / 'broken.png'}: unreadable image")) as error:
        train(folder, tmp_path, "--preset", "tiny", "--no-teachers", "--on-bad-sample", "error")
    assert isinstance(error.value, ValueError) and "--on-bad-sample skip" in str(error.value)
    assert not (tmp_path / "model").exists()


def test_a_video_shorter_than_a_clip_says_so(bad_data, data, tmp_path, caplog):
    _, short = bad_data
    message = f"{short / 'short.mp4'}: the video has 3 frames, shorter than a clip of 5 frames at stride 1"
    with pytest.raises(HydraXTokBadSample, match=re.escape(message)):
        train(short, tmp_path, "--preset", "tiny", "--no-teachers", "--on-bad-sample", "error")
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="No usable image or video"):
        train(short, tmp_path, "--preset", "tiny", "--no-teachers")
    assert "shorter than a clip" in caplog.text
    # the 12-frame clip is too short for 9 frames at stride 2 (17 frames): skipped, the images stay
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=9, frame_stride=2)
    assert dataset.kinds() == {"image"} and len(dataset) == 6
    assert "has 12 frames, shorter than a clip of 9 frames at stride 2 (17 frames)" in caplog.text


def test_a_file_that_fails_to_decode_is_replaced_by_another_of_its_bucket(tmp_path, caplog):
    """A truncated PNG passes the header probe and fails only when decoded: with `on_bad_sample="skip"` the next item
    of its bucket stands in, so a batch keeps its size and a batch size of 1 trains on (no run ends on one file)."""
    folder = tmp_path / "images"
    folder.mkdir()
    write_images(folder, 3)
    raw = (folder / "image1.png").read_bytes()
    (folder / "image1.png").write_bytes(raw[: len(raw) // 3])
    dataset = HydraXTokClipDataset([folder], resolutions=[(32, 32)], num_frames=1)
    bad = next(index for index, item in enumerate(dataset.items) if item.origin.endswith("image1.png"))
    with caplog.at_level(logging.WARNING):
        stand_in = dataset[(bad, 5)]
    assert "image1.png: unreadable image" in caplog.text
    torch.testing.assert_close(stand_in["pixel_values"], dataset[((bad + 1) % 3, 5)]["pixel_values"])
    with pytest.raises(HydraXTokBadSample, match="image1.png: unreadable image"):
        HydraXTokClipDataset([folder], resolutions=[(32, 32)], num_frames=1, on_bad_sample="error")[bad]
    trainer = train(
        folder,
        tmp_path / "out",
        "--preset",
        "tiny",
        "--no-teachers",
        "--lpips-weight",
        0,
        "--batch-size",
        1,
        "--num-frames",
        1,
        "--max-steps",
        4,
    )
    assert trainer.state.global_step == 4


def test_resuming_from_an_incompatible_checkpoint_says_why(data, stage1, tmp_path, capsys):
    out, _ = stage1
    argv = ["--model", out / "model", "--no-teachers", "--lpips-weight", 0]
    with pytest.raises(ValueError, match=r"trained differently \(stage: checkpoint 1, this run 2"):
        train(data, tmp_path, *argv, "--stage", 2, "--resume-from-checkpoint", out / "work" / "checkpoint-2")
    with pytest.raises(ValueError, match=r"seed: checkpoint 0, this run 5"):  # another data order
        train(
            data, tmp_path, *argv, "--stage", 1, "--seed", 5, "--resume-from-checkpoint", out / "work" / "checkpoint-2"
        )
    model = shutil.copytree(out / "model", tmp_path / "model-with-trainer-state")
    shutil.copy(out / "work" / "checkpoint-2" / "trainer_state.json", model)  # a checkpoint to argparse
    with pytest.raises(ValueError, match="has no hydrax_training.json, so it is not a checkpoint of"):
        train(data, tmp_path, *argv, "--resume-from-checkpoint", model)
    with pytest.raises(SystemExit):  # no trainer_state.json: refused in argparse
        train(data, tmp_path, *argv, "--resume-from-checkpoint", out / "model")
    assert "a folder without trainer_state.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no complete checkpoint-N folder"):
        train(data, tmp_path, *argv, "--resume-from-checkpoint", "last")
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------------------------------------ the data module
BUCKETS = [(32, 32), (32, 48), (48, 32)]


def test_items_go_to_the_bucket_nearest_their_aspect_ratio(data):
    dataset = HydraXTokClipDataset([data], resolutions=BUCKETS, num_frames=5)
    assert [item.origin for item in dataset.items] == [str(data / f"image{n}.png") for n in range(6)] + [
        str(data / "clip.mp4")
    ]
    # 48×64 (landscape) → 32×48, 64×48 (portrait) → 48×32; the 48×64 video → its own video bucket
    assert dataset.buckets == {("image", 32, 48): [0, 2, 4], ("image", 48, 32): [1, 3, 5], ("video", 32, 48): [6]}
    assert dataset[(0, 7)]["pixel_values"].shape == (3, 32, 48)
    assert dataset[1]["pixel_values"].shape == (3, 48, 32)
    assert dataset[(6, 7)]["pixel_values"].shape == (3, 5, 32, 48)
    with pytest.raises(ValueError, match="32x32 and 32x32 have the same aspect ratio; an item goes to the bucket"):
        HydraXTokClipDataset([data], resolutions=[(32, 32), (32, 32)], num_frames=5)
    square = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5)
    assert square.buckets == {("image", 32, 32): list(range(6)), ("video", 32, 32): [6]}
    assert parse_resolution("32") == (32, 32) and parse_resolution("32X48") == (32, 48)


def test_batches_hold_one_bucket_and_repeat_per_seed_and_epoch(data):
    dataset = HydraXTokClipDataset([data], resolutions=BUCKETS, num_frames=5)
    bucket_of = {index: key for key, indices in dataset.buckets.items() for index in indices}

    def draw(seed, epoch, video_ratio=0.5, batch_size=2):
        sampler = HydraXTokBucketBatchSampler(dataset, batch_size, video_ratio, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    kinds = set()
    for seed in range(3):
        for epoch in range(4):
            batches = draw(seed, epoch)
            assert len(batches) == 4 == math.ceil(len(dataset) / 2)
            for batch in batches:
                assert len(batch) == 2 and len({bucket_of[index] for index, _ in batch}) == 1, batch
                kinds.add(bucket_of[batch[0][0]][0])
            assert batches == draw(seed, epoch), "the same seed and epoch must give the same batches"
    assert kinds == {"image", "video"}
    assert draw(0, 0) != draw(0, 1) and draw(0, 0) != draw(1, 0)
    assert all(bucket_of[index][0] == "image" for batch in draw(0, 0, 0.0, 3) for index, _ in batch)
    assert all(bucket_of[index][0] == "video" for batch in draw(0, 0, 1.0) for index, _ in batch)
    # 9 frames at stride 2 are more than the clip has: the video is skipped and only images remain
    images = HydraXTokClipDataset([data], resolutions=BUCKETS, num_frames=9, frame_stride=2)
    assert images.kinds() == {"image"}
    with pytest.raises(ValueError, match="asks for a kind of data these sources lack"):
        HydraXTokBucketBatchSampler(images, 2, video_ratio=1.0)


def test_each_step_of_several_processes_holds_one_kind(data):
    """accelerate deals batches to processes in turn; with `num_processes` each run of that many batches shares a
    kind, so every process's step runs the same modules (FSDP and ZeRO-3 gather modules as they run)."""
    dataset = HydraXTokClipDataset([data], resolutions=BUCKETS, num_frames=5)
    bucket_of = {index: key for key, indices in dataset.buckets.items() for index in indices}
    for seed in range(4):
        sampler = HydraXTokBucketBatchSampler(dataset, 1, 0.5, seed, num_processes=2)
        kinds = [bucket_of[batch[0][0]][0] for batch in sampler]
        assert len(kinds) == 8, "7 items: a whole number of 2-process steps (accelerate would pad with batch 0)"
        assert all(kinds[i] == kinds[i + 1] for i in range(0, len(kinds), 2)), kinds


def test_data_sources_with_mistakes_are_named_or_read(data, tmp_path):
    import datasets

    with pytest.raises(ValueError, match="`frame_stride` must be an int ≥ 1"):
        HydraXTokClipDataset([data], resolutions=BUCKETS, num_frames=5, frame_stride=0)
    manifest = tmp_path / "items.jsonl"
    manifest.write_text('{"image": "a.png"}\n{"image": "b.png"\n')
    with pytest.raises(ValueError, match=r"items.jsonl:2: not a JSON object"):
        list_source(str(manifest))
    manifest.write_text('"image.png"\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: a line needs exactly one of 'image' or 'video'"):
        list_source(str(manifest))
    images = [str(path) for path in sorted(data.glob("*.png"))]
    splits = datasets.DatasetDict(train=datasets.Dataset.from_dict({"image": images}))
    splits.save_to_disk(str(tmp_path / "saved"))  # dataset_dict.json + train/: a dataset, not a folder of files
    assert len(list_source(str(tmp_path / "saved"))) == len(images)
    upper = tmp_path / "ITEMS.JSONL"  # the scripts take it as a manifest: it went to datasets.load_dataset
    upper.write_text("".join(json.dumps({"image": image}) + "\n" for image in images))
    assert [item[1] for item in list_source(str(upper))] == images


def test_a_seeded_key_gives_a_random_crop_and_a_plain_index_the_centred_one(data):
    dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5)
    first = dataset[(0, 11)]["pixel_values"]
    assert torch.equal(first, dataset[(0, 11)]["pixel_values"])
    assert not torch.equal(first, dataset[(0, 12)]["pixel_values"])
    centred = dataset[0]["pixel_values"]
    assert torch.equal(centred, dataset[(0, None)]["pixel_values"])
    assert dataset[0]["origin"] == str(data / "image0.png")
    # the 48×64 image's centred 48×48 box (columns 8-55), resized to 32×32
    pixels = torch.from_numpy(np.array(Image.open(data / "image0.png").convert("RGB"))).permute(2, 0, 1).float()
    expected = F.interpolate(pixels[None, :, :, 8:56], size=(32, 32), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(centred, (expected / 127.5 - 1).clamp(-1, 1))

    # the video: the middle 5 of 12 frames (3-7) without a seed, 5 consecutive frames from a random start with one
    def frame_numbers(pixels):  # frame t is grey level 16·t + 8 (in [-1, 1]: that / 127.5 - 1)
        return ((pixels.mean(dim=(0, 2, 3)) + 1) * 127.5 - 8) / 16

    torch.testing.assert_close(frame_numbers(dataset[6]["pixel_values"]), torch.arange(3.0, 8.0), atol=0.1, rtol=0)
    starts = set()
    for seed in range(8):
        numbers = frame_numbers(dataset[(6, seed)]["pixel_values"])
        start = round(float(numbers[0]))
        torch.testing.assert_close(numbers, torch.arange(start, start + 5.0), atol=0.1, rtol=0)
        starts.add(start)
    assert len(starts) > 1 and starts <= set(range(8)), starts


def test_clip_length_and_crop_fraction_are_checked(data):
    for num_frames in (0, 4, 6):
        with pytest.raises(ValueError, match="must be 1 \\+ 4·k"):
            HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=num_frames)
    with pytest.raises(ValueError, match="min_crop_fraction"):
        HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5, min_crop_fraction=0)
    dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=1)
    assert dataset[6]["pixel_values"].shape == (3, 1, 32, 32)
    batch = collate_clips([dataset[0], None, dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    with pytest.raises(HydraXTokBadSample, match="every sample of a batch failed to load"):
        collate_clips([None, None])


def test_the_stages_evidence_script_runs_stage_1_then_each_stage_2_variant(tmp_path):
    tokenizer_stages = load_script(ROOT / "examples" / "tokenizer_stages.py")
    budget = ["--stage1-minutes", "0.01", "--stage2-minutes", "0.01"]
    tokenizer_stages.main(["--tiny", "--size", "32", "--batch-size", "2", *budget, "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "metrics.json").read_text())["results"]
    assert list(results) == ["stage 1", *(name for name, _, _ in tokenizer_stages.STAGE2_RUNS)]
    for metrics in results.values():
        for key in ("image_psnr", "image_lpips_train", "image_lpips_unseen", "video_psnr", "video_lpips_unseen"):
            assert math.isfinite(metrics[key]) and (metrics[key] > 0 if "lpips" in key else True), (key, metrics)
    with Image.open(tmp_path / "reconstructions.png") as grid:  # 2 held-out photos, original + 4 models each
        assert grid.size == (5 * 32, 2 * 32)


def test_the_trained_tokenizer_goes_into_a_hydrax_checkpoint(stage1, tmp_path):
    # conversion/build_hydrax.py --vision takes the script's output as it is: the tokenizer's weights copied exactly
    from test_build_from_pretrained import build_from_pretrained, write_sources

    sources = write_sources(tmp_path / "sources")
    folder, report = build_from_pretrained(stage1[0] / "model", sources["llm"], tmp_path / "hydrax")
    assert report["checks"]["vision_encode_max_abs_diff"] == 0.0
    assert all(name.startswith("vision:decompressor.") for name in report["dropped"])
    tokenizer = HydraXTokModel.from_pretrained(stage1[0] / "model")
    assert AutoModel.from_pretrained(folder).config.vision_config.hidden_size == tokenizer.config.hidden_size


FSDP2_STEP = """
import copy, os, sys, tempfile, torch, torch.distributed as dist
import numpy as np
from pathlib import Path
from PIL import Image
from types import SimpleNamespace
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/examples"]
import train_tokenizer
from modeling_hydrax import HydraXTokModel
from modeling_hydrax.modeling_hydrax_tok import HydraXTokBlock
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[4], rank=0, world_size=1)
argv = ["--data", sys.argv[2], "--lpips", sys.argv[3], "--no-teachers", "--stage", sys.argv[5]]
args = train_tokenizer.parse_args(argv)
tokenizer = HydraXTokModel(train_tokenizer.tokenizer_config("tiny", 32))
tokenizer.set_training_stage(args.stage)
objective = train_tokenizer.build_objective(args, train_tokenizer.loss_weights(args), tokenizer.config)
module = train_tokenizer.HydraXTokTrainingModel(tokenizer, objective, None)
reference = copy.deepcopy(tokenizer).eval()
policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16)  # what accelerate's `mixed_precision: bf16` sets
for block in [m for m in module.modules() if isinstance(m, HydraXTokBlock)] + [module]:
    fully_shard(block, mp_policy=policy)
losses = module(torch.rand(2, 3, 32, 32) * 2 - 1)
losses["loss"].backward()
grads = [p.grad for p in module.parameters() if p.grad is not None]
print("terms", {k: round(float(v), 4) for k, v in losses.items() if k != "loss"}, "grads", len(grads))
# the checkpoint preview reconstructs with the sharded tokenizer (its root unit unsharded for it), as the unsharded one
out = Path(tempfile.mkdtemp())
(out / "checkpoint-1").mkdir()
pixels = torch.rand(2, 3, 32, 32) * 2 - 1
preview = train_tokenizer.PreviewCallback(module, pixels)
preview.on_save(SimpleNamespace(should_save=True, output_dir=str(out)), SimpleNamespace(global_step=1), None)
train_tokenizer.save_grid(pixels, train_tokenizer.reconstruct(reference, pixels), out / "reference.png")
names = ("checkpoint-1/reconstructions.png", "reference.png")
levels = [np.asarray(Image.open(out / name), dtype=int) for name in names]
print("preview_diff", np.abs(levels[0] - levels[1]).max())
"""


@pytest.mark.parametrize("stage", [1, 2])
def test_a_stage_runs_under_fsdp2_with_bf16_mixed_precision(stage, data, helpers, tmp_path):
    # accelerate engages FSDP only on GPUs; torch's fully_shard runs on a CPU (gloo), with the same mixed-precision
    # policy as fsdp_tokenizer.yaml: LPIPS once promoted its bf16 input back to fp32 there and failed on a GPU
    script = tmp_path / "fsdp2_step.py"
    script.write_text(FSDP2_STEP)
    port = str(29600 + stage)
    command = [sys.executable, str(script), str(ROOT), str(data), str(helpers / "lpips"), port, str(stage)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    terms = result.stdout.split("terms", 1)[1]
    assert "'lpips': 0.0" not in terms and ("'discriminator'" in terms) == (stage == 2), terms
    assert int(result.stdout.split("preview_diff", 1)[1]) <= 2, result.stdout  # bf16 compute: 1 level measured


def test_a_bf16_tokenizer_trains_float32_master_weights_and_is_saved_in_bf16(data, stage1, tmp_path):
    """A tokenizer saved in bf16 loads in bf16 by default (transformers' dtype="auto"); training it so would round
    small AdamW updates away. It trains in float32 (AdamW's state shows it) and is saved back in bf16."""
    HydraXTokModel.from_pretrained(stage1[0] / "model", dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    trainer = train(data, tmp_path / "out", "--model", tmp_path / "bf16", "--no-teachers", "--max-steps", 1)
    assert {state["exp_avg"].dtype for state in trainer.optimizer.state.values()} == {torch.float32}
    saved = HydraXTokModel.from_pretrained(tmp_path / "out" / "model")
    assert {param.dtype for param in saved.parameters()} == {torch.bfloat16}


def test_a_teacher_whose_distillation_term_is_off_is_not_loaded(data, helpers, tmp_path, capsys):
    """Image-only distillation does not load the default video teacher (InternVideo-Next: remote code and a large
    download; offline here, loading it would fail). The config still records its name."""
    teacher = ["--image-teacher", helpers / "image", "--lpips", helpers / "lpips", "--distill-video-weight", 0]
    trainer = train(data, tmp_path / "out", *teacher, "--max-steps", 1)
    assert "video (its term is off)" in capsys.readouterr().out
    assert trainer.model.tokenizer.config.video_teacher_name == HydraXTokConfig().video_teacher_name


@pytest.mark.parametrize("video_ratio, kind", [(0.0, 1), (1.0, 2)])
def test_a_stream_of_one_kind_ends_its_pass(data, video_ratio, kind):
    """With both kinds in the sources, a ratio of 0 or 1 keeps one kind's stream: interleaving with a probability of
    0 never exhausted the other, so a pass repeated its kind forever."""
    stream = HydraXTokStreamDataset([data], [(32, 32)], batch_size=2, video_ratio=video_ratio, num_frames=5)
    batches = list(itertools.islice(iter(stream), 50))
    assert len(batches) < 50 and {batch["pixel_values"].ndim - 3 for batch in batches} == {kind}


class KeysOnly(torch.utils.data.Dataset):
    """A dataset that gives back the `(index, seed)` keys it is asked for: the batches without decoding."""

    def __getitem__(self, key):
        return key


@pytest.mark.parametrize("rank", [0, 1])
def test_a_run_resumed_in_a_later_epoch_sees_that_epochs_batches_on_every_process(data, rank):
    """What the Trainer does with a prepared loader on one of 2 processes: skip the batches already trained on, then
    set the epoch. Through accelerate's wrappers the epoch did not reach the sampler (epoch 0's batches again)."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches

    dataset = HydraXTokClipDataset([data], resolutions=BUCKETS, num_frames=5)

    def epoch_batches(skip):
        sampler = HydraXTokBucketBatchSampler(dataset, 1, 0.5, seed=0, num_processes=2)
        keys = torch.utils.data.DataLoader(KeysOnly(), batch_sampler=sampler, collate_fn=lambda batch: batch)
        loader = prepare_data_loader(keys, num_processes=2, process_index=rank, put_on_device=False)
        loader = train_tokenizer.epochs_reach_sampler(loader, sampler)
        loader = skip_first_batches(loader, skip) if skip else loader
        loader.set_epoch(1)
        getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler).set_epoch(1)  # as the Trainer does
        return list(loader)

    assert epoch_batches(1) == epoch_batches(0)[1:]


def test_stage_tables_are_the_papers():
    """The stage tables hold the paper's loss weights and learning rates (the other tests compare the loss config and
    the optimizer with the tables)."""
    assert train_tokenizer.STAGE_WEIGHTS == {
        1: {"l1": 1.0, "lpips": 0.1, "kl": 1e-4, "gan": 0.0, "distill_image": 1.0, "distill_video": 1.0},
        2: {"l1": 1.0, "lpips": 0.1, "kl": 0.0, "gan": 0.075, "distill_image": 0.0, "distill_video": 0.0},
        3: {"l1": 0.0, "lpips": 0.0, "kl": 0.0, "gan": 0.0, "distill_image": 1.0, "distill_video": 1.0},
    }
    assert train_tokenizer.STAGE_LEARNING_RATES == {1: 2e-4, 2: 1e-4, 3: 1e-4}


@pytest.fixture(scope="module")
def gan_run(data, tmp_path_factory):
    """4 steps of stage 2 with the GAN from step 2 on (steps count from 0: the 3rd and 4th optimizer steps)."""
    out = tmp_path_factory.mktemp("gan")
    argv = ["--data", data, "--output-dir", out, "--size", 32, "--num-frames", 5, "--batch-size", 2,
            "--max-steps", 4, "--save-steps", 4, "--logging-steps", 1, "--report-to", "none", "--preset", "tiny",
            "--stage", 2, "--no-teachers", "--lpips-weight", 0, "--gan-start-step", 2]  # fmt: skip
    return train_tokenizer.main(list(map(str, argv)))


def test_the_gan_starts_at_gan_start_step(gan_run):
    """`--gan-start-step 2`: the GAN term is weighted 0 for the first two steps, 0.075 from then on (the step
    reaches the loss through the trainer's callback)."""
    log = [entry for entry in gan_run.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert [entry["gan_weight"] for entry in log] == pytest.approx([0.0, 0.0, 0.075, 0.075]), log
    assert [entry["gan"] == 0 for entry in log] == [True, True, False, False], log
    assert gan_run.model.loss_fn.config.gan_start_step == 2


def test_the_tokenizer_trains_with_its_adam_betas(gan_run):
    """`--adam-beta2` (0.95) reaches the tokenizer's AdamW groups; the discriminator keeps (0.5, 0.9)."""
    betas = {group["name"]: group["betas"] for group in gan_run.optimizer.param_groups}
    assert betas == {"tokenizer": (0.9, 0.95), "tokenizer_no_decay": (0.9, 0.95), "discriminator_no_decay": (0.5, 0.9)}


def test_the_two_players_gradients_are_clipped_apart():
    """The two players are clipped apart: the discriminator's large gradient does not shrink the tokenizer's."""

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = torch.nn.Linear(4, 4)
            self.loss_fn = torch.nn.Module()
            self.loss_fn.discriminator = torch.nn.Linear(4, 4)

    module = Module()
    module.tokenizer.weight.grad = torch.full((4, 4), 0.1)  # norm 0.4 (+ bias 0): below the limit
    module.tokenizer.bias.grad = torch.zeros(4)
    module.loss_fn.discriminator.weight.grad = torch.full((4, 4), 25.0)  # norm 100
    module.loss_fn.discriminator.bias.grad = torch.zeros(4)
    accelerator = argparse.Namespace(clip_grad_norm_=torch.nn.utils.clip_grad_norm_)
    fake = argparse.Namespace(accelerator=accelerator, args=argparse.Namespace(max_grad_norm=1.0))
    norm = train_tokenizer.HydraXTokTrainer._clip_grad_norm(fake, module)
    assert float(norm) == pytest.approx(0.4)
    torch.testing.assert_close(module.tokenizer.weight.grad, torch.full((4, 4), 0.1))
    assert float(module.loss_fn.discriminator.weight.grad.norm()) == pytest.approx(1.0, rel=1e-4)


def test_a_spent_time_budget_ends_the_run_evaluated_and_checkpointed(data, tmp_path):
    """A budget spent within the first step ends the run there as its last step would: an evaluation, a checkpoint."""
    out = tmp_path / "out"
    trainer = train(data, out, "--preset", "tiny", "--no-teachers", "--lpips-weight", 0, "--eval-data", data,
                    "--max-steps", 50, "--max-minutes", 1e-5)  # fmt: skip
    assert trainer.state.global_step == 1 and trainer.time_budget.ran_out
    assert [entry["step"] for entry in trainer.state.log_history if "eval_psnr" in entry] == [1]
    assert (out / "work" / "checkpoint-1" / "trainer_state.json").is_file()


def test_the_time_budget_schedule_is_the_trainers_cosine_with_whichever_runs_out_first():
    """With `--max-minutes` the schedule is the Trainer's "cosine" with warm-up exactly while the time fraction stays
    behind (it decayed to 0.1 instead of 0, so a budget that never ran out changed the rates); after the warm-up its
    progress is the larger of the step and time fractions."""
    budget = train_tokenizer.TimeBudget(1.0, 10, 2, "training", train_tokenizer.cosine_decay)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer_schedule = get_cosine_schedule_with_warmup(optimizer, 2, 10).lr_lambdas[0]
    assert [budget.factor(step) for step in range(11)] == pytest.approx([trainer_schedule(s) for s in range(11)])
    assert [budget.factor(step) for step in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-6)
    budget.elapsed = 61.0  # the time ran out; the steps did not
    assert budget.factor(2) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ data_hydrax_tok
def test_seeded_crops_cover_the_image_flip_shuffle_channels_and_scale(tmp_path, monkeypatch):
    """Each seeded crop is an exact box of the image (its channels maybe permuted), resized, maybe flipped; over 40
    seeds the boxes reach across the whole width, vary in scale, and are flipped and channel-shuffled sometimes."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    dataset = HydraXTokClipDataset([tmp_path], resolutions=[(32, 32)], num_frames=1, shuffle_channels=True)
    image = torch.from_numpy(np.array(Image.open(tmp_path / "noise.png"))).permute(2, 0, 1)
    boxes = []
    interpolate = data_module.F.interpolate

    class Spy:
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        @staticmethod
        def interpolate(box, *args, **kwargs):
            boxes.append(box.clone())
            return interpolate(box, *args, **kwargs)

    monkeypatch.setattr(data_module, "F", Spy())
    lefts, sides, flips, orders = set(), set(), set(), set()
    for seed in range(40):
        pixels = dataset[(0, seed)]["pixel_values"]
        box = boxes[-1][0]  # [3, h, w] float
        side = box.shape[-1]
        assert box.shape[-2] == side  # a square bucket: a square box
        sides.add(side)
        found = [
            (top, left, order)
            for order in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
            for top in range(48 - side + 1)
            for left in range(64 - side + 1)
            if torch.equal(image[list(order), top : top + side, left : left + side].float(), box)
        ]
        assert len(found) == 1, (seed, found)
        _, left, order = found[0]
        lefts.add(left)
        orders.add(order)
        resized = (interpolate(box[None], size=(32, 32), mode="bilinear", antialias=True) / 127.5 - 1).clamp(-1, 1)[0]
        flipped = torch.equal(pixels, resized.flip(-1))
        assert flipped or torch.equal(pixels, resized)
        flips.add(flipped)
        # the box's left edge lies anywhere across the width, beyond the height's range too
    assert max(lefts) > 48 - min(sides), (lefts, sides)
    assert flips == {True, False}
    assert len(orders) > 1
    assert min(sides) < 36 and max(sides) > 40, sides  # scales in [0.5, 1] of the 48-pixel box


@pytest.mark.parametrize("cache_media", [False, True])
def test_clips_take_every_frame_stride_th_frame_and_every_start(data, cache_media):
    """`frame_stride` frames from every possible start (the last one too), decoded or sliced from the media cache:
    frame t of the test clip is grey level 16·t + 8."""
    dataset = HydraXTokClipDataset([data], resolutions=[(32, 32)], num_frames=5, frame_stride=2,
                                   cache_media=cache_media)  # fmt: skip
    video = next(index for index, item in enumerate(dataset.items) if item.kind == "video")

    def frame_numbers(pixels):
        return ((pixels.mean(dim=(0, 2, 3)) + 1) * 127.5 - 8) / 16

    # 12 frames, a span of 9: starts 0-3, the middle one 1 (frames 1, 3, 5, 7, 9)
    torch.testing.assert_close(
        frame_numbers(dataset[video]["pixel_values"]), torch.arange(1.0, 10.0, 2), atol=0.1, rtol=0
    )
    starts = set()
    for seed in range(24 if cache_media else 12):
        numbers = frame_numbers(dataset[(video, seed)]["pixel_values"])
        start = round(float(numbers[0]))
        torch.testing.assert_close(numbers, torch.arange(start, start + 9.0, 2), atol=0.1, rtol=0)
        starts.add(start)
    assert starts == {0, 1, 2, 3}, starts


class Buckets:
    """What the batch sampler reads of a dataset: buckets of indices, its length and kinds."""

    def __init__(self, buckets):
        self.buckets = buckets

    def __len__(self):
        return sum(len(indices) for indices in self.buckets.values())

    def kinds(self):
        return {key[0] for key in self.buckets}


def test_buckets_are_drawn_in_proportion_to_their_size():
    """A bucket of 9 items is drawn 9 times as often as a bucket of 1 (uniformly drawn: half the batches)."""
    data = Buckets({("image", 32, 32): list(range(9)), ("image", 32, 48): [9]})
    sampler = HydraXTokBucketBatchSampler(data, 1, seed=0)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [batch[0][0] for batch in sampler]
    share = sum(index != 9 for index in drawn) / len(drawn)
    assert 0.8 < share < 0.97, share


def test_a_bucket_gives_each_item_once_before_repeating():
    """Within an epoch, a bucket's shuffled queue gives every item before any repeats."""
    sampler = HydraXTokBucketBatchSampler(Buckets({("image", 32, 32): list(range(6))}), 1, seed=0)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        assert sorted(batch[0][0] for batch in sampler) == list(range(6))


def test_the_stream_is_shuffled_with_its_seed(tmp_path):
    """`seed` orders a stream's rows."""

    write_images(tmp_path, 12)
    orders = [
        [row["origin"] for row in HydraXTokStreamDataset([tmp_path], [(32, 32)], 2, seed=seed, num_frames=5).rows]
        for seed in (0, 1)
    ]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]
