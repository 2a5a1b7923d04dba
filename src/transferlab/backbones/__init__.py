"""Backbone families. `build_backbone` is the one entry: config + input shape -> BlockBackbone.

`backbone.weights`: null (random init from the current torch seed), `imagenet` (torchvision/timm weights from
their caches), or a path to a weights file (see `weights.py`).
"""

from __future__ import annotations

from importlib import import_module

from transferlab.backbones.base import BlockBackbone
from transferlab.errors import ConfigError, problem

# family -> module with `build(cfg, input_shape) -> BlockBackbone`; ImageNet weights come either from
# `imagenet_state(cfg)` (a native state dict) or from `build(..., pretrained=True)` (timm loads them itself).
FAMILIES = {
    "small_cnn": "transferlab.backbones.small_cnn",
    "mlp": "transferlab.backbones.mlp",
    "resnet": "transferlab.backbones.torchvision_resnet",
    "timm": "transferlab.backbones.timm_stages",
    "vit": "transferlab.backbones.timm_vit",
    "custom": "transferlab.backbones.custom",  # your own class, named by backbone._target_
}
LIBRARY_PRETRAINED = ("timm", "vit")  # families whose library loads (and fits) its own ImageNet weights


def family_of(cfg) -> str:
    return str(cfg.get("family", cfg.get("name")))


def backbone_label(cfg) -> str:
    """What a table should call the backbone: 'small_cnn', 'resnet50', 'timm/efficientnet_b0',
    'timm/vit_tiny_patch16_224'; your own: its `name`, else its `_target_` ('mypkg.nets.MyNet')."""
    family, name = family_of(cfg), str(cfg.get("name"))
    if family == "custom":
        return name if cfg.get("name") else str(cfg.get("_target_"))
    if family in LIBRARY_PRETRAINED:
        return f"timm/{name}"
    return name if family == "resnet" else family


def build_backbone(cfg, input_shape: tuple[int, ...], load_weights: bool = True) -> BlockBackbone:
    """A fresh backbone: random init from the current torch seed, then `backbone.weights` unless `load_weights`
    is False (the target net: its transferred blocks come from the source model, the rest stay random)."""
    from transferlab.backbones.weights import load_into, read_state

    family = family_of(cfg)
    if family not in FAMILIES:
        raise ConfigError(problem("backbone.name", family, f"one of {sorted(FAMILIES)}"))
    module = import_module(FAMILIES[family])
    weights = cfg.get("weights") if load_weights else None
    shape = tuple(input_shape)
    if weights is None:
        return module.build(cfg, shape)
    if str(weights) == "imagenet":
        if hasattr(module, "imagenet_state"):
            return load_into(module.build(cfg, shape), module.imagenet_state(cfg), "imagenet")
        if family in LIBRARY_PRETRAINED:
            return module.build(cfg, shape, pretrained=True)
        raise ConfigError(problem("backbone.weights", "imagenet",
                                  f"null or a file path for backbone {family} (ImageNet weights exist for "
                                  f"backbone=resnet18, backbone=timm and backbone=vit)"))
    state = read_state(str(weights))  # before building: a missing file fails fast
    return load_into(module.build(cfg, shape), state, str(weights))


# Families whose `build` only constructs modules (no forward check against a library model, no weights): their
# structure can be built on the meta device. timm's builds run their blocks against timm's own forward.
META_BUILDS = ("small_cnn", "mlp", "resnet")


def build_structure(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    """The backbone's blocks, modules and parameter names for checks that read only those (`run/setup.prepare`:
    the transfer plan's block and parameter names, PEFT targets): built on the meta device where the family allows
    it (no tensor allocated or initialised, no random number drawn; `output_shapes` works there too), so a run
    builds its real backbone once. With `backbone.weights` set, or for other families, it is `build_backbone`
    itself: those checks read the weights file, or run the blocks. Raises what `build_backbone` raises for this
    config and input shape (a meta build that fails is retried as a real one, which reports its own error)."""
    import torch

    family = family_of(cfg)
    if family not in META_BUILDS or cfg.get("weights") is not None:
        return build_backbone(cfg, input_shape)
    module = import_module(FAMILIES[family])
    try:
        with torch.device("meta"):
            return module.build(cfg, tuple(input_shape))
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - the real build raises it again (or builds): its error is the one reported
        return build_backbone(cfg, input_shape)


def block_count(cfg) -> int:
    """How many blocks this backbone config has, without data or weights (the sweeper's `transfer.freeze=
    all_depths`): the family's own count (timm models, built on the meta device), else the blocks of a meta-device
    build on a nominal 3 x 32 x 32 input (the block count of small_cnn, mlp and resnet does not depend on it)."""
    import torch

    family = family_of(cfg)
    if family not in FAMILIES:
        raise ConfigError(problem("backbone.name", family, f"one of {sorted(FAMILIES)}"))
    module = import_module(FAMILIES[family])
    if hasattr(module, "block_count"):
        return int(module.block_count(cfg))
    with torch.device("meta"):
        return len(module.build(cfg, (3, 32, 32)))


__all__ = ["BlockBackbone", "build_backbone", "build_structure", "block_count", "FAMILIES", "family_of",
           "backbone_label"]
