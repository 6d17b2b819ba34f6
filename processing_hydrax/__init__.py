# Copyright 2026 The Hydra-X Authors. Licensed under the Apache License, Version 2.0.
"""Hydra-X processors. Importing this package registers them with `AutoProcessor`, `AutoImageProcessor`,
`AutoVideoProcessor` and `AutoTokenizer` for the model type `"hydrax"` and its `HydraXConfig` (importing
`modeling_hydrax`, which registers `AutoConfig` / `AutoModel`), so a Hydra-X folder loads without remote code; and it
marks them so that `save_pretrained` writes their code next to the configs (loadable with `trust_remote_code=True`
where this package is not installed)."""

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, AutoVideoProcessor, Qwen2TokenizerFast

from modeling_hydrax.configuration_hydrax import HydraXConfig

from .image_processing_hydrax import HydraXImageProcessor, pixel_bounds, smart_resize
from .processing_hydrax import HYDRAX_CHAT_TEMPLATE, HydraXProcessor
from .tokenization_hydrax import QWEN2_5_SPECIAL_TOKENS, build_tiny_qwen2_tokenizer
from .video_processing_hydrax import HydraXVideoProcessor, sample_frame_indices


HYDRAX_MODEL_TYPE = "hydrax"


def register_hydrax_processors(config_class=HYDRAX_MODEL_TYPE, exist_ok: bool = True) -> None:
    r"""
    Registers the Hydra-X processors with the transformers Auto classes under `config_class`: the model type string
    `"hydrax"` (done on import; enough for `AutoProcessor.from_pretrained(folder)`, which finds classes by the names
    saved in the folder) or the `HydraXConfig` class once it exists (so that `AutoProcessor` also resolves from a
    config).

    Example:

    ```python
    >>> from processing_hydrax import register_hydrax_processors
    >>> register_hydrax_processors()  # idempotent
    ```
    """
    AutoImageProcessor.register(
        config_class, image_processor_classes={"torchvision": HydraXImageProcessor}, exist_ok=exist_ok
    )
    AutoVideoProcessor.register(config_class, HydraXVideoProcessor, exist_ok=exist_ok)
    AutoProcessor.register(config_class, HydraXProcessor, exist_ok=exist_ok)
    if not isinstance(config_class, str):
        AutoTokenizer.register(config_class, fast_tokenizer_class=Qwen2TokenizerFast, exist_ok=exist_ok)


HydraXImageProcessor.register_for_auto_class("AutoImageProcessor")
HydraXVideoProcessor.register_for_auto_class("AutoVideoProcessor")
HydraXProcessor.register_for_auto_class("AutoProcessor")
register_hydrax_processors()
register_hydrax_processors(HydraXConfig)

__all__ = [
    "HYDRAX_CHAT_TEMPLATE",
    "HYDRAX_MODEL_TYPE",
    "QWEN2_5_SPECIAL_TOKENS",
    "HydraXImageProcessor",
    "HydraXProcessor",
    "HydraXVideoProcessor",
    "build_tiny_qwen2_tokenizer",
    "register_hydrax_processors",
    "sample_frame_indices",
    "pixel_bounds",
    "smart_resize",
]
