"""Backbone families. `build_backbone` is the one entry: config + input shape -> BlockBackbone."""

from __future__ import annotations

from importlib import import_module

from transferlab.backbones.base import BlockBackbone
from transferlab.errors import ConfigError, problem

# family -> module with `build(cfg, input_shape) -> BlockBackbone`
FAMILIES = {
    "small_cnn": "transferlab.backbones.small_cnn",
    "mlp": "transferlab.backbones.mlp",
}


def family_of(cfg) -> str:
    return str(cfg.get("family", cfg.get("name")))


def build_backbone(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    """A fresh backbone (random init from the current torch seed, then `weights` if given)."""
    family = family_of(cfg)
    if family not in FAMILIES:
        raise ConfigError(problem("backbone.name", family, f"one of {sorted(FAMILIES)}"))
    return import_module(FAMILIES[family]).build(cfg, tuple(input_shape))


__all__ = ["BlockBackbone", "build_backbone", "FAMILIES"]
