"""Visual prompt tuning: learned prompt tokens in a frozen transformer (Jia et al. 2022, "Visual Prompt Tuning",
ECCV).

p learnable tokens of the model's width are inserted into the token sequence right after the class (and register)
tokens, and only they train (with the head):

- shallow (VPT-Shallow): one set of prompts enters before the first transformer block and is carried through the
  rest like any token;
- deep (VPT-Deep): every transformer block gets its own set, which replaces the previous block's prompt outputs.

Prompts are initialised uniformly in [-v, v] with v = sqrt(6 / (3 * patch_area + D)), the paper's Xavier-style
init over the patch embedding's fan-in. The head reads the class token, or the mean of the patch tokens with the
prompts left out (`backbone.pool`).

A prompt set lives on the block it enters (`block3.vpt.tokens`), so the plan, the optimizer groups (and
layer-wise LR decay) treat it as that block's parameter; it is inserted by a forward pre-hook on the block, so
the block's own modules and parameter names are timm's, unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTR = "vpt"  # the prompts of a block: <block>.vpt.tokens


class Prompts(nn.Module):
    """The prompt tokens of one block and how they enter its input tokens [N, T, D]."""

    def __init__(self, n: int, dim: int, at: int, replace: bool, patch_area: int, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if n < 1:
            raise ValueError(f"VPT prompts {n}: an integer >= 1")
        self.n, self.at, self.replace = int(n), int(at), bool(replace)
        self.tokens = nn.Parameter(torch.empty(1, self.n, int(dim)))
        bound = math.sqrt(6.0 / float(3 * patch_area + dim))
        with torch.no_grad():
            self.tokens.uniform_(-bound, bound, generator=generator)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens with the prompts after the first `at` tokens; `replace`: in place of the previous block's."""
        prompts = self.dropout(self.tokens).to(x.dtype).expand(x.shape[0], -1, -1)
        rest = x[:, self.at + (self.n if self.replace else 0):]
        return torch.cat([x[:, :self.at], prompts, rest], dim=1)

    def extra_repr(self) -> str:
        return f"prompts={self.n}, at={self.at}, {'replace' if self.replace else 'insert'}"


def _insert(block: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a prompted block (a module-level function: copies and pickles of the block keep it)."""
    return (getattr(block, ATTR).insert(args[0]), *args[1:])


def attach(block: nn.Module, prompts: Prompts) -> None:
    """Give `block` its prompts: a submodule `vpt` and the pre-hook that inserts them into its input."""
    if hasattr(block, ATTR):
        raise ValueError("this block already has prompts")
    block.add_module(ATTR, prompts)
    block.register_forward_pre_hook(_insert)


def param_names(block: str) -> list[str]:
    """The parameters VPT adds to `block`."""
    return [f"{block}.{ATTR}.tokens"]
