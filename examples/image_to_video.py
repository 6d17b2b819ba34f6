"""Image to video with HydraXPipeline: the image is the first frame, the prompt says what happens next; writes an
MP4 (with PyAV).

    python examples/image_to_video.py                     # astronaut photo, tiny random-weight model: noise, ~10 s
    python examples/image_to_video.py --model PATH --image fox.png --prompt "The fox runs off" --output fox.mp4

The first frame of the video is the tokenizer's reconstruction of the image. Writes the MP4 to --output and prints
its path; --help lists every option.
"""

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "conversion")]

from modeling_hydrax import HydraXPipeline  # noqa: E402
from script_args import run_example  # noqa: E402


def main(argv=None):
    options = dict(prompt="The astronaut waves", output="outputs/image_to_video.mp4", video=True, source=True)
    run_example(HydraXPipeline, __doc__, argv, **options)


if __name__ == "__main__":
    main()
