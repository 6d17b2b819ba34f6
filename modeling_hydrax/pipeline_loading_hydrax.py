"""Root-component loaders for Hydra-X pipeline folders.

A Hydra-X checkpoint keeps ONE copy of the model and processor at the folder root, where transformers' `AutoModel` /
`AutoProcessor` (and `HydraXPipeline.from_pretrained`) read them. diffusers' generic
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` instead loads each component listed in
`model_index.json` from the subfolder named after it, with the class taken from a `.py` file in that subfolder. This
file is that `.py` file: `save_pretrained` copies it into `model/` and `processor/` (which hold nothing else), and its
classes load the real components from the folder root with transformers' remote code. diffusers runs it only after the
user passed `trust_remote_code=True`, so the remote-code opt-in covers the checkpoint's transformers code too.
"""

import os

from transformers import AutoModel, AutoProcessor, PreTrainedModel, ProcessorMixin


def checkpoint_root(component_folder) -> str:
    """The checkpoint folder that holds a component subfolder."""
    return os.path.dirname(os.path.normpath(os.fspath(component_folder)))


class HydraXRootModel(PreTrainedModel):
    """Stands in for the `model` component: loads the checkpoint root's model (dtype / device_map pass through)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        root = checkpoint_root(pretrained_model_name_or_path)
        return AutoModel.from_pretrained(root, *model_args, trust_remote_code=True, **kwargs)


class HydraXRootProcessor(ProcessorMixin):
    """Stands in for the `processor` component: loads the checkpoint root's processor."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        return AutoProcessor.from_pretrained(checkpoint_root(pretrained_model_name_or_path), trust_remote_code=True)
