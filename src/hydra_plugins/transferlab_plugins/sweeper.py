"""`hydra/sweeper=transferlab`: Hydra's basic sweeper plus grids, stable point folders, resume and a summary.

The logic lives in `transferlab.sweep.state`; this class only wires it into Hydra's sweeper protocol.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from transferlab import compat

log = logging.getLogger(__name__)


class _ReusingLoader:
    """The config loader as the launcher sees it during a launch: each job's config is composed from a copy of
    the config composed once per set of group choices (with the launch's own hydra overrides), then the job's
    value overrides are applied and `hydra.overrides` / `hydra.job.override_dirname` are rebuilt, the steps Hydra's
    `_load_configuration_impl` takes after composing. A job whose value overrides reach into `hydra` beyond its
    sweep folder is composed in full. Everything else is delegated to the wrapped loader.

    Why: the launcher composes every job again (the sweeper already did, for its fingerprint), a sizeable share of
    a tiny job's fixed cost (docs/speed.md). tests/test_sweeps.py checks the jobs' configs equal a full compose."""

    PER_JOB_HYDRA = ("hydra.sweep.dir", "hydra.sweep.subdir")

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._parser = OverridesParser.create(config_loader=loader)
        self._bases: dict = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # unpickling looks up __setstate__ before _loader exists: no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        loader = self._loader
        parsed = self._parser.parse_overrides(list(sweep_overrides))
        is_group = [loader.repository.group_exists(o.key_or_group) for o in parsed]
        values = [o for o, g in zip(parsed, is_group) if not g]
        if any(o.is_hydra_override() and o.key_or_group not in self.PER_JOB_HYDRA for o in values):
            return loader.load_sweep_config(master_config, list(sweep_overrides))
        groups = tuple(o.input_line for o, g in zip(parsed, is_group) if g)
        if groups not in self._bases:
            self._bases[groups] = loader.load_sweep_config(master_config, list(groups))
        cfg = copy.deepcopy(self._bases[groups])
        master_hydra = OmegaConf.to_container(master_config.hydra.overrides.hydra)
        every = self._parser.parse_overrides([*master_hydra, *sweep_overrides])
        with read_write(cfg):
            compat.apply_overrides(cfg, values)
            cfg.hydra.overrides.hydra = [o.input_line for o in every if o.is_hydra_override()]
            cfg.hydra.overrides.task = [o.input_line for o in every if not o.is_hydra_override()]
            names = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = compat.overrides_dirname(
                [o for o in every if not o.is_hydra_override()], kv_sep=names.kv_sep,
                item_sep=names.item_sep, exclude_keys=names.exclude_keys)
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class TransferlabSweeper(compat.basic_sweeper()):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 grids: Optional[dict] = None, resume: bool = True, dry_run: bool = False,
                 only: Optional[str] = None, vectorize: Optional[str] = None, vectorize_max: int = 16,
                 estimate: bool = True) -> None:
        from transferlab.sweep.groups import MODES
        from transferlab.sweep.progress import SELECTABLE

        super().__init__(max_batch_size=max_batch_size, params=_plain(params))
        self.grids = _plain(grids)
        self.resume = bool(resume)
        self.dry_run = bool(dry_run)
        self.estimate = bool(estimate)  # the dry run's cost preview (transferlab.sweep.preview)
        if only is not None and str(only) not in SELECTABLE:
            raise ValueError(f"hydra.sweeper.only={only!r}: null (every point not done) or one of {list(SELECTABLE)}")
        self.only = None if only is None else str(only)
        if vectorize is not None and str(vectorize) not in MODES:
            raise ValueError(f"hydra.sweeper.vectorize={vectorize!r}: null (one job per point) or one of {list(MODES)}")
        if int(vectorize_max) < 1:
            raise ValueError(f"hydra.sweeper.vectorize_max={vectorize_max!r}: the most members of a group, >= 1")
        self.vectorize = None if vectorize is None else str(vectorize)
        self.vectorize_max = int(vectorize_max)
        self._units: dict[str, list] = {}  # leader point name -> the group's points (vectorize)
        self._parser: Any = None
        self._bases: dict = {}
        self._depth_memo: dict = {}

    def _point_identity(self, overrides: List[str], out_dir: str) -> tuple[str, str, dict]:
        """(fingerprint, seed-group key, replicate values) of a job as its result.json will record them
        (`transferlab.run.identity` of the resolved config as the task function sees it, input file contents
        included): the fingerprint names the point, the seed-group key and the replicates form vectorised groups
        (`transferlab.sweep.groups`) from the composed config, never from how the overrides spell it."""
        from transferlab.config import plain
        from transferlab.run import identity
        from transferlab.run.ddp import refuse_in_sweep
        from transferlab.run.lease import per_device
        from transferlab.run.values import check_values

        cfg = self._point_config(overrides, out_dir)  # resolved as the run resolves it
        refuse_in_sweep(cfg)  # one device per point: ConfigError (exit 2) before any folder exists
        per_device(cfg)  # lease.per_device >= 1, likewise
        check_values(cfg)  # a bad value anywhere in the grid: nothing runs (run/values.py)
        resolved = plain(cfg)
        ins = identity.inputs(resolved)
        return (identity.fingerprint(resolved, ins), identity.seed_group_key(resolved, ins),
                identity.replicate_values(resolved))

    def _point_config(self, overrides: List[str], out_dir: str) -> DictConfig:
        """A job's config as the task function will see it (without `hydra`).

        A Hydra compose costs ~0.2-0.8 s here, too slow for hundreds of points (the launcher composes each job
        anyway). So each distinct set of config-group choices is composed once, and a point's value overrides are
        applied to a copy the way Hydra itself applies them after composition (compat.apply_overrides), with
        the config in struct mode so an unknown key fails here with Hydra's own message, before anything runs.
        """
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
        with read_write(cfg):
            compat.apply_overrides(cfg, [o for o, g in zip(parsed, is_group) if not g])
            with open_dict(cfg):
                if "paths" in cfg:
                    cfg.paths.output_dir = out_dir
        return cfg

    def _depths(self, overrides: List[str]) -> List[str]:
        """`transfer.freeze=all_depths`: every freeze depth of this point's backbone and cut (composed once per
        set of overrides other than the seeds and the sample size, which cannot change the block count)."""
        from transferlab.run.identity import REPLICATES, SAMPLE_SIZE
        from transferlab.transfer.plan import freeze_depths

        key = tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in (*REPLICATES, *SAMPLE_SIZE))
        if key not in self._depth_memo:
            self._depth_memo[key] = freeze_depths(self._point_config(list(key), ""))
        return self._depth_memo[key]

    def sweep(self, arguments: List[str]) -> Any:
        from transferlab.sweep import state as S
        from transferlab.sweep.points import expand

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        master = HydraConfig.instance().cfg
        try:  # transfer.freeze=all_depths reads each point's composed backbone
            points = expand(self._parser.parse_overrides, self.params, self.grids, list(arguments),
                            depths=self._depths)
        finally:
            HydraConfig.instance().cfg = master
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        # Every point is composed and fingerprinted first: an unknown key or a missing config fails here, with
        # Hydra's own message, before any folder exists.
        points = self._fingerprint(points, sweep_dir)
        if self.dry_run:
            return self._dry_run(points, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = S.sweep_lock(sweep_dir)  # a second copy of a running sweep stops here, before writing anything
        try:
            return self._sweep(points, sweep_dir)
        finally:
            lock.release()

    def _fingerprint(self, points: list, sweep_dir: Path) -> list:
        """Each point's fingerprint and folder; a point whose config equals an earlier one's is run once."""
        from transferlab.errors import ConfigError

        master = HydraConfig.instance().cfg
        by_hash: dict[str, Any] = {}
        problems: dict[str, Any] = {}  # every point's, each line once: the whole grid's problems in one error
        try:
            for p in points:
                p.dir = str(sweep_dir / p.name)
                try:
                    p.hash, p.seed_group, p.replicates = self._point_identity(list(p.overrides), p.dir)
                except ConfigError as e:
                    problems.update((str(item), item) for item in e.items)
                    continue
                if p.hash in by_hash:  # same config reached through other overrides: run it once
                    log.info("point %s has the same config as %s; not run twice", p.name, by_hash[p.hash].name)
                    continue
                by_hash[p.hash] = p
        finally:
            HydraConfig.instance().cfg = master
            self._bases.clear()
        if problems:
            raise ConfigError(list(problems.values()))
        return list(by_hash.values())

    def _select(self, points: list, sweep_dir: Path) -> None:
        """Mark what this launch does not run: points done (an ok result of their fingerprint in the sweep
        folder; resume=true only), points another launch's job still runs or SLURM still holds (never two jobs in
        one folder), and with `only=failed|missing|stale` the points in another state."""
        from transferlab.sweep import state as S
        from transferlab.sweep.progress import states_of

        finished = S.finished_runs(sweep_dir) if self.resume else {}
        for p in points:
            if p.hash in finished:
                p.status = "skipped"
                own = Path(p.dir)
                p.dir = str(own if finished[p.hash] == own else finished[p.hash])
        todo = [p for p in points if p.status != "skipped"]
        states = states_of(sweep_dir, todo) if todo else {}
        for p in todo:
            state = states[p.name]
            if state.state in ("running", "queued"):
                p.status, p.error = "busy", f"{state.state} ({state.job}; {state.reason})"
            elif self.only is not None and state.state != self.only:
                p.status = "unselected"

    def _dry_run(self, points: list, sweep_dir: Path) -> list:
        self._select(points, sweep_dir)
        name = str(self.config.get("name", sweep_dir.name))
        word = {"skipped": "skip", "busy": "busy", "unselected": "----"}
        for p in points:
            where = f"  (done in {Path(p.dir).name})" if p.status == "skipped" and Path(p.dir).name != p.name else ""
            where = f"  ({p.error})" if p.status == "busy" else where
            print(f"{word.get(p.status, 'run '):4} {p.name}{where}")
        todo = sum(p.status == "pending" for p in points)
        done = sum(p.status == "skipped" for p in points)
        if self.vectorize is not None:
            from transferlab.sweep import groups

            units = groups.group([p for p in points if p.status == "pending"], self.vectorize_max)
            print(f"vectorize={self.vectorize}: {todo} points in {len(units)} jobs", flush=True)
        if todo and not self.estimate:
            print("cost estimate skipped (hydra.sweeper.estimate=false)", flush=True)
        elif todo:  # the cost preview: short probes in a temporary folder (transferlab.sweep.preview)
            from transferlab.sweep import preview

            def config_of(p: Any) -> DictConfig:
                cfg = self._point_config(list(p.overrides), p.dir)
                with read_write(cfg):
                    OmegaConf.resolve(cfg)  # as this point's job will resolve it, whichever point is composed next
                return cfg

            master = HydraConfig.instance().cfg
            try:
                preview.show([p for p in points if p.status == "pending"], config_of, hydra_cfg=self.config.hydra,
                             vectorize=self.vectorize, vectorize_max=self.vectorize_max)
            finally:
                HydraConfig.instance().cfg = master
                self._bases.clear()
            sys.stdout.flush()
        print(f"sweep {name}: {todo} to run, {done} done (dry run: nothing launched)", flush=True)
        return []

    def _sweep(self, points: list, sweep_dir: Path) -> Any:
        from transferlab.sweep import state as S

        assert self.config is not None and self.launcher is not None
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        name = str(self.config.get("name", sweep_dir.name))
        summary = S.Summary(name=name, sweep_dir=str(sweep_dir), points=points, argv=list(sys.argv[1:]))
        for old, new in S.adopt_renamed_folders(sweep_dir, points):
            log.info("point folder %s renamed to %s (canonical order of its overrides)", old.name, new.name)
        self._select(points, sweep_dir)
        pending = [p for p in points if p.status == "pending"]
        log.info("sweep %s: %d points, %d already done (skipped), %d to run%s", name, len(points),
                 summary.count("skipped"), len(pending), f" (only {self.only})" if self.only else "")
        for p in points:
            if p.status == "busy":
                log.warning("point %s not launched: another launch's job is %s", p.name, p.error)
        summary.write()  # the declared points, before anything runs: a killed sweep still says what it was
        for p in pending:
            S.prepare_point_dir(p.dir, p, fresh=not self.resume)
        os.environ[S.SWEEP_PID_ENV] = str(os.getpid())  # local workers exit when this process dies
        returns = self._launch(pending, sweep_dir)
        summary.end = time.time()
        summary.write()
        print(summary.report(), flush=True)
        log.info("sweep %s: %s", name, summary.line)
        if summary.count("submitted"):
            arrays = sorted({str(p.job).split("_")[0] for p in points if p.status == "submitted" and p.job})
            print(f"submitted {summary.count('submitted')} points as SLURM job {', '.join(arrays)}; follow them with:\n"
                  f"  python -m transferlab.status {sweep_dir}", flush=True)
        if summary.count("failed"):
            raise SystemExit(1)
        return returns

    def _launch(self, pending: list, sweep_dir: Path) -> List[Sequence[JobReturn]]:
        """Launch the pending points in batches and judge each by what it left on disk.

        A parallel launcher can lose a whole batch to one dead worker: when a worker is killed (e.g. by the OOM
        killer), joblib kills the others and raises for every job. Then a point that never started (no
        started.json) is launched again with the others, and a point that had started is run again on its own:
        if it dies alone, it was the one that died and only it fails; if it finishes, it was collateral damage.
        """
        self._returns: List[Sequence[JobReturn]] = []
        self._job_idx = 0
        pending = self._group(pending)
        if getattr(self.launcher, "detach", False):
            return self._submit(pending, sweep_dir)
        queue = list(pending)
        for _ in range(3):
            lost, suspects = [], []
            batch_size = self.max_batch_size or len(queue) or 1
            for start in range(0, len(queue), batch_size):
                batch = queue[start:start + batch_size]
                for p, r, error in self._launch_batch(batch, sweep_dir):
                    if r is None and self._left_nothing(p):
                        (suspects if self._started(p) else lost).append((p, error))
                    else:
                        self._judge(p, r)
            for p, _ in suspects:
                log.warning("point %s was running when its batch was lost; running it again on its own", p.name)
                self._units.pop(p.name, None)
                ((p, r, error),) = self._launch_batch([p], sweep_dir)
                if r is None and self._left_nothing(p):
                    if self._started(p):
                        p.status = "failed"
                        p.error = f"no result.json: its job died, also when run on its own ({error})"
                    else:
                        lost.append((p, error))
                else:
                    self._judge(p, r)
            if not lost:
                break
            if len(lost) == len(queue) and not suspects:  # nothing started at all: the launcher itself fails
                break
            queue = [p for p, _ in lost]
            self._units.clear()  # launched again one point per job
            log.warning("%d points never started (the launcher lost their batch); launching them again", len(queue))
        for p, why in lost:
            p.status, p.error = "failed", f"never started: the launcher failed ({why})"
        return self._returns

    def _submit(self, pending: list, sweep_dir: Path) -> List[Sequence[JobReturn]]:
        """Detached SLURM launch: submit every pending point and return; each point is recorded as submitted with
        its job id (sweep.json), and later `transferlab-status` / `transferlab-report` calls read what finished."""
        if not pending:
            return self._returns
        self._launch_batch(pending, sweep_dir)
        jobs = list(getattr(self.launcher, "submitted", []))
        for i, leader in enumerate(pending):
            for p in self._units.get(leader.name, [leader]):
                p.status, p.job = "submitted", jobs[i] if i < len(jobs) else None
        return self._returns

    def _group(self, pending: list) -> list:
        """`vectorize=seeds`: the leaders of the launch units (`transferlab.sweep.groups`), each group's members
        kept in `_units` and listed in the leader's group file; without it, the points as they are."""
        from transferlab.sweep import groups

        if self.vectorize is None:
            return pending
        leaders = []
        for unit in groups.group(pending, self.vectorize_max):
            leaders.append(unit[0])
            if len(unit) > 1:
                self._units[unit[0].name] = unit
                groups.write(unit)
        if self._units:
            log.info("vectorize=seeds: %d points in %d jobs (%d groups of up to %d members)", len(pending),
                     len(leaders), len(self._units), self.vectorize_max)
        return leaders

    def _launch_batch(self, batch: list, sweep_dir: Path) -> list:
        """[(point, JobReturn or None, launcher error)]: None for every point when the launcher raised."""
        from transferlab.sweep.ledger import GROUP_FILE, STARTED_FILE

        for p in batch:
            for member in self._units.get(p.name, [p]):
                (Path(member.dir) / STARTED_FILE).unlink(missing_ok=True)
        jobs = [[*p.overrides, f"hydra.sweep.dir={_quote(str(sweep_dir))}", f"hydra.sweep.subdir={_quote(p.name)}",
                 *([f"group={_quote(str(Path(p.dir) / GROUP_FILE))}"] if p.name in self._units else [])]
                for p in batch]
        error = None
        context = self.launcher.hydra_context
        loader = context.config_loader
        if compat.is_basic_launcher(self.launcher):  # in-process jobs only: other launchers pickle the context
            context.config_loader = _ReusingLoader(loader)  # one compose per set of group choices, not per job
        try:
            results = list(self.launcher.launch(jobs, initial_job_idx=self._job_idx))
        except Exception as e:  # e.g. a joblib worker was killed: judge every point by what is on disk
            error = f"{type(e).__name__}: {e}".splitlines()[0]
            log.error("launcher failed: %s", error)
            results = [None] * len(batch)
        finally:
            context.config_loader = loader
        self._job_idx += len(batch)
        self._returns.append([r for r in results if r is not None])
        return [(member, r, error) for p, r in zip(batch, results) for member in self._units.get(p.name, [p])]

    @staticmethod
    def _started(p: Any) -> bool:
        from transferlab.sweep import state as S

        return S.was_started(p.dir)

    @staticmethod
    def _left_nothing(p: Any) -> bool:
        from transferlab.sweep.ledger import folder_state

        return folder_state(p.dir, p.hash)[0] == "missing"

    @staticmethod
    def _judge(p: Any, r: Optional[JobReturn]) -> None:
        from transferlab.sweep.ledger import folder_state

        status, error = folder_state(p.dir, p.hash)
        if status == "done":
            p.status, p.error = "ok", None
            return
        p.status = "failed"
        if r is not None and r.status == JobStatus.FAILED and compat.job_exception(r) is not None:
            exc = compat.job_exception(r)
            error = error or f"{type(exc).__name__}: {exc}"
        if status == "stale" and not error:
            error = "result.json was written under another fingerprint (did the config or data change mid-sweep?)"
        p.error = error or "no result.json: the job died before writing one (killed, timed out, out of memory?)"


def _plain(node: Any) -> Any:
    if node is None:
        return None
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=False)
    return dict(node)
