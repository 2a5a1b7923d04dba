"""LoRA: low-rank updates of frozen Linear weights (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022).

A frozen weight W (out x in) is adapted by a trainable low-rank product instead of being trained itself:

    h = W x + b + (alpha / r) * B A x,        A: r x in,  B: out x r,  r << min(in, out)

A starts random (Kaiming-uniform, as in the paper's reference code) and B at zero, so the adapted layer computes
exactly what the source layer did at the start of training. Only A and B train (`peft.rank` = r, `peft.alpha`;
`peft.dropout` drops the branch's input). Because the update is linear, it folds into the weight after training:
W' = W + (alpha / r) B A gives a plain Linear layer with the same outputs (`merged_weight`), which is how a
LoRA-tuned model is saved for tools that know nothing about LoRA (`peft.merge_on_save`).

`LoRALinear` is an `nn.Linear` holding the frozen layer's own `weight` and `bias` tensors under their own names
(`block3.attn.qkv.weight` stays `block3.attn.qkv.weight`), plus `lora_a` and `lora_b`: frozen tensors keep
their keys, so they can be compared byte for byte with the source, and a timm model loads the merged state.
timm's ViT attention computes q, k and v with one fused Linear (`qkv`), so LoRA on `qkv` adapts all three (the
paper adapts q and v; the fused layer has no separate q and v weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
    """A frozen Linear layer plus its trainable low-rank update (alpha / rank) * B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        nn.Module.__init__(self)
        if rank < 1:
            raise ValueError(f"LoRA rank {rank}: an integer >= 1")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = base.bias
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(self.rank, self.in_features, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, self.rank, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.to(w.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def delta(self) -> torch.Tensor:
        """(alpha / rank) * B A: what training added to the weight."""
        return self.scale * (self.lora_b @ self.lora_a)

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / rank) B A, detached: the weight of a plain Linear layer with this layer's outputs."""
        with torch.no_grad():
            return (self.weight + self.delta().to(self.weight.dtype)).detach().clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


LORA_PARAMS = ("lora_a", "lora_b")


def attach(root: nn.Module, path: str, rank: int, alpha: float, dropout: float,
           generator: torch.Generator | None = None) -> LoRALinear:
    """Replace the Linear layer at `path` (relative to `root`) by a LoRALinear sharing its weight and bias."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    base = getattr(parent, name)
    if isinstance(base, LoRALinear):
        raise ValueError(f"{path} already has LoRA")
    if not isinstance(base, nn.Linear):
        raise TypeError(f"{path} is a {type(base).__name__}, not a Linear layer")
    layer = LoRALinear(base, rank, alpha, dropout, generator=generator)
    setattr(parent, name, layer)
    return layer


def param_names(path: str) -> list[str]:
    """The parameters LoRA adds to the Linear layer at `path`."""
    return [f"{path}.{p}" for p in LORA_PARAMS]


def merged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict with every LoRA update folded into its weight and the LoRA tensors left out: the
    state of the same module built without LoRA, with the same outputs."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for path, m in module.named_modules():
        if isinstance(m, LoRALinear):
            prefix = f"{path}." if path else ""
            state[f"{prefix}weight"] = m.merged_weight()
            for p in LORA_PARAMS:
                state.pop(f"{prefix}{p}", None)
    return state
