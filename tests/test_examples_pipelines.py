"""examples/text_to_image.py, text_to_video.py, image_to_video.py and edit_image.py write the file they print, at the
asked size and length; their arguments are checked before any work. The four runs share one thread pool (each is
mostly a Python start-up) and take about 20 s together on 2 CPU cores."""

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import load_script, run_script
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))

from build_hydrax import build_checkpoint  # noqa: E402

from script_args import load_source, parse_pipeline_args, pipeline_parser  # noqa: E402


# script → (arguments beyond --output, output suffix); all but text_to_image load a prebuilt checkpoint (--model)
RUNS = {
    "text_to_image": (["--height", "32", "--width", "48", "--steps", "2"], ".png"),
    "text_to_video": (["--height", "32", "--width", "32", "--num-frames", "5", "--steps", "2"], ".mp4"),
    "image_to_video": (["--height", "48", "--width", "32", "--steps", "2", "--image", "{image}"], ".mp4"),
    "edit_image": (["--steps", "2", "--guidance-scale", "3", "--image-guidance-scale", "2"], ".png"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every example run once, concurrently: script → (completed process, output path)."""
    tmp = tmp_path_factory.mktemp("examples")
    checkpoint = build_checkpoint("tiny", tmp / "hydrax-tiny")
    image = tmp / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)

    def run(script):
        args, suffix = RUNS[script]
        output = tmp / "out" / f"{script}{suffix}"
        args = [arg.format(image=image) for arg in args] + ["--output", str(output)]
        if script != "text_to_image":
            args += ["--model", str(checkpoint)]
        return run_script(ROOT / "examples" / f"{script}.py", *args, cwd=tmp), output

    with ThreadPoolExecutor(len(RUNS)) as pool:
        return dict(zip(RUNS, pool.map(run, RUNS)))


def finished(runs, script) -> Path:
    result, output = runs[script]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warn" not in result.stderr.lower(), result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"wrote {output}"
    return output


def video_frames(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def test_text_to_image_without_a_model_says_the_weights_are_random(runs):
    assert Image.open(finished(runs, "text_to_image")).size == (48, 32)
    assert "random weights" in runs["text_to_image"][0].stdout


def test_text_to_video_writes_every_frame(runs):
    frames = video_frames(finished(runs, "text_to_video"))
    assert len(frames) == 5 and frames[0].size == (32, 32)
    assert "random weights" not in runs["text_to_video"][0].stdout


def test_image_to_video_takes_the_given_image_at_the_asked_size(runs):
    frames = video_frames(finished(runs, "image_to_video"))
    assert len(frames) == 9 and frames[0].size == (32, 48)


def test_edit_image_keeps_the_asked_size(runs):
    assert Image.open(finished(runs, "edit_image")).size == (64, 64)


@pytest.mark.parametrize(
    "options, args, message",
    [
        ({}, ["--height", "40"], "--height must be a positive multiple of 16, got 40"),
        ({}, ["--steps", "0"], "--steps must be ≥ 1, got 0"),
        ({}, ["--output", "{tmp}/x.mp4"], "--output {tmp}/x.mp4: the file name must end in .png"),
        ({"video": True}, ["--output", "{tmp}/x.png"], "--output {tmp}/x.png: the file name must end in .mp4"),
        ({"video": True}, ["--num-frames", "6"], "--num-frames must be 1 + 4k with k ≥ 1 (5, 9, 13, …), got 6"),
        ({"video": True}, ["--fps", "0"], "--fps must be ≥ 1, got 0"),
        ({"video": True}, ["--fps", "-5"], "--fps must be ≥ 1, got -5"),
        ({}, ["--model", "{tmp}"], "--model {tmp}: a folder without config.json; pass a checkpoint folder"),
        ({"source": True}, ["--image", "{tmp}/no.png"], "--image {tmp}/no.png: no such file; pass an image file"),
        ({}, ["--lora", "{tmp}"], "--lora {tmp}: a folder without adapter_config.json; pass an adapter folder"),
        ({"source": True}, ["--image", "{tmp}"], "--image {tmp}: not a file; pass an image file"),
        ({"source": True}, ["--image", "{file}"], "--image {file}: not an image PIL can read (cannot identify image"),
        ({}, ["--lora-scale", "0.3"], "--lora-scale 0.3 without --lora: pass the adapter folder with --lora"),
        ({}, ["--output", "{file}/x.png"], "--output {file}/x.png: {file} is a file, not a folder"),
        ({}, ["--output", "{tmp}/a.png"], "--output {tmp}/a.png: a folder; pass a file path ending in .png"),
    ],
)
def test_bad_arguments_stop_before_any_work(options, args, message, tmp_path, capsys):
    paths = {"tmp": tmp_path, "file": tmp_path / "a-file"}
    paths["file"].write_text("")
    (tmp_path / "a.png").mkdir()
    parser = pipeline_parser("test", prompt="p", output=str(tmp_path / "out.png"), **options)
    with pytest.raises(SystemExit) as exit_info:
        parse_pipeline_args(parser, [arg.format(**paths) for arg in args])
    assert exit_info.value.code == 2 and message.format(**paths) in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "a.png"]


def test_a_source_photo_is_used_upright_as_its_exif_says(tmp_path):
    """A phone photo in portrait is a landscape JPEG tagged "rotate 90°": --image must use it as viewers show it."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, 32:] = 255  # stored: left half black, right half white; upright: top half black, bottom half white
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    source = np.asarray(load_source(tmp_path / "phone.jpg", height=64, width=32), dtype=np.int16)
    assert source[:16].max() < 16 and source[-16:].min() > 240


def test_a_lora_adapter_changes_the_image_by_its_scale(tmp_path):
    """--lora loads an adapter onto the pipeline: at --lora-scale 0 the image is the base model's, at 1 it differs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    checkpoint = build_checkpoint("tiny", tmp_path / "hydrax-tiny")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModel.from_pretrained(checkpoint), lora).save_pretrained(tmp_path / "adapter")
    text_to_image = load_script(ROOT / "examples" / "text_to_image.py")
    pixels = {}
    for name, extra in (("base", []), ("off", ["--lora-scale", "0"]), ("on", [])):
        lora_args = [] if name == "base" else ["--lora", str(tmp_path / "adapter")]
        output = tmp_path / f"{name}.png"
        text_to_image.main(["--model", str(checkpoint), "--height", "32", "--width", "32", "--steps", "2",
                            "--output", str(output), *lora_args, *extra])  # fmt: skip
        pixels[name] = np.asarray(Image.open(output), dtype=np.int16)
    assert np.array_equal(pixels["off"], pixels["base"])
    assert np.abs(pixels["on"] - pixels["base"]).max() > 8
