"""Entry point: compose the config (Hydra), run one experiment, print where the result is.

    python -m transferlab.train target=digits_5to9 transfer.freeze=2 target.n_per_class=10 seed=1
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = os.environ.get("TRANSFERLAB_CONF", str(Path(__file__).resolve().parents[2] / "conf"))
log = logging.getLogger("transferlab")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from transferlab.display import print_result
    from transferlab.errors import ConfigError
    from transferlab.experiment import run

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # Hydra's handlers print and file these
        logging.getLogger(name).handlers.clear()
    try:
        record = run(cfg)
    except ConfigError as e:
        lines = "\n".join(f"  - {p}" for p in e.problems)
        print(f"transferlab: invalid configuration (nothing was run):\n{lines}", file=sys.stderr)
        raise SystemExit(2) from None
    print_result(record, cfg.paths.output_dir)
    return record["metrics"].get("test/acc")


if __name__ == "__main__":
    main()
