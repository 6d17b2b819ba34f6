"""LoRA adapters on the Hydra-X pipelines' model, under diffusers' LoRA method names.

A Hydra-X LoRA is a PEFT adapter of `HydraXForConditionalGeneration`, as `examples/train_hydrax.py --lora-r` writes
it to OUTPUT_DIR/adapter: low-rank updates of the LLM's projections plus, as `modules_to_save`, full copies of the
modules the stage trains in full (projector, timestep embedding, flow head, Sem-ViT). PEFT's integration functions
(`peft.functional`) inject both into the model in place, so the pipeline keeps its model and its cached sampler, and
adapters can be loaded, switched, weighted, fused and removed without reloading the base weights.

Weights scale the low-rank updates only. A full copy cannot be scaled: it replaces its module while its adapter is
active, so two active adapters may not both carry a copy of the same module.

This file imports only torch, diffusers (and its safetensors) and, when used, peft: a checkpoint folder carries it with
the pipeline code.
"""

import contextlib
import itertools
import math
import numbers
import os
import warnings

import torch
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from diffusers.utils import logging, scale_lora_layers
from safetensors import SafetensorError


logger = logging.get_logger(__name__)

LORA_PREFIX = "lora_"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # beside adapter_config.json in a PEFT adapter folder
SAVED_PREFIX = "base_model.model."  # what `PeftModel.save_pretrained` puts before the model's own parameter names


def _peft():
    """The PEFT pieces the loader uses, with the fix when PEFT is missing or too old."""
    try:
        from peft import PeftConfig
        from peft.functional import delete_adapter, inject_adapter_in_model, set_adapter, set_peft_model_state_dict
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import load_peft_weights
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError as error:
        raise ImportError(
            f"LoRA on Hydra-X pipelines needs PEFT ≥ 0.21 ({error}); install it with `pip install -U peft`."
        ) from error
    return {
        "PeftConfig": PeftConfig,
        "delete_adapter": delete_adapter,
        "inject_adapter_in_model": inject_adapter_in_model,
        "set_adapter": set_adapter,
        "set_peft_model_state_dict": set_peft_model_state_dict,
        "BaseTunerLayer": BaseTunerLayer,
        "load_peft_weights": load_peft_weights,
        "AuxiliaryTrainingWrapper": AuxiliaryTrainingWrapper,
    }


def check_lora_scale(scale, name: str) -> None:
    """A LoRA strength must be a finite real number: NaN or inf would turn every sampled pixel into NaN."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"`{name}` (the LoRA strength) must be a finite number, got {scale!r}.")


class HydraXLoraLoaderMixin:
    r"""
    Load, combine, fuse and remove PEFT LoRA adapters on the pipeline's `model` (mixed into the Hydra-X pipelines).

    Examples:
        ```py
        >>> import sys, tempfile
        >>> sys.path.insert(0, "conversion")  # run from the repository root; a trained checkpoint needs none of this
        >>> from build_hydrax import build_checkpoint
        >>> from peft import LoraConfig, get_peft_model
        >>> from transformers import AutoModel
        >>> from modeling_hydrax import HydraXPipeline

        >>> folder = build_checkpoint("tiny", f"{tempfile.mkdtemp()}/hydrax-tiny")  # random weights, 32² = 2×2 latents
        >>> lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        >>> get_peft_model(AutoModel.from_pretrained(folder), lora).save_pretrained(f"{folder}-lora")  # an adapter
        >>> pipe = HydraXPipeline.from_pretrained(folder)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> pipe.load_lora_weights(f"{folder}-lora", adapter_name="style")
        >>> pipe.get_active_adapters()
        ['style']
        >>> image = pipe("A red fox in the snow", height=32, width=32, num_inference_steps=2).images[0]
        >>> pipe.set_adapters("style", 0.5)  # half its low-rank update
        >>> pipe.disable_lora()  # the base model, adapters kept
        >>> pipe.enable_lora()
        >>> pipe.fuse_lora()  # bake it in: sampling at the base model's speed
        >>> pipe.unload_lora_weights()  # plain modules with the fused weights, ready for save_pretrained
        >>> pipe.get_list_adapters()
        {'model': []}
        ```
    """

    @property
    def _lora_fuse_scale(self) -> float | None:
        """The scale the fused adapters were merged with, while they are fused: kept on the model, which pipelines
        made with `from_pipe` share."""
        return getattr(self.model, "_hydrax_lora_fuse_scale", None)

    @_lora_fuse_scale.setter
    def _lora_fuse_scale(self, value: float | None):
        self.model._hydrax_lora_fuse_scale = value

    # ---------------------------------------------------------------------------------------------- loading
    def load_lora_weights(self, pretrained_model_name_or_path, adapter_name: str | None = None, **kwargs):
        """Load a PEFT LoRA adapter (a folder or Hub repo with `adapter_config.json` and
        `adapter_model.safetensors`, e.g. `train_hydrax.py --lora-r`'s OUTPUT_DIR/adapter) into the model and make it
        the only active adapter (after `disable_lora()`, adapters stay off until `enable_lora()`, as in diffusers).
        `adapter_name` defaults to `default_<n>`; Hub arguments (`revision`, `token`, `subfolder`, `cache_dir`,
        `local_files_only`) go to PEFT's loaders. A failed load leaves the model as it was."""
        if isinstance(pretrained_model_name_or_path, dict):
            raise ValueError(
                "Got a state dict; a bare LoRA state dict lacks the adapter's config (rank, alpha, target modules). "
                "Pass a PEFT adapter folder or Hub repo (adapter_config.json + adapter_model.safetensors)."
            )
        weight_name = kwargs.pop("weight_name", None)
        if weight_name not in (None, ADAPTER_WEIGHTS):
            raise ValueError(
                f"`weight_name={weight_name!r}`: a PEFT adapter's weights are {ADAPTER_WEIGHTS} beside its "
                "adapter_config.json (diffusers-format LoRA files such as pytorch_lora_weights.safetensors carry no "
                "PEFT config); pass the adapter's folder or Hub repo."
            )
        if kwargs.pop("hotswap", False):
            raise ValueError(
                "`hotswap=True` is not supported: load the new adapter under its own `adapter_name`, then "
                "`set_adapters(name)` (and `delete_adapters(old)`)."
            )
        peft = _peft()
        self._check_in_memory("load a LoRA adapter")
        loaded = self.get_list_adapters()["model"]
        unused = (f"default_{number}" for number in itertools.count() if f"default_{number}" not in loaded)
        adapter_name = adapter_name or next(unused)
        if adapter_name in loaded:
            raise ValueError(
                f"An adapter named {adapter_name!r} is already loaded ({loaded}); pass another `adapter_name` or "
                f"remove it first with `delete_adapters({adapter_name!r})`."
            )
        if self._lora_fuse_scale is not None:
            raise ValueError("Adapters are fused into the model; call `unfuse_lora()` before loading another one.")
        source = os.fspath(pretrained_model_name_or_path)
        try:
            config = peft["PeftConfig"].from_pretrained(source, **kwargs)
            if config.peft_type == "LORA":
                weights = peft["load_peft_weights"](source, device=str(self.model.device), **kwargs)
        except (OSError, ValueError, SafetensorError) as error:
            raise ValueError(
                f"No PEFT adapter at {source!r} ({error}); pass a folder or Hub repo holding adapter_config.json and "
                f"{ADAPTER_WEIGHTS}, such as train_hydrax.py's OUTPUT_DIR/adapter."
            ) from error
        if config.peft_type != "LORA":
            kind = getattr(config.peft_type, "value", config.peft_type)  # PeftType.LOHA → "LOHA"
            raise ValueError(f"{source!r} holds a {kind} adapter; the Hydra-X pipelines load LoRA only.")
        weights = {name.removeprefix(SAVED_PREFIX): value for name, value in weights.items()}

        training, active, disabled = self.model.training, self._selected_adapters(), self._lora_disabled()
        try:
            with warnings.catch_warnings():  # PEFT warns that a second adapter joins the first: that is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                peft["inject_adapter_in_model"](config, self.model, adapter_name=adapter_name)
            result = peft["set_peft_model_state_dict"](self.model, weights, adapter_name=adapter_name)
            missing = [name for name in result.missing_keys if f".{adapter_name}." in name]
            if result.unexpected_keys or missing:
                raise ValueError(
                    f"The adapter at {source!r} does not fit this model: weights for no module of it "
                    f"{result.unexpected_keys[:5]}, modules without weights {missing[:5]}. Was it trained on another "
                    f"architecture or preset?{self._copy_hint(result.unexpected_keys + missing)}"
                )
        except KeyError as error:  # PEFT looks a target up inside another adapter's full module copy
            self._undo_load(adapter_name, active)
            raise ValueError(
                f"The adapter at {source!r} cannot be loaded beside {loaded}: {error}.{self._copy_hint([str(error)])}"
            ) from error
        except RuntimeError as error:
            self._undo_load(adapter_name, active)
            if "size mismatch" not in str(error):
                raise
            mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
            raise ValueError(
                f"The adapter at {source!r} does not fit this model: {mismatches[0]} ({len(mismatches)} such). Was it "
                "trained on another architecture or preset?"
            ) from error
        except Exception:
            self._undo_load(adapter_name, active)
            raise
        self.model.train(training)  # the new layers (and their dropout) follow the model's mode
        self.set_adapters(adapter_name)
        if disabled:  # its new layers start enabled: after `disable_lora()` every adapter stays off
            self._enable_lora(False)

    def _check_in_memory(self, action: str):
        """`action` (loading, fusing or unfusing adapters) changes the model's modules and weights in place: under
        sequential CPU offload or a `device_map` that offloads to the CPU or disk the weights are placeholders on
        `meta` (an adapter loaded there stays empty: NaN samples), and group offloading restores the weights from its
        own copies (a fuse was undone at the next step). Refused there, with the order that works."""
        if _is_group_offload_enabled(self.model):
            how = "group offloading"
        elif any(param.device.type == "meta" for param in self.model.parameters()):
            how = "offloaded weights (sequential CPU offload, or a device_map that offloads to the CPU or disk)"
        else:
            return
        raise ValueError(
            f"Cannot {action} on a model with {how}: PEFT changes the weights in place. {action[0].upper()}"
            f"{action[1:]} first, then enable offloading (`enable_model_cpu_offload()` works with adapters in any "
            "order), or load the pipeline onto one device."
        )

    def _undo_load(self, adapter_name: str, active: list[str]):
        """Remove a half-loaded adapter and reactivate the adapters that were active."""
        self._remove_adapter(adapter_name)
        if active:  # injecting switched the module copies over to the new adapter
            _peft()["set_adapter"](self.model, active, inference_mode=True)

    def _copy_hint(self, keys: list[str]) -> str:
        """For keys inside another adapter's full module copy (`modules_to_save`): which module, and what to do."""
        _, wrapper = self._peft_layer_types()
        for name, module in self.model.named_modules():
            if isinstance(module, wrapper) and any(f"{name}." in key for key in keys):
                holders = list(module.modules_to_save)
                return (
                    f" Its targets lie inside `{name}`, which adapter(s) {holders} replace with a full copy; LoRA "
                    "cannot reach into that copy, so load the two adapters into separate pipelines."
                )
        return ""

    def _lora_disabled(self) -> bool:
        """Whether `disable_lora()` turned the adapters off."""
        return any(
            getattr(module, "disable_adapters", False)
            for module in self.model.modules()
            if isinstance(module, self._peft_layer_types())
        )

    # ------------------------------------------------------------------------------------------- selection
    def get_list_adapters(self) -> dict[str, list[str]]:
        """The loaded adapters, by component (diffusers' layout): `{"model": [names]}`."""
        return {"model": list(getattr(self.model, "peft_config", {}))}

    def get_active_adapters(self) -> list[str]:
        """The adapters that act in the forward pass, in the order `set_adapters` gave."""
        return [] if self._lora_disabled() else self._selected_adapters()

    def _selected_adapters(self) -> list[str]:
        """The adapters `set_adapters` chose, acting or not (`disable_lora()` keeps the choice)."""
        lora_layer, _ = self._peft_layer_types()
        for module in self.model.modules():
            if isinstance(module, lora_layer):
                return list(module.active_adapters)
        return []

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None):
        """Activate `adapter_names` with `adapter_weights` (one number for all, or one per adapter; `None` = 1.0),
        which scale their low-rank updates; the others are deactivated. An active adapter's full module copies
        (`modules_to_save`) are used whatever its weight. After `disable_lora()` they act once `enable_lora()`."""
        peft = _peft()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        loaded = self.get_list_adapters()["model"]
        unknown = [name for name in names if name not in loaded]
        if unknown or not names:
            raise ValueError(f"Unknown adapter(s) {unknown or names}; the loaded ones are {loaded}.")
        weights = adapter_weights if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"Got {len(weights)} adapter weights for {len(names)} adapters {names}; pass one each.")
        for name, weight in zip(names, weights):
            if weight is not None:
                check_lora_scale(weight, f"adapter_weights[{name!r}]")
        if self._lora_fuse_scale is not None:
            raise ValueError("Adapters are fused into the model; call `unfuse_lora()` before changing them.")
        for name, module in self.model.named_modules():
            if isinstance(module, peft["AuxiliaryTrainingWrapper"]):
                holders = [adapter for adapter in names if adapter in module.modules_to_save]
                if len(holders) > 1:
                    raise ValueError(
                        f"Adapters {holders} each carry a full copy of `{name}`, which cannot be combined; activate "
                        "one of them at a time."
                    )
        peft["set_adapter"](self.model, names, inference_mode=True)
        for module in self.model.modules():
            if isinstance(module, peft["BaseTunerLayer"]):
                for name, weight in zip(names, weights):
                    module.set_scale(name, 1.0 if weight is None else weight)

    def disable_lora(self):
        """Run the base model; the adapters stay loaded (`enable_lora()` turns them back on)."""
        self._enable_lora(False)

    def enable_lora(self):
        """Turn the active adapters back on after `disable_lora()`."""
        self._enable_lora(True)

    def _enable_lora(self, enabled: bool):
        if self._lora_fuse_scale is not None:
            raise ValueError("Adapters are fused into the model; call `unfuse_lora()` before switching them.")
        layer_types = self._peft_layer_types()
        for module in self.model.modules():
            if isinstance(module, layer_types):
                module.enable_adapters(enabled)

    @contextlib.contextmanager
    def _scaled_lora(self, scale: float | None, name: str):
        """diffusers' per-call LoRA strength (`attention_kwargs={"scale": scale}`; `name` is the argument that gave
        it): inside the block, the active adapters' low-rank updates are multiplied by `scale` (diffusers'
        `scale_lora_layers`) on top of their `set_adapters` weights; afterwards each layer's weights are restored
        exactly (diffusers' `unscale_lora_layers` divides by the scale, and after a scale of 0 resets every weight to
        1.0, losing the `set_adapters` weights)."""
        if scale is not None:
            check_lora_scale(scale, name)
        if scale is None or scale == 1:
            yield
            return
        if not self.get_list_adapters()["model"]:
            logger.warning(f"`{name}={scale}` scales LoRA adapters, and none is loaded: no effect.")
            yield
            return
        if self._lora_fuse_scale is not None:
            raise ValueError(
                f"The adapters are fused into the weights (at lora_scale={self._lora_fuse_scale}), where a per-call "
                "scale cannot reach them; call `unfuse_lora()` first, or fuse at the scale you want."
            )
        tuner_layer = self._peft_layer_types()[0]
        layers = [module for module in self.model.modules() if isinstance(module, tuner_layer)]
        weights = [dict(layer.scaling) for layer in layers]
        scale_lora_layers(self.model, scale)
        try:
            yield
        finally:
            for layer, saved in zip(layers, weights):
                layer.scaling.update(saved)

    # --------------------------------------------------------------------------------------------- fusing
    def fuse_lora(self, lora_scale: float = 1.0, adapter_names: list[str] | None = None, safe_fusing: bool = False):
        """Merge the low-rank updates of the active adapters, times `lora_scale`, into the LLM's weights: sampling
        runs at the base model's speed. Their full module copies stay in use. `adapter_names`, when given, must be the
        active ones (PEFT scales and runs the active adapters: fusing others would drop or misweight them; pick them
        with `set_adapters` first). `safe_fusing` refuses updates that are not finite before anything is merged, so
        the model stays as it was (and should a merge fail on the way, the layers merged before it are unmerged)."""
        if self._lora_fuse_scale is not None:
            raise ValueError("Adapters are already fused; call `unfuse_lora()` first.")
        check_lora_scale(lora_scale, "lora_scale")
        self._check_in_memory("fuse LoRA adapters")
        if lora_scale == 0:
            raise ValueError("`lora_scale` must be non-zero, got 0; `disable_lora()` runs the base model.")
        active = self.get_active_adapters()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names or active)
        if not names:
            raise ValueError(f"No adapter to fuse: none is active (loaded: {self.get_list_adapters()['model']}).")
        if sorted(names) != sorted(active):
            raise ValueError(
                f"`adapter_names` {names} are not the active adapters {active}: `fuse_lora` merges the active ones. "
                f"Call `set_adapters({names})` first (loaded: {self.get_list_adapters()['model']})."
            )
        lora_layer, _ = self._peft_layer_types()
        named = [(path, module) for path, module in self.model.named_modules() if isinstance(module, lora_layer)]
        for path, layer in named if safe_fusing else []:  # PEFT checks layer by layer, after merging the ones before
            for name in names:
                if name in layer.lora_A and not bool(torch.isfinite(layer.get_delta_weight(name)).all()):
                    raise ValueError(
                        f"Adapter {name!r} holds non-finite values (NaN or inf) in its update of `{path}`; nothing "
                        "was fused. Check the adapter's training, or load another."
                    )
        layers = [layer for _, layer in named]
        weights = [dict(layer.scaling) for layer in layers]
        try:
            for layer in layers:
                layer.scale_layer(lora_scale)
                layer.merge(safe_merge=safe_fusing, adapter_names=names)
        except Exception:  # PEFT refuses layer by layer: take out what was merged before the refusal
            for layer, saved in zip(layers, weights):
                if layer.merged:
                    layer.unmerge()
                layer.scaling.update(saved)
            raise
        self._lora_fuse_scale = lora_scale

    def unfuse_lora(self):
        """Take the fused updates back out of the weights (the adapters stay loaded and active)."""
        if self._lora_fuse_scale is None:
            raise ValueError("No adapter is fused; `fuse_lora()` fuses the active ones.")
        self._check_in_memory("unfuse LoRA adapters")
        lora_layer, _ = self._peft_layer_types()
        for module in self.model.modules():
            if isinstance(module, lora_layer):
                module.unmerge()
                module.unscale_layer(self._lora_fuse_scale)
        self._lora_fuse_scale = None

    # -------------------------------------------------------------------------------------------- removal
    def delete_adapters(self, adapter_names: str | list[str]):
        """Remove `adapter_names` from the model (their layers and copies); the remaining active ones stay active,
        with their weights. When no active one remains, the first remaining adapter becomes active (in every layer
        and copy: PEFT would fall back layer by layer, mixing adapters), and that is logged."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        loaded = self.get_list_adapters()["model"]
        unknown = [name for name in names if name not in loaded]
        if unknown:
            raise ValueError(f"Unknown adapter(s) {unknown}; the loaded ones are {loaded}.")
        if self._lora_fuse_scale is not None:
            raise ValueError("Adapters are fused into the model; call `unfuse_lora()` before deleting one.")
        active, disabled = self._selected_adapters(), self._lora_disabled()
        for name in names:
            self._remove_adapter(name)
        remaining = self.get_list_adapters()["model"]
        if remaining:
            kept = [name for name in active if name in remaining]
            if not kept:
                kept = remaining[:1]
                logger.warning(f"No active adapter remains; {kept[0]!r} is now active (`set_adapters` picks others).")
            _peft()["set_adapter"](self.model, kept, inference_mode=True)
            if disabled:
                self._enable_lora(False)

    def unload_lora_weights(self):
        """Remove every adapter and PEFT layer, leaving plain modules: the base weights, or with fused adapters the
        fused weights and the active full module copies (`fuse_lora()` then `unload_lora_weights()` bakes the
        adapters in, e.g. before `save_pretrained`)."""
        lora_layer, wrapper = self._peft_layer_types()
        fused = self._lora_fuse_scale is not None
        for kind in (wrapper, lora_layer):  # module copies first: they may hold LoRA layers of their own
            for name, module in list(self.model.named_modules()):
                if isinstance(module, kind):
                    if kind is lora_layer:
                        replacement = module.get_base_layer()  # holds the fused updates, if any
                    elif fused and module.active_adapters:
                        replacement = module.modules_to_save[module.active_adapters[0]]
                    else:
                        replacement = module.original_module
                    parent, _, child = name.rpartition(".")
                    setattr(self.model.get_submodule(parent), child, replacement)
        self.model.__dict__.pop("peft_config", None)
        self.model.__dict__.pop("_hf_peft_config_loaded", None)  # transformers' flag: it would save an adapter only
        self._lora_fuse_scale = None

    def _remove_adapter(self, adapter_name: str):
        """Delete one adapter's layers, copies and config (also what a failed load leaves)."""
        peft = _peft()
        remaining = [name for name in self.get_list_adapters()["model"] if name != adapter_name]
        peft["delete_adapter"](self.model, adapter_name, prefix=LORA_PREFIX)
        configs = getattr(self.model, "peft_config", {})
        configs.pop(adapter_name, None)
        if not remaining:
            self.unload_lora_weights()

    def _peft_layer_types(self) -> tuple[type, type]:
        peft = _peft()
        return peft["BaseTunerLayer"], peft["AuxiliaryTrainingWrapper"]

    def _check_no_lora(self, action: str):
        """Saving refuses a model with PEFT layers in it (their parameter names are not the model's)."""
        if self.get_list_adapters()["model"]:
            raise ValueError(
                f"The model holds LoRA adapters {self.get_list_adapters()['model']}; before {action}, call "
                "`fuse_lora()` then `unload_lora_weights()` to keep them fused in, or `unload_lora_weights()` to "
                "return to the base weights."
            )
