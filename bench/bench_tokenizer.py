"""Hydra-XTok benchmarks: attention modes, chunked streaming memory/time (encode and decode), FLOP/s efficiency.

Every figure is a ratio against a baseline measured in the same run, so numbers from different machines compare.

    python bench/bench_tokenizer.py                      # every part (about 7 minutes on 2 CPU cores)
    python bench/bench_tokenizer.py --part modes --size 256 --hidden-size 1152 --heads 16 --intermediate-size 4304

Parts:
- `modes`:  encoder forward time of full / causal / tubelet attention × single / hierarchical temporal compression on
            one 17-frame clip, as speedups over "full" (the paper's Table 1 timing), each beside the attention-FLOP
            ratio that bounds it (the bound the MLPs lower further), and the time inside the attention modules
            alone (share of the forward, speedup).
- `attention`: attention alone on the 17 frames, dense SDPA over all tokens vs the block-sparse tubelet kernel.
- `stream`: chunked encoding of 17, 65 and 257 frames, each in a fresh process: time per frame and peak resident
            memory above the input (reset with /proc/self/clear_refs), split into the returned latents/posterior
            and the working memory of the computation, which must not grow with the clip.
- `decode`: decoding the latents of 17, 65 and 257 frames, whole and in chunks (what the pipelines do for videos),
            each in a fresh process: time and working memory (peak resident memory above the latents, less the output
            frames), the chunked one against the whole clip's at each length.
- `flops`:  the tubelet encoder's achieved FLOP/s (counted by torch's FlopCounterMode) as a fraction of a plain fp32
            matmul's FLOP/s on this machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hydrax import HydraXTokConfig, HydraXTokModel  # noqa: E402
from modeling_hydrax.modeling_hydrax_tok import HydraXTokAttention  # noqa: E402
from script_args import check_at_least, check_output_file, write_atomically  # noqa: E402


def build_encoder(args, attention_mode="tubelet", temporal_compression="hierarchical", decoder=False):
    """A Hydra-XTok with the benchmark's sizes: the Gen-ViT + bottleneck, or with `decoder` the pixel decoder, has
    `--gen-layers` layers (the part a benchmark runs); the rest one layer."""
    config = bench_config(args, attention_mode, temporal_compression, decoder)
    return HydraXTokModel._from_config(config, attn_implementation=args.attn_implementation).eval()


def bench_config(args, attention_mode="tubelet", temporal_compression="hierarchical", decoder=False):
    """The `HydraXTokConfig` of `build_encoder` (its validation checks the sizes up front)."""
    layers = args.gen_layers
    return HydraXTokConfig(
        hidden_size=args.hidden_size,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
        num_gen_layers=1 if decoder else layers,
        gen_fold_layer=0 if decoder else layers // 2,
        num_sem_layers=1,
        num_decoder_layers=layers if decoder else 1,
        decoder_unfold_layer=layers // 2 if decoder else 1,
        attention_mode=attention_mode,
        temporal_compression=temporal_compression,
        use_decompressor=False,
    )


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_work(mode: str, compression: str, frames: int, layers: int) -> float:
    """The Gen-ViT's attention FLOPs in units of one frame's queries against one frame's keys (MLPs ignored).

    With hierarchical compression the first `layers // 2` layers (the benchmark's `gen_fold_layer`) run at 1 + T/2
    frames and the rest at 1 + T/4; with single compression every layer runs at 1 + T/4.
    """
    coarse = 1 + (frames - 1) // 4
    parts = [(layers // 2, 1 + (frames - 1) // 2), (layers - layers // 2, coarse)]
    if compression == "single":
        parts = [(layers, coarse)]
    pairs = {"full": lambda f: f * f, "causal": lambda f: f * (f + 1) / 2, "tubelet": lambda f: 2 * f - 1}[mode]
    return sum(count * pairs(f) for count, f in parts)


class AttentionTimer:
    """Wall time spent inside a model's attention modules (projections, RoPE and the attention kernel), via hooks."""

    def __init__(self, model: HydraXTokModel):
        self.seconds, self._start = 0.0, 0.0
        self._handles = []
        for module in model.modules():
            if isinstance(module, HydraXTokAttention):
                self._handles.append(module.register_forward_pre_hook(self._enter))
                self._handles.append(module.register_forward_hook(self._exit))

    def _enter(self, module, inputs):
        self._start = time.perf_counter()

    def _exit(self, module, inputs, output):
        self.seconds += time.perf_counter() - self._start

    def remove(self):
        for handle in self._handles:
            handle.remove()


def bench_modes(args) -> dict:
    clip = torch.rand(1, 3, args.frames, args.size, args.size) * 2 - 1
    results = {}
    for compression in ("single", "hierarchical"):
        for mode in ("full", "causal", "tubelet"):
            model = build_encoder(args, mode, compression)
            timer, attention_runs = AttentionTimer(model), []

            def run():
                timer.seconds = 0.0
                model.encode(clip)
                attention_runs.append(timer.seconds)

            with torch.inference_mode():
                seconds = timed(run, args.repeats)
            timer.remove()
            attention = statistics.median(attention_runs[1:])  # the same runs as `seconds`, warm-up left out
            results[f"{mode}/{compression}"] = {"seconds": seconds, "attention_seconds": attention}
    baseline = results["full/single"]
    print(
        f"\n== modes: encoder forward, {args.frames}×{args.size}², width {args.hidden_size}, "
        f"{args.gen_layers} layers, {args.attn_implementation} attention"
    )
    print(
        f"{'mode':<24}{'seconds':>9}{'vs full/single':>16}{'FLOP bound':>12}{'vs full/same':>14}{'FLOP bound':>12}"
        f"{'attn share':>12}{'attn vs full/same':>19}"
    )
    for key, row in results.items():
        mode, compression = key.split("/")
        same = results[f"full/{compression}"]
        work = attention_work(mode, compression, args.frames, args.gen_layers)
        row["speedup_vs_full_single"] = baseline["seconds"] / row["seconds"]
        row["attention_flop_bound_vs_full_single"] = (
            attention_work("full", "single", args.frames, args.gen_layers) / work
        )
        row["speedup_vs_full_same"] = same["seconds"] / row["seconds"]
        row["attention_flop_bound_vs_full_same"] = (
            attention_work("full", compression, args.frames, args.gen_layers) / work
        )
        row["attention_speedup_vs_full_same"] = same["attention_seconds"] / row["attention_seconds"]
        print(
            f"{key:<24}{row['seconds']:>9.3f}{row['speedup_vs_full_single']:>15.2f}×"
            f"{row['attention_flop_bound_vs_full_single']:>11.2f}×{row['speedup_vs_full_same']:>13.2f}×"
            f"{row['attention_flop_bound_vs_full_same']:>11.2f}×{row['attention_seconds'] / row['seconds']:>12.0%}"
            f"{row['attention_speedup_vs_full_same']:>18.2f}×"
        )
    return results


def bench_attention(args) -> dict:
    """Attention alone on F frames of N tokens: dense SDPA over F·N tokens vs the block-sparse tubelet kernel."""
    model = build_encoder(args)
    attention = model.gen_vit.encoder.layers[0].self_attn
    heads, dim = args.heads, args.hidden_size // args.heads
    tokens = (args.size // 16) ** 2
    shape = (1, args.frames, heads, tokens, dim)
    query, key, value = (torch.randn(shape) for _ in range(3))

    def dense():
        flat = [t.transpose(1, 2).reshape(1, heads, -1, dim) for t in (query, key, value)]
        return attention._attend(*flat)

    with torch.inference_mode():
        full = timed(dense, args.repeats)
        tubelet = timed(lambda: attention._tubelet(query, key, value, None), args.repeats)
    bound = args.frames**2 / (2 * args.frames - 1)
    print(f"\n== attention alone: {args.frames} frames × {tokens} tokens, {heads} heads × {dim}")
    speedup = full / tubelet
    print(f"full {1000 * full:.1f} ms, tubelet {1000 * tubelet:.1f} ms: {speedup:.2f}× (FLOP ratio {bound:.2f}×)")
    return {"full_ms": 1000 * full, "tubelet_ms": 1000 * tubelet, "speedup": speedup, "flop_ratio": bound}


def stream_worker(args) -> None:
    """Child process: encode one clip in chunks (or decode its latents, `--worker-decode`, in chunks or whole with
    `--chunk-frames 0`); print the time and the peak resident memory above the input, both with and without the
    returned tensors (which grow with the clip by definition)."""
    decode = args.worker_decode
    model = build_encoder(args, decoder=decode)
    chunk_frames = args.chunk_frames or None
    if decode:
        latent_frames = 1 + (args.worker_frames - 1) // 4
        inputs = torch.randn(1, model.config.latent_channels, latent_frames, args.size // 16, args.size // 16)

        def run(clip):
            return (model.decode(clip, chunk_frames=chunk_frames).sample,)

    else:
        inputs = torch.rand(1, 3, args.worker_frames, args.size, args.size) * 2 - 1

        def run(clip):
            encoded = model.encode(clip, chunk_frames=chunk_frames)
            return encoded.latents, encoded.latent_dist.mean, encoded.latent_dist.logvar

    with torch.inference_mode():
        run(inputs[:, :, :2] if decode else inputs[:, :, :5])
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmHWM")  # the reset high-water mark: the resident set just read could already exceed it
        start = time.perf_counter()
        outputs = run(inputs)
        seconds = time.perf_counter() - start
    peak_mib = (_status_kb("VmHWM") - base) / 1024
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in outputs}
    output_mib = sum(storages.values()) / 2**20
    row = {"frames": args.worker_frames, "seconds": seconds, "peak_mib": peak_mib, "output_mib": output_mib}
    print(json.dumps(row))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status; the stream benchmark needs Linux.")


def stream_rows(args, *extra: str) -> list[dict]:
    """One fresh worker process per clip length in `--stream-frames`, each given `extra` flags."""
    rows = []
    for frames in args.stream_frames:
        command = [sys.executable, __file__, "--worker-frames", str(frames), *_size_flags(args), *extra]
        # A fixed mmap threshold makes glibc return every large freed buffer, so resident memory tracks live tensors
        # instead of allocator high-water marks.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:  # the worker's own error, not only its exit status
            raise RuntimeError(f"the {frames}-frame worker failed:\n{result.stderr[-4000:]}")
        row = json.loads(result.stdout.strip().splitlines()[-1])
        row["working_mib"] = row["peak_mib"] - row["output_mib"]
        rows.append(row)
    return rows


def bench_stream(args) -> dict:
    rows = stream_rows(args)
    first = rows[0]
    chunks = f"{args.chunk_frames} latent frames a chunk" if args.chunk_frames else "whole clip, --chunk-frames 0"
    print(f"\n== stream: encode ({chunks}), {args.size}², width {args.hidden_size}")
    versus = f"vs {first['frames']}f"
    print(f"{'frames':>7}{'seconds':>9}{'ms/frame':>10}{'peak MiB':>10}{'outputs':>9}{'working':>9}{versus:>9}")
    for row in rows:
        per_frame = 1000 * row["seconds"] / row["frames"]
        ratio = row["working_mib"] / first["working_mib"]
        print(
            f"{row['frames']:>7}{row['seconds']:>9.2f}{per_frame:>10.1f}{row['peak_mib']:>10.1f}"
            f"{row['output_mib']:>9.1f}{row['working_mib']:>9.1f}{ratio:>8.2f}×"
        )
    return {"rows": rows, "working_ratio_last_vs_first": rows[-1]["working_mib"] / first["working_mib"]}


def bench_decode(args) -> dict:
    """Decoding the latents of each clip length whole and in `--chunk-frames` chunks, each in a fresh process."""
    whole = stream_rows(args, "--worker-decode", "--chunk-frames", "0")
    chunked = stream_rows(args, "--worker-decode")
    print(
        f"\n== decode: whole clip vs {args.chunk_frames} latent frames a chunk, {args.size}², width "
        f"{args.hidden_size}, {args.gen_layers} decoder layers"
    )
    print(f"{'frames':>7}{'whole s':>9}{'chunked s':>11}{'time':>7}{'output MiB':>12}{'working MiB: whole':>20}"
          f"{'chunked':>9}{'ratio':>8}")  # fmt: skip
    for full, chunk in zip(whole, chunked):
        chunk["time_vs_whole"] = chunk["seconds"] / full["seconds"]
        chunk["working_vs_whole"] = chunk["working_mib"] / full["working_mib"]
        print(
            f"{full['frames']:>7}{full['seconds']:>9.2f}{chunk['seconds']:>11.2f}{chunk['time_vs_whole']:>6.2f}×"
            f"{full['output_mib']:>12.1f}{full['working_mib']:>20.1f}{chunk['working_mib']:>9.1f}"
            f"{chunk['working_vs_whole']:>7.2f}×"
        )
    growth = {name: rows[-1]["working_mib"] / rows[0]["working_mib"] for name, rows in (("whole", whole),
              ("chunked", chunked))}  # fmt: skip
    print(f"working memory {args.stream_frames[-1]} vs {args.stream_frames[0]} frames: whole {growth['whole']:.2f}×, "
          f"chunked {growth['chunked']:.2f}×")  # fmt: skip
    return {"whole": whole, "chunked": chunked, "working_growth": growth}


def _size_flags(args) -> list[str]:
    return [
        "--size", str(args.size), "--hidden-size", str(args.hidden_size), "--heads", str(args.heads),
        "--intermediate-size", str(args.intermediate_size), "--gen-layers", str(args.gen_layers),
        "--chunk-frames", str(args.chunk_frames), "--threads", str(torch.get_num_threads()),
        "--attn-implementation", args.attn_implementation,
    ]  # fmt: skip


def bench_flops(args) -> dict:
    model = build_encoder(args)
    clip = torch.rand(1, 3, args.frames, args.size, args.size) * 2 - 1
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        # The CPU's fused SDPA kernel has no FLOP formula (it counts 0); the math backend's matmuls are counted
        with counter, sdpa_kernel(SDPBackend.MATH):
            model.encode(clip)
        flops = counter.get_total_flops()
        seconds = timed(lambda: model.encode(clip), args.repeats)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        matmul_seconds = timed(lambda: a @ b, 5)
    encoder_rate, matmul_rate = flops / seconds, 2 * 2048**3 / matmul_seconds
    print(f"\n== flops: tubelet/hierarchical encoder, {args.frames}×{args.size}², width {args.hidden_size}")
    print(
        f"encoder {flops / 1e9:.1f} GFLOP in {seconds:.3f} s = {encoder_rate / 1e9:.1f} GFLOP/s; "
        f"fp32 matmul 2048³ = {matmul_rate / 1e9:.1f} GFLOP/s; fraction {encoder_rate / matmul_rate:.2f}"
    )
    return {
        "encoder_gflops": flops / 1e9,
        "encoder_gflop_per_s": encoder_rate / 1e9,
        "matmul_gflop_per_s": matmul_rate / 1e9,
        "fraction": encoder_rate / matmul_rate,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--part",
        choices=["modes", "attention", "stream", "decode", "flops", "all"],
        default="all",
        help="which benchmark to run (see Parts above; default: all)",
    )
    parser.add_argument("--size", type=int, default=256, help="square frame side in pixels (multiple of 16)")
    parser.add_argument(
        "--frames", type=int, default=17, help="clip length for `modes`, `attention` and `flops` (1 + 4k)"
    )
    parser.add_argument("--hidden-size", type=int, default=384, help="encoder width (default: 384)")
    parser.add_argument("--heads", type=int, default=6, help="attention heads (default: 6)")
    parser.add_argument("--intermediate-size", type=int, default=1536, help="MLP width (default: 1536)")
    parser.add_argument(
        "--gen-layers", type=int, default=6, help="Gen-ViT encoder layers, or decoder layers in `decode` (default: 6)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement, after a warm-up (default: 3)"
    )
    parser.add_argument(
        "--chunk-frames", type=int, default=2, help="latent frames per chunk in `stream` and `decode` (default: 2)"
    )
    parser.add_argument(
        "--stream-frames",
        type=int,
        nargs="+",
        default=[17, 65, 257],
        help="clip lengths for `stream` and `decode`, each 1 + 4k (default: 17 65 257)",
    )
    parser.add_argument(
        "--attn-implementation",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="attention kernel for every mode: `sdpa` (fused, the default) or `eager` (materialised score matrices)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="also write the results to this .json file")
    parser.add_argument("--worker-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-decode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.output is not None:
        check_output_file(parser, "--output", args.output, ".json")
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    for frames in [args.frames, *args.stream_frames]:
        if frames < 1 or (frames - 1) % 4:
            parser.error(f"clip lengths must be 1 + 4k frames (k ≥ 0), got {frames}")
    sizes = dict(hidden_size=args.hidden_size, heads=args.heads, intermediate_size=args.intermediate_size)
    check_at_least(parser, 1, **sizes, gen_layers=args.gen_layers, repeats=args.repeats, threads=args.threads)
    check_at_least(parser, 0, chunk_frames=args.chunk_frames)
    if args.chunk_frames == 0 and args.part in ("decode", "all") and not args.worker_frames:
        parser.error(f"`--part {args.part}` compares whole-clip decoding with chunks: give --chunk-frames ≥ 1, not 0")
    if args.hidden_size % args.heads:
        parser.error(f"--hidden-size {args.hidden_size} must be a multiple of --heads {args.heads}")
    try:  # the model's own rules (e.g. the head width 3D RoPE needs), before any worker hides them in its stderr
        bench_config(args)
    except StrictDataclassError as error:
        parser.error(f"--hidden-size / --heads / --intermediate-size / --gen-layers give no valid Hydra-XTok: {error}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker_frames:
        return stream_worker(args)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    benches = {
        "modes": bench_modes,
        "attention": bench_attention,
        "stream": bench_stream,
        "decode": bench_decode,
        "flops": bench_flops,
    }
    parts = list(benches) if args.part == "all" else [args.part]
    results = {part: benches[part](args) for part in parts}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.output, lambda partial: partial.write_text(json.dumps(results, indent=2)))
        print(f"\nresults written to {args.output}")


if __name__ == "__main__":
    main()
