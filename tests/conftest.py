import os

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
