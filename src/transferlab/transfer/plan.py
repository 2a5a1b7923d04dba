"""The one place that decides what is transferred and what trains, and when.

`resolve_plan` turns the `transfer` config into a validated TransferPlan over the backbone's blocks and
parameter names: which blocks are copied (`cut`), what happens above the cut (`upper`), which parameters train
(`freeze` = first f blocks frozen, or `trainable` = block names / parameter globs such as "*.bias" for BitFit),
the BN policy, and the strategy that schedules the set over epochs (`fixed`, `gradual` ULMFiT unfreezing, `lp_ft`
linear probe then fine-tune). A PEFT method (`peft=lora|vpt`, transfer/peft.py) adds parameters to frozen blocks:
the plan names them before they exist and they train; the blocks they sit in are `adapted`, no longer `frozen`.
Everything else asks the plan (`trains`, `trainable_at`, `frozen`, ...), never `requires_grad`, which is only set
from it for autograd: `build_target_net` and `apply_epoch` hand the net the
plan's predicate, the optimizer groups and the L2-SP penalty, the model summary, the recorded counts and the
feature cache's frozen prefix all read the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from transferlab.backbones.base import BlockBackbone
from transferlab.config import TransferConfig, typed
from transferlab.errors import ConfigError, Problem, problem
from transferlab.transfer import arm as arm_facts
from transferlab.transfer import init as init_mod
from transferlab.transfer import peft as peft_mod
from transferlab.transfer.network import TransferNet, block_state

# transfer=scratch is the baseline: nothing copied, every block trained from random weights. Its own values, which
# an override may not change (else "scratch" would label transferred or frozen weights).
SCRATCH = {"cut": 0, "upper": "reinit", "freeze": 0, "trainable": None, "strategy": "fixed", "l2sp": 0.0,
           "init": "source"}
# The baseline presets, each with its own values: scratch at the arms' budget, and scratch_long at the compute of
# source pretraining + target training (He et al. 2019; training/scratch_long.py). Which presets they are is
# transfer/arm.py's BASELINE_PRESETS.
BASELINES = {name: {**SCRATCH, "source_compute": compute} for name, compute in arm_facts.BASELINE_PRESETS.items()}


@dataclass(frozen=True)
class TransferPlan:
    """Built by `resolve_plan` only: no field has a default here, the transfer config's defaults are the schema's
    (transferlab.config.TransferConfig)."""

    block_names: tuple[str, ...]  # every block the backbone has
    cut: int                      # blocks [0, cut) are copied from the source
    upper: str                    # drop | reinit
    frozen: tuple[str, ...]       # blocks frozen for the whole fit
    train_params: frozenset[str] | None  # backbone params that train (block-relative names); None = all
    bn: str                       # BN policy inside training blocks (see network.py)
    strategy: str                 # fixed | gradual | lp_ft
    unfreeze_every: int           # gradual: epochs between two unfreezings
    lp_epochs: int                # lp_ft: head-only epochs before fine-tuning
    l2sp: float                   # L2-SP strength toward the source weights of copied blocks
    init: str                     # what the copied blocks hold: source | meanvar | random_frozen (transfer/init.py)
    source_compute: bool          # scratch_long: the source pretraining's steps added to the budget
    spec: tuple[str, ...] | None = None  # transfer.trainable as given (None: the set came from `freeze`)
    peft: peft_mod.PeftSpec | None = None  # PEFT modules added to frozen blocks; their parameters train
    adapted: tuple[str, ...] = ()  # blocks whose own weights are frozen but which carry PEFT parameters

    @property
    def reads_source_weights(self) -> bool:
        """Does building the target net need the source model's tensors? Not when nothing is copied, nor for
        random_frozen (its copied blocks keep their random init)."""
        return self.cut > 0 and init_mod.copies_weights(self.init)

    @property
    def reads_source_task(self) -> bool:
        """Does the run need the source task: its model's weights, or (scratch_long) its pretraining's steps?"""
        return self.reads_source_weights or self.source_compute

    @property
    def copied(self) -> tuple[str, ...]:
        return self.block_names[: self.cut]

    @property
    def kept(self) -> tuple[str, ...]:
        return self.copied if self.upper == "drop" else self.block_names

    @property
    def trainable(self) -> tuple[str, ...]:
        """Blocks with at least one parameter that trains at some point, then the head."""
        return tuple(n for n in self.kept if n not in self.frozen) + ("head",)

    @property
    def freeze_depth(self) -> int | None:
        """f of `transfer.freeze` (first f kept blocks frozen); None for a `transfer.trainable` set, which is not
        a depth (a surgical set freezes blocks above the one it trains) and must not be plotted as one."""
        return len(self.frozen) + len(self.adapted) if self.spec is None else None

    @property
    def label(self) -> str:
        """Short description of the trainable set for tables: 'freeze=2', 'trainable=[*.bias]', plus strategy."""
        base = f"freeze={self.freeze_depth}" if self.spec is None else f"trainable=[{','.join(self.spec)}]"
        base = base if self.peft is None else f"{base} {self.peft.label}"
        return base if self.strategy == "fixed" else f"{base} {self.strategy}"

    @property
    def copies_nothing(self) -> bool:
        """No block comes from the source (`transfer.arm.copies_nothing`): scratch and scratch_long."""
        return arm_facts.copies_nothing(self.cut)

    @property
    def is_baseline(self) -> bool:
        """The scratch baseline the transfer arms are paired with (`transfer.arm.is_baseline`): copies nothing at
        the arms' budget (scratch_long is a control arm, not the baseline)."""
        return arm_facts.is_baseline(self.cut, self.source_compute)

    @property
    def arm(self) -> str:
        """The run's arm as one readable label, from the plan alone (`transfer.arm.arm_label`): W&B's `arm` and
        result.json's `arm`, so scratch and `freeze=0` never look alike there.

        The report's arm labels start from this recorded label and add what varies across a sweep beyond it (the
        source, other arm keys); this one is fixed per run, so it can be known while the run is logged."""
        return arm_facts.arm_label(
            cut=self.cut, n_blocks=len(self.block_names), freeze=self.freeze_depth,
            trainable=None if self.spec is None else f"trainable=[{','.join(self.spec)}]", upper=self.upper,
            l2sp=self.l2sp, strategy=self.strategy, init=self.init,
            peft=None if self.peft is None else self.peft.label, source_compute=self.source_compute)

    @property
    def name(self) -> str:
        """The arm's human name ("linear probe", "fine-tune top 2", "scratch"; `transfer.arm_name`), the words the
        report uses for the same run (it reads them from the record with the same function)."""
        from transferlab.transfer.arm_name import arm_name

        return arm_name(cut=self.cut, freeze=self.freeze_depth, upper=self.upper, strategy=self.strategy,
                        trainable=None if self.spec is None else self.label,  # as the record's trainable_set
                        peft=None if self.peft is None else self.peft.label, init=self.init,
                        source_compute=self.source_compute)

    def fixed_prefix(self) -> tuple[int, str]:
        """(depth, why it stops there): the leading kept blocks frozen for the whole fit.

        No parameter of such a block trains in any epoch, so the net keeps it in eval mode under every BN policy
        (bn=train acts only on training blocks) and no strategy releases it (gradual/lp_ft only release blocks the
        plan trains): on fixed inputs its outputs are the same in every epoch, which is what lets the feature
        cache compute them once (`store.feature_cache`)."""
        for depth, name in enumerate(self.kept):
            if name not in self.frozen:
                if name in self.adapted:
                    return depth, f"block {name} carries peft={self.peft.method} parameters"
                return depth, (f"transfer.strategy={self.strategy} trains block {name} during the fit"
                               if self.strategy != "fixed" else
                               f"block {name} has trainable parameters (transfer.freeze / transfer.trainable)")
        return len(self.kept), "every backbone block is frozen"

    def trains(self, param: str) -> bool:
        """Does this backbone parameter ('layer1.0.bn1.weight') train at some point of the fit?"""
        block = param.split(".", 1)[0]
        return (block in self.kept and block not in self.frozen
                and (self.train_params is None or param in self.train_params))

    @property
    def unfreeze_order(self) -> tuple[str, ...]:
        """Training blocks from the top down (the order `gradual` releases them)."""
        return tuple(reversed(self.trainable[:-1]))

    def unfreeze_epoch(self, block: str) -> int | None:
        """First epoch in which `block` trains (None: never). The head trains from epoch 0."""
        if block == "head":
            return 0
        if block not in self.unfreeze_order:
            return None
        if self.strategy == "gradual":
            return (self.unfreeze_order.index(block) + 1) * self.unfreeze_every
        if self.strategy == "lp_ft":
            return self.lp_epochs
        return 0

    def trainable_at(self, param: str, epoch: int) -> bool:
        start = self.unfreeze_epoch(param.split(".", 1)[0])
        return self.trains(param) and start is not None and epoch >= start

    def training_blocks(self, epoch: int) -> tuple[str, ...]:
        """Backbone blocks with a parameter that trains in `epoch`, in block order (the head always trains)."""
        return tuple(b for b in self.trainable[:-1] if self.unfreeze_epoch(b) <= epoch)


def _int_at_least(cfg, key: str, low: int, problems: list[Problem]) -> int:
    v = cfg[key]
    if v < low:
        problems.append(problem(f"transfer.{key}", v, f"an integer >= {low}"))
    return v


NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _norm_params(backbone: BlockBackbone) -> list[str]:
    return [f"{m}.{p}" for m, mod in backbone.blocks.named_modules() if isinstance(mod, NORM_TYPES)
            for p, _ in mod.named_parameters(recurse=False)]


def _resolve_trainable(spec, names: tuple[str, ...], params: list[str] | None, kept: tuple[str, ...],
                       cut: int, problems: list[Problem], norm: list[str] | None = None) -> frozenset[str] | None:
    """Entries are block names, module/parameter names, globs over parameter names ("*.bias", "*bn*"), or
    "@norm" (normalisation layers by type, since their names differ between models)."""
    if isinstance(spec, str) or not hasattr(spec, "__iter__"):
        problems.append(problem("transfer.trainable", spec, "null or a list of block names / parameter globs, "
                                                            f"e.g. [{names[-1]}] or ['*.bias']"))
        return None
    entries = [str(e) for e in spec]
    if not entries:
        problems.append(problem("transfer.trainable", [], f"a non-empty list (blocks: {list(kept)}); to train only "
                                                         "the head use transfer.freeze=all (transfer=linear_probe)"))
        return None
    if params is None:
        params = list(names)  # block names only (no backbone at hand): entries must be block names
    chosen: set[str] = set()
    for e in entries:
        if e == "head":
            continue  # the new head always trains
        if e == "@norm":
            hits = list(norm or [])
        else:
            hits = [p for p in params if p == e or p.startswith(e + ".") or fnmatchcase(p, e)]
        inside = [p for p in hits if p.split(".", 1)[0] in kept]
        if not hits:
            problems.append(problem("transfer.trainable", e, f"a block name {list(names)}, a module or parameter "
                                                             "name inside one, or a glob over parameter names "
                                                             "(e.g. '*.bias', '*bn*') or '@norm'; it matches "
                                                             "nothing"))
        elif not inside:
            problems.append(problem("transfer.trainable", e, f"blocks kept by transfer.cut={cut}: {list(kept)} "
                                                             "(it only matches blocks beyond the cut)"))
        chosen.update(inside)
    return frozenset(chosen)


def _check_scratch(cfg) -> list[Problem]:
    """transfer=scratch (and scratch_long) keeps its own cut, freeze, ...: an override that would copy or freeze
    blocks, or change the baseline's compute, is an error."""
    name = str(cfg.get("name"))
    if name not in BASELINES:
        return []
    out = []
    for key, own in BASELINES[name].items():
        v = cfg[key]
        if v != own and not (key == "freeze" and v is None) and not (key == "l2sp" and v in (0, None)):
            out.append(problem(f"transfer.{key}", v, f"{own!r} with transfer={name} (the baseline copies and "
                                                     "freezes nothing); to transfer blocks use transfer=finetune"))
    return out


def resolve_plan(cfg, backbone: BlockBackbone | list[str] | tuple[str, ...], peft=None) -> TransferPlan:
    """Validate the `transfer` config against the backbone's blocks (and parameter names, when a backbone is
    given); collect every problem before raising one ConfigError. A partial config (tests, scripts) is completed
    with the schema's defaults (`transferlab.config.TransferConfig`), which also holds the types and choices.
    `peft` (the `peft` config group; None or method none: no PEFT) adds its parameters to the trainable set."""
    cfg = typed(TransferConfig, cfg, key="transfer")
    if isinstance(backbone, BlockBackbone):
        names = tuple(backbone.block_names)
        params: list[str] | None = [n for n, _ in backbone.blocks.named_parameters()]
        norm: list[str] | None = _norm_params(backbone)
    else:
        names, params, norm = tuple(backbone), None, None
    problems: list[Problem] = _check_scratch(cfg)
    cut = cfg.cut
    cut = len(names) if cut is None else cut
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= len(names):
        problems.append(problem("transfer.cut", cut, f"an int in 0..{len(names)} (blocks: {list(names)}) or null"))
        cut = len(names)
    upper = str(cfg.upper)
    kept = names[:cut] if upper == "drop" else names
    freeze = 0 if cfg.freeze is None else cfg.freeze
    if freeze == "all":
        n_frozen = cut
    elif isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= cut:
        n_frozen = freeze
    else:
        problems.append(problem("transfer.freeze", freeze, f"an int in 0..cut={cut} or 'all'" + (
            " (all_depths is a sweep value: -m)" if freeze == "all_depths" else "")))
        n_frozen = 0
    if upper == "drop" and arm_facts.copies_nothing(cut) and not problems:
        problems.append(problem("transfer.cut", 0, "with transfer.upper=drop the cut must keep at least one block "
                                                  "(transfer=scratch uses cut=0 with upper=reinit)"))
    frozen = names[:n_frozen]
    train_params = None
    spec = cfg.trainable
    if spec is not None:
        if n_frozen:
            problems.append(problem("transfer.trainable", list(spec) if hasattr(spec, "__iter__") else spec,
                                    f"null when transfer.freeze={freeze!r} is set (pick one: freeze=0 with a "
                                    "trainable list, or a freeze depth)"))
        train_params = _resolve_trainable(spec, names, params, kept, cut, problems, norm)
        if train_params is not None:
            blocks = {p.split(".", 1)[0] for p in train_params}
            frozen = tuple(n for n in kept if n not in blocks)
            if params is None:  # names only: the entries chose whole blocks
                train_params = None
    bn, strategy = str(cfg.bn), str(cfg.strategy)
    every = _int_at_least(cfg, "unfreeze_every", 1, problems)
    lp_epochs = _int_at_least(cfg, "lp_epochs", 1, problems)
    l2sp = cfg.l2sp
    if l2sp < 0:
        problems.append(problem("transfer.l2sp", l2sp, "a number >= 0 (0 = off)"))
        l2sp = 0.0
    elif l2sp > 0 and arm_facts.copies_nothing(cut):
        problems.append(problem("transfer.l2sp", l2sp, "0 when transfer.cut=0 (no source weights to pull toward)"))
    init, source_compute = str(cfg.init), bool(cfg.source_compute)
    if str(cfg.get("name")) not in BASELINES:  # a baseline's own values are _check_scratch's
        problems += _check_control(init, source_compute, cut, l2sp, freeze, n_frozen, spec)
    peft_spec, adapted = None, ()
    if peft_mod.method_of(peft) != "none":
        if params is None:
            raise ValueError("PEFT needs the backbone itself (its modules), not only its block names")
        base, base_frozen = train_params, frozen

        def base_trains(p: str) -> bool:
            block = p.split(".", 1)[0]
            return block in kept and block not in base_frozen and (base is None or p in base)

        peft_spec, more = peft_mod.resolve(peft, backbone, kept, base_trains)
        problems += more
        if peft_spec is not None:  # the PEFT parameters train; the blocks they sit in are no longer frozen
            adapted = tuple(b for b in frozen if b in peft_spec.blocks)
            train_params = frozenset({p for p in params if base_trains(p)} | peft_spec.params)
            frozen = tuple(b for b in frozen if b not in adapted)
    if not problems and strategy != "fixed" and all(n in frozen for n in kept):
        problems.append(problem("transfer.strategy", strategy, f"fixed when no block trains (frozen: {list(frozen)}"
                                                               "); gradual/lp_ft need transfer.freeze < cut"))
    if problems:
        raise ConfigError(problems)
    return TransferPlan(block_names=names, cut=cut, upper=upper, frozen=tuple(frozen), train_params=train_params,
                        bn=bn, strategy=strategy, unfreeze_every=every, lp_epochs=lp_epochs, l2sp=float(l2sp),
                        init=init, source_compute=source_compute,
                        spec=None if spec is None else tuple(str(e) for e in spec), peft=peft_spec, adapted=adapted)


def _check_control(init: str, source_compute: bool, cut, l2sp, freeze, n_frozen: int, spec) -> list[Problem]:
    """The control arms' rules: `transfer.init` acts on copied blocks (random_frozen keeps all of them frozen, and
    L2-SP has no source weights to pull toward), `transfer.source_compute` only on a run that copies nothing."""
    out = []
    if init != init_mod.SOURCE and arm_facts.copies_nothing(cut):
        out.append(problem("transfer.init", init, "source when transfer.cut=0 (no copied block to re-initialise)"))
    if init == init_mod.RANDOM_FROZEN and cut and (spec is not None or n_frozen != cut):
        key, value = ("transfer.trainable", list(spec)) if spec is not None else ("transfer.freeze", freeze)
        out.append(problem(key, value, "null with transfer.freeze=all: transfer.init=random_frozen is Yosinski's "
                                       "random-filter arm, its re-initialised copied blocks stay frozen "
                                       "(transfer=frozen sets freeze=all)" if spec is not None else
                           "all with transfer.init=random_frozen (Yosinski's random-filter arm: the "
                           "re-initialised copied blocks stay frozen; transfer=frozen sets it)"))
    if init != init_mod.SOURCE and l2sp > 0:
        out.append(problem("transfer.l2sp", l2sp, f"0 with transfer.init={init} (L2-SP pulls toward the source "
                                                  "weights, which the copied blocks do not hold)"))
    if source_compute and cut != 0:
        out.append(problem("transfer.source_compute", True, "false unless transfer.cut=0: the matched-compute "
                                                            "baseline (transfer=scratch_long) copies nothing"))
    return out


def freeze_depths(cfg) -> list[str]:
    """Every freeze depth of a composed config's backbone and cut, as sweep values: "0" .. "cut-1" and "all"
    (`transfer.freeze=all_depths` in a sweep; small_cnn's four blocks give 0, 1, 2, 3, all). The block count
    comes from the backbone config alone (`backbones.block_count`: no data, no weights)."""
    from transferlab.backbones import block_count

    n = block_count(cfg.backbone)
    cut = cfg.transfer.get("cut")
    cut = n if cut is None else min(int(cut), n)
    return [str(f) for f in range(cut)] + ["all"] if cut else ["0"]


def apply_epoch(net: TransferNet, plan: TransferPlan, epoch: int) -> list[str]:
    """Set what trains in `epoch` (idempotent, so resuming at any epoch is right); return the training blocks."""
    net.set_trainable(lambda p: plan.trainable_at(p, epoch))
    return list(plan.training_blocks(epoch))


def build_target_net(
    backbone: BlockBackbone,
    plan: TransferPlan,
    source_state: dict[str, torch.Tensor] | None,
    num_classes: int,
    seed: int | None = None,
) -> TransferNet:
    """`backbone` is freshly initialised (seeded); copy the source blocks into it (or give them a control arm's
    weights: `plan.init`, transfer/init.py, drawn from their own generator seeded by `seed`, so the rest of the net
    is initialised as in the source arm), cut, and set the final trainable set (strategies narrow it per epoch)."""
    if plan.reads_source_weights and source_state is None:
        raise ValueError("a cut > 0 needs source weights")
    if plan.reads_source_weights:
        for name in plan.copied:
            backbone.blocks[name].load_state_dict(block_state(source_state, name), strict=True)
        generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        init_mod.fill(backbone, plan, generator)
    if plan.upper == "drop":
        backbone.truncate(plan.cut)
    if plan.peft is not None:  # after the copy: PEFT modules adapt the copied (source) weights
        peft_mod.attach(backbone, plan.peft)
    net = TransferNet(backbone, num_classes, bn=plan.bn)
    net.set_trainable(plan.trains)
    return net
