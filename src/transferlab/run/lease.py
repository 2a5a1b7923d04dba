"""Device lease: G concurrent jobs on one machine each get their own device, never two on one.

Hydra's joblib launcher has no GPU awareness and reuses worker processes (a per-job CUDA_VISIBLE_DEVICES comes
too late), so every job would land on GPU 0. Instead each job takes one of G slot files under a file lock
(`slot<k>.lock`) and trains on device k (`trainer.devices=[k]`). The OS drops the lock when the process exits,
SIGKILL included, so a dead job never holds a slot. Without a GPU the slots are CPU cores: the job is pinned to
core k and uses one thread, which is the same mechanism and can be tested on any machine.

Config (`lease:`): `slots` null = off (sequential runs and SLURM, which pins devices itself), `auto` = one per GPU
(else per CPU core), or an int; `per_device` = K jobs sharing each device (slots x K leases; slot k is on device
k mod slots, so the lowest-free-first order spreads jobs over the devices before doubling up); `dir` = where the
slot files live (node-local); `poll_s`. When K jobs per device pay and when a vectorised group is better:
docs/sweeps.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.errors import ConfigError, problem
from transferlab.run.identity import device_count
from transferlab.store.atomic import shared_lock

log = logging.getLogger(__name__)
LOG_FILE = "leases.jsonl"  # one line per finished lease: slot, pid, start, end (an audit trail)


def _gpu_count(cfg: DictConfig) -> int:
    if str(cfg.trainer.get("accelerator", "auto")) not in ("auto", "gpu", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def per_device(cfg: DictConfig) -> int:
    """`lease.per_device`: how many jobs share one device (1 when leasing is off or the key is absent)."""
    k = (cfg.get("lease") or {}).get("per_device", 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(problem("lease.per_device", k, "an integer >= 1 (jobs sharing each device)"))
    return k


def devices(cfg: DictConfig) -> tuple[int, str]:
    """(number of devices leased out, 'gpu'|'cpu'), or (0, '') when leasing is off."""
    spec = cfg.get("lease") or {}
    slots = spec.get("slots")
    if slots in (None, False, 0, "off"):
        return 0, ""
    gpus = _gpu_count(cfg)
    kind = "gpu" if gpus else "cpu"
    available = gpus or len(os.sched_getaffinity(0))
    if slots == "auto":
        return available, kind
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(problem("lease.slots", slots, "null (off), 'auto' or an integer >= 1"))
    if kind == "gpu" and slots > gpus:
        raise ConfigError(problem("lease.slots", slots, f"at most the {gpus} visible GPUs"))
    return slots, kind


def slot_count(cfg: DictConfig) -> tuple[int, str]:
    """(number of slots: devices x `lease.per_device`, 'gpu'|'cpu'), or (0, '') when leasing is off."""
    n, kind = devices(cfg)
    k = per_device(cfg)  # checked even when leasing is off: a bad value is an error wherever it is set
    return n * k, kind


def acquire(folder: Path, n: int, poll_s: float = 0.2, timeout_s: float | None = None) -> tuple[int, FileLock]:
    """Block until one of n slots is free; return (slot index, held lock). Lowest free index first."""
    folder.mkdir(parents=True, exist_ok=True)
    locks = [shared_lock(folder / f"slot{k}.lock") for k in range(n)]
    t0 = time.monotonic()
    while True:
        for k, lock in enumerate(locks):
            try:
                lock.acquire(timeout=0)
                return k, lock
            except Timeout:
                continue
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no free device slot of {n} in {folder} after {timeout_s} s")
        time.sleep(poll_s)


def _log_lease(folder: Path, entry: dict) -> None:
    line = (json.dumps(entry) + "\n").encode()
    # 0666 minus the umask, as open(..., "a") would: under umask 002 colleagues sharing the lease dir can append
    fd = os.open(folder / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)  # one small O_APPEND write: lines from concurrent jobs never interleave
    finally:
        os.close(fd)


@contextmanager
def lease_device(cfg: DictConfig) -> Iterator[int | None]:
    """Hold a device slot for the body; set `trainer.devices=[k]` (GPU) or pin to core k (CPU). Yields k or None."""
    n, kind = slot_count(cfg)
    if n == 0:
        yield None
        return
    devices = cfg.trainer.get("devices", 1)
    if device_count(OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices) != 1:
        # The lease gives a job one device; another count would also be another run (identity keeps the count).
        raise ConfigError(problem("trainer.devices", devices, "1 with a device lease (hydra/launcher=local_parallel "
                                                              "runs one device per job)"))
    import torch

    spec = cfg.lease
    folder = Path(str(spec.get("dir") or Path(os.environ.get("TMPDIR", "/tmp")) / "transferlab-leases"))
    k, lock = acquire(folder, n, float(spec.get("poll_s", 0.2)))
    device = k % (n // per_device(cfg))  # slots 0..D-1 are one per device, D..2D-1 the second on each, ...
    start = time.time()
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        with open_dict(cfg):  # the slot itself stays out of cfg: it must not change the run's fingerprint
            if kind == "gpu":
                cfg.trainer.accelerator = "gpu"
                cfg.trainer.devices = [device]
            else:
                cores = sorted(affinity)
                os.sched_setaffinity(0, {cores[device % len(cores)]})
                torch.set_num_threads(1)
                cfg.trainer.devices = 1
        log.info("leased %s slot %d of %d: device %d (%s)", kind, k, n, device, folder)
        yield k
    finally:
        if kind == "cpu":
            os.sched_setaffinity(0, affinity)
            torch.set_num_threads(threads)
        _log_lease(folder, {"slot": k, "device": device, "kind": kind, "pid": os.getpid(), "start": start,
                            "end": time.time()})
        lock.release()
