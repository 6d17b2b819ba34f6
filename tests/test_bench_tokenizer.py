"""The tokenizer benchmark runs end to end at toy sizes and its FLOP bounds match hand counts."""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_script


BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_tokenizer.py"
TOY = ["--size", "32", "--hidden-size", "32", "--heads", "2", "--intermediate-size", "64", "--gen-layers", "2"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_tokenizer", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_work_counts_frame_pairs():
    bench = load_bench()
    # 17 frames: 5 latent frames (single), or 9 then 5 (hierarchical, half the layers each).
    assert bench.attention_work("full", "single", 17, 6) == 6 * 25
    assert bench.attention_work("tubelet", "single", 17, 6) == 6 * 9  # anchor alone + 4 × [previous, own]
    assert bench.attention_work("causal", "single", 17, 6) == 6 * 15
    assert bench.attention_work("full", "hierarchical", 17, 6) == 3 * 81 + 3 * 25
    assert bench.attention_work("tubelet", "hierarchical", 17, 13) == 6 * 17 + 7 * 9


def test_every_part_runs_and_reports(tmp_path):
    output = tmp_path / "results" / "bench.json"  # a folder that does not exist yet: made, not a crash at the end
    toy = ["--frames", "5", "--repeats", "1", "--stream-frames", "5", "9", "--chunk-frames", "1"]
    result = run_script(BENCH, "--part", "all", *toy, *TOY, "--output", output, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vs 5f" in result.stdout and "vs 17f" not in result.stdout  # the ratio column names its first clip
    results = json.loads(output.read_text())

    modes = results["modes"]
    assert set(modes) == {f"{m}/{c}" for m in ("full", "causal", "tubelet") for c in ("single", "hierarchical")}
    assert modes["full/single"]["speedup_vs_full_single"] == 1.0
    assert modes["tubelet/single"]["attention_flop_bound_vs_full_single"] == pytest.approx(4 / 3)
    assert all(row["attention_seconds"] > 0 for row in modes.values())
    assert results["attention"]["speedup"] > 0 and results["attention"]["flop_ratio"] == pytest.approx(25 / 9)
    assert 0 < results["flops"]["fraction"]
    rows = results["stream"]["rows"]
    assert [row["frames"] for row in rows] == [5, 9]
    assert all(row["output_mib"] > 0 and row["seconds"] > 0 for row in rows)
    decode = results["decode"]
    for name in ("whole", "chunked"):
        assert [row["frames"] for row in decode[name]] == [5, 9]
        assert all(row["seconds"] > 0 for row in decode[name])
    assert decode["whole"][1]["output_mib"] == decode["chunked"][1]["output_mib"] > decode["whole"][0]["output_mib"]


@pytest.mark.parametrize("part", ["decode", "all"])
def test_decode_needs_chunks(part, capsys):
    # `--chunk-frames 0` decodes whole clips, the very baseline `decode` compares chunks with.
    with pytest.raises(SystemExit):
        load_bench().parse_args(["--part", part, "--chunk-frames", "0"])
    assert "--chunk-frames ≥ 1" in capsys.readouterr().err
    assert load_bench().parse_args(["--part", "stream", "--chunk-frames", "0"]).chunk_frames == 0
