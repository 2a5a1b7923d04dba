"""`hydra/sweeper=transferlab`: Hydra's basic sweeper plus grids, stable point folders, resume and a summary.

The logic lives in `transferlab.sweep`; this class only wires it into Hydra's sweeper protocol.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class TransferlabSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 grids: Optional[dict] = None, resume: bool = True, dry_run: bool = False) -> None:
        super().__init__(max_batch_size=max_batch_size, params=_plain(params))
        self.grids = _plain(grids)
        self.resume = bool(resume)
        self.dry_run = bool(dry_run)
        self._parser: Any = None
        self._bases: dict = {}

    def _point_hash(self, overrides: List[str], out_dir: str) -> str:
        """Config hash of a job as its result.json will record it (resolved, as the task function sees it).

        A Hydra compose costs ~0.2-0.8 s here, too slow for hundreds of points (the launcher composes each job
        anyway). So each distinct set of config-group choices is composed once, and a point's value overrides are
        applied to a copy the way Hydra itself applies them after composition (_apply_overrides_to_config).
        """
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        from transferlab.identity import fingerprint

        loader = self.hydra_context.config_loader
        parsed = self._parser.parse_overrides(overrides)
        is_group = [o.is_hydra_override() or loader.repository.group_exists(o.key_or_group) for o in parsed]
        groups = tuple(o.input_line for o, g in zip(parsed, is_group) if g)
        if groups not in self._bases:
            full = loader.load_sweep_config(self.config, list(groups))
            task = copy.deepcopy(full)
            with read_write(task), open_dict(task):
                del task["hydra"]
            self._bases[groups] = (full, task)
        full, task = self._bases[groups]
        HydraConfig.instance().set_config(full)  # for ${hydra:...} interpolations in the task config
        cfg = copy.deepcopy(task)
        with read_write(cfg), open_dict(cfg):
            ConfigLoaderImpl._apply_overrides_to_config([o for o, g in zip(parsed, is_group) if not g], cfg)
            if "paths" in cfg:
                cfg.paths.output_dir = out_dir
        return fingerprint(OmegaConf.to_container(cfg, resolve=True))

    def sweep(self, arguments: List[str]) -> Any:
        from transferlab import sweep as S

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        points = S.expand(self._parser.parse_overrides, self.params, self.grids, list(arguments))
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # A second copy of a running sweep stops here, before writing anything (a dry run only reads).
        lock = None if self.dry_run else S.sweep_lock(sweep_dir)
        try:
            return self._sweep(points, sweep_dir)
        finally:
            if lock is not None:
                lock.release()

    def _sweep(self, points: list, sweep_dir: Path) -> Any:
        from transferlab import sweep as S

        assert self.config is not None and self.launcher is not None
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        name = str(self.config.get("name", sweep_dir.name))
        summary = S.Summary(name=name, sweep_dir=str(sweep_dir))

        master = HydraConfig.instance().cfg
        by_hash: dict[str, S.Point] = {}
        pending: list[tuple[S.Point, list[str]]] = []
        try:
            for p in points:
                p.dir = str(sweep_dir / p.name)
                p.hash = self._point_hash(list(p.overrides), p.dir)
                if p.hash in by_hash:  # same config reached through other overrides: run it once
                    log.info("point %s has the same config as %s; not run twice", p.name, by_hash[p.hash].name)
                    continue
                by_hash[p.hash] = p
                summary.points.append(p)
                status, _ = S.point_status(p.dir, p.hash)
                if self.resume and status == "ok":
                    p.status = "skipped"
                    continue
                # Pin the folder: a literal sweep dir (a timestamp resolved once) and the point's own subdir.
                pending.append((p, [*p.overrides, f"hydra.sweep.dir={_quote(str(sweep_dir))}",
                                    f"hydra.sweep.subdir={_quote(p.name)}"]))
        finally:
            HydraConfig.instance().cfg = master
            self._bases.clear()

        skipped = summary.count("skipped")
        log.info("sweep %s: %d points, %d already done (skipped), %d to run", name, len(summary.points), skipped,
                 len(pending))
        if self.dry_run:
            for p in summary.points:
                print(f"{'skip' if p.status == 'skipped' else 'run '} {p.name}")
            print(f"sweep {name}: {len(pending)} to run, {skipped} done (dry run: nothing launched)", flush=True)
            return []
        for p, _ in pending:
            S.prepare_point_dir(p.dir, p)
        returns: List[Sequence[JobReturn]] = []
        batch_size = self.max_batch_size or len(pending) or 1
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            try:
                results = list(self.launcher.launch([job for _, job in batch], initial_job_idx=start))
            except Exception as e:  # e.g. a joblib worker was killed: judge every point by what is on disk
                log.error("launcher failed: %s: %s", type(e).__name__, e)
                results = [None] * len(batch)
            returns.append([r for r in results if r is not None])
            for (p, _), r in zip(batch, results):
                status, error = S.point_status(p.dir, p.hash)
                if status == "ok":
                    p.status = "ok"
                    continue
                p.status = "failed"
                if r is not None and r.status == JobStatus.FAILED and r._return_value is not None:
                    exc = r._return_value
                    error = error or f"{type(exc).__name__}: {exc}"
                if status == "stale" and not error:
                    error = "result.json was written by another config (did the config files change mid-sweep?)"
                p.error = error or "no result.json: the job died before writing one (killed, timed out, out of memory?)"
        summary.write()
        print(summary.report(), flush=True)
        log.info("sweep %s: %s", name, summary.line)
        if summary.count("failed"):
            raise SystemExit(1)
        return returns


def _plain(node: Any) -> Any:
    if node is None:
        return None
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=False)
    return dict(node)
