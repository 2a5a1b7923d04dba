"""A run's identity: the hash of everything that shapes its training, not where it writes, logs or runs.

Light on purpose (no torch): the sweeper hashes every point before launching, and with a parallel launcher its
process should not pay for the training stack its workers import anyway.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Where/how a run writes, logs and is placed; changing these never makes a checkpoint belong to another experiment.
INFRA_KEYS = ("paths", "logger", "name", "hydra", "trainer", "lease", "checkpoint")


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that shapes a run's training (not where it writes or how it logs): resume key."""
    full = OmegaConf.to_container(cfg, resolve=True)
    keep = {k: v for k, v in full.items() if k not in INFRA_KEYS}
    blob = json.dumps(keep, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
