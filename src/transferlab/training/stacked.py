"""Train K runs of one architecture as one stacked model: `torch.func.stack_module_state` + `functional_call` +
`vmap`, the "model ensembling" recipe of the torch.func documentation, under one Lightning Trainer. The runs are
the members of a vectorised seed group (one config but `seed`/`data_seed`/`pretrain.seed`, sweep/group_job.py) or
a tuned point's candidates (one config but the learning rate or weight decay, run/tuning.py); `run/stack.py` turns
built runs into members.

Why: a sweep point at small n is too small to keep the hardware busy, and on a CPU most of a tiny point's time is
the framework's work per epoch and per run (Lightning's loops and hooks, validation set-up, checkpoints), which a
group pays once for K members. On a GPU the stacked arithmetic itself runs K members for about the price of one.

What stays each member's own, so that a member's result is its separate run's (tests/test_stacked.py):
- its initialisation and nested target subset (each member is built by its own `Experiment.build`);
- its batch order (its own `TensorBatches`, stacked batch by batch);
- its optimisation: one optimizer over the stacked tensors steps each member as its own would only when its
  update is elementwise (SGD, Adam, AdamW and the others of `optim.ELEMENTWISE`, weight decay included); any
  other optimizer keeps the members apart (`why_sequential`); the loss is the sum of the members' mean losses,
  whose gradient with respect to a member's slice is that member's gradient. Members whose optimizer groups
  carry different options (`GROUP_OPTIONS`: a candidate's rate, weight decay, layer-wise decay) each keep their
  own leaves, of the single run's shapes, in their own groups, stacked for each forward; members may differ in
  nothing else of `train`;
- its BatchNorm statistics (stacked buffers, updated in place under vmap);
- its dropout masks: drawn outside vmap from the member's own copy of the global RNG, in the order and with the
  calls torch's CPU dropout makes (`MemberDropout`), so they are the masks its separate run draws;
- its model selection (`callbacks.replaces`, the rule of `RunLocalCheckpoint`), its best.ckpt and its test pass
  (the member's own `TransferModule` in `trainer.test`, as `fit_and_test` tests);
- its failure: a member whose training loss is NaN/inf stops being stepped and fails alone.

A source pretraining stacks the same way (run/source_stack.py): its members have no plan (everything trains from
the start) and run through `MemberByMember`, a StackedModule that evaluates each member on its own slices instead of
under vmap (`fit_stacked(module_type=...)`), so that each cache entry is its separate pretraining's bit for bit.

What a group cannot hold is named by `why_sequential`; the caller (`sweep.group_job`, `run.tuning`) then runs the
members one after the other in the process, each exactly as alone. A group is not resumed from a checkpoint (no
last.ckpt is written): a killed group's members run again (their finished siblings are skipped by the sweeper, a
tuned point's finished candidates and folds are reused).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from transferlab.config import plain
from transferlab.training.batches import TensorBatches
from transferlab.training.callbacks import LAST, PlanSchedule, non_finite, replaces
from transferlab.training.checkpoints import SafeCheckpointIO, _start_over
from transferlab.training.fit import FitOutcome, own_processes, trainer_plugins
from transferlab.training import optim as optim_nodes
from transferlab.training.module import TransferModule
from transferlab.training.progress import ProgressLine
from transferlab.transfer.plan import TransferPlan

log = logging.getLogger(__name__)

BEST = "best.ckpt"
# Layers that draw random numbers in training mode; nn.Dropout is reproduced per member (MemberDropout), the others
# would draw one stream for the whole group.
RANDOM_LAYERS = ("Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "DropPath")
# Training settings (`TransferModule.optim`) that reach the fit only as the options of each member's optimizer
# parameter groups (`TransferModule.param_groups`), so members may differ in them (a tuned point's candidates).
# (`decay_norm_and_bias` is not one: it moves 1-D parameters between groups, so the members' groups differ.)
GROUP_OPTIONS = ("lr", "weight_decay", "lr_decay")
TRAINER_KEYS_OURS = ("logger", "callbacks", "enable_checkpointing", "enable_model_summary", "num_sanity_val_steps",
                     "max_epochs")


@dataclass
class Member:
    """One run of the group as its `Experiment.build` left it, and what its fit needs."""

    module: TransferModule
    batches: tuple  # (train, val, test) TensorBatches
    plan: TransferPlan | None  # None: a source pretraining (every parameter trains from the start, no schedule)
    ckpt_dir: Path
    rng: torch.Tensor  # the global CPU RNG state its separate fit would start from
    select: str = "best_val"
    select_epoch: int | None = None
    logger: Any = None  # its own CSV/W&B logger: its curves are logged there epoch by epoch while the group trains


@dataclass
class MemberFit:
    """A member's training, before its test: its selection, curves and kept weights (or its failure)."""

    # val/acc, val/loss at each validation check, "epoch": the 1-based epoch it followed (FitOutcome.history)
    history: dict[str, list[float]] = field(default_factory=lambda: {"val/acc": [], "val/loss": [], "epoch": []})
    train_loss: list[float] = field(default_factory=list)  # mean training loss since the previous check, per check
    kept_acc: float | None = None
    kept_loss: float | None = None
    selected_epoch: int | None = None
    selected_step: int = 0
    kept_state: dict[str, torch.Tensor] | None = None
    error: BaseException | None = None
    epochs: int = 0  # epochs and optimizer steps the group ran (as Lightning counts them for one run)
    steps: int = 0


# ----------------------------------------------------------------------------- what a group can hold
def why_sequential(members: list[Member], *, train_cfg, trainer_cfg, epochs: list[int]) -> str | None:
    """The reason these members cannot train as one stacked model, or None when they can."""
    first = members[0]
    trainer = plain(trainer_cfg)
    if len(members) < 2:
        return "a group of one"
    if any(not isinstance(m.batches[0], TensorBatches) for m in members):
        return "the task is too large to hold in memory (DataLoader batches)"
    if len({(len(m.batches[0].y), m.batches[0].batch_size) for m in members}) > 1:
        return "the members' training sets differ in size"
    if len({len(m.batches[1].y) for m in members}) > 1:
        return "the members' validation sets differ in size"
    if len(set(epochs)) > 1:
        return "the members' step budgets differ"
    if len({m.module.input_block for m in members}) > 1:
        return "the feature cache serves some members only"
    if len({(m.select, m.select_epoch) for m in members}) > 1:
        return "the members' selection rules differ"
    differ = sorted({k for m in members for k in {*m.module.optim, *first.module.optim}
                     if k not in GROUP_OPTIONS and m.module.optim.get(k) != first.module.optim.get(k)})
    if differ:
        return f"the members' training settings differ in {', '.join(differ)} (only {', '.join(GROUP_OPTIONS)} may)"
    if first.plan is not None and first.plan.peft is not None:
        return "PEFT modules (LoRA, VPT) are not stacked"
    if any(m.module.l2sp for m in members):
        return "L2-SP's anchor is per member"
    layouts = [group_layout(named_groups(m.module)) for m in members]
    if any(layout != layouts[0] for layout in layouts[1:]):
        return "the members' optimizer parameter groups differ"
    if optim_nodes.reads_metric(train_cfg.get("scheduler")):
        return f"the scheduler {optim_nodes.target(train_cfg.get('scheduler'))} follows each member's own val/acc"
    not_elementwise = optim_nodes.why_not_stacked(train_cfg.get("optimizer"))
    if not_elementwise:
        return not_elementwise
    if bool(train_cfg.get("compile")):
        return "train.compile"
    if trainer.get("gradient_clip_val"):
        return "gradient clipping by norm is not elementwise per member"
    if int(trainer.get("accumulate_grad_batches") or 1) != 1:
        return "gradient accumulation"
    if trainer.get("overfit_batches") or any(
            trainer.get(k) is not None and not (isinstance(trainer.get(k), float) and trainer.get(k) == 1.0)
            for k in ("val_check_interval", "limit_val_batches", "limit_train_batches")):
        return "a validation or batch schedule other than every epoch, every batch"
    if str(trainer.get("precision")) not in ("32-true", "32"):
        return f"trainer.precision={trainer.get('precision')}"
    devices = trainer.get("devices")
    if trainer.get("strategy") not in (None, "auto") or (isinstance(devices, int) and devices > 1) or (
            isinstance(devices, list) and len(devices) > 1):
        return "more than one device"
    for name, mod in first.module.net.named_modules():
        if type(mod).__name__ in RANDOM_LAYERS and float(getattr(mod, "p", getattr(mod, "drop_prob", 0)) or 0) > 0:
            return f"{name} ({type(mod).__name__}) draws random numbers the group cannot give each member"
        if type(mod) is nn.Dropout and mod.p >= 1:
            return f"{name}: dropout p={mod.p}"
    return None


# ----------------------------------------------------------------------------- per-member dropout
class MemberDropout(nn.Module):
    """nn.Dropout inside the stacked forward: multiplies by this member's mask, set from outside vmap.

    torch's CPU dropout (`at::native::dropout`, not the fused kernel, which is for accelerators) draws
    `empty_like(x).bernoulli_(1 - p)`, divides it by 1 - p and multiplies; `masks` draws the same from each member's
    own RNG state, in the order the forward calls the layers, so a member gets its separate run's masks bit for bit.
    On a GPU the masks are drawn the same way on the CPU and moved: fresh, independent per member, not the ones a
    separate GPU run (Philox) would draw."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.mask: torch.Tensor | None = None
        self.shapes: list | None = None  # while probing: the input shapes of this layer's calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.shapes is not None:
            self.shapes.append(tuple(x.shape))
            return x
        if self.mask is None:
            raise RuntimeError("MemberDropout called without a mask")
        return x * self.mask


def swap_dropouts(net: nn.Module) -> list[tuple[str, MemberDropout]]:
    """Replace every nn.Dropout of `net` (in place) by a MemberDropout; return them with their names."""
    out = []
    for name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is nn.Dropout:
                swap = MemberDropout(child.p)
                swap.train(child.training)
                setattr(mod, child_name, swap)
                out.append((f"{name}.{child_name}" if name else child_name, swap))
    return out


def _key(name: str) -> str:
    return name.replace(".", "__")


def named_groups(module: TransferModule) -> list[dict[str, Any]]:
    """The module's optimizer groups (`TransferModule.param_groups`) with parameter names in place of tensors."""
    names = {id(p): n for n, p in module.net.named_parameters()}
    return [{k: v for k, v in g.items() if k != "params"} | {"names": [names[id(p)] for p in g["params"]]}
            for g in module.param_groups()]


def group_options(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "names"} for g in groups]


def group_layout(groups: list[dict[str, Any]]) -> list[tuple[Any, list[str]]]:
    return [(g.get("name"), list(g["names"])) for g in groups]


# ----------------------------------------------------------------------------- the stacked module
class StackedModule(L.LightningModule):
    """K TransferModules of one architecture as stacked tensors; `net` is member 0's structure (and modes, which
    `PlanSchedule` drives as in a single run), evaluated per member by functional_call under vmap."""

    def __init__(self, members: list[Member]):
        super().__init__()
        self.members = members
        first = members[0].module
        self.optim = first.optim
        self.input_block = first.input_block
        self.net = copy.deepcopy(first.net)
        self.dropouts = swap_dropouts(self.net)
        params, buffers = stack_module_state([m.module.net for m in members])
        self._groups = [named_groups(m.module) for m in members]  # each member's own options (why_sequential)
        self.trained_names = [n for g in self._groups[0] for n in g["names"]]
        names = {id(p): n for n, p in first.net.named_parameters()}
        rel = {id(p): n for n, p in first.net.backbone_parameters()}
        self.block_name = {names[i]: r for i, r in rel.items()}  # full name -> block-relative (plan) name
        # One stacked leaf per trained tensor when every member's optimizer groups carry the same options (a seed
        # group); K leaves of the single run's shape, stacked in each forward, when a learning rate or weight decay
        # is each member's own (a tuned point's candidates): a parameter group holds whole leaves.
        self.per_member = any(group_options(g) != group_options(self._groups[0]) for g in self._groups[1:])
        self.trained = nn.ParameterDict() if self.per_member else nn.ParameterDict(
            {_key(n): nn.Parameter(params[n].detach().clone()) for n in self.trained_names})
        self.trained_members = nn.ModuleList([nn.ParameterDict(
            {_key(n): nn.Parameter(params[n][k].detach().clone()) for n in self.trained_names})
            for k in range(len(members))] if self.per_member else [])
        self.fixed = nn.Module()  # frozen parameters and buffers: moved with the module, never stepped
        self.fixed_names = [n for n in params if n not in set(self.trained_names)] + list(buffers)
        for n in self.fixed_names:
            self.fixed.register_buffer(_key(n), (params[n] if n in params else buffers[n]).detach().clone())
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        self.k = len(members)
        self.fits = [MemberFit() for _ in members]
        self.alive = [True] * self.k
        self.rng = [m.rng.clone() for m in members]
        self._probes: dict[tuple, list[tuple[MemberDropout, tuple]]] = {}
        self._held: tuple[dict, dict] | None = None  # the stacked state while nothing steps (`_hold`)
        self._train_sum = torch.zeros(self.k, dtype=torch.float64)
        self._train_n = 0
        self._val = torch.zeros(3, self.k, dtype=torch.float64)  # correct, loss sum, count
        self._val_stacked = True  # False: one validation set for all (fit_stacked)
        self.val_batches: StackedBatches | None = None  # set by fit_stacked
        self.val_epochs: frozenset[int] | None = None  # 1-based epochs validated (fit_stacked); None: every one

    # -- state
    def _leaves(self, n: str) -> list[nn.Parameter]:
        """The leaves the optimizer steps for trained tensor `n`: the stacked one, or each member's."""
        if self.per_member:
            return [d[_key(n)] for d in self.trained_members]
        return [self.trained[_key(n)]]

    def _trained(self, n: str) -> torch.Tensor:
        return torch.stack([d[_key(n)] for d in self.trained_members]) if self.per_member else self.trained[_key(n)]

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self._held is not None:
            return self._held
        trained = set(self.trained_names)
        params = {n: (self._trained(n) if n in trained else getattr(self.fixed, _key(n))) for n in self.param_names}
        buffers = {n: getattr(self.fixed, _key(n)) for n in self.buffer_names}
        return params, buffers

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's net state (parameters and buffers, as `TransferNet.state_dict` names them), on the CPU."""
        params, buffers = self._state()
        return {n: t[k].detach().to("cpu", copy=True) for n, t in {**params, **buffers}.items()}

    def _hold(self, on: bool) -> None:
        """While nothing steps (a validation pass and the selections after it), the per-member leaves are stacked
        once, not for every batch and every member's kept state."""
        self._held = None
        if on and self.per_member:
            with torch.no_grad():
                self._held = self._state()

    # -- forward
    def _dropout_masks(self, x: torch.Tensor, stacked: bool) -> list[list[torch.Tensor]] | None:
        """Per active dropout call of the forward, the K members' masks stacked: [K, *shape] each."""
        if not any(d.training and d.p > 0 for _, d in self.dropouts):
            return None
        one = x[0] if stacked else x
        key = (tuple(one.shape), tuple(d.training for _, d in self.dropouts))  # a schedule activates blocks
        if key not in self._probes:  # the layers' input shapes for this batch shape, from one member's forward
            for _, d in self.dropouts:
                d.shapes = []
            params, buffers = self._state()
            with torch.no_grad():
                functional_call(self.net, ({n: t[0] for n, t in params.items()},
                                           {n: t[0].clone() for n, t in buffers.items()}), (one,),
                                {"start": self.input_block})
            calls = []
            for _, d in self.dropouts:
                calls += [(d, s) for s in d.shapes]
                d.shapes = None
            if any(sum(c[0] is d for c in calls) > 1 for _, d in self.dropouts):
                raise RuntimeError("a dropout layer called twice in one forward cannot take a per-member mask")
            self._probes[key] = calls  # in the order the layers ran
        calls = self._probes[key]
        masks: list[list[torch.Tensor]] = [[] for _ in calls]
        saved = torch.get_rng_state()
        try:
            for k in range(self.k):
                torch.set_rng_state(self.rng[k])
                for i, (d, shape) in enumerate(calls):
                    masks[i].append(torch.empty(shape, dtype=one.dtype).bernoulli_(1 - d.p).div_(1 - d.p))
                self.rng[k] = torch.get_rng_state()
        finally:
            torch.set_rng_state(saved)
        return [torch.stack(m).to(one.device) for m in masks]

    def _logits(self, x: torch.Tensor, stacked: bool = True, masks=None) -> torch.Tensor:
        params, buffers = self._state()
        key = (tuple((x[0] if stacked else x).shape), tuple(d.training for _, d in self.dropouts))
        layers = [d for d, _ in self._probes[key]] if masks is not None else []

        def one(p, b, xk, mk):
            for d, m in zip(layers, mk):
                d.mask = m
            try:
                return functional_call(self.net, (p, b), (xk,), {"start": self.input_block})
            finally:
                for d in layers:
                    d.mask = None

        return vmap(one, in_dims=(0, 0, 0 if stacked else None, 0), randomness="error")(
            params, buffers, x, masks or [])

    # -- loops
    def on_train_epoch_start(self) -> None:
        epoch = int(self.current_epoch)
        plan = self.members[0].plan
        for n in self.trained_names:  # a schedule's not-yet-trained blocks get no gradient (grad None: no step)
            rel = self.block_name.get(n)
            for leaf in self._leaves(n):
                leaf.requires_grad_(plan is None or rel is None or plan.trainable_at(rel, epoch))

    def training_step(self, batch, batch_idx):
        x, y = batch
        masks = self._dropout_masks(x, stacked=True)
        logits = self._logits(x, masks=masks)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(self.k, -1).mean(1)
        values = losses.detach().to("cpu", torch.float64)
        for k in range(self.k):
            if self.alive[k] and not math.isfinite(float(values[k])):
                self.alive[k] = False  # fails alone: its slice is no longer in the loss
                self.fits[k].error = non_finite(float(values[k]), int(self.current_epoch), int(self.global_step))
                log.warning("group member %d: %s", k, self.fits[k].error)
        alive = [k for k in range(self.k) if self.alive[k]]
        if not alive:
            self.trainer.should_stop = True
            return None
        self._train_sum += torch.where(torch.isfinite(values), values, 0) * len(y[0])
        self._train_n += len(y[0])
        return losses[alive].sum()

    def on_train_epoch_end(self) -> None:
        epoch = int(self.current_epoch) + 1
        if self.val_epochs is not None and epoch not in self.val_epochs:
            return  # the training loss keeps accumulating until the next check, as a single run's does
        for k in range(self.k):
            if self.alive[k] and self._train_n:
                self.fits[k].train_loss.append(float(self._train_sum[k] / self._train_n))
        self._train_sum.zero_()
        self._train_n = 0
        self._validate()
        self._log_members(epoch)

    def _log_members(self, epoch: int) -> None:
        """Each living member's check into its own logger, as its single run logs it (train/loss over the epochs
        since the previous check, val/*; step = the 0-based epoch), while the group trains."""
        for k, (member, fit) in enumerate(zip(self.members, self.fits)):
            if not member.logger or not self.alive[k]:
                continue
            row: dict[str, Any] = {"epoch": epoch - 1}
            if fit.train_loss:
                row["train/loss"] = fit.train_loss[-1]
            if fit.history["epoch"] and fit.history["epoch"][-1] == epoch:
                row["val/acc"], row["val/loss"] = fit.history["val/acc"][-1], fit.history["val/loss"][-1]
            member.logger.log_metrics(row, step=epoch - 1)

    def _validate(self) -> None:
        """Every member on its validation set after each scheduled epoch (training/budget.py), as a single run
        validates (eval mode, no gradient), then each member's selection. Run here rather than through
        Lightning's evaluation loop, whose set-up and tear-down per epoch (mode capture and restore, hook dispatch)
        was most of a one-step epoch's framework cost: the parameters are those Lightning would validate (no step in
        between, the LR schedule steps after this hook)."""
        was = self.net.training
        self.net.eval()
        self._val.zero_()
        self._hold(True)
        try:
            with torch.no_grad():
                for x, y in self.val_batches:
                    self._val_step(x.to(self.device), y.to(self.device))
            self.net.train(was)
            self._select()
        finally:
            self._hold(False)

    def _val_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        stacked = self._val_stacked
        logits = self._logits(x, stacked=stacked)
        yk = y if stacked else y.expand(self.k, *y.shape)
        loss = F.cross_entropy(logits.flatten(0, 1), yk.flatten(), reduction="none").view(self.k, -1)
        self._val[0] += (logits.argmax(-1) == yk).sum(1).to("cpu", torch.float64)
        self._val[1] += loss.detach().sum(1).to("cpu", torch.float64)
        self._val[2] += yk.shape[1]

    def _select(self) -> None:
        epoch = int(self.current_epoch) + 1
        for k, (member, fit) in enumerate(zip(self.members, self.fits)):
            if not self.alive[k]:
                continue
            # In float32, as torchmetrics computes a single run's val/acc and val/loss: the same ties, same curves.
            acc = float(self._val[0, k].float() / self._val[2, k].float())
            loss = float((self._val[1, k] / self._val[2, k]).float())
            fit.history["val/acc"].append(acc)
            fit.history["val/loss"].append(loss)
            fit.history["epoch"].append(epoch)
            if replaces(member.select, member.select_epoch, epoch, acc, loss, fit.kept_acc, fit.kept_loss):
                fit.kept_acc, fit.kept_loss, fit.selected_epoch = acc, loss, epoch
                fit.selected_step = int(self.global_step)
                fit.kept_state = self.member_state(k)
        self.log("val/acc", float(self._val[0].sum() / self._val[2].sum()))  # the group's mean, for the bar

    def configure_optimizers(self):
        """Member 0's optimizer node over the groups: each member's own groups over its own leaves (per_member), or
        the shared groups over the stacked leaves. An LR schedule scales every group from its own initial rate, as
        each member's does alone."""
        stores = list(enumerate(self.trained_members)) if self.per_member else [(0, self.trained)]
        groups = [{k: v for k, v in g.items() if k != "names"} | {"params": [store[_key(n)] for n in g["names"]]}
                  for k, store in stores for g in self._groups[k]]
        return optim_nodes.configure(self.optim, groups)


class MemberByMember(StackedModule):
    """The stacked module with each member's forward run on its own slices, one member after the other, instead of
    under vmap: every member then goes through the very kernels its separate fit runs (a convolution under vmap is
    a grouped convolution, which sums in another order), and the optimizer, stepping the stacked tensors
    elementwise, gets its separate fit's gradients bit for bit. The group still pays one Trainer and one loop for
    K fits. Used for source pretraining, whose entries are shared by every later run that reads them: an entry is
    the one `pretrain_source` stores, not one within rounding of it (AdamW from scratch turns rounding into
    visibly different weights within a few epochs)."""

    def __init__(self, members):
        super().__init__(members)
        self._layouts: dict[tuple, tuple] = {}

    def _own_layout(self, k: int, xk: torch.Tensor) -> torch.Tensor:
        """`xk` with the strides member k's own batch has: its loader's gather (`TensorBatches`) keeps the layout
        of the task's tensor (a one-channel image tensor can be channels-last), which chooses the convolution's
        kernel; a slice of the stacked batch is always contiguous."""
        key = (k, tuple(xk.shape))
        if key not in self._layouts:  # the gather its loader does, on as many rows
            own = self.members[k].batches[0].x
            self._layouts[key] = own[torch.zeros(len(xk), dtype=torch.long, device=own.device)].stride()
        stride = self._layouts[key]
        if xk.stride() == stride:
            return xk
        return torch.empty_strided(xk.shape, stride, dtype=xk.dtype, device=xk.device).copy_(xk)

    def _logits(self, x: torch.Tensor, stacked: bool = True, masks=None) -> torch.Tensor:
        params, buffers = self._state()
        key = (tuple((x[0] if stacked else x).shape), tuple(d.training for _, d in self.dropouts))
        layers = [d for d, _ in self._probes[key]] if masks is not None else []
        out = []
        for k in range(self.k):
            for d, m in zip(layers, masks or []):
                d.mask = m[k]
            try:  # slices of the stacked tensors: BatchNorm's running statistics update the member's slice in place
                out.append(functional_call(self.net, ({n: t[k] for n, t in params.items()},
                                                      {n: t[k] for n, t in buffers.items()}),
                                           (self._own_layout(k, x[k]) if stacked else x,),
                                           {"start": self.input_block}))
            finally:
                for d in layers:
                    d.mask = None
        return torch.stack(out)


class StackedBatches:
    """The members' batch iterators zipped, each batch stacked: x [K, B, ...], y [K, B]. Each member keeps its
    own shuffle (its `TensorBatches` generator). `shared=True` (validation sets equal across members): the first
    member's batches as they are, evaluated once per member without copies."""

    def __init__(self, loaders: list[TensorBatches], shared: bool = False):
        self.loaders, self.shared = loaders, shared

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        if self.shared:
            yield from self.loaders[0]
            return
        for batches in zip(*self.loaders):
            yield torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])


def _same(tensors: list[torch.Tensor]) -> bool:
    return all(t.shape == tensors[0].shape and torch.equal(t, tensors[0]) for t in tensors[1:])


def fit_stacked(members: list[Member], *, max_epochs: int, trainer_cfg, val_epochs=None,
                module_type: type[StackedModule] = StackedModule) -> list[MemberFit]:
    """Train the members together for `max_epochs`, validating after the 1-based `val_epochs` (None: every
    epoch); each member's selection, curves and kept weights. `module_type`: a StackedModule that evaluates the
    members another way (run/source_stack.py)."""
    for m in members:  # a group starts from epoch 0: an earlier single attempt's resume state is set aside
        last = m.ckpt_dir / LAST
        if last.exists():
            _start_over([last, m.ckpt_dir / BEST], f"{last}: a vectorised group does not resume single runs")
    module = module_type(members)
    vals = [m.batches[1] for m in members]
    shared = _same([v.x for v in vals]) and _same([v.y for v in vals])
    module._val_stacked = not shared
    module.val_batches = StackedBatches(vals, shared=shared)
    module.val_epochs = frozenset(int(e) for e in val_epochs) if val_epochs else None
    kwargs = {k: v for k, v in plain(trainer_cfg).items() if k not in TRAINER_KEYS_OURS}
    kwargs.pop("plugins", None)
    trainer = L.Trainer(max_epochs=int(max_epochs), logger=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0, plugins=[own_processes()],
                        callbacks=[*([PlanSchedule(members[0].plan)] if members[0].plan is not None else []),
                                   ProgressLine(label=f"group of {len(members)} ({members[0].ckpt_dir.parent.name})")],
                        **kwargs)
    trainer.fit(module, StackedBatches([m.batches[0] for m in members]))  # validation: StackedModule._validate
    for fit in module.fits:
        fit.epochs, fit.steps = int(trainer.current_epoch), int(trainer.global_step)
    return module.fits


def keep_member(member: Member, fit: MemberFit) -> FitOutcome:
    """Write the member's selected model as its best.ckpt (the format `fit_and_test` writes, sealed) and load it
    into the member's module; its outcome without a test (a tuned point's candidate is tested only if chosen). A
    member that failed raises its error."""
    if fit.error is not None:
        raise fit.error
    if fit.kept_state is None:
        raise RuntimeError("no model was selected (no validation epoch ran)")
    module = member.module
    module.net.load_state_dict(fit.kept_state, strict=True)
    member.ckpt_dir.mkdir(parents=True, exist_ok=True)
    best = member.ckpt_dir / BEST
    SafeCheckpointIO().save_checkpoint({
        "epoch": fit.selected_epoch - 1, "global_step": fit.selected_step,
        "pytorch-lightning_version": L.__version__, "state_dict": module.state_dict(),
    }, best)
    return FitOutcome(test={}, best_val_acc=float(fit.kept_acc), best_ckpt=str(best), epochs=fit.epochs,
                      history={k: list(v) for k, v in fit.history.items()}, resumed_from=None, steps=fit.steps,
                      selected_epoch=fit.selected_epoch)


def test_member(member: Member, fit: MemberFit, *, trainer_cfg) -> FitOutcome:
    """Keep the member's selected model (`keep_member`) and test it once from its best.ckpt with the member's own
    module, so its test metrics come from the code a separate run uses (logged to the member's logger, which got
    its curves during the fit)."""
    logger = member.logger or False
    kept = keep_member(member, fit)
    module, best = member.module, Path(kept.best_ckpt)
    kwargs = {k: v for k, v in plain(trainer_cfg).items() if k not in TRAINER_KEYS_OURS}
    plugins = trainer_plugins(kwargs)
    trainer = L.Trainer(logger=logger, enable_checkpointing=False, enable_model_summary=False, plugins=plugins,
                        **kwargs)
    # Read back (checksum verified) and loaded as `trainer.test(ckpt_path=best)` loads a single run's best.ckpt.
    module.load_state_dict(SafeCheckpointIO().load_checkpoint(best)["state_dict"], strict=True)
    tested = trainer.test(module, member.batches[2], verbose=False)[0]
    return dataclasses.replace(kept, test={k: float(v) for k, v in tested.items()})
