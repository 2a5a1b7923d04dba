"""Experiment loggers from config: csv (default), wandb (offline unless asked), none.

W&B: one run per job (source pretraining and target training are separate runs, `job_type` source/target), grouped
by the sweep name, config = the resolved config flattened plus the sweep axes at top level (so a dashboard can
group by `freeze` or `arm` and plot against `n_per_class`) and, for a target run, the source model it used
(`source_model.*`, on a cache hit too: the run that trained it may be in another group, or this group may have
none), summary = the final metrics, finished with a failing exit code when the job failed. The mode is passed to
each `wandb.init`; `WandbLogger(offline=True)` would set WANDB_MODE for the whole process and leak into later
multirun jobs.

A vectorised seed group (`sweep.group_job`) holds one W&B run per member open at once, so that each member's curves
reach its own run while the group trains (`concurrent=True`: `wandb.init(reinit="create_new")`, each logger bound
to its own run object, finished by `finish_logger` through that object, never through the process-wide
`wandb.run`).

A job that passes its fingerprint logs to the run of its attempt (`training.wandb_attempt`: the id derives from the
fingerprint and the attempt, `resume="allow"`), so a resumed or requeued job continues its W&B run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from transferlab.config import flatten, plain


def wandb_tags(cfg) -> list[str]:
    """Tags from the preset: transfer preset + strategy, source, target, backbone, then logger.wandb.tags."""
    t = cfg.transfer
    tags = [f"transfer:{t.name}", f"strategy:{t.strategy}",
            f"source:{cfg.source.get('name')}", f"target:{cfg.target.get('name')}",
            f"backbone:{cfg.backbone.get('name')}"]
    return [*tags, *[str(x) for x in cfg.logger.wandb.tags]]


def wandb_run_name(cfg, job_type: str, axes: dict[str, Any]) -> str:
    if job_type == "source":
        return f"source {cfg.source.get('name')} {cfg.backbone.get('name')}"
    n = axes.get("n_per_class")
    arm = axes.get("arm") or f"{cfg.transfer.name} cut={axes.get('cut')} freeze={axes.get('freeze')}"
    return f"{arm} n={'all' if n is None else n} seed={cfg.seed}"


def wandb_run_ref(logger) -> dict[str, Any] | None:
    """Where this job's W&B run is (id, name, project, entity, group), or None when it logs no W&B run. Kept in
    the source cache entry's meta, so every target run that loads that source model can name the run that
    trained it (`source_config`)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    return {"id": run.id, "name": run.name, "project": run.project, "entity": run.entity or None,
            "group": run.group or None}


def source_config(status: str | None, meta: dict[str, Any] | None) -> dict[str, Any]:
    """A target run's reference to its source model, as flat W&B config keys: `source_model.cache` (hit, miss,
    stacked, none, unused), its test accuracy and its W&B run (`source_model.wandb_id`, `_name`, `_project`, `_group`;
    None when it was trained without W&B, or before its cache entry recorded the run)."""
    meta = meta or {}
    ref = meta.get("wandb_run") or {}
    return {"source_model.cache": status, "source_model.test_acc": meta.get("test/acc"),
            **{f"source_model.wandb_{k}": ref.get(k) for k in ("id", "name", "project", "group")}}


def make_logger(cfg, run_dir: Path, job_type: str, *, axes: dict[str, Any] | None = None, concurrent: bool = False,
                fingerprint: str | None = None, resumes: bool = False):
    """The job's logger (False for none). `concurrent`: W&B runs of other loggers stay open beside this one (a
    vectorised group's members); each is bound to its own run (see the module docstring). `fingerprint`: the
    job's identity, which names its W&B run per attempt; `resumes`: the fit continues `run_dir`'s last.ckpt (the
    same attempt, the same run). Without a fingerprint W&B picks a new id (a preview's throwaway runs)."""
    kind = str(cfg.logger.kind)
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        prior = Path(run_dir) / "logs" / job_type / "metrics.csv"
        if prior.exists():  # a resumed run: Lightning deletes an existing metrics.csv, so keep it as the earlier part
            k = 1
            while prior.with_name(f"metrics.part{k}.csv").exists():
                k += 1
            prior.replace(prior.with_name(f"metrics.part{k}.csv"))
        return CSVLogger(save_dir=str(run_dir), name="logs", version=job_type)
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        w = cfg.logger.wandb
        axes = dict(axes or {})
        config = {**flatten(plain(cfg)), **axes, "job_type": job_type}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        ident = {}
        if fingerprint is not None:
            from transferlab.training.wandb_attempt import attempt_run_id

            ident = {"id": attempt_run_id(run_dir, fingerprint, resumes=resumes), "resume": "allow"}

        def build(mode: str) -> WandbLogger:
            import wandb

            init = dict(project=w.project, entity=w.entity, group=str(w.group or cfg.name), job_type=job_type,
                        tags=wandb_tags(cfg), name=wandb_run_name(cfg, job_type, axes), mode=mode, config=config,
                        settings=wandb.Settings(init_timeout=float(w.init_timeout)), **ident)
            if concurrent:  # Lightning's WandbLogger would reuse the process's current run: give it its own
                run = wandb.init(**init, dir=str(run_dir), reinit="create_new")
                logger = WandbLogger(experiment=run, save_dir=str(run_dir))
                logger.own_run = run
                return logger
            return WandbLogger(**init, save_dir=str(run_dir), reinit="finish_previous")

        mode = str(w.mode)
        logger = build(mode)
        if mode == "online":  # init now, bounded by init_timeout: no key / no network never hangs a run
            try:
                logger.experiment
            except Exception as e:  # noqa: BLE001 - any init failure -> offline, the run goes on
                import warnings

                first = str(e).splitlines()[0] if str(e) else ""
                warnings.warn(f"W&B online init failed ({type(e).__name__}: {first}); logging offline instead "
                              f"(upload later with `wandb sync {run_dir}/wandb/offline-run-*`)", stacklevel=2)
                _forget_failed_init()
                try:
                    logger = build("offline")
                except Exception:  # noqa: BLE001 - the id still held (other runs of this process kept the service)
                    if "id" not in ident:
                        raise
                    ident["id"] = f"{ident['id']}-offline"  # an offline run of its own: `wandb sync` uploads it
                    logger = build("offline")
        return logger
    raise ValueError(f"logger.kind={kind!r}: one of csv, wandb, none")


def _forget_failed_init() -> None:
    """After an online init that failed, the process's W&B service may still hold the run id it was given (wandb
    0.31: "run ID ... is in use" on the offline retry with the same id). Shut the service down when no other run
    of this process is open (a stacked group's members hold theirs): the offline retry starts a fresh one."""
    import wandb

    try:
        if wandb.run is None:
            wandb.teardown()
    except Exception:  # noqa: BLE001 - best effort: the retry reports its own error if it still fails
        pass


def _scalars(metrics: dict[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = v
    return out


def finish_logger(logger, failed: bool, summary: dict[str, Any] | None = None) -> None:
    """End the W&B run of this job so multirun jobs never merge: final scalar metrics into the run summary
    (test/acc, best val/acc, epochs, ...), exit code 1 on failure so a failed job never shows as finished."""
    from lightning.pytorch.loggers import WandbLogger

    run = getattr(logger, "own_run", None)  # make_logger(concurrent=True): finish exactly this logger's run
    # logger=None: the job failed before its target logger existed; a source W&B run may still be open.
    wandb = sys.modules.get("wandb")
    if run is None and (isinstance(logger, WandbLogger) or (logger is None and wandb is not None)):
        import wandb

        run = wandb.run  # the process's current run: this job's
    if run is not None:
        final = _scalars(summary)
        if final:
            run.summary.update(final)
        run.summary["status"] = "failed" if failed else "ok"
        run.finish(exit_code=1 if failed else 0)
