"""bench/bench_lm_head.py runs at toy sizes and its two variants agree on the LM loss."""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_lm_head import main  # noqa: E402


def test_bench_lm_head_runs_at_toy_sizes(capsys):
    main(["--grid", "4", "--prompt-tokens", "5", "--vocab-size", "2048", "--hidden-size", "32", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "5 prompt + 4² target tokens = 23 positions" in out
    assert "speed-up" in out and "same LM loss" in out
