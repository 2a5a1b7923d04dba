"""Parameter-efficient fine-tuning as a trainable-set choice: `peft=none|lora|vpt`, composable with cut and freeze.

A PEFT method adds a few parameters to the frozen copied blocks it adapts, and those are the only parameters that
train there (with the head, and whatever `transfer.freeze` / `transfer.trainable` train besides):

- `lora` (transfer/lora.py, Hu et al. 2021): every Linear layer named by `peft.targets` in the kept blocks whose
  own weight does not train gets a low-rank update;
- `vpt` (transfer/vpt.py, Jia et al. 2022): prompt tokens before the first kept transformer block (shallow) or
  at every kept transformer block (deep); transformer backbones only.

`resolve` validates the `peft` config against the backbone and the base trainable set and returns a `PeftSpec`:
where the modules go (`sites`) and the names of the parameters they add (`params`), before any module exists, so
the plan (`transfer/plan.py`, the only source of what trains) knows them and everything else asks the plan.
`attach` then adds the modules to the target network's backbone (`plan.build_target_net`). New parameters are
drawn from their own generator (seeded from the run's seed), so the rest of the network (the head) is
initialised exactly as in the same run without PEFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from transferlab.backbones.base import BlockBackbone
from transferlab.config import PEFT_KEYS, PeftConfig, peft_label, typed
from transferlab.errors import Problem, problem
from transferlab.transfer import lora, vpt

# An odd constant mixed into the run's seed: PEFT parameters are drawn from a stream of their own.
_SEED_OFFSET = 0x5EED_0F_9EF7


@dataclass(frozen=True)
class PeftSpec:
    """What a PEFT method adds, decided before it is added. Built by `resolve` only."""

    method: str                          # lora | vpt
    sites: tuple[str, ...]               # lora: Linear layers ('block0.attn.qkv'); vpt: blocks ('block0')
    params: frozenset[str]               # the parameters it adds (block-relative names); all of them train
    settings: tuple[tuple[str, Any], ...]  # the method's keys as configured (rank, alpha, ...)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def blocks(self) -> tuple[str, ...]:
        """Blocks that get PEFT parameters, in block order of the sites."""
        return tuple(dict.fromkeys(s.split(".", 1)[0] for s in self.sites))

    @property
    def label(self) -> str:
        """'lora r=4', 'vpt p=10 deep': the method in an arm's label (`config.peft_label`, as the report says it)."""
        return str(peft_label({"method": self.method, **self.options}))

    @property
    def merge_on_save(self) -> bool:
        return bool(self.options.get("merge_on_save", False))

    def record(self) -> dict[str, Any]:
        """The method and its settings for result.json (the run adds the parameter count)."""
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        return {"method": self.method, **options, "sites": len(self.sites), "blocks": list(self.blocks)}


def method_of(cfg) -> str:
    """`peft.method` of a config group (none when the group is absent: configs made before PEFT existed)."""
    return "none" if cfg is None else str(cfg.get("method", "none"))


def _check_settings(cfg, method: str) -> list[Problem]:
    out = []
    if method == "lora":
        if cfg.rank < 1:
            out.append(problem("peft.rank", cfg.rank, "an integer >= 1 (the rank r of the update B A)"))
        if not cfg.alpha > 0:
            out.append(problem("peft.alpha", cfg.alpha, "a number > 0 (the update is scaled by alpha / rank)"))
    if method == "vpt" and cfg.prompts < 1:
        out.append(problem("peft.prompts", cfg.prompts, "an integer >= 1 (prompt tokens per prompted block)"))
    if not 0 <= cfg.dropout < 1:
        out.append(problem("peft.dropout", cfg.dropout, "a number in [0, 1)"))
    return out


def _linear_layers(backbone: BlockBackbone) -> list[str]:
    return [path for path, m in backbone.blocks.named_modules() if isinstance(m, nn.Linear)]


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target) or fnmatchcase(path, target)


def _lora_sites(cfg, backbone: BlockBackbone, kept: tuple[str, ...], trains: Callable[[str], bool],
                problems: list[Problem]) -> tuple[str, ...]:
    targets = [str(t) for t in (cfg.targets or [])]
    layers = _linear_layers(backbone)
    names = list(dict.fromkeys(p.rsplit(".", 1)[-1] for p in layers))[:6]
    allowed = (f"names of Linear layers in the blocks ({names or 'this backbone has none'}), module paths "
               "(block0.attn.qkv) or globs over them ('block1*.mlp.*')")
    if not targets:
        problems.append(problem("peft.targets", [], f"a non-empty list of {allowed}"))
        return ()
    sites: list[str] = []
    for t in targets:
        hits = [p for p in layers if _matches(p, t)]
        inside = [p for p in hits if p.split(".", 1)[0] in kept]
        if not hits:
            problems.append(problem("peft.targets", t, f"{allowed}; it matches nothing"))
        elif not inside:
            problems.append(problem("peft.targets", t, f"Linear layers of the kept blocks {list(kept)} (it only "
                                                       "matches blocks beyond the cut)"))
        sites += [p for p in inside if not trains(f"{p}.weight") and p not in sites]
    if targets and not problems and not sites:
        problems.append(problem("peft", "lora", "frozen target layers to adapt: every layer peft.targets matches "
                                                "trains already (freeze the copied blocks: transfer=linear_probe "
                                                "or transfer.freeze=all)"))
    order = {p: i for i, p in enumerate(layers)}
    return tuple(sorted(sites, key=order.__getitem__))


def _vpt_sites(cfg, backbone: BlockBackbone, kept: tuple[str, ...], problems: list[Problem]) -> tuple[str, ...]:
    token_blocks = getattr(backbone, "token_blocks", None)
    if token_blocks is None:
        problems.append(problem("peft", "vpt", "none or lora with this backbone: VPT inserts prompt tokens, which "
                                               "needs a transformer backbone (backbone=vit)"))
        return ()
    blocks = [b for b in token_blocks if b in kept]
    if not blocks:
        problems.append(problem("peft", "vpt", f"a cut that keeps a transformer block (kept: {list(kept)}; "
                                               f"transformer blocks: {token_blocks[:1]}...)"))
        return ()
    return tuple(blocks) if cfg.deep else (blocks[0],)


def resolve(cfg, backbone: BlockBackbone, kept: tuple[str, ...],
            trains: Callable[[str], bool]) -> tuple[PeftSpec | None, list[Problem]]:
    """(spec or None, problems): the `peft` config checked against the backbone's kept blocks; `trains` is the
    base trainable set (a backbone parameter name -> does it train without PEFT)."""
    method = method_of(cfg)
    if method == "none":
        return None, []
    if method not in PEFT_KEYS:
        return None, [problem("peft", method, f"one of {list(PEFT_KEYS)}")]
    cfg = typed(PeftConfig, cfg, key="peft")
    problems = _check_settings(cfg, method)
    if method == "lora":
        sites = _lora_sites(cfg, backbone, kept, trains, problems)
        params = [n for s in sites for n in lora.param_names(s)]
    else:
        sites = _vpt_sites(cfg, backbone, kept, problems)
        params = [n for s in sites for n in vpt.param_names(s)]
    settings = {k: _plain(cfg[k]) for k in PEFT_KEYS[method]}  # the method's own keys only
    if problems:
        return None, problems
    return PeftSpec(method=method, sites=sites, params=frozenset(params),
                    settings=tuple(settings.items())), []


def _plain(value: Any) -> Any:
    """A config value as plain, hashable data (lists as tuples: a spec is part of the frozen plan)."""
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed((torch.initial_seed() + _SEED_OFFSET) % 2**63)


def attach(backbone: BlockBackbone, spec: PeftSpec) -> None:
    """Add the spec's modules to `backbone` (its blocks already hold the copied weights)."""
    generator = _generator()
    o = spec.options
    if spec.method == "lora":
        for site in spec.sites:
            lora.attach(backbone.blocks, site, o["rank"], o["alpha"], o["dropout"], generator=generator)
    elif spec.method == "vpt":
        at = backbone.prefix_tokens
        area = int(torch.tensor(getattr(backbone, "patch_size", (1,))).prod())
        for i, site in enumerate(spec.sites):
            prompts = vpt.Prompts(o["prompts"], backbone.embed_dim, at=at, replace=i > 0, patch_area=area,
                                  dropout=o["dropout"], generator=generator)
            vpt.attach(backbone.blocks[site], prompts)
        backbone.prefix_tokens = at + o["prompts"]  # the head's mean pool skips the prompts
        backbone.no_weight_decay = backbone.no_weight_decay | spec.params  # token embeddings, like the class token
        backbone._shapes = None  # token counts changed from the first prompted block on
    else:  # pragma: no cover - resolve builds no other spec
        raise ValueError(spec.method)
    added = {n for n, _ in backbone.blocks.named_parameters()} & spec.params
    if added != spec.params:  # the names the plan was told are the names that exist
        raise RuntimeError(f"PEFT parameters {sorted(spec.params - added)[:3]} were not created")


def merged_state(net) -> dict[str, torch.Tensor]:
    """The network with every LoRA update folded into its weight, in the backbone library's keys (timm's
    `blocks.3.attn.qkv.weight`, `cls_token`, ...) plus the new head's Linear as `head.weight` / `head.bias`: with
    the cut keeping every block and `backbone.pool=cls`, `timm.create_model(name, num_classes=C, img_size=...,
    patch_size=...)` loads it strictly and computes the same outputs."""
    from transferlab.backbones.weights import to_native_keys

    state = to_native_keys(net.backbone, lora.merged_state(net.backbone.blocks))
    linear = [m for m in net.head.modules() if isinstance(m, nn.Linear)][-1]
    state["head.weight"] = linear.weight.detach().clone()
    if linear.bias is not None:
        state["head.bias"] = linear.bias.detach().clone()
    return {k: v.contiguous() for k, v in state.items()}


def added_params(net_backbone: BlockBackbone, spec: PeftSpec | None) -> int:
    """How many parameters the method added (0 without PEFT)."""
    if spec is None:
        return 0
    return sum(p.numel() for n, p in net_backbone.blocks.named_parameters() if n in spec.params)
