"""The one backbone abstraction: an ordered list of named blocks with a known output shape at every cut.

Cut k keeps blocks [0, k); the head's input size is computed from `output_shape(k)`, never hand-entered.
A backbone knows nothing about freezing or transfer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn


class BlockBackbone(nn.Module):
    """Named blocks applied in order.

    `pool` tells a head how to read a block's output: "flatten" (small inputs: keep spatial layout) or
    "avg" (global average pool, as ResNets do). `native_prefixes` maps module prefixes of the library model the
    blocks were cut from (e.g. torchvision's "conv1") to block prefixes ("stem.conv1"), so weight files saved from
    the original model load into the blocks.
    """

    # Token backbones (`timm_vit.TokenBackbone`) set these: tokens before the patch tokens (a mean pool skips
    # them), and parameters that take no weight decay whatever their shape (position embeddings, class token).
    prefix_tokens: int = 0
    no_weight_decay: frozenset[str] = frozenset()

    def __init__(self, blocks: Iterable[tuple[str, nn.Module]], input_shape: tuple[int, ...], pool: str = "flatten",
                 native_prefixes: dict[str, str] | None = None):
        super().__init__()
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        self.input_shape = tuple(int(s) for s in input_shape)
        self.pool = pool
        self.native_prefixes = dict(native_prefixes or {})
        self._shapes: list[tuple[int, ...]] | None = None

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks [start, stop) in order: `x` is the output of block start-1 (the input when start=0). Running a
        range is what lets training resume from cached outputs of a frozen prefix without another forward."""
        for block in list(self.blocks.values())[start:stop]:
            x = block(x)
        return x

    def output_shapes(self) -> list[tuple[int, ...]]:
        """shapes[k] = per-example shape after the first k blocks (shapes[0] is the input shape)."""
        if self._shapes is None:
            modes = {m: m.training for m in self.modules()}
            self.eval()
            with torch.no_grad():  # on the blocks' device: a structure built on the meta device has shapes too
                x = torch.zeros((1, *self.input_shape), device=next(self.parameters(), torch.empty(0)).device)
                shapes = [tuple(x.shape[1:])]
                for block in self.blocks.values():
                    x = block(x)
                    shapes.append(tuple(x.shape[1:]))
            for m, mode in modes.items():  # restore per-module modes (frozen blocks may be in eval)
                m.training = mode
            self._shapes = shapes
        return self._shapes

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Block-keyed weights fitted to this backbone before a strict load (`weights.load_into`); as they are
        here, a ViT resamples position embeddings made for another image size."""
        return state

    def output_shape(self, cut: int) -> tuple[int, ...]:
        return self.output_shapes()[cut]

    def truncate(self, cut: int) -> "BlockBackbone":
        """Drop blocks [cut, N) in place (their shapes stay known)."""
        shapes = self.output_shapes()[: cut + 1]
        for name in self.block_names[cut:]:
            del self.blocks[name]
        self._shapes = shapes
        return self


def split_sequential(model: nn.Module, stage_ends: Sequence[str], names: Sequence[str],
                     input_shape: tuple[int, ...], pool: str = "avg") -> BlockBackbone:
    """Cut a model whose forward applies its children in order into blocks ending at `stage_ends`.

    Mirrors timm's FeatureListNet: walk the top-level children (a Sequential child is opened one level when a
    stage ends inside it), start a new block after each stage-end module, drop everything after the last one
    (pooling, classifier). Inner module names keep the original path with "." -> "_", so parameter names stay
    recognisable (`layer1.0.bn1.weight`, `stages_0.blocks.1.conv_dw.weight`) and globs like "*bn*" work.
    """
    modules: list[tuple[str, str, nn.Module]] = []  # (inner name, original path, module)
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and any(e.startswith(name + ".") for e in stage_ends):
            modules += [(f"{name}_{c}", f"{name}.{c}", m) for c, m in child.named_children()]
        else:
            modules.append((name, name, child))
    found = [path for _, path, _ in modules]
    missing = [e for e in stage_ends if e not in found]
    if missing:
        raise ValueError(f"stage modules {missing} are not sequential children of {type(model).__name__}")
    blocks, current, native = [], [], {}
    ends = list(stage_ends)
    for inner, path, module in modules:
        if not ends:
            break
        current.append((inner, path, module))
        if path == ends[0]:
            name = names[len(blocks)]
            if len(current) == 1:  # a block that is one module (torchvision's layer1) keeps its own names
                blocks.append((name, module))
                native[path] = name
            else:
                blocks.append((name, nn.Sequential(OrderedDict((i, m) for i, _, m in current))))
                native.update({p: f"{name}.{i}" for i, p, _ in current})
            current, ends = [], ends[1:]
    return BlockBackbone(blocks, input_shape, pool=pool, native_prefixes=native)
