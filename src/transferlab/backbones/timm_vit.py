"""Vision transformers from timm (ViT, DeiT, ... : timm's `VisionTransformer` family) as blocks.

Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words", ICLR) and Touvron et al. 2021 (DeiT, ICML): an image
is cut into patches, each patch embedded as a token, a class token prepended and position embeddings added, then a
stack of identical transformer blocks and a final LayerNorm. The blocks here follow that structure:

    embed        patch embedding + class (and register / distillation) tokens + position embedding (+ its dropout)
    block0 ...   timm's transformer blocks, one block each (`model.blocks[i]`), so `transfer.cut` counts them
    blockL-1
    norm         the final LayerNorm

so a ViT with depth L has L + 2 blocks and `transfer.cut=k` keeps the first k, exactly as for a CNN. Every block
maps tokens [N, T, D] to tokens (embed maps the image to them); the head reads the class token
(`backbone.pool=cls`) or the mean of the patch tokens (`backbone.pool=mean`, leaving out class, register and
prompt tokens) and has one Linear layer on D features. `backbone.img_size` and `backbone.patch_size` adapt a
model to small inputs (32 x 32 with patch 4: an 8 x 8 grid); weights made for another size are fitted by timm's
own resampling (position embeddings interpolated over the grid, the patch kernel resampled), for ImageNet weights
and for weight files alike.

The blocks run in order must reproduce timm's own `forward_features` (checked when the backbone is built), so a
model whose forward does more between blocks is refused rather than silently cut wrong. Models whose features are
normalised after pooling (`fc_norm`) or pooled by attention (`attn_pool`) are refused too: their norm or pool
belongs to timm's head, which is not transferred.
"""

from __future__ import annotations

import math

import timm
import torch
from torch import nn

from transferlab.backbones.base import BlockBackbone
from transferlab.errors import ConfigError, Problem, problem

POOLS = ("cls", "mean")
# What the embedding's forward reads from the model (timm's own `_pos_embed` runs on the embed block).
_EMBED_ATTRS = ("no_embed_class", "dynamic_img_size", "num_prefix_tokens", "has_class_token", "num_reg_tokens")
_EMBED_PARAMS = ("cls_token", "reg_token", "dist_token", "pos_embed")
_EMBED_MODULES = ("patch_embed", "pos_drop", "patch_drop", "norm_pre")


class TokenEmbed(nn.Module):
    """Block `embed`: image -> tokens [N, T, D], with the model's own parameter names (`cls_token`,
    `pos_embed`, `patch_embed.proj.weight`, ...). The token and position logic is timm's `_pos_embed` of the
    model's class, run on this module (it holds every attribute that method reads)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._pos_embed_fn = type(model)._pos_embed
        for name in _EMBED_ATTRS:
            setattr(self, name, getattr(model, name, None))
        for name in _EMBED_PARAMS:
            value = getattr(model, name, None)
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
            else:
                setattr(self, name, None)
        for name in _EMBED_MODULES:
            module = getattr(model, name, None)
            setattr(self, name, nn.Identity() if module is None else module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed_fn(self, x)
        x = self.patch_drop(x)
        return self.norm_pre(x)


class TokenBackbone(BlockBackbone):
    """A BlockBackbone whose blocks output tokens [N, T, D]: `prefix_tokens` leading tokens (class, register,
    distillation, and prompts once visual prompt tuning adds them) before the patch tokens."""

    def __init__(self, blocks, input_shape, pool: str, native_prefixes: dict[str, str], *, prefix_tokens: int,
                 has_class_token: bool, embed_dim: int, grid: tuple[int, int], patch_size: tuple[int, int],
                 no_weight_decay: frozenset[str]):
        super().__init__(blocks, input_shape, pool=pool, native_prefixes=native_prefixes)
        self.prefix_tokens = int(prefix_tokens)
        self.has_class_token = bool(has_class_token)
        self.embed_dim = int(embed_dim)
        self.grid = tuple(grid)
        self.patch_size = tuple(patch_size)
        self.no_weight_decay = frozenset(no_weight_decay)

    @property
    def token_blocks(self) -> list[str]:
        """The transformer blocks (block0 ...), where prompts can be added."""
        return [n for n in self.block_names if n.startswith("block")]

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit block-keyed weights made for another image or patch size: position embeddings resampled over the
        new grid, the patch kernel resampled to the new patch size (timm's functions, as timm does for its own
        pretrained weights)."""
        from timm.layers import resample_abs_pos_embed, resample_patch_embed

        out = dict(state)
        own = self.blocks.state_dict()
        key = "embed.pos_embed"
        if key in out and key in own and out[key].shape != own[key].shape and out[key].dim() == 3:
            n_prefix = own[key].shape[1] - self.grid[0] * self.grid[1]  # 0 when the class token has no position
            old_tokens = out[key].shape[1] - n_prefix
            side = math.isqrt(old_tokens)
            if side * side == old_tokens:
                out[key] = resample_abs_pos_embed(out[key], new_size=list(self.grid), old_size=[side, side],
                                                  num_prefix_tokens=n_prefix, verbose=False)
        key = "embed.patch_embed.proj.weight"
        if key in out and key in own and out[key].shape[-2:] != own[key].shape[-2:] and out[key].dim() == 4:
            out[key] = resample_patch_embed(out[key], list(own[key].shape[-2:]), verbose=False)
        return out


def _size(cfg, input_shape: tuple[int, ...]) -> tuple[list[Problem], tuple[int, int]]:
    """The image size the model is built for: the task's (C x H x W) inputs; `backbone.img_size`, when set, must
    be that size (the task's `image_size` resizes the inputs)."""
    h, w = int(input_shape[1]), int(input_shape[2])
    want = cfg.get("img_size")
    if want is not None and (int(want), int(want)) != (h, w):
        return [problem("backbone.img_size", want, f"null or {h} (the task's inputs are {h}x{w}; resize them "
                                                   "with the task's image_size key)")], (h, w)
    return [], (h, w)


def _kwargs(cfg, input_shape: tuple[int, ...], size: tuple[int, int]) -> dict:
    kwargs = dict(cfg.get("kwargs") or {})
    kwargs.update(in_chans=int(input_shape[0]), img_size=size, num_classes=0)
    if cfg.get("patch_size") is not None:
        kwargs["patch_size"] = int(cfg.patch_size)
    return kwargs


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "norm", "_pos_embed", "num_prefix_tokens"))


def create(cfg, input_shape: tuple[int, ...], pretrained: bool = False) -> nn.Module:
    """The timm model, validated: a ViT of timm's VisionTransformer family for these inputs."""
    from transferlab.backbones.timm_stages import missing_weights

    name = str(cfg.name)
    if not timm.is_model(name):
        raise ConfigError(problem("backbone.name", name, "a timm ViT name (timm.list_models('vit_*'), "
                                                        "'deit_*', ...)"))
    if len(input_shape) != 3:
        raise ValueError(f"ViT {name} needs C x H x W inputs, got {input_shape}")
    problems, size = _size(cfg, input_shape)
    patch = cfg.get("patch_size")
    if patch is not None and (int(patch) < 1 or size[0] % int(patch) or size[1] % int(patch)):
        problems.append(problem("backbone.patch_size", patch, f"null or an integer >= 1 that divides the image "
                                                              f"size {size[0]}x{size[1]}"))
    if problems:
        raise ConfigError(problems)
    try:
        model = timm.create_model(name, pretrained=pretrained, **_kwargs(cfg, input_shape, size))
    except Exception as e:
        if not pretrained:
            raise
        raise ConfigError(missing_weights(name, e)) from e
    if not _is_vit(model):
        raise ConfigError(problem("backbone.name", name, "a timm ViT of the VisionTransformer family (ViT, DeiT, "
                                                        "...); timm CNNs: backbone=timm"))
    p = tuple(model.patch_embed.patch_size)
    if size[0] % p[0] or size[1] % p[1] or size[0] < p[0] or size[1] < p[1]:
        raise ConfigError(problem("backbone.patch_size", patch, f"a patch size that divides the image size "
                                                                f"{size[0]}x{size[1]} ({name}'s own is {p[0]}; "
                                                                f"e.g. backbone.patch_size=2, or resize the inputs "
                                                                f"with the task's image_size)"))
    return model


def build(cfg, input_shape: tuple[int, ...], pretrained: bool = False) -> TokenBackbone:
    model = create(cfg, input_shape, pretrained)
    name, pool = str(cfg.name), str(cfg.get("pool", "cls"))
    problems = []
    if not isinstance(getattr(model, "fc_norm", None), (nn.Identity, type(None))) or getattr(model, "attn_pool", None):
        problems.append(problem("backbone.name", name, "a ViT whose features end in its final norm (this one "
                                                      "normalises or pools tokens in timm's head: fc_norm / "
                                                      "attn_pool, which is not transferred)"))
    has_cls = getattr(model, "cls_token", None) is not None
    if pool not in POOLS:
        problems.append(problem("backbone.pool", pool, f"one of {list(POOLS)}"))
    elif pool == "cls" and not has_cls:
        problems.append(problem("backbone.pool", pool, f"mean (backbone.name={name} has no class token)"))
    if problems:
        raise ConfigError(problems)
    embed = TokenEmbed(model)
    blocks = [("embed", embed)] + [(f"block{i}", b) for i, b in enumerate(model.blocks)] + [("norm", model.norm)]
    native = {n: f"embed.{n}" for n in (*_EMBED_PARAMS, *_EMBED_MODULES) if hasattr(model, n)}
    native.update({f"blocks.{i}": f"block{i}" for i in range(len(model.blocks))})
    native["norm"] = "norm"
    backbone = TokenBackbone(
        blocks, input_shape, pool=pool, native_prefixes=native, prefix_tokens=int(model.num_prefix_tokens),
        has_class_token=has_cls, embed_dim=int(model.embed_dim), grid=tuple(model.patch_embed.grid_size),
        patch_size=tuple(model.patch_embed.patch_size),
        no_weight_decay=frozenset(f"embed.{n}" for n in _EMBED_PARAMS if getattr(embed, n, None) is not None))
    _check_against_timm(model, backbone, name)
    return backbone


def block_count(cfg) -> int:
    """Blocks of this ViT (depth + 2), from the model built on the meta device (no weights, no input needed)."""
    with torch.device("meta"):
        model = timm.create_model(str(cfg.name), pretrained=False, num_classes=0,
                                  **{k: v for k, v in dict(cfg.get("kwargs") or {}).items()})
    return len(model.blocks) + 2


def _check_against_timm(model: nn.Module, backbone: BlockBackbone, name: str) -> None:
    """The blocks, run in order, must reproduce timm's `forward_features` (tokens after the final norm)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    x = torch.randn(2, *backbone.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            ok = torch.allclose(backbone(x), model.forward_features(x), atol=1e-4, rtol=1e-3)
        except Exception:  # a block cannot take the previous block's output
            ok = False
    for m, mode in modes.items():
        m.training = mode
    if not ok:
        raise ConfigError(problem("backbone.name", name, "a timm ViT whose blocks run in sequence (this model's "
                                                        "forward does more between its blocks)"))
