"""The one place that decides what is transferred and what trains.

`resolve_plan` turns the `transfer` config into a TransferPlan over the backbone's block names (validating it);
`build_target_net` applies it: copy blocks [0, cut) from the source, drop or re-initialise the rest, freeze.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferlab.backbones.base import BlockBackbone
from transferlab.errors import ConfigError, problem
from transferlab.network import TransferNet, block_state

UPPER_CHOICES = ("drop", "reinit")


@dataclass(frozen=True)
class TransferPlan:
    block_names: tuple[str, ...]  # every block the backbone has
    cut: int                      # blocks [0, cut) are copied from the source
    upper: str                    # drop | reinit
    frozen: tuple[str, ...]       # blocks frozen for the whole fit

    @property
    def copied(self) -> tuple[str, ...]:
        return self.block_names[: self.cut]

    @property
    def kept(self) -> tuple[str, ...]:
        return self.copied if self.upper == "drop" else self.block_names

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(n for n in self.kept if n not in self.frozen) + ("head",)

    @property
    def freeze_depth(self) -> int:
        return len(self.frozen)


def resolve_plan(cfg, block_names: list[str] | tuple[str, ...]) -> TransferPlan:
    """Validate cut/upper/freeze against the backbone's blocks; collect every problem before raising."""
    names = tuple(block_names)
    problems: list[str] = []
    cut = cfg.get("cut")
    cut = len(names) if cut is None else cut
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= len(names):
        problems.append(problem("transfer.cut", cut, f"an int in 0..{len(names)} (blocks: {list(names)}) or null"))
        cut = len(names)
    upper = str(cfg.get("upper", "drop"))
    if upper not in UPPER_CHOICES:
        problems.append(problem("transfer.upper", upper, f"one of {list(UPPER_CHOICES)}"))
    freeze = cfg.get("freeze", 0)
    if freeze == "all":
        n_frozen = cut
    elif isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= cut:
        n_frozen = freeze
    else:
        problems.append(problem("transfer.freeze", freeze, f"an int in 0..cut={cut} or 'all'"))
        n_frozen = 0
    if upper == "drop" and cut == 0 and not problems:
        problems.append(problem("transfer.cut", 0, "with transfer.upper=drop the cut must keep at least one block "
                                                  "(transfer=scratch uses cut=0 with upper=reinit)"))
    if problems:
        raise ConfigError(problems)
    return TransferPlan(block_names=names, cut=cut, upper=upper, frozen=names[:n_frozen])


def build_target_net(
    backbone: BlockBackbone,
    plan: TransferPlan,
    source_state: dict[str, torch.Tensor] | None,
    num_classes: int,
) -> TransferNet:
    """`backbone` is freshly initialised (seeded); copy the source blocks into it, then cut and freeze."""
    if plan.cut and source_state is None:
        raise ValueError("a cut > 0 needs source weights")
    for name in plan.copied:
        backbone.blocks[name].load_state_dict(block_state(source_state, name), strict=True)
    if plan.upper == "drop":
        backbone.truncate(plan.cut)
    return TransferNet(backbone, num_classes, frozen=plan.frozen)
