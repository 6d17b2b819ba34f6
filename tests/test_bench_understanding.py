"""bench/bench_understanding.py runs at toy sizes, and its cached and per-option scorers agree."""

import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_understanding import main  # noqa: E402


def test_bench_understanding_runs_at_toy_sizes(capsys):
    main(["--image-size", "32", "--options", "2", "3", "--hidden-size", "32", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "32² image (4 visual tokens)" in out
    rows = re.findall(r"^\| (\d) \| [\d.]+ \| [\d.]+ \| [\d.]+× \| ([\d.e+-]+) \|$", out, flags=re.MULTILINE)
    assert [count for count, _ in rows] == ["2", "3"]
    assert all(float(difference) < 1e-4 for _, difference in rows)
