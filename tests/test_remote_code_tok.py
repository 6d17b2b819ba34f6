"""A saved Hydra-XTok checkpoint carries its code and loads with `trust_remote_code=True` without our packages."""

import json
import subprocess
import sys
import textwrap

import torch
from conftest import tiny_tok_config

from modeling_hydrax import HydraXTokModel


# Run first in the subprocess, for a Hub user's Python: any import of our packages fails, whatever the editable
# install puts on the path, and PyAV (the optional `video` extra) is missing, which loading the remote code must not
# mind (transformers refuses remote code whose imports outside `try` blocks are missing).
BLOCK_OUR_PACKAGES = """
import importlib.abc, sys
class BlockOurPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_hydrax", "processing_hydrax"):
            raise ModuleNotFoundError(f"{name} must not be imported here")
sys.meta_path.insert(0, BlockOurPackages())
sys.modules["av"] = None  # not installed: `import av` fails, `importlib.util.find_spec("av")` is None
try:
    import modeling_hydrax
    raise SystemExit("modeling_hydrax is importable: the check would prove nothing")
except ModuleNotFoundError:
    pass
"""


def test_saved_tokenizer_carries_auto_map_and_code(tmp_path):
    HydraXTokModel(tiny_tok_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hydrax_tok.HydraXTokConfig",
        "AutoModel": "modeling_hydrax_tok.HydraXTokModel",
    }
    assert {path.name for path in tmp_path.glob("*.py")} == {"configuration_hydrax_tok.py", "modeling_hydrax_tok.py"}


def test_remote_code_round_trip_without_our_packages(tmp_path):
    checkpoint, outside = tmp_path / "hydrax-tok", tmp_path / "elsewhere"
    outside.mkdir()
    model = HydraXTokModel(tiny_tok_config()).eval()
    model.save_pretrained(checkpoint)
    pixels = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model.encode(pixels).latents
    torch.save({"pixels": pixels, "latents": expected}, tmp_path / "io.pt")
    script = BLOCK_OUR_PACKAGES + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel
        config = AutoConfig.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(config).__name__ == "HydraXTokConfig" and type(model).__name__ == "HydraXTokModel"
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            latents = model.encode(io["pixels"]).latents
            hidden_states = model.encode(io["pixels"], output_hidden_states=True).hidden_states
        assert torch.equal(latents, io["latents"]), (latents - io["latents"]).abs().max()
        assert len(hidden_states) == config.num_gen_layers + 1
        print("ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(outside)}
    result = subprocess.run([sys.executable, "-c", script], cwd=outside, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
