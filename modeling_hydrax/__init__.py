"""Hydra-X modeling: the Hydra-XTok visual tokenizer and the unified model, registered with transformers' Auto* classes
on import (together with the processors of `processing_hydrax`); saved checkpoints carry this code (`auto_map`) for
`trust_remote_code=True` loading."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM

from .configuration_hydrax import HydraXConfig
from .configuration_hydrax_tok import HydraXTokConfig
from .data_collator_hydrax import HydraXDataCollator
from .modeling_hydrax import HydraXForConditionalGeneration, HydraXGenerationPrefix, HydraXModel, HydraXPreTrainedModel
from .modeling_hydrax_tok import HydraXTokFrameCache, HydraXTokModel, HydraXTokPreTrainedModel


AutoConfig.register(HydraXTokConfig.model_type, HydraXTokConfig, exist_ok=True)
AutoModel.register(HydraXTokConfig, HydraXTokModel, exist_ok=True)
AutoConfig.register(HydraXConfig.model_type, HydraXConfig, exist_ok=True)
AutoModel.register(HydraXConfig, HydraXForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(HydraXConfig, HydraXForConditionalGeneration, exist_ok=True)
# pipeline("any-to-any"), the model card's task, loads through AutoModelForMultimodalLM
AutoModelForMultimodalLM.register(HydraXConfig, HydraXForConditionalGeneration, exist_ok=True)
HydraXConfig.register_for_auto_class()
HydraXForConditionalGeneration.register_for_auto_class("AutoModel")
HydraXTokConfig.register_for_auto_class()
HydraXTokModel.register_for_auto_class("AutoModel")

# The processors register themselves (with this package's HydraXConfig) on import: either package is enough.
import processing_hydrax  # noqa: E402, F401


# The diffusers pipelines (diffusers is optional) load on first access: `from modeling_hydrax import HydraXPipeline`.
PIPELINE_MODULES = {
    "HydraXPipeline": "pipeline_hydrax",
    "HydraXPipelineOutput": "pipeline_hydrax",
    "HydraXEncodedPrompt": "pipeline_hydrax",
    "HydraXEditPipeline": "pipeline_hydrax_edit",
}


def __getattr__(name):
    if name in PIPELINE_MODULES:
        import importlib

        return getattr(importlib.import_module(f".{PIPELINE_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HydraXConfig",
    "HydraXDataCollator",
    "HydraXForConditionalGeneration",
    "HydraXGenerationPrefix",
    "HydraXModel",
    "HydraXPreTrainedModel",
    "HydraXTokConfig",
    "HydraXTokFrameCache",
    "HydraXTokModel",
    "HydraXTokPreTrainedModel",
]
