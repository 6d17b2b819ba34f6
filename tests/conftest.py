import doctest
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest -n N: the cores shared out, in this process and its children
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Hydra-X checkpoint folder as conversion/build_hydrax.py writes it, one per test module."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conversion"))
    from build_hydrax import build_checkpoint

    return build_checkpoint("tiny", tmp_path_factory.mktemp("checkpoint") / "hydrax-tiny")


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


# Two processes on this machine, under torchrun (gloo on the CPU): the prefix of `run_processes` commands.
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2)


def run_processes(*command, timeout: float = 240, cwd=None, **env) -> subprocess.CompletedProcess:
    """Runs a multi-process launch (`TORCHRUN`, `accelerate launch`) with one thread per process, offline, and `env`
    added to the environment, in a process group of its own that is killed whole on timeout: a launcher killed alone
    leaves its workers waiting on a collective, holding the CPU for the rest of the suite."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | env
    with subprocess.Popen(
        list(map(str, command)),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def load_script(path):
    """A repository script (not a package module) imported by file path, for tests that call its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_siglip2(hidden_size: int = 24, patch_size: int = 8):
    """A random one-layer SigLIP 2 vision tower (image distillation teacher) for CPU tests."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    config = Siglip2VisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        patch_size=patch_size,
        num_patches=16,
        vision_use_head=False,
    )
    return Siglip2VisionModel(config).eval()


def tiny_vjepa2(hidden_size: int = 20, tubelet_size: int = 2, patch_size: int = 16, crop_size: int = 32):
    """A random one-layer V-JEPA 2 (video distillation teacher) for CPU tests."""
    from transformers import VJEPA2Config, VJEPA2Model

    config = VJEPA2Config(
        patch_size=patch_size,
        crop_size=crop_size,
        frames_per_clip=4,
        tubelet_size=tubelet_size,
        hidden_size=hidden_size,
        num_attention_heads=2,
        num_hidden_layers=1,
        mlp_ratio=2.0,
        num_pooler_layers=1,
        pred_hidden_size=8,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
    )
    return VJEPA2Model(config).eval()


def interrupting(callback_class):
    """A subclass of a run-record callback that stops the run right after its first checkpoint, as a crash there
    would (resume tests)."""

    class Interrupt(callback_class):
        def on_save(self, args, state, control, **kwargs):
            super().on_save(args, state, control, **kwargs)
            control.should_training_stop = True

    return Interrupt


def tiny_clip(folder) -> str:
    """A random one-layer CLIP (32-pixel images, a byte-level tokenizer without merges) saved with its processor in
    `folder`, for the CLIP score and CLIP-I metrics; returns the folder."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)  # module-scoped fixtures run before the autouse seed
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char], vocab[f"{char}</w>"] = len(vocab), len(vocab) + 1
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(
        folder
    )
    return str(folder)


def tiny_dinov2(folder) -> str:
    """A random one-layer DINOv2 saved with its image processor in `folder` (feature model for Fréchet distances and
    DINO similarity); returns the folder."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


class FencedDocTestParser(doctest.DocTestParser):
    """Doctests whose examples sit in ```python fences, as in transformers' docstrings."""

    def parse(self, string, name="<string>"):
        return super().parse(re.sub(r"^[ \t]*```(?:python)?[ \t]*$", "", string, flags=re.MULTILINE), name)


def run_docstring_examples(module) -> doctest.DocTestRunner:
    """Run every docstring example of `module`; the runner counts `tries` and `failures`."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(parser=FencedDocTestParser()).find(module):
        runner.run(test)
    return runner


def pipeline_row(folder, prompts: list[str], size: int, steps: int, guidance_scale: float = 4.0, seed: int = 0):
    """What `HydraXPipeline` samples from the checkpoint `folder` for `prompts`, as one row of uint8 pixels: the
    layout of train_hydrax.py's `--validation-prompts` samples.png."""
    import numpy as np

    from modeling_hydrax import HydraXPipeline

    pipe = HydraXPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    output = pipe(prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                  generator=generator)  # fmt: skip
    return np.concatenate([np.asarray(image) for image in output.images], axis=1)
