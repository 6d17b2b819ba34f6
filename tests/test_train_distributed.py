"""examples/train_hydrax.py scaled out: resuming reproduces an uninterrupted run's losses and weights exactly, and two
processes under torchrun (gloo, CPU) train on different samples and end with the same weights, which the saved model
holds. The accelerate configs of examples/accelerate/ load as accelerate's own plugins."""

import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCHRUN, interrupting, load_script, pipeline_row, run_processes
from PIL import Image
from transformers import AutoModel


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_hydrax.py"
CONFIGS = ROOT / "examples" / "accelerate"


train_hydrax = load_script(SCRIPT)


def losses(trainer, after: int) -> list[tuple]:
    return [
        (entry["step"], entry["loss"], entry.get("lm_loss"), entry.get("flow_loss"))
        for entry in trainer.state.log_history
        if "loss" in entry and entry["step"] > after
    ]


@pytest.mark.parametrize("streaming", [False, True])
def test_resuming_from_the_last_checkpoint_continues_the_same_losses(checkpoint, tmp_path, monkeypatch, streaming):
    # 2 samples per step: the save at step 5 lies past the demo set's epoch (9 samples), so the data order after a
    # resume in the next epoch (a stream's next pass) counts, and so does a pass's end inside gradient accumulation;
    # text and source dropout are raised so the model's own randomness counts too
    argv = ["--model", checkpoint, "--stage", 2, "--max-steps", 7, "--save-steps", 5, "--logging-steps", 1]
    argv += ["--gradient-accumulation-steps", 2, "--text-dropout-prob", 0.5, "--source-dropout-prob", 0.5]
    argv += ["--report-to", "none", *(["--streaming"] if streaming else [])]
    argv = list(map(str, argv))
    whole = train_hydrax.main([*argv, "--output-dir", str(tmp_path / "whole")])

    with monkeypatch.context() as patch:
        patch.setattr(train_hydrax, "RunRecordCallback", interrupting(train_hydrax.RunRecordCallback))
        stopped = train_hydrax.main([*argv, "--output-dir", str(tmp_path / "split")])
    assert stopped.state.global_step == 5
    torch.manual_seed(1234)  # whatever the global RNG holds now, the resume restores the checkpoint's
    resumed = train_hydrax.main([*argv, "--output-dir", str(tmp_path / "split"), "--resume-from-checkpoint", "last"])

    assert losses(stopped, 0) == losses(whole, 0)[:5]
    assert [entry[0] for entry in losses(resumed, 5)] == [6, 7]
    assert losses(resumed, 5) == losses(whole, 5)
    expected = AutoModel.from_pretrained(tmp_path / "whole" / "model").state_dict()
    for name, value in AutoModel.from_pretrained(tmp_path / "split" / "model").state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("option", [None, "--gradient-checkpointing", "--streaming"])
def test_two_processes_train_on_different_samples_and_agree_on_the_weights(checkpoint, tmp_path, option):
    """With gradient checkpointing DDP runs without `find_unused_parameters`: a process whose sample is a question
    must still reduce the flow head's gradients, else it waits for a bucket the other process never sends. With
    `--streaming` each process collates its own share of the stream."""
    out = tmp_path / "out"
    argv = ["--model", checkpoint, "--output-dir", out, "--max-steps", 3, "--logging-steps", 1, "--log-samples"]
    argv += ["--report-to", "none", *([option] if option else [])]
    argv += ["--validation-prompts", "an astronaut", "--validation-inference-steps", 2]
    result = run_processes(*TORCHRUN, SCRIPT, *argv, ACCELERATE_USE_CPU="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    seen = [(out / f"samples_rank{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert [len(origins) for origins in seen] == [4, 4], seen  # 3 steps, and the batch the loader reads ahead
    assert not set(seen[0]) & set(seen[1]), f"both processes trained on {set(seen[0]) & set(seen[1])}"

    held = [json.loads((out / f"weights_rank{rank}.txt").read_text()) for rank in (0, 1)]
    assert held[0] == held[1], "the processes ended with different weights"
    saved = train_hydrax.parameter_checksums(AutoModel.from_pretrained(out / "model"))
    initial = train_hydrax.parameter_checksums(AutoModel.from_pretrained(checkpoint))
    assert saved == held[0]
    trained = [name for name in saved if saved[name] != initial[name]]
    assert trained and all(train_hydrax.parameter_group(name) in ("vision_head", "sem_vit") for name in trained)
    # --validation-prompts: both processes sampled, the main one wrote what the final weights sample
    samples = np.asarray(Image.open(out / "work" / "checkpoint-3" / train_hydrax.SAMPLES_FILE))
    assert np.array_equal(samples, pipeline_row(out / "model", ["an astronaut"], size=32, steps=2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="processes on GPUs form a group without being told")
def test_processes_that_would_each_train_alone_stop_before_any_work(checkpoint, tmp_path):
    """Two CPU processes launched without ACCELERATE_USE_CPU (or --cpu) each saw a world of one: both wrote the same
    output folder, one crashed on the other's half-built checkpoint. Now each stops at once, saying what to pass."""
    out = tmp_path / "out"
    result = run_processes(*TORCHRUN, SCRIPT, "--model", checkpoint, "--output-dir", out, "--max-steps", 1)
    assert result.returncode != 0
    assert "2 processes were launched (WORLD_SIZE=2), but the Trainer runs each alone" in result.stderr
    assert "Pass --cpu, or launch with ACCELERATE_USE_CPU=true." in result.stderr
    assert not out.exists()


def test_a_time_budget_follows_the_main_processs_clock(checkpoint, tmp_path):
    """A second process whose clock runs 1000× fast would find a 10-minute budget spent after its first step, stop
    there while the main process waits in the next step's gradient reduction, and step with a learning rate of 0:
    both follow the main process's clock instead, run every step and end with the same weights."""
    out = tmp_path / "out"
    argv = ["--model", checkpoint, "--output-dir", out, "--max-steps", 3, "--max-minutes", 10, "--log-samples"]
    worker = ROOT / "tests" / "clock_skew_worker.py"
    result = run_processes(*TORCHRUN, worker, *argv, "--report-to", "none", ACCELERATE_USE_CPU="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    held = [json.loads((out / f"weights_rank{rank}.txt").read_text()) for rank in (0, 1)]
    assert held[0] == held[1], "the processes ended with different weights"
    assert "| steps | 3 |" in (out / "model" / "README.md").read_text()


def test_two_processes_evaluate_each_sample_once(checkpoint, tmp_path):
    """Three held-out questions, one per batch, on two processes: accelerate would give the second process the first
    question again to even out the batches, counted twice in `eval_lm_loss` (6.9611 against 6.9691 here). With the
    set padded and the padding left out, the logged evaluation equals one process's (learning rate 0: the same
    weights)."""
    demo = train_hydrax.write_demo_data(tmp_path / "demo")
    questions = tmp_path / "demo" / "questions.jsonl"
    questions.write_text("".join(line + "\n" for line in demo.read_text().splitlines()[0:6:2]))
    argv = ["--model", checkpoint, "--stage", 2, "--data", questions, "--eval-data", questions, "--batch-size", 1]
    argv += ["--max-steps", 1, "--save-steps", 1, "--learning-rate-scale", 0, "--report-to", "none"]

    def evaluation(out: Path) -> dict:
        state = json.loads((out / "work" / "checkpoint-1" / "trainer_state.json").read_text())
        return next(entry for entry in state["log_history"] if "eval_loss" in entry)

    result = run_processes(*TORCHRUN, SCRIPT, *argv, "--output-dir", tmp_path / "two", ACCELERATE_USE_CPU="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    train_hydrax.main(list(map(str, [*argv, "--output-dir", tmp_path / "one"])))
    two, one = evaluation(tmp_path / "two"), evaluation(tmp_path / "one")
    assert two["eval_lm_loss"] == pytest.approx(one["eval_lm_loss"], rel=1e-6) and "eval_flow_loss" not in two
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)


def test_the_accelerate_configs_load_and_fsdp_wraps_the_models_layers(checkpoint):
    from accelerate.commands.config.config_args import ClusterConfig

    configs = {path.stem: ClusterConfig.from_yaml_file(path) for path in CONFIGS.glob("*.yaml")}
    assert set(configs) == {"ddp", "fsdp", "fsdp_tokenizer", "deepspeed_zero2", "deepspeed_zero3", "multi_cpu"}
    assert all(config.mixed_precision == "bf16" for name, config in configs.items() if name != "multi_cpu")
    fsdp = configs["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    wrapped = set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","))
    model = AutoModel.from_pretrained(checkpoint)
    assert wrapped == {"Qwen2DecoderLayer"} <= {type(module).__name__ for module in model.modules()}  # see fsdp.yaml
    assert wrapped <= set(model._no_split_modules)
    assert configs["deepspeed_zero3"].deepspeed_config["zero3_save_16bit_model"] is True
    # the tokenizer's config wraps its blocks alone: FSDP refuses a class name the model does not have
    tokenizer = configs["fsdp_tokenizer"].fsdp_config
    assert {key: value for key, value in tokenizer.items() if key != "fsdp_transformer_layer_cls_to_wrap"} == {
        key: value for key, value in fsdp.items() if key != "fsdp_transformer_layer_cls_to_wrap"
    }
    blocks = {type(module).__name__ for module in model.model.vision_tower.modules()}
    assert tokenizer["fsdp_transformer_layer_cls_to_wrap"] == "HydraXTokBlock" and "Qwen2DecoderLayer" not in blocks


class RecordingEngine:
    """What HydraXDeepSpeedEngineWrapper calls on a DeepSpeed engine, recorded (DeepSpeed itself is not needed)."""

    def __init__(self, module):
        self.module, self.calls = module, []

    @contextlib.contextmanager
    def coalesce_grad_reduction(self):
        self.calls.append("open")
        yield
        self.calls.append(("reduce", sorted(name for name, p in self.module.named_parameters() if p.grad is not None)))

    def set_gradient_accumulation_boundary(self, is_boundary):
        self.calls.append(("boundary", is_boundary))

    def backward(self, loss):
        loss.backward()
        self.calls.append("backward")

    def step(self):
        self.calls.append("step")


def test_zero2_gradients_are_reduced_once_per_step_with_unused_parameters_as_zeros():
    """Under ZeRO-2 the scripts keep one coalesced reduction open over a step's micro-batches, close it (every
    trainable parameter holding a gradient: a zero one where no micro-batch used it) before the step, and step at the
    boundary only. The equality with DDP on mixed data is tested with DeepSpeed in tests/test_train_deepspeed.py."""
    module = torch.nn.ModuleDict({"used": torch.nn.Linear(2, 1), "unused": torch.nn.Linear(2, 1)})
    module["used"].bias.requires_grad_(False)
    engine = RecordingEngine(module)
    wrapper = train_hydrax.HydraXDeepSpeedEngineWrapper(engine)
    for sync in (False, True):
        wrapper.backward(module["used"](torch.ones(1, 2)).sum(), sync_gradients=sync)
    reduced = ["unused.bias", "unused.weight", "used.weight"]
    assert engine.calls == ["open", ("boundary", False), "backward", ("boundary", False), "backward"] + [
        ("reduce", reduced),
        ("boundary", True),
        "step",
    ]
    assert module["unused"].weight.grad.eq(0).all() and module["used"].weight.grad.eq(2).all()
    engine.calls.clear()
    wrapper.backward(module["used"](torch.ones(1, 2)).sum())
    assert engine.calls[0] == "open" and engine.calls[-1] == "step", "the next step opens its own reduction"


def test_a_deepspeed_without_coalesced_reduction_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(__version__="0.16.0"))
    with pytest.raises(RuntimeError, match=r"DeepSpeed 0\.16\.0 has no .*--deepspeed-grad-reduction ready"):
        train_hydrax.HydraXDeepSpeedEngineWrapper(object())
