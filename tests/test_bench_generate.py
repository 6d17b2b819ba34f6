"""bench/bench_generate.py runs at toy sizes, and compiled static-cache decoding gives eager decoding's tokens."""

import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_generate import main  # noqa: E402


def test_bench_generate_runs_at_toy_sizes(capsys):
    main(["--hidden-size", "64", "--layers", "1", "--image-size", "32", "--new-tokens", "3", "--repeats", "1"])
    rows = re.findall(r"^\| ([a-z ,]+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+× \| (True|False) \|$",
                      capsys.readouterr().out, flags=re.MULTILINE)  # fmt: skip
    assert rows == [("eager, dynamic cache", "True"), ("compiled, static cache", "True")]
