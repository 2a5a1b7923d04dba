"""One experiment: validate -> source model (cached) -> cut + freeze -> target fine-tune -> result record."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from transferlab import versions
from transferlab.backbones import backbone_label, build_backbone
from transferlab.config import plain, tune_grid
from transferlab.errors import failure_text
from transferlab.run import convergence, ddp, identity, labels
from transferlab.run.record import Metrics, RunRecord
from transferlab.run.scoring import score_run
from transferlab.run.setup import Prepared, prepare
from transferlab.store import feature_cache, source_cache
from transferlab.tasks import TaskData
from transferlab.training import options
from transferlab.training.batches import arrays_loaders, loaders, pick_device
from transferlab.training.callbacks import LAST, PlanSchedule
from transferlab.training.fit import FitOutcome, fit_and_test
from transferlab.training.loggers import (
    finish_logger,
    make_logger,
    source_config,
    wandb_run_ref,
)
from transferlab.training.module import TransferModule
from transferlab.transfer import init, peft
from transferlab.transfer.network import BACKBONE_PREFIX, TransferNet
from transferlab.transfer.plan import TransferPlan, build_target_net

log = logging.getLogger(__name__)


def resume_every_s(cfg: DictConfig) -> float:
    return float(cfg.checkpoint.every_s)


SOURCE_ENTRY = 2  # layout of a cached source model (`meta`: schema, key, block_names, made_by); source_entry_problem


def source_fit_parts(cfg: DictConfig, source: TaskData) -> tuple[TransferModule, tuple, str, dict]:
    """What a source pretraining fits, built as `pretrain_source` builds it: (the module at `pretrain.seed`, its
    (train, val, test) batches, its cache key, the trainer settings). A stacked pretraining of several
    `pretrain.seed` values (run/source_stack.py) builds each member here, so both start from the same state."""
    L.seed_everything(int(cfg.pretrain.seed), workers=True, verbose=False)
    net = TransferNet(build_backbone(cfg.backbone, source.input_shape), source.num_classes)
    # pretrain.seed acts through the seeding above and the batch order below; the module gets the optimizer
    # settings, in which the pretrainings of several seeds agree (`stacked.why_sequential` compares them)
    module = TransferModule(net, source.num_classes,
                            optim={k: v for k, v in plain(cfg.pretrain).items() if k != "seed"})
    key = identity.source_fingerprint(cfg, data=source.fingerprint())
    trainer = ddp.single_device(plain(cfg.trainer))  # a DDP run's launcher pretrains before any rank exists
    batches = loaders(source, int(cfg.pretrain.batch_size), int(cfg.pretrain.seed),
                      device=pick_device(trainer.get("accelerator"), trainer.get("devices")))
    return module, batches, key, trainer


def source_meta(cfg: DictConfig, key: str, module: TransferModule, outcome: FitOutcome, wall_s: float,
                logger) -> dict:
    """The `meta` of a source cache entry (also its meta.json), from the pretraining's outcome."""
    return {"schema": SOURCE_ENTRY, "key": key,
            "source": str(cfg.source.name), "backbone": backbone_label(cfg.backbone),
            "test/acc": outcome.test["test/acc"], "val/acc": outcome.best_val_acc, "epochs": outcome.epochs,
            "wall_s": wall_s, "block_names": list(module.net.backbone.block_names),
            "made_by": versions.versions_of(identity.SOURCE_MADE_BY),
            "wandb_run": wandb_run_ref(logger)}  # named by every target run that loads this model


def source_state(best_ckpt: str) -> dict:
    """The network's tensors of a pretraining's selected checkpoint: what a source cache entry stores."""
    state = source_cache.load_state(best_ckpt)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


def pretrain_source(cfg: DictConfig, source: TaskData, work_dir: Path) -> tuple[dict, dict]:
    """Train backbone + source head on the whole source task; return (state_dict, meta)."""
    module, batches, key, trainer = source_fit_parts(cfg, source)
    t0 = time.perf_counter()
    outcome = fit_and_test(
        module, batches,
        max_epochs=int(cfg.pretrain.max_epochs), trainer_cfg=trainer, ckpt_dir=work_dir / "checkpoints",
        logger=(src_logger := make_logger(cfg, work_dir, "source", fingerprint=key,  # its own W&B run, job_type=source
                                          resumes=(work_dir / "checkpoints" / LAST).exists())),
        fingerprint=key,  # a killed pretraining resumes
        resume_every_s=resume_every_s(cfg),
    )
    meta = source_meta(cfg, key, module, outcome, time.perf_counter() - t0, src_logger)
    finish_logger(src_logger, failed=False, summary=meta)
    return source_state(outcome.best_ckpt), meta


def source_entry_problem(obj: Any, key: str, cfg: DictConfig, source: TaskData) -> str | None:
    """Why a cached source model whose bytes passed their checksum still does not fit this code and this key, or
    None: another entry layout (`SOURCE_ENTRY`: older entries are retrained once), another key (the key holds the
    versions that made it: `identity.SOURCE_MADE_BY`), other block names, or weights that do not load into the
    backbone built now. What it cannot tell: a number in `meta` (the source test accuracy) rewritten and resealed
    by hand; only retraining would."""
    if not (isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and isinstance(obj.get("state_dict"), dict)):
        return "not a source model entry (it needs 'state_dict' and 'meta')"
    meta = obj["meta"]
    if meta.get("schema") != SOURCE_ENTRY:
        return f"entry layout {meta.get('schema')!r}, this code writes and reads {SOURCE_ENTRY}"
    if meta.get("key") != key:
        return f"made for key {meta.get('key')!r}, not {key}"
    import torch

    with torch.random.fork_rng(devices=[]):  # the check must not move the run's random stream
        net = TransferNet(build_backbone(cfg.backbone, source.input_shape, load_weights=False), source.num_classes)
    if meta.get("block_names") != list(net.backbone.block_names):
        return f"block names {meta.get('block_names')}, the backbone has {list(net.backbone.block_names)}"
    state = {k.removeprefix("net."): v for k, v in obj["state_dict"].items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        return f"its weights do not load into {backbone_label(cfg.backbone)}: {str(e).strip().splitlines()[0]}"
    return None


def source_weights(cfg: DictConfig, prep: Prepared, run_dir: Path) -> tuple[dict | None, str, str | None, dict]:
    """(state_dict, cache status, checkpoint path, meta) of the model whose blocks are copied; none when the run
    copies no source tensor (cut=0, or transfer.init=random_frozen)."""
    if not prep.plan.reads_source_weights:
        return None, "unused", None, {}
    if prep.source is None:  # source=none: the backbone's own initial weights are the "source"
        L.seed_everything(int(cfg.pretrain.seed), workers=True, verbose=False)
        blocks = build_backbone(cfg.backbone, prep.target.input_shape).blocks.state_dict()
        return {BACKBONE_PREFIX + k: v for k, v in blocks.items()}, "none", None, {}
    key = identity.source_fingerprint(cfg, data=prep.source.fingerprint())
    obj, status, path = source_cache.get_or_train(
        cfg.paths.cache_dir, key, lambda: pretrain_source(cfg, prep.source, run_dir / "source"),
        check=lambda entry: source_entry_problem(entry, key, cfg, prep.source))
    log.info("source model %s (%s): %s", key, status, path)
    return obj["state_dict"], status, str(path), obj["meta"]


def target_batches(cfg, plan: TransferPlan, task, net, epochs: int | None = None, features_of=None):
    """(train, val, test) batches for target training and the Decision: cached prefix features when `decide`
    says so (they enter the net at block `decision.start`), else the task's inputs. `features_of`: the task whose
    cache entry holds these features (a cv fold's: its point's task, same pool and test; the fold's val split is
    read from the pool's features, `feature_cache.feature_arrays`), else `task`."""
    device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
    opts = {"device": device, "channels_last": bool(cfg.train.channels_last)}
    bs, seed = int(cfg.train.batch_size), int(cfg.seed)
    decision = feature_cache.decide(cfg, plan, task, net, epochs)
    if not decision.use:
        return loaders(task, bs, seed, **opts), decision
    feats = feature_cache.get_or_compute(cfg, task if features_of is None else features_of, net, decision,
                                         device=device)
    log.info("feature cache %s: %d frozen blocks, key %s", decision.status, decision.depth, decision.key)
    return arrays_loaders(feature_cache.feature_arrays(task, feats), bs, seed, **opts), decision


def _count(net: TransferNet, plan: TransferPlan) -> tuple[int, int]:
    """(trainable, total) parameters: trainable = the new head plus what the plan trains at some point."""
    head = sum(p.numel() for p in net.head.parameters())
    backbone = [(plan.trains(n), p.numel()) for n, p in net.backbone_parameters()]
    return head + sum(k for t, k in backbone if t), head + sum(k for _, k in backbone)


MERGED_FILE = "merged.safetensors"


def save_merged(net: TransferNet, ckpt: str, run_dir: Path) -> str:
    """`peft.merge_on_save`: the tested model (`ckpt`) with LoRA folded into its weights, in timm's keys
    (`peft.merged_state`), written atomically to <run dir>/merged.safetensors; returns its path."""
    import copy

    from safetensors.torch import save_file

    from transferlab.store.atomic import atomic_path

    tested = copy.deepcopy(net)
    state = source_cache.load_state(ckpt)["state_dict"]
    tested.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}, strict=True)
    path = run_dir / MERGED_FILE
    with atomic_path(path) as tmp:
        save_file(peft.merged_state(tested), str(tmp))
    return str(path)


def warn_single_class(m: Metrics) -> None:
    """One warning line for a run whose tested model predicted one class on all of test: its accuracy is then the
    majority-class baseline at best, which a plain accuracy table does not show."""
    k = next(i for i, c in enumerate(m.test_pred_counts) if c)
    log.warning("the tested model predicted class %d for every test example: test/acc %.4f, majority-class "
                "baseline %.4f, balanced accuracy %.4f", k, m.test_acc, m.majority_acc, m.test_balanced_acc)


class Experiment:
    """One run in four steps, so that a vectorised seed group (`sweep.group_job`) can build its members one by one,
    train them together and close each the way `run` closes one:

    `open` (identity, checks, the record; raises ConfigError before anything is written) -> `build` (source
    weights, the target net, batches, scores, the module) -> a fit (`fit` here, or `training.stacked` for a group)
    -> `close` (metrics, convergence, result.json) or `fail`.
    """

    def __init__(self, cfg: DictConfig, inputs: dict | None = None, prepared: Prepared | None = None,
                 fingerprint: str | None = None, features_of: TaskData | None = None):
        """`inputs`: `identity.inputs(cfg)` when the caller has hashed them already (a tuned point's candidates
        read the point's files). `prepared`, `fingerprint` and `features_of`: a fold fit of a cv point
        (run/cv.py), whose data (the fold's split), checkpoint identity and cached prefix features are the
        point's own made for that fold."""
        self.features_of = features_of
        self.t0 = time.perf_counter()
        self.cfg = cfg
        # content of every file the run reads, hashed before anything else
        self.inputs = identity.inputs(cfg) if inputs is None else inputs
        self.fingerprint = identity.fingerprint(cfg, self.inputs) if fingerprint is None else fingerprint
        self.prep = prepare(cfg) if prepared is None else prepared  # raises ConfigError: nothing written yet
        self.run_dir = Path(cfg.paths.output_dir)
        self.record = self._record()
        self.logger = None
        self.net: TransferNet | None = None
        self.module: TransferModule | None = None
        self.batches = None
        self.cache = None

    def _record(self) -> RunRecord:
        cfg, prep = self.cfg, self.prep
        plan, target, budget = prep.plan, prep.target, prep.budget
        return RunRecord(
            status="running", name=str(cfg.name),
            # scratch has no source; scratch_long names the one whose pretraining steps it adds
            source=None if plan.copies_nothing and not plan.source_compute else str(cfg.source.name),
            target=str(cfg.target.name), backbone=backbone_label(cfg.backbone),
            transfer=str(cfg.transfer.name),
            # what the run is, decided by its plan and identity now; the report reads it back
            arm=plan.arm, arm_name=plan.name, is_baseline=plan.is_baseline, copies_nothing=plan.copies_nothing,
            seed_group=identity.seed_group_key(cfg, self.inputs), strategy=plan.strategy,
            cut=plan.cut, upper=plan.upper, freeze=plan.freeze_depth, frozen_blocks=list(plan.frozen),
            trainable_set=plan.label, bn=plan.bn,  # freeze is None for a transfer.trainable set (not a depth)
            unfreeze_epochs={b: plan.unfreeze_epoch(b) for b in plan.trainable},  # gradual / lp_ft schedule
            trainable_blocks=list(plan.trainable),
            n_per_class=cfg.target.get("n_per_class"), n_train=int(len(target.train_indices)),
            num_classes=target.num_classes, n_val=int(len(target.val_y)), n_test=int(len(target.test_y)),
            seed=int(cfg.seed), data_seed=int(cfg.data_seed), train_indices=[int(i) for i in target.train_indices],
            budget=budget.to_dict(), select=str(cfg.train.select), target_data=target.info, config=plain(cfg),
            labels_used=labels.labels_used(str(cfg.train.select), cfg.train.get("scheduler"),
                                           len(target.train_indices), len(target.val_y)),
            fingerprint=self.fingerprint, inputs=self.inputs, environment=versions.environment(),
        )

    def build(self, score: bool = True) -> None:
        """Source weights (cache), the target net at this run's seed, its batches, scores and module. `score`:
        False in a DDP rank, whose launcher scored the run (run/ddp.py)."""
        cfg, prep, record = self.cfg, self.prep, self.record
        plan, target, budget = prep.plan, prep.target, prep.budget
        state, record.source_cache, record.source_ckpt, record.source_metrics = source_weights(cfg, prep,
                                                                                               self.run_dir)
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        # No backbone.weights here: copied blocks come from the source model, the rest stay random (reinit/scratch).
        net = build_target_net(build_backbone(cfg.backbone, target.input_shape, load_weights=False), plan, state,
                               target.num_classes, seed=int(cfg.seed))
        if plan.init != init.SOURCE:  # a control arm's copied blocks: BatchNorm statistics of the target subset
            log.info("transfer.init=%s: %s", plan.init, init.recalibrate(net.backbone, plan, target.subset()[0]))
        record.trainable_params, record.total_params = _count(net, plan)
        record.peft = ({"method": "none"} if plan.peft is None else  # PEFT: the method and what it added
                       {**plan.peft.record(), "params": peft.added_params(net.backbone, plan.peft), "merged": None})
        # Frozen prefix computed once (cached features) when the plan allows it; batches then enter the net at
        # block cache.start, and the net and its checkpoint stay whole.
        self.batches, self.cache = target_batches(cfg, plan, target, net, budget.epochs, self.features_of)
        record.feature_cache = self.cache.record()
        # Transferability scores of the copied blocks as built, before any training (no effect on the fit).
        record.scores = score_run(cfg, prep, net, self.cache, state) if score else None
        self.net = net
        self.module = TransferModule(net, target.num_classes, optim={**plain(cfg.train), "max_epochs": budget.epochs},
                                     plan=plan, input_block=self.cache.start)  # plan.trains groups, lr_decay, L2-SP

    def open_logger(self, concurrent: bool = False, job_type: str = "target"):
        """The run's CSV/W&B logger, opened just before its fit. `concurrent`: a stacked group's members each
        hold their own W&B run at once (`training.loggers`). `job_type`: "candidate" for a tuned point's candidate
        (run/tuning.py), so W&B tells them from the points' own target runs."""
        record = self.record
        axes = {k: getattr(record, k) for k in ("n_per_class", "n_train", "freeze", "cut", "trainable_params")}
        axes["arm"] = self.prep.plan.arm  # scratch and freeze=0 both have freeze=0
        axes["arm_name"] = self.prep.plan.name  # the report's words for the arm ("linear probe", "scratch")
        if self.prep.plan.copies_nothing:  # nothing copied, so no depth is frozen: grouping by freeze must not pool it
            axes["freeze"] = None
        # A vectorised group's member never resumes (training/stacked.py): each group start is a new attempt.
        resumes = not concurrent and (self.run_dir / "checkpoints" / LAST).exists()
        self.logger = make_logger(self.cfg, self.run_dir, job_type, concurrent=concurrent,
                                  axes={**axes, **source_config(record.source_cache, record.source_metrics)},
                                  fingerprint=self.fingerprint, resumes=resumes)
        return self.logger

    def fit(self, logger=None, test: bool = True, stop_after: int | None = None) -> FitOutcome:
        """`logger`: None opens the run's own; False logs nothing (a DDP rank > 0, run/ddp.py). `test=False`: fit
        and select only (a tuned point's candidate, run/tuning.py). `stop_after`: end the fit after this many
        epochs of the planned ones, every schedule (LR, unfreezing) as in the whole plan (a cv point's fit on all
        n stops at the chosen step, run/cv.py)."""
        cfg, budget = self.cfg, self.prep.budget
        logger = self.open_logger() if logger is None else logger
        epochs, val_epochs = budget.epochs, budget.val_epochs
        if stop_after is not None:
            epochs = int(stop_after)
            val_epochs = tuple(sorted({e for e in val_epochs if e <= epochs} | {epochs}))
            log.info("stopping after epoch %d of the planned %d", epochs, budget.epochs)
        log.info("step budget: %d epochs x %d steps (%s); validation: %s", budget.epochs, budget.steps_per_epoch,
                 budget.rule, budget.val_rule)
        return fit_and_test(options.apply(self.module, cfg.train), self.batches,
                            max_epochs=epochs, trainer_cfg=cfg.trainer,  # training/budget.py
                            ckpt_dir=self.run_dir / "checkpoints", logger=logger,
                            callbacks=[PlanSchedule(self.prep.plan)],  # what trains per epoch, BN policy
                            fingerprint=self.fingerprint,  # resumes a killed run of this run identity
                            resume_every_s=resume_every_s(cfg),
                            select=str(cfg.train.select), select_epoch=cfg.train.select_epoch,
                            val_epochs=val_epochs, test=test)  # the validation schedule

    def close(self, outcome: FitOutcome) -> dict[str, Any]:
        """Metrics of the tested model, convergence, status ok; writes result.json and ends the logger."""
        record, module = self.record, self.module
        counts = module.test_counts  # per class, of the test split and of the tested model's predictions
        record.metrics = Metrics(test_acc=outcome.test.get("test/acc"), test_loss=outcome.test.get("test/loss"),
                                 test_balanced_acc=outcome.test.get("test/balanced_acc"),
                                 test_macro_f1=outcome.test.get("test/macro_f1"),
                                 test_auroc=outcome.test.get("test/auroc"),
                                 test_class_counts=counts.get("test/class_counts"),
                                 test_pred_counts=counts.get("test/pred_counts"),
                                 val_acc=outcome.best_val_acc, val_acc_history=outcome.history.get("val/acc", []),
                                 val_loss_history=outcome.history.get("val/loss", []),
                                 val_epoch_history=outcome.history.get("epoch", []), epochs=outcome.epochs,
                                 steps=outcome.steps)
        record.selected_epoch = outcome.selected_epoch
        record.single_class_prediction = record.metrics.single_class
        if record.single_class_prediction:
            warn_single_class(record.metrics)
        if record.cv:  # cv: was the mean held-out curve of the fold fits (each of the n held out once) still rising?
            mean = record.cv["mean"]
            verdict = convergence.judge(mean["val/acc"], record.n_train, epochs=mean["epoch"])
        else:
            verdict = convergence.judge(record.metrics.val_acc_history or [], record.n_val,
                                        epochs=record.metrics.val_epoch_history)
        record.converged, record.convergence = verdict.converged, verdict.to_dict()
        if verdict.converged is False:
            log.warning("%s: the run may be under-trained (converged: false in result.json); raise "
                        "train.min_steps or train.max_epochs", verdict.reason)
        record.status, record.target_ckpt, record.wall_s = "ok", outcome.best_ckpt, time.perf_counter() - self.t0
        record.resumed_from = outcome.resumed_from  # last.ckpt of a killed earlier attempt, else None
        plan = self.prep.plan
        if plan.peft is not None and plan.peft.merge_on_save:  # LoRA folded in: a plain timm model loads it
            record.peft["merged"] = save_merged(self.net, outcome.best_ckpt, self.run_dir)
        record.write(self.run_dir)
        finish_logger(self.logger, failed=False, summary=record.metrics.to_dict())
        return record.to_dict()

    def fail(self, e: BaseException) -> None:
        """Status failed with the error, written to result.json (the caller re-raises)."""
        record = self.record
        record.status, record.error = "failed", failure_text(e)
        record.wall_s = time.perf_counter() - self.t0
        record.write(self.run_dir)
        finish_logger(self.logger, failed=True, summary=record.metrics.to_dict())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment and write result.json atomically; config errors raise before anything is written.

    Returns the record as written (`RunRecord.to_dict`): what a caller reads is what result.json holds. A tuned
    point (`tune.train.*`) trains its candidates and tests the selected one (run/tuning.py)."""
    if tune_grid(cfg):
        from transferlab.run.tuning import run_tuned

        return run_tuned(cfg)
    if str(cfg.train.select) == "cv":
        from transferlab.run.cv import run_cv

        return run_cv(cfg)
    exp = Experiment(cfg)
    try:
        exp.build()
        return exp.close(exp.fit())
    except Exception as e:
        exp.fail(e)
        raise
