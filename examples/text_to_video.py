"""Text to video with HydraXPipeline: one prompt in, one MP4 (written with PyAV) out.

    python examples/text_to_video.py                      # a tiny random-weight model built on the fly: noise, ~10 s
    python examples/text_to_video.py --model PATH --prompt "A red fox running" --num-frames 17 --output fox.mp4

Writes the MP4 to --output and prints its path; --help lists every option. PyAV writes the MP4 (the `video` extra):
diffusers' `export_to_video` would also need imageio-ffmpeg (or OpenCV), which only the `dev` extra installs.
"""

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "conversion")]

from modeling_hydrax import HydraXPipeline  # noqa: E402
from script_args import run_example  # noqa: E402


def main(argv=None):
    run_example(
        HydraXPipeline, __doc__, argv, prompt="A red fox running", output="outputs/text_to_video.mp4", video=True
    )


if __name__ == "__main__":
    main()
