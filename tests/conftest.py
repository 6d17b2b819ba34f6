import importlib.util
import os
import subprocess
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from modeling_hydrax import HydraXTokConfig


def tiny_tok_config(**overrides) -> HydraXTokConfig:
    """A Hydra-XTok small enough for CPU tests, with every part of the real architecture."""
    kwargs = dict(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_gen_layers=3,
        gen_fold_layer=1,
        num_sem_layers=2,
        num_decoder_layers=3,
        decoder_unfold_layer=2,
        latent_channels=8,
        position_embedding_size=4,
        image_teacher_hidden_size=24,
        video_teacher_hidden_size=20,
    )
    kwargs.update(overrides)
    return HydraXTokConfig(**kwargs)


@pytest.fixture
def tok_config():
    return tiny_tok_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_hydrax(**overrides):
    """A tiny random Hydra-X (the `tiny` preset), in eval mode."""
    from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration

    torch.manual_seed(0)
    return HydraXForConditionalGeneration(HydraXConfig.from_preset("tiny", **overrides)).eval()


def visual_block(config, tokens, video=False):
    """`<|vision_start|>` + `tokens` placeholders + `<|vision_end|>` as a list of ids."""
    pad = config.video_token_id if video else config.image_token_id
    return [config.vision_start_token_id] + [pad] * tokens + [config.vision_end_token_id]


def run_script(script, *args, cwd):
    """Run a repository script in a fresh, offline Python process with a minimal environment."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True)


def load_script(path):
    """A repository script (not a package module) imported by file path, for tests that call its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
