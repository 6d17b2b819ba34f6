"""FSDP2 (`fully_shard`) on processes whose batches differ in kind: one trains on a question about an image, another
on a text-to-image target or an edit. Run by tests/test_fsdp_mixed_batches.py, or by hand (gloo, CPU):

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_mixed_worker.py \
        --wrap Qwen2DecoderLayer --cases abcde

Each process builds the tiny Hydra-X (same seed), freezes Gen-ViT and the pixel decoder as examples/train_hydrax.py
does, shards it as accelerate 1.15's FSDP2 path does (`fsdp2_prepare_model`: every module of the wrapped classes,
bottom up; the input embedding; the tail [final norm, LM head]; then the root) and takes 3 AdamW steps on a batch
built by HydraXDataCollator whose kind depends on the rank (`CASES`). An unsharded copy of the model on each process
takes the same steps with the same random draws and its gradients averaged by hand (`all_reduce`; a parameter without
a gradient on one process counts as zero there): what data-parallel training must compute. Afterwards every
parameter, gathered in full (`DTensor.full_tensor()`), must equal that reference, and both processes must hold the
same gathered weights; with `--sample`, train_hydrax.py's validation sampler must draw the same image from the sharded
model as from the reference. Rank 0 prints one line per case, `CASE <case> ok …` or `CASE <case> MISMATCH …`; the exit
status is non-zero on a mismatch. A collective that the processes disagree on fails inside gloo (a size mismatch) or
times out after `--timeout` seconds.
"""

import argparse
import copy
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "conversion")]

from accelerate.utils.fsdp_utils import _find_final_norm  # noqa: E402
from accelerate.utils.other import get_module_children_bottom_up  # noqa: E402
from build_hydrax import build_processor  # noqa: E402
from conftest import load_script  # noqa: E402
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration  # noqa: E402
from modeling_hydrax.data_collator_hydrax import HydraXDataCollator  # noqa: E402
from modeling_hydrax.modeling_hydrax import HYDRAX_FROZEN_MODULES  # noqa: E402


train_hydrax = load_script(ROOT / "examples" / "train_hydrax.py")
SIZE = {"images_kwargs": {"size": {"min_pixels": 32 * 32, "max_pixels": 64 * 32}}}
WRAPS = {"both": "Qwen2DecoderLayer,HydraXTokBlock", "llm": "Qwen2DecoderLayer"}
# The samples of rank 0's and rank 1's batch in each case.
CASES = {
    "a": (["question"], ["text_to_image"]),
    "b": (["text_to_image", "edit"], ["edit"]),  # rank 0: two Sem-ViT groups (edit clips, single targets)
    "c": (["question", "text_to_image"], ["text_to_image"]),
    "d": (["question", "text_to_image", "edit"], ["question"]),
    "e": (["text_to_image", "tall_text_to_image"], ["edit"]),  # rank 0: targets of two sizes (two groups)
    "s": (["text_to_image"], ["text_to_image"]),  # control: the same kind on both ranks
}
LR = 1e-3


def conversation(kind: str) -> list[dict]:
    """A question about an image, a caption → image (32², or 64×32 when tall), or an edit, in the chat format of
    examples/train_hydrax.py."""

    def text(value):
        return {"type": "text", "text": value}

    if kind == "question":
        return [
            {"role": "user", "content": [{"type": "image", "path": "seen.png"}, text("What is it?")]},
            {"role": "assistant", "content": [text("a cat")]},
        ]
    if kind in ("text_to_image", "tall_text_to_image"):
        picture = "drawn.png" if kind == "text_to_image" else "tall.png"
        return [
            {"role": "user", "content": [text("Draw a cat")]},
            {"role": "assistant", "content": [text("ok"), {"type": "image", "path": picture}]},
        ]
    if kind == "edit":
        return [
            {"role": "user", "content": [{"type": "image", "path": "source.png"}, text("Make it red")]},
            {"role": "assistant", "content": [{"type": "image", "path": "edited.png"}]},
        ]
    raise ValueError(f"Unknown sample kind {kind!r}.")


def write_pictures(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in ("seen.png", "drawn.png", "source.png", "edited.png", "tall.png"):
        height = 64 if name == "tall.png" else 32
        Image.fromarray(rng.integers(0, 255, (height, 32, 3), dtype=np.uint8)).save(folder / name)


def shard(model, classes: set[str], **kwargs) -> None:
    """accelerate 1.15's `fsdp2_prepare_model` with one mesh dimension: `fully_shard` on every module of `classes`
    (bottom up), on the input embedding (untied), on the tail [final norm, LM head] without resharding after forward,
    then on the root."""
    for module in get_module_children_bottom_up(model)[:-1]:
        if type(module).__name__ in classes and not isinstance(module, FSDPModule):
            fully_shard(module, reshard_after_forward=True, **kwargs)
    input_embed, output_embed = model.get_input_embeddings(), model.get_output_embeddings()
    tied = input_embed.weight is output_embed.weight
    if not tied:
        fully_shard(input_embed, reshard_after_forward=True, **kwargs)
    final_norm = _find_final_norm(model)
    tail = (final_norm, input_embed, output_embed) if tied else (final_norm, output_embed)
    tail = [module for module in tail if module is not None and not isinstance(module, FSDPModule)]
    if tail:
        fully_shard(tail, reshard_after_forward=False, **kwargs)
    fully_shard(model, **kwargs)


def full(param) -> torch.Tensor:
    return (param.full_tensor() if isinstance(param, DTensor) else param).detach()


def average_gradients(params: list[torch.nn.Parameter], world: int, all_present: bool = False) -> None:
    """Reference data parallelism: a gradient that exists on some process is averaged over all of them (zero where
    absent); one that exists on none stays `None` (unless `all_present`)."""
    present = torch.tensor([param.grad is not None for param in params], dtype=torch.float32)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    if all_present:  # set_reduce_scatter_unused_params: every trainable parameter gets a (zero) gradient
        present.fill_(1)
    for param, flag in zip(params, present.tolist()):
        if not flag:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad /= world


def run_case(case: str, classes: set[str], processor, folder: Path, args) -> str:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = HydraXForConditionalGeneration(HydraXConfig.from_preset("tiny")).train()
    for name, param in model.named_parameters():  # examples/train_hydrax.py's set_trainable at stage 2
        param.requires_grad_(not name.startswith(HYDRAX_FROZEN_MODULES))
    if args.gc:
        model.gradient_checkpointing_enable()
    reference = copy.deepcopy(model)
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    shard(model, classes, **({"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16)} if args.bf16 else {}))
    if args.unused:
        model.set_reduce_scatter_unused_params(True)

    trainable = [param for param in model.parameters() if param.requires_grad]
    reference_trainable = [param for param in reference.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    reference_optimizer = torch.optim.AdamW(reference_trainable, lr=LR)

    kinds = CASES[case][rank % 2]
    batch = HydraXDataCollator(processor, SIZE)(
        [{"messages": conversation(kind), "root": str(folder), "origin": kind} for kind in kinds]
    )
    torch.manual_seed(1000 + rank)  # each process draws its own flow times, noise and dropout
    for _ in range(args.steps):
        state = torch.get_rng_state()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.set_rng_state(state)  # the reference draws the same
        reference(**batch).loss.backward()
        average_gradients(reference_trainable, world, args.unused)
        reference_optimizer.step()
        reference_optimizer.zero_grad()

    expected = dict(reference.named_parameters())
    diffs, moved = {}, 0.0
    for name, param in model.named_parameters():
        value = full(param)
        diffs[name] = float((value - expected[name].detach()).abs().max())
        moved = max(moved, float((value - initial[name]).abs().max()))
    checksum = torch.tensor([float(full(param).double().sum()) for param in model.parameters()], dtype=torch.float64)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    same = all(torch.equal(gathered[0], other) for other in gathered[1:])
    worst = max(diffs, key=diffs.get)
    # bf16 compute differs from the fp32 reference by design: there only agreement and progress are checked
    ok = same and (args.bf16 or diffs[worst] <= LR / 100) and moved > LR / 2
    sampled = ""
    if args.sample:  # train_hydrax.py's --validation-prompts sampler on the sharded model, against the reference
        images = [train_hydrax.sample_prompts(net, processor, ["a cat"], 32, 2, 4.0, 0) for net in (model, reference)]
        pixels = [np.stack([np.asarray(image) for image in row]) for row in images]
        pixel_diff = int(np.abs(pixels[0].astype(int) - pixels[1].astype(int)).max())
        ok &= pixel_diff <= 1
        sampled = f" sample_diff={pixel_diff}"
    return (
        f"CASE {case} {'ok' if ok else 'MISMATCH'} ranks_equal={same} max_diff={diffs[worst]:.2e} ({worst}) "
        f"moved={moved:.2e}{sampled} rank0={CASES[case][0]} rank1={CASES[case][1]}"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wrap", default="both", help="'both', 'llm', or comma-separated class names to wrap")
    parser.add_argument("--cases", default="abcde", help=f"letters of {sorted(CASES)} to run, in order")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60, help="seconds a gloo collective may wait")
    parser.add_argument("--no-idle", action="store_true", help="drop the model's zero-weighted idle generation path")
    parser.add_argument("--unused", action="store_true", help="set_reduce_scatter_unused_params(True) on the model")
    parser.add_argument("--gc", action="store_true", help="gradient checkpointing (gradient_checkpointing_enable())")
    parser.add_argument("--bf16", action="store_true", help="MixedPrecisionPolicy(param_dtype=bf16), no fp32 match")
    parser.add_argument("--sample", action="store_true", help="also sample with train_hydrax.py's validation sampler")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    classes = set(WRAPS.get(args.wrap, args.wrap).split(","))
    if args.no_idle:
        HydraXForConditionalGeneration._idle_generation_path = lambda self, like: like.new_zeros(())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    processor = build_processor(HydraXConfig.from_preset("tiny"), None)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        write_pictures(Path(tmp), seed=dist.get_rank())
        for case in args.cases:
            start = time.perf_counter()
            line = run_case(case, classes, processor, Path(tmp), args)
            failed |= " ok " not in line
            if dist.get_rank() == 0:
                print(f"{line} wrap={sorted(classes)} {time.perf_counter() - start:.1f}s", flush=True)
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
