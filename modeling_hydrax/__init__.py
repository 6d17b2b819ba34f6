"""Hydra-X modeling: the Hydra-XTok visual tokenizer and the unified model, registered with transformers' Auto* classes."""

from transformers import AutoConfig, AutoModel

from .configuration_hydrax_tok import HydraXTokConfig
from .modeling_hydrax_tok import HydraXTokFrameCache, HydraXTokModel, HydraXTokPreTrainedModel


AutoConfig.register(HydraXTokConfig.model_type, HydraXTokConfig, exist_ok=True)
AutoModel.register(HydraXTokConfig, HydraXTokModel, exist_ok=True)

__all__ = ["HydraXTokConfig", "HydraXTokFrameCache", "HydraXTokModel", "HydraXTokPreTrainedModel"]
