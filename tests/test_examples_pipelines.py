"""examples/text_to_image.py, text_to_video.py, image_to_video.py and edit_image.py write the file they print, at the
asked size and length; their arguments are checked before any work, and every option reaches the pipeline (a fake
one, in process). The four runs share one thread pool (each is mostly a Python start-up) and take about 20 s together
on 2 CPU cores."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from conftest import load_script, run_script
from PIL import Image

from script_args import load_source, parse_pipeline_args, pipeline_parser, run_example, write_atomically


ROOT = Path(__file__).resolve().parents[1]


# script → (arguments beyond --output, output suffix); all but text_to_image load a prebuilt checkpoint (--model)
RUNS = {
    "text_to_image": (["--height", "32", "--width", "48", "--steps", "2"], ".png"),
    "text_to_video": (["--height", "32", "--width", "32", "--num-frames", "5", "--steps", "2"], ".mp4"),
    "image_to_video": (["--height", "48", "--width", "32", "--steps", "2", "--image", "{image}"], ".mp4"),
    "edit_image": (["--steps", "2", "--guidance-scale", "3", "--image-guidance-scale", "2"], ".png"),
}


def noisy_png(path: Path) -> Path:
    """A 60 × 40 PNG of random pixels (a source image no resize leaves unchanged)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, checkpoint):
    """Every example run once, concurrently: script → (completed process, output path)."""
    tmp = tmp_path_factory.mktemp("examples")
    image = noisy_png(tmp / "source.png")

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
        ({}, ["--height", "0"], "--height must be a positive multiple of 16, got 0"),
        ({}, ["--width", "-16"], "--width must be a positive multiple of 16, got -16"),
        ({}, ["--steps", "0"], "--steps must be ≥ 1, got 0"),
        ({}, ["--guidance-scale", "nan"], "argument --guidance-scale: must be a finite number, got nan"),
        (
            {"edit": True},
            ["--image-guidance-scale", "inf"],
            "argument --image-guidance-scale: must be a finite number, got inf",
        ),
        ({}, ["--lora-scale=-inf"], "argument --lora-scale: must be a finite number, got -inf"),
        ({}, ["--output", "{tmp}/x.mp4"], "--output {tmp}/x.mp4: the file name must end in .png"),
        ({"video": True}, ["--output", "{tmp}/x.png"], "--output {tmp}/x.png: the file name must end in .mp4"),
        ({"video": True}, ["--num-frames", "6"], "--num-frames must be 1 + 4k with k ≥ 1 (5, 9, 13, …), got 6"),
        ({"video": True}, ["--num-frames", "1"], "--num-frames must be 1 + 4k with k ≥ 1 (5, 9, 13, …), got 1"),
        ({"video": True}, ["--num-frames", "7"], "--num-frames must be 1 + 4k with k ≥ 1 (5, 9, 13, …), got 7"),
        ({"video": True}, ["--fps", "0"], "--fps must be ≥ 1, got 0"),
        ({"video": True}, ["--fps", "-5"], "--fps must be ≥ 1, got -5"),
        ({}, ["--model", "{tmp}"], "--model {tmp}: a folder without config.json; pass a checkpoint folder"),
        ({"source": True}, ["--image", "{tmp}/no.png"], "--image {tmp}/no.png: no such file; pass an image file"),
        ({}, ["--lora", "{tmp}"], "--lora {tmp}: a folder without adapter_config.json; pass an adapter folder"),
        # the pipelines load --lora from a folder only: `org/name` is not taken as a Hub id
        ({}, ["--lora", "org/name"], "--lora org/name: no such folder; pass an adapter folder"),
        ({"source": True}, ["--image", "{tmp}"], "--image {tmp}: not a file; pass an image file"),
        ({"source": True}, ["--image", "{file}"], "--image {file}: not an image PIL can read (cannot identify image"),
        # PIL opens a cut-off PNG lazily (its header is intact): the check must read it through
        ({"source": True}, ["--image", "{cut}"], "--image {cut}: not an image PIL can read"),
        ({}, ["--lora-scale", "0.3"], "--lora-scale 0.3 without --lora: pass the adapter folder with --lora"),
        ({}, ["--output", "{file}/x.png"], "--output {file}/x.png: {file} is a file, not a folder"),
        ({}, ["--output", "{tmp}/a.png"], "--output {tmp}/a.png: a folder; pass a file path ending in .png"),
    ],
)
def test_bad_arguments_stop_before_any_work(options, args, message, tmp_path, capsys, monkeypatch):
    paths = {"tmp": tmp_path, "file": tmp_path / "a-file", "cut": tmp_path / "cut.png"}
    paths["file"].write_text("")
    whole = noisy_png(tmp_path / "whole.png").read_bytes()
    paths["cut"].write_bytes(whole[: len(whole) // 2])
    (tmp_path / "whole.png").unlink()
    (tmp_path / "a.png").mkdir()
    monkeypatch.chdir(tmp_path)  # relative paths resolve here
    parser = pipeline_parser("test", prompt="p", output=str(tmp_path / "out.png"), **options)
    with pytest.raises(SystemExit) as exit_info:
        parse_pipeline_args(parser, [arg.format(**paths) for arg in args])
    assert exit_info.value.code == 2 and message.format(**paths) in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "a.png", "cut.png"]


def test_boundary_values_and_an_upper_case_suffix_are_accepted(tmp_path):
    parser = pipeline_parser("test", prompt="p", output=str(tmp_path / "out.mp4"), video=True)
    args = parse_pipeline_args(
        parser,
        ["--height", "16", "--width", "16", "--num-frames", "5", "--fps", "1", "--steps", "1",
         "--output", str(tmp_path / "CLIP.MP4")],
    )  # fmt: skip
    assert (args.height, args.width, args.num_frames, args.fps, args.steps) == (16, 16, 5, 1, 1)
    parser = pipeline_parser("test", prompt="p", output=str(tmp_path / "out.png"))
    assert parse_pipeline_args(parser, ["--output", str(tmp_path / "PHOTO.PNG")]).output == tmp_path / "PHOTO.PNG"


def test_help_shows_the_defaults_of_value_options():
    parser = pipeline_parser("test", prompt="A fox", output="out.mp4", video=True, source=True)
    text = " ".join(parser.format_help().split())
    for fragment in ("(default: 9)", "(default: 8)", "denoising (Euler) steps (default: 4)", "(default: 4.0)"):
        assert fragment in text, fragment


class FakePipeline:
    """Records each call; returns one image (or one video of `num_frames` frames) of the asked size."""

    calls = []

    @classmethod
    def from_pretrained(cls, folder):
        return cls()

    def __call__(self, **kwargs):
        FakePipeline.calls.append(kwargs)
        size = (kwargs["width"], kwargs["height"])
        if "num_frames" in kwargs:
            frames = [Image.new("RGB", size, (20 * i, 0, 0)) for i in range(kwargs["num_frames"])]
            return SimpleNamespace(frames=[frames], images=None)
        return SimpleNamespace(frames=None, images=[Image.new("RGB", size, "red")])


def test_every_option_reaches_the_pipeline_and_the_png_is_written_where_printed(checkpoint, tmp_path, capsys):
    FakePipeline.calls.clear()
    output = tmp_path / "new" / "edit.png"
    source = noisy_png(tmp_path / "source.png")
    argv = ["--model", str(checkpoint), "--prompt", "Make it blue", "--height", "32", "--width", "48",
            "--steps", "3", "--guidance-scale", "2.5", "--image-guidance-scale", "1.25", "--seed", "7",
            "--image", str(source), "--output", str(output)]  # fmt: skip
    run_example(FakePipeline, "test", argv, prompt="p", output="unused.png", source=True, edit=True)
    (call,) = FakePipeline.calls
    assert call["prompt"] == "Make it blue"
    assert (call["height"], call["width"], call["num_inference_steps"]) == (32, 48, 3)
    assert call["guidance_scale"] == 2.5 and call["image_guidance_scale"] == 1.25
    assert call["generator"].initial_seed() == 7
    assert np.array_equal(np.asarray(call["image"]), np.asarray(load_source(source, 32, 48)))
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {output}"
    assert Image.open(output).size == (48, 32)
    assert sorted(path.name for path in output.parent.iterdir()) == ["edit.png"]


def test_video_options_reach_the_pipeline_and_every_frame_is_encoded_at_the_asked_rate(checkpoint, tmp_path):
    FakePipeline.calls.clear()
    output = tmp_path / "clip.mp4"
    argv = ["--model", str(checkpoint), "--height", "32", "--width", "48", "--num-frames", "13", "--fps", "5",
            "--seed", "3", "--output", str(output)]  # fmt: skip
    run_example(FakePipeline, "test", argv, prompt="p", output="unused.mp4", video=True)
    (call,) = FakePipeline.calls
    assert call["num_frames"] == 13 and call["generator"].initial_seed() == 3
    with av.open(str(output)) as container:
        assert container.streams.video[0].average_rate == 5
    frames = video_frames(output)
    assert len(frames) == 13 and frames[0].size == (48, 32)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")

    def failing(partial):
        partial.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, failing)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    write_atomically(path, lambda partial: partial.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_source_photo_is_used_upright_as_its_exif_says(tmp_path):
    """A phone photo in portrait is a landscape JPEG tagged "rotate 90°": --image must use it as viewers show it."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, 32:] = 255  # stored: left half black, right half white; upright: top half black, bottom half white
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    source = np.asarray(load_source(tmp_path / "phone.jpg", height=64, width=32), dtype=np.int16)
    assert source[:16].max() < 16 and source[-16:].min() > 240


def test_a_lora_adapter_changes_the_image_by_its_scale(checkpoint, tmp_path):
    """--lora loads an adapter onto the pipeline: at --lora-scale 0 the image is the base model's, at 1 it differs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

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
