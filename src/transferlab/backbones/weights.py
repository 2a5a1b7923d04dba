"""Load a weights file into a BlockBackbone, whatever model saved it.

Accepted: a plain state dict or a checkpoint holding one under 'state_dict' (Lightning, ours) or 'model'
(timm/DeiT training scripts); `.safetensors` files too. Keys may be our block keys (`net.backbone.blocks.…` /
`blocks.…`) or the library model's own keys (`conv1.weight`, `layer1.0…`), which the backbone's
`native_prefixes` translate. Loading is strict over the blocks, so a wrong file fails loudly, before training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transferlab.backbones.base import BlockBackbone
from transferlab.errors import ConfigError, problem

_STRIP = ("net.backbone.", "backbone.", "module.", "model.")


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; `weights_only=True` so a file can never run code."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(problem("backbone.weights", str(path),
                                  "null (random), imagenet, or the path of an existing weights file"))
    from transferlab.store.safe_load import WeightsError, load_checkpoint

    try:
        obj = load_checkpoint(p)  # weights_only=True / safetensors; a pickle with code is refused
    except WeightsError as e:
        raise ConfigError(problem("backbone.weights", str(path), f"a torch state dict file; {e}")) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(problem("backbone.weights", str(path), "a state dict (name -> tensor) or a checkpoint "
                                                                 "with one under 'state_dict'"))
    return obj


def to_block_keys(backbone: BlockBackbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `state` into keys of `backbone.blocks`; keys outside the blocks (classifier, source head) drop."""
    out: dict[str, torch.Tensor] = {}
    prefixes = sorted(backbone.native_prefixes.items(), key=lambda kv: -len(kv[0]))
    ours = tuple(f"blocks.{b}." for b in backbone.block_names)
    bare = tuple(f"{b}." for b in backbone.block_names)
    native_keys = {k for k in state if any(k.startswith(p + ".") for p, b in prefixes if p != b)}
    for key, value in state.items():
        k = key
        for s in _STRIP:  # wrappers: Lightning module, DDP, ...
            if k.startswith(s) and not any(k.startswith(p + ".") for p, _ in prefixes):
                k = k[len(s):]
        if k.startswith(ours):  # our own block keys (a BlockBackbone or a run's checkpoint)
            out[k[len("blocks."):]] = value
            continue
        if k.startswith(bare) and k not in native_keys:  # backbone.blocks.state_dict()
            out[k] = value
            continue
        for native, block in prefixes:  # the library model's keys (efficientnet's own "blocks.0..." land here;
            if k == native or k.startswith(native + "."):  # a ViT's top-level `cls_token` is a whole key)
                out[block + k[len(native):]] = value
                break
    return out


def to_native_keys(backbone: BlockBackbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_block_keys` for block-keyed `state`: the library model's own keys (`block3.attn.qkv.weight`
    -> timm's `blocks.3.attn.qkv.weight`, `embed.cls_token` -> `cls_token`); keys of blocks without a native name
    stay as they are."""
    inverse = sorted(((b, n) for n, b in backbone.native_prefixes.items()), key=lambda bn: -len(bn[0]))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for block, native in inverse:
            if key == block or key.startswith(block + "."):
                out[native + key[len(block):]] = value
                break
        else:
            out[key] = value
    return out


def load_into(backbone: BlockBackbone, state: dict[str, torch.Tensor], source: str) -> BlockBackbone:
    """Strictly load `state` (any accepted key style) into every block of `backbone`, after the backbone fits
    tensors made for another input size (`BlockBackbone.adapt_state`: a ViT's position embeddings)."""
    mapped = backbone.adapt_state(to_block_keys(backbone, state))
    expected = backbone.blocks.state_dict()
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    wrong = [f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in mapped and mapped[k].shape != v.shape]
    if missing or unexpected or wrong:
        what = []
        if missing:
            what.append(f"{len(missing)} block tensors missing (e.g. {missing[:3]})")
        if unexpected:
            what.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            what.append(f"shape mismatch {wrong[:2]} (input channels? set the task's `channels`)")
        sample = list(state)[:3]
        raise ConfigError(problem("backbone.weights", source,
                                  f"weights for blocks {backbone.block_names}; {'; '.join(what)}; "
                                  f"file keys look like {sample}"))
    backbone.blocks.load_state_dict(mapped, strict=True)
    return backbone
