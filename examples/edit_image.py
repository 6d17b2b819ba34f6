"""Instruction-based image editing with HydraXEditPipeline (dual classifier-free guidance): writes the edited PNG.

    python examples/edit_image.py                         # astronaut photo, tiny random-weight model: noise, ~10 s
    python examples/edit_image.py --model PATH --image photo.png --prompt "Make the sky purple" --output edited.png

The output has the size --height × --width, to which the source is center-cropped and resized. Writes the PNG to
--output and prints its path; --help lists every option.
"""

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "conversion")]

from modeling_hydrax import HydraXEditPipeline  # noqa: E402
from script_args import run_example  # noqa: E402


def main(argv=None):
    run_example(
        HydraXEditPipeline,
        __doc__,
        argv,
        prompt="Make the suit red",
        output="outputs/edit_image.png",
        source=True,
        edit=True,
    )


if __name__ == "__main__":
    main()
