"""bench/gpu_check_pipelines.py runs its whole path on a CPU at toy sizes (the GPU run itself needs a lent GPU)."""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gpu_check_pipelines import main  # noqa: E402


def test_pipeline_gpu_check_smoke_run_on_cpu(tmp_path, capsys):
    report = tmp_path / "report.md"
    sizes = ["--image-sizes", "32", "--video-size", "32", "--edit-size", "32", "--steps", "2"]
    main(["--preset", "tiny", "--device", "cpu", *sizes, "--no-compile", "--report", str(report)])
    table = report.read_text()
    assert "## Pipeline GPU check: tiny on CPU" in table
    for row in ("| image 32², 2 steps, CFG | no |", "| video 17×32², 2 steps, CFG | no |", "| edit 32², 2 steps"):
        assert row in table, row
    assert f"appended to {report}" in capsys.readouterr().out
