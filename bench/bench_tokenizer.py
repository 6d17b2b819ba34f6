"""Hydra-XTok encoder benchmarks: attention modes, chunked streaming memory/time, and FLOP/s efficiency.

Every figure is a ratio against a baseline measured in the same run, so numbers from different machines compare.

    python bench/bench_tokenizer.py                      # all three parts (about 6 minutes on 2 CPU cores)
    python bench/bench_tokenizer.py --part modes --size 256 --hidden-size 1152 --heads 16 --intermediate-size 4304

Parts:
- `modes`:  encoder forward time of full / causal / tubelet attention × single / hierarchical temporal compression on
            one 17-frame clip, as speedups over "full" (the paper's Table 1 timing), beside the attention-FLOP ratio
            that bounds them.
- `attention`: attention alone on the 17 frames, dense SDPA over all tokens vs the block-sparse tubelet kernel.
- `stream`: chunked encoding of 17, 65 and 257 frames, each in a fresh process: time per frame and peak resident
            memory above the input (reset with /proc/self/clear_refs), split into the returned latents/posterior
            and the working memory of the computation, which must not grow with the clip.
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
from torch.utils.flop_counter import FlopCounterMode


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_hydrax import HydraXTokConfig, HydraXTokModel  # noqa: E402


def build_encoder(args, attention_mode="tubelet", temporal_compression="hierarchical") -> HydraXTokModel:
    """A Hydra-XTok with the benchmark's sizes; only the Gen-ViT + bottleneck run in these benchmarks."""
    config = HydraXTokConfig(
        hidden_size=args.hidden_size,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size,
        num_gen_layers=args.gen_layers,
        gen_fold_layer=args.gen_layers // 2,
        num_sem_layers=1,
        num_decoder_layers=1,
        decoder_unfold_layer=1,
        attention_mode=attention_mode,
        temporal_compression=temporal_compression,
        use_decompressor=False,
    )
    return HydraXTokModel._from_config(config, attn_implementation="sdpa").eval()


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_flop_ratio(mode: str, compression: str, frames: int) -> float:
    """Attention FLOPs of `full` divided by those of `mode`, over the encoder's frame rates (ignores the MLPs)."""
    rates = (
        [1 + (frames - 1) // 2, 1 + (frames - 1) // 4] if compression == "hierarchical" else [1 + (frames - 1) // 4]
    )
    full = sum(f * f for f in rates)
    keys = {"full": full, "causal": sum(f * (f + 1) / 2 for f in rates), "tubelet": sum(2 * f - 1 for f in rates)}
    return full / keys[mode]


def bench_modes(args) -> dict:
    clip = torch.rand(1, 3, args.frames, args.size, args.size) * 2 - 1
    results = {}
    for compression in ("single", "hierarchical"):
        for mode in ("full", "causal", "tubelet"):
            model = build_encoder(args, mode, compression)
            with torch.inference_mode():
                seconds = timed(lambda: model.encode(clip), args.repeats)
            results[f"{mode}/{compression}"] = seconds
    baseline = results["full/single"]
    print(
        f"\n== modes: encoder forward, {args.frames}×{args.size}², width {args.hidden_size}, {args.gen_layers} layers"
    )
    print(f"{'mode':<24}{'seconds':>10}{'vs full/single':>16}{'vs full/same':>14}{'attn FLOP bound':>17}")
    for key, seconds in results.items():
        mode, compression = key.split("/")
        same = results[f"full/{compression}"]
        bound = attention_flop_ratio(mode, compression, args.frames)
        print(f"{key:<24}{seconds:>10.3f}{baseline / seconds:>15.2f}×{same / seconds:>13.2f}×{bound:>16.2f}×")
    return {key: {"seconds": s, "speedup_vs_full_single": baseline / s} for key, s in results.items()}


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
    """Child process: encode one clip in chunks; print the time and the peak resident memory above the input, both
    with and without the returned latents/posterior (which grow with the clip by definition)."""
    model = build_encoder(args)
    clip = torch.rand(1, 3, args.worker_frames, args.size, args.size) * 2 - 1
    with torch.inference_mode():
        model.encode(clip[:, :, :5], chunk_frames=args.chunk_frames)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
        start = time.perf_counter()
        encoded = model.encode(clip, chunk_frames=args.chunk_frames)
        seconds = time.perf_counter() - start
    peak_mib = (_status_kb("VmHWM") - base) / 1024
    outputs = (encoded.latents, encoded.latent_dist.mean, encoded.latent_dist.logvar)
    output_mib = sum(t.untyped_storage().nbytes() for t in {id(t.untyped_storage()): t for t in outputs}.values())
    output_mib /= 2**20
    row = {"frames": args.worker_frames, "seconds": seconds, "peak_mib": peak_mib, "output_mib": output_mib}
    print(json.dumps(row))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status; the stream benchmark needs Linux.")


def bench_stream(args) -> dict:
    rows = []
    for frames in args.stream_frames:
        command = [sys.executable, __file__, "--worker-frames", str(frames)] + _size_flags(args)
        # A fixed mmap threshold makes glibc return every large freed buffer, so resident memory tracks live tensors
        # instead of allocator high-water marks.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    first = rows[0]
    chunk, width = args.chunk_frames, args.hidden_size
    print(f"\n== stream: chunked encode ({chunk} latent frames a chunk), {args.size}², width {width}")
    print(f"{'frames':>7}{'seconds':>9}{'ms/frame':>10}{'peak MiB':>10}{'outputs':>9}{'working':>9}{'vs 17f':>8}")
    for row in rows:
        row["working_mib"] = row["peak_mib"] - row["output_mib"]
        per_frame = 1000 * row["seconds"] / row["frames"]
        ratio = row["working_mib"] / (first["peak_mib"] - first["output_mib"])
        print(
            f"{row['frames']:>7}{row['seconds']:>9.2f}{per_frame:>10.1f}{row['peak_mib']:>10.1f}"
            f"{row['output_mib']:>9.1f}{row['working_mib']:>9.1f}{ratio:>7.2f}×"
        )
    return {"rows": rows, "working_ratio_last_vs_first": rows[-1]["working_mib"] / first["working_mib"]}


def _size_flags(args) -> list[str]:
    return [
        "--size", str(args.size), "--hidden-size", str(args.hidden_size), "--heads", str(args.heads),
        "--intermediate-size", str(args.intermediate_size), "--gen-layers", str(args.gen_layers),
        "--chunk-frames", str(args.chunk_frames), "--threads", str(torch.get_num_threads()),
    ]  # fmt: skip


def bench_flops(args) -> dict:
    model = build_encoder(args)
    clip = torch.rand(1, 3, args.frames, args.size, args.size) * 2 - 1
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
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
    parser.add_argument("--part", choices=["modes", "attention", "stream", "flops", "all"], default="all")
    parser.add_argument("--size", type=int, default=256, help="square frame side in pixels (multiple of 16)")
    parser.add_argument("--frames", type=int, default=17, help="clip length for `modes` and `flops` (1 + 4k)")
    parser.add_argument("--hidden-size", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--intermediate-size", type=int, default=1536)
    parser.add_argument("--gen-layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-frames", type=int, default=2, help="latent frames per chunk in `stream`")
    parser.add_argument("--stream-frames", type=int, nargs="+", default=[17, 65, 257])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--worker-frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size % 16:
        parser.error(f"--size must be a multiple of 16, got {args.size}")
    for frames in [args.frames, *args.stream_frames]:
        if (frames - 1) % 4:
            parser.error(f"clip lengths must be 1 + 4k frames, got {frames}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker_frames:
        return stream_worker(args)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    benches = {"modes": bench_modes, "attention": bench_attention, "stream": bench_stream, "flops": bench_flops}
    parts = list(benches) if args.part == "all" else [args.part]
    results = {part: benches[part](args) for part in parts}
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.output}")


if __name__ == "__main__":
    main()
