"""Text to image with HydraXPipeline: one prompt in, one PNG out.

    python examples/text_to_image.py                      # a tiny random-weight model built on the fly: noise, ~10 s
    python examples/text_to_image.py --model outputs/run_hydrax/model --prompt "Draw a cat." --output cat.png

Writes the PNG to --output and prints its path; --help lists every option.
"""

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "conversion")]

from modeling_hydrax import HydraXPipeline  # noqa: E402
from script_args import run_example  # noqa: E402


def main(argv=None):
    run_example(HydraXPipeline, __doc__, argv, prompt="A red fox in the snow", output="outputs/text_to_image.png")


if __name__ == "__main__":
    main()
