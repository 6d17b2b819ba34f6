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
from pathlib import Path

from transformers import AutoModel, AutoProcessor, PreTrainedModel, ProcessorMixin


def checkpoint_root(component_folder) -> str:
    """The checkpoint that holds a component subfolder: its folder, or, for a snapshot in the Hugging Face cache,
    its repo id (diffusers downloads only the files it needs itself, not the root's transformers code, which
    transformers then fetches into the same snapshot). Absolute, so that a folder given as "." works."""
    root = Path(os.path.abspath(os.fspath(component_folder))).parent
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent.name.removeprefix("models--").replace("--", "/")
    return str(root)


def revision_kwargs(component_folder, kwargs: dict) -> dict:
    """For a Hub snapshot: its commit as `revision` and its cache as `cache_dir`, so that the root loads from the very
    snapshot the components came from (whatever cache diffusers was given)."""
    root = Path(os.path.abspath(os.fspath(component_folder))).parent
    if checkpoint_root(component_folder) == str(root):
        return kwargs
    return {**kwargs, "revision": root.name, "cache_dir": str(root.parent.parent.parent)}


class HydraXRootModel(PreTrainedModel):
    """Stands in for the `model` component: loads the checkpoint root's model (dtype / device_map pass through)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        root, kwargs = (
            checkpoint_root(pretrained_model_name_or_path),
            revision_kwargs(pretrained_model_name_or_path, kwargs),
        )
        model = AutoModel.from_pretrained(root, *model_args, trust_remote_code=True, **kwargs)
        # the folder the pipeline came from (a Hub snapshot's too): where its pipeline files are, for save_pretrained
        model.hydrax_pipeline_folder = os.path.dirname(os.path.abspath(os.fspath(pretrained_model_name_or_path)))
        return model


class HydraXRootProcessor(ProcessorMixin):
    """Stands in for the `processor` component: loads the checkpoint root's processor."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        root, options = (
            checkpoint_root(pretrained_model_name_or_path),
            revision_kwargs(pretrained_model_name_or_path, {}),
        )
        return AutoProcessor.from_pretrained(root, trust_remote_code=True, **options)
