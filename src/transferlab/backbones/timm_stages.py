"""Any timm CNN as blocks, one per stage of timm's feature API (`model.feature_info`).

Block `stage{i}` ends at the i-th feature module (`feature_info[i]["module"]`), so `transfer.cut=k` keeps the
first k stages of hundreds of models without per-model code. Models whose forward is not a plain sequence of
children (ViTs add tokens and position embeddings) are refused: the cut blocks are checked against timm's own
`forward_intermediates` when a model has it.
"""

from __future__ import annotations

import os

import timm
import torch

from transferlab.backbones.base import BlockBackbone, split_sequential
from transferlab.errors import ConfigError, Problem, problem


def build(cfg, input_shape: tuple[int, ...], pretrained: bool = False) -> BlockBackbone:
    name = str(cfg.name)
    if not timm.is_model(name):
        raise ConfigError(problem("backbone.name", name, "a timm model name (see timm.list_models())"))
    if len(input_shape) != 3:
        raise ValueError(f"timm model {name} needs C x H x W inputs, got {input_shape}")
    kwargs = dict(in_chans=int(input_shape[0]), **dict(cfg.kwargs))
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:
        if not pretrained:
            raise
        raise ConfigError(missing_weights(name, e)) from e
    from transferlab.backbones.timm_vit import _is_vit

    if _is_vit(model):
        raise ConfigError(problem("backbone.name", name, f"a timm CNN; for this ViT use backbone=vit "
                                                        f"backbone.name={name}"))
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(problem("backbone.name", name, "a timm model with a stage API (model.feature_info)"))
    ends = [f["module"] for f in info]
    try:
        backbone = split_sequential(model, ends, [f"stage{i}" for i in range(len(ends))], input_shape, pool="avg")
    except ValueError as e:
        raise ConfigError(problem("backbone.name", name, f"a timm CNN whose stages run in sequence ({e})")) from e
    _check_against_timm(model, backbone, name)
    return backbone


def block_count(cfg) -> int:
    """Stages of this timm CNN, from the model built on the meta device (no weights, no input needed)."""
    with torch.device("meta"):
        model = timm.create_model(str(cfg.name), pretrained=False, **dict(cfg.get("kwargs") or {}))
    return len(model.feature_info)


def _check_against_timm(model, backbone: BlockBackbone, name: str) -> None:
    """The blocks, run in order, must reproduce timm's own stage outputs (catches non-sequential forwards)."""
    if not hasattr(model, "forward_intermediates"):
        return
    model.eval()
    backbone.eval()
    x = torch.randn(1, *backbone.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            ref = model.forward_intermediates(x, intermediates_only=True)
        except Exception:  # not implemented for this model: trust the feature_info order
            return
        ok, out = len(ref) == len(backbone), x
        try:
            for block, expected in zip(backbone.blocks.values(), ref):
                out = block(out)
                ok = ok and out.shape == expected.shape and torch.allclose(out, expected, atol=1e-4, rtol=1e-3)
        except Exception:  # a block cannot even take the previous block's output
            ok = False
    model.train()
    backbone.train()
    if not ok:
        raise ConfigError(problem("backbone.name", name, "a timm CNN whose stages run in sequence (this model's "
                                                        "forward does more between stages; a ViT: backbone=vit)"))


def missing_weights(name: str, e: Exception) -> Problem:
    """The one line for ImageNet weights timm could not load (offline and not cached, or no such weights)."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) or name
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return problem("backbone.weights", "imagenet",
                   f"timm could not load pretrained weights for {name} (Hugging Face hub id {hub!r}; "
                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); run once online so they land "
                   f"in $HF_HOME/hub (now {home}; with HF_HUB_OFFLINE=1 nothing is downloaded), or pass "
                   f"backbone.weights=<path to a state dict>")
