"""examples/accelerate/fsdp.yaml with processes whose batches differ in kind (questions about images, text-to-image
targets, edits): FSDP2 all-gathers each shard unit when it runs, and Hydra-X runs its Hydra-XTok blocks a different
number of times depending on the batch (Gen-ViT per clean image, target and edit source; Sem-ViT per clean batch,
per generation group, and once more for the idle generation path of a batch without targets). Only the Qwen2 layers
run once per step whatever the batch holds, so only they may be shard units of their own; the vision tower stays in
the root unit, gathered once per step.

accelerate enables FSDP only on GPUs, so tests/fsdp_mixed_worker.py applies torch's `fully_shard` the way accelerate
1.15 does, on CPU: 2 processes under torchrun (gloo), 3 AdamW steps, compared with an unsharded copy whose gradients
are averaged by hand.
"""

import subprocess
from pathlib import Path

import pytest
from conftest import TORCHRUN, run_processes


ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fsdp_mixed_worker.py"
FSDP_CONFIG = ROOT / "examples" / "accelerate" / "fsdp.yaml"


def wrapped_classes() -> str:
    from accelerate.commands.config.config_args import ClusterConfig

    return ClusterConfig.from_yaml_file(FSDP_CONFIG).fsdp_config["fsdp_transformer_layer_cls_to_wrap"]


def run_worker(*args) -> subprocess.CompletedProcess:
    return run_processes(*TORCHRUN, WORKER, *args, cwd=ROOT)


def test_fsdp_yaml_makes_only_the_qwen2_layers_shard_units():
    """The Hydra-XTok blocks run a batch-dependent number of times per step: as shard units they would make the
    processes' all-gathers disagree (see the next tests)."""
    assert wrapped_classes() == "Qwen2DecoderLayer"


def test_fsdp_yaml_trains_on_batches_of_different_kinds_and_the_processes_agree():
    """With fsdp.yaml's wrap policy, 2 processes train on (a) a question vs a text-to-image target, (b) a batch mixing
    a text-to-image target and an edit (two Sem-ViT groups) vs an edit, (c) a question + a text-to-image target vs a
    text-to-image target, (d) all three kinds vs a question, (e) text-to-image targets of two sizes (two groups) vs
    an edit: no hang, no error, and every gathered parameter equals the unsharded reference (averaged gradients) on
    both processes. train_hydrax.py's validation sampler (`--validation-prompts`) then runs on the sharded model and
    draws the reference's image (to one 8-bit level)."""
    result = run_worker("--wrap", wrapped_classes(), "--cases", "abcde", "--sample")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("CASE ")]
    assert [line.split()[1:3] for line in lines] == [[case, "ok"] for case in "abcde"], result.stdout
    assert all("ranks_equal=True" in line and "sample_diff=" in line for line in lines), result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--wrap", "Qwen2DecoderLayer,HydraXTokBlock"], id="hydrax_tok_blocks_wrapped"),
        pytest.param(["--wrap", "Qwen2DecoderLayer", "--no-idle"], id="without_the_idle_generation_path"),
    ],
)
def test_a_question_against_a_text_to_image_target_breaks_without_the_fix(args):
    """Case (a) fails with a collective size mismatch when the Hydra-XTok blocks are shard units (the processes run
    Sem-ViT a different number of times), and also with only the Qwen2 layers wrapped when the model's zero-weighted
    idle generation path is dropped (the root unit then reduce-scatters gradients of different parameters)."""
    result = run_worker(*args, "--cases", "a", "--timeout", "30")
    assert result.returncode != 0, result.stdout
    assert "CASE a ok" not in result.stdout
    assert "collective mismatch" in result.stderr or "Connection reset" in result.stderr, result.stderr[-5000:]
