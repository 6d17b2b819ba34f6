"""Importing either package registers everything the Auto classes need for a Hydra-X folder: no remote-code prompt,
no model-type warning, no Hub link for a local folder."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["processing_hydrax", "modeling_hydrax"])
def test_either_package_registers_every_auto_class(checkpoint, package, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import {package}
        from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, AutoVideoProcessor
        folder = {str(checkpoint)!r}
        loaded = [AutoConfig, AutoProcessor, AutoTokenizer, AutoImageProcessor, AutoVideoProcessor]
        print(" ".join(type(auto.from_pretrained(folder)).__name__ for auto in loaded))
        print(" ".join(type(auto.from_pretrained(folder)).__module__.split(".")[0] for auto in loaded))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names, modules = result.stdout.split("\n")[:2]
    assert names.split() == [
        "HydraXConfig",
        "HydraXProcessor",
        "Qwen2Tokenizer",
        "HydraXImageProcessor",
        "HydraXVideoProcessor",
    ]
    assert "transformers_modules" not in modules, "the installed classes, not remote code"
    for noise in ("Do you wish to run the custom code", "to instantiate a model of type", "hf.co"):
        assert noise not in result.stderr, result.stderr[-3000:]
