"""Experiment loggers from config: csv (default), wandb (offline unless asked), none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def make_logger(cfg, run_dir: Path, job_type: str, *, axes: dict[str, Any] | None = None):
    kind = str(cfg.logger.kind)
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs", version=job_type)
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        w = cfg.logger.wandb
        config = OmegaConf.to_container(cfg, resolve=True)
        config.update(axes or {})
        # mode is passed to wandb.init per run; WandbLogger(offline=True) would set WANDB_MODE process-wide.
        return WandbLogger(
            project=w.project, entity=w.get("entity"), group=w.get("group"), job_type=job_type,
            tags=list(w.get("tags") or []), save_dir=str(run_dir), mode=w.get("mode", "offline"),
            config=config, reinit="finish_previous",
        )
    raise ValueError(f"logger.kind={kind!r}: one of csv, wandb, none")


def finish_logger(logger, failed: bool) -> None:
    """End the W&B run of this job (failing exit code on failure) so multirun jobs never merge."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
