"""Save a quantized model and load it again without recalibrating.

    save_quantized(dit, "out/dit-w4a4")        # quantized.safetensors + quantization.json
    dit = load_quantized(fresh_dit, "out/dit-w4a4")

The safetensors file holds the whole state dict at its own dtypes (packed int4 codes, fp16 or fp8
scales, fp16 or int8 low-rank factors, fp32 smoothing and biases, and the layers left in full
precision), so the reloaded model computes exactly what the saved one did. quantization.json holds
the config, the quantized layers with their shapes, activation settings and storage, and the
architecture's config; a model of another architecture is refused before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import load_checked
from .api import quantization_config_of
from .config import SVDQuantConfig
from .linear import SVDQuantLinear

WEIGHTS_FILE = "quantized.safetensors"
META_FILE = "quantization.json"
FORMAT_VERSION = 2  # 2: layers record their storage (scale_format, lowrank_bits); 1 reads as fp16 storage


def _architecture(model: nn.Module) -> dict:
    """The model's class and config (diffusers / transformers), as JSON-safe data."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    elif cfg is not None:
        cfg = dict(cfg)
    cfg = {k: v for k, v in (cfg or {}).items() if not k.startswith("_") and k not in ("transformers_version",)}
    return {"class": type(model).__name__, "config": json.loads(json.dumps(cfg, default=str))}


def _layer_settings(layer: SVDQuantLinear) -> dict:
    return {"in_features": layer.in_features, "out_features": layer.out_features, "weight_bits": layer.weight_bits,
            "act_bits": layer.act_bits, "group_size": layer.group_size, "rank": layer.rank,
            "act_shift": layer.act_shift, "act_signed": layer.act_signed, "scale_format": layer.scale_format,
            "lowrank_bits": layer.lowrank_bits}


def save_quantized(model: nn.Module, directory: str | Path) -> Path:
    """Write a model patched by `quantize_` (or any module inside one) to `directory`; returns the directory."""
    config = quantization_config_of(model)
    layers = {n: _layer_settings(m) for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    if not layers:
        raise ValueError("this model has no SVDQuantLinear layers: run quantize_(model, SVDQuantConfig(...)) first")
    if not isinstance(config, SVDQuantConfig):
        raise ValueError(f"its SVDQuantLinear layers carry no SVDQuantConfig (found {type(config).__name__}): "
                         "quantize with quantize_(model, SVDQuantConfig(...)), or load_quantized, before saving")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {"format": FORMAT_VERSION, "config": config.to_dict(), "architecture": _architecture(model), "layers": layers}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def load_quantized(model: nn.Module, directory: str | Path, backend: str | None = None) -> nn.Module:
    """Load a `save_quantized` directory into `model`, a full-precision instance of the same
    architecture (its weights are replaced), in place; returns it. `backend` overrides the saved one."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a quantized model: expected {META_FILE} and {WEIGHTS_FILE} "
                                "written by accelerando.quant.save_quantized")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in (1, FORMAT_VERSION):
        raise ValueError(f"{meta_path}: format {meta.get('format')}, this version reads 1 and {FORMAT_VERSION}; "
                         "re-run quantize_ and save_quantized with this version")
    saved, own = meta["architecture"], _architecture(model)
    if saved != own:
        diff = sorted(k for k in set(saved["config"]) | set(own["config"])
                      if saved["config"].get(k) != own["config"].get(k))
        raise ValueError(f"{directory} was quantized from a {saved['class']} with another config than this "
                         f"{own['class']} (differs in {diff[:6] or 'class'}); build the model from the config "
                         f"in {meta_path} before loading")
    config = SVDQuantConfig.from_dict(meta["config"])
    modules = dict(model.named_modules())
    for name, settings in meta["layers"].items():
        old = modules.get(name)
        if not isinstance(old, nn.Linear) or (old.in_features, old.out_features) != (
                settings["in_features"], settings["out_features"]):
            raise ValueError(f"{directory}: layer {name} is not a matching nn.Linear in this model")
        layer = SVDQuantLinear(**settings, backend=backend or config.backend)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, layer.to(old.weight.device))
    load_checked(model, directory / WEIGHTS_FILE, fix="Re-run quantize_ and save_quantized.")
    model.quantization_config = config
    for module in model.modules():
        if isinstance(module, SVDQuantLinear):
            module.quantization_config = config
    return model
