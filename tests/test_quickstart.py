"""examples/quickstart.py, the tokenizer's main job: a short tiny run leaves PNGs, metrics and a loadable model."""

import json
import math
from pathlib import Path

from conftest import run_script

from modeling_hydrax import HydraXTokModel


SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def run(*args, cwd):
    return run_script(SCRIPT, *args, cwd=cwd)


def test_tiny_run_writes_outputs(tmp_path):
    out = tmp_path / "out"
    result = run("--tiny", "--steps", "3", "--size", "32", "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("reconstruction.png", "video_reconstruction.png", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    psnrs = [value for key, value in _flatten(metrics) if "psnr" in key.lower()]
    assert psnrs and all(math.isfinite(value) for value in psnrs)
    model = HydraXTokModel.from_pretrained(out / "model")
    assert model.config.hidden_size == 32
    assert str(out) in result.stdout


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)):
            yield f"{prefix}{key}", value


def test_help_and_bad_size(tmp_path):
    assert "--output-dir" in run("--help", cwd=tmp_path).stdout
    bad = run("--size", "30", cwd=tmp_path)
    assert bad.returncode == 2 and "16" in bad.stderr
