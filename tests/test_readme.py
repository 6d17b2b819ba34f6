"""The Python examples of the README and docs/PROCESSOR.md run as written, in a folder that holds what they name: a
tiny checkpoint at outputs/run_hydrax/model (what the README's first command writes there) and small cat.jpg /
fox.jpg / street.jpg / clip.mp4 files."""

import contextlib
import io
import re
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_tok_config
from PIL import Image

from modeling_hydrax import HydraXEditPipeline, HydraXPipeline, HydraXTokConfig


ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "conversion"))
    from build_hydrax import build_checkpoint

    folder = tmp_path_factory.mktemp("readme")
    build_checkpoint("tiny", folder / "outputs" / "run_hydrax" / "model")
    rng = np.random.default_rng(0)
    for name in ("cat.jpg", "fox.jpg", "street.jpg"):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / name)
    write_clip(folder / "clip.mp4")
    return folder


def write_clip(path: Path, frames: int = 20, side: int = 64):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            pixels = np.full((side, side, 3), index * 10, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def with_two_steps(call):
    def two_steps(self, *args, **kwargs):
        return call(self, *args, **{**kwargs, "num_inference_steps": 2})

    return two_steps


def run(block: str, namespace: dict):
    exec(compile(block, "README.md", "exec"), namespace)


def test_the_python_blocks_are_the_ones_tested():
    assert [block.splitlines()[1] for block in BLOCKS] == [
        "from modeling_hydrax import HydraXTokConfig, HydraXTokModel   # importing registers AutoConfig / AutoModel",
        "import processing_hydrax  # registers the processors, tokenizer and config (importing modeling_hydrax does "
        "the same)",
        "from transformers import AutoModel, AutoProcessor",
        "from diffusers.utils import export_to_video",
    ]


def test_tokenizer_example_gives_the_shapes_it_states():
    """Run with the tiny tokenizer in place of the so400m-sized default (45 s on 2 CPU cores): the same calls, the
    stated shapes but the widths (64 latent channels and 1152 Sem-ViT features at full size)."""
    config = tiny_tok_config()
    assert BLOCKS[0].count("HydraXTokConfig()") == 1
    namespace = {"tiny_tok_config": tiny_tok_config}
    run(BLOCKS[0].replace("HydraXTokConfig()", "tiny_tok_config()"), namespace)
    assert tuple(namespace["latents"].shape) == (1, config.latent_channels, 5, 16, 16)
    assert tuple(namespace["frames"].shape) == (1, 3, 17, 256, 256)
    assert tuple(namespace["features"].shape) == (1, 1280, config.hidden_size)
    default = HydraXTokConfig()
    assert (default.latent_channels, default.hidden_size) == (64, 1152)


def test_processor_model_and_pipeline_examples_run_on_the_run_hydrax_checkpoint(folder, monkeypatch):
    """As written, but every pipeline call takes 2 denoising steps (the README's 30–50 cost a minute on 2 cores)."""
    monkeypatch.chdir(folder)
    for cls in (HydraXPipeline, HydraXEditPipeline):
        monkeypatch.setattr(cls, "__call__", with_two_steps(cls.__call__))
    namespace = {}
    for block in BLOCKS[1:]:  # the model example uses the processor example's conversations
        run(block, namespace)
    assert namespace["out"].flow_loss is not None and namespace["velocity"].shape == (2, 8, 1, 32, 32)
    assert namespace["image"].size == (512, 512) and len(namespace["animated"]) == 17
    assert namespace["night"].size == (96, 64) and (folder / "fox.mp4").stat().st_size > 0
    assert [night.size for night in namespace["nights"]] == [(96, 64)] * 3
    assert namespace["fast"].images[0].size == (512, 512) and namespace["pipe"].guidance_scale == 1.0


PROCESSOR_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "PROCESSOR.md").read_text(), flags=re.S)


def test_processor_guide_examples_give_the_shapes_they_state(folder, monkeypatch):
    """docs/PROCESSOR.md's examples as written, on the tiny checkpoint at the path they name, with the model the
    generation examples use and the cat photo served from disk in place of its URL."""
    from transformers import AutoModel

    checkpoint = folder / "path" / "to" / "hydrax-checkpoint"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True)
        checkpoint.symlink_to(folder / "outputs" / "run_hydrax" / "model", target_is_directory=True)
    monkeypatch.chdir(folder)
    photos = {"https://example.com/cat.jpg": (folder / "cat.jpg").read_bytes()}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kwargs: contextlib.closing(io.BytesIO(photos[url])))
    namespace = {"model": AutoModel.from_pretrained(checkpoint)}
    inputs = []
    for block in PROCESSOR_BLOCKS:
        exec(compile(block, "docs/PROCESSOR.md", "exec"), namespace)
        inputs.append(namespace.get("inputs"))
    assert len(PROCESSOR_BLOCKS) == 6 and isinstance(namespace["answer"], str)
    image, video, target, batch, edit = inputs[1:]
    assert image["pixel_values"].shape[:2] == (1, 3) and image["image_grid_thw"].shape == (1, 3)
    assert image["image_grid_thw"][0, 1:].tolist() == [side // 16 for side in image["pixel_values"].shape[2:]]
    assert video["pixel_values_videos"].shape[:3] == (1, 3, 17) and video["video_grid_thw"][0, 0] == 5
    assert target["target_grid_thw"].tolist() == [[1, 32, 32]] and int(target["target_mask"].sum()) == 1024
    mask = batch["attention_mask"]
    assert mask.shape[0] == 2 and mask[:, -1].all() and not mask[:, 0].all()  # padded on the left
    assert edit["target_grid_thw"].tolist() == edit["image_grid_thw"].tolist()
