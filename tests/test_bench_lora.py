"""bench/bench_lora.py runs at toy sizes: three rows, the fused adapter drawing the loaded adapter's latents."""

import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_lora import main  # noqa: E402


def test_bench_lora_runs_at_toy_sizes(capsys):
    main(["--grid", "2", "--steps", "3", "--hidden-size", "64", "--layers", "1", "--rank", "4"])
    rows = re.findall(r"^\| (.+?) \| [\d.]+ \| [\d.]+× \| ([\d.e+-]+) \|$", capsys.readouterr().out, re.MULTILINE)
    assert [name for name, _ in rows] == ["base model", "LoRA rank 4, loaded", "LoRA rank 4, fused"]
    assert float(rows[1][1]) == 0 and float(rows[2][1]) < 1e-4 < float(rows[0][1])
