"""examples/train_hydrax.py with a clock that runs 1000× fast on every process but the main one. Run by
tests/test_train_distributed.py under torchrun (gloo, CPU) to show that a `--max-minutes` budget follows the main
process's clock; the arguments are the script's:

    OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=true python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/clock_skew_worker.py --output-dir /tmp/skew --max-steps 3 --max-minutes 10
"""

import os
import sys
import time
import types
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import load_script  # noqa: E402


train_hydrax = load_script(ROOT / "examples" / "train_hydrax.py")
if int(os.environ.get("RANK", "0")):
    train_hydrax.time = types.SimpleNamespace(monotonic=lambda: time.monotonic() * 1000)
train_hydrax.main(sys.argv[1:])
