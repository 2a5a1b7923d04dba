"""Where transferlab's own configs are read from: one answer for the CLI, the compose API and the report.

The repository's top-level conf/ ships as the package `transferlab.conf` (in a checkout, src/transferlab/conf is a
symlink to it: a wheel holds copies of the files, an editable install reads the live folder), and Hydra reads it as
`pkg://transferlab.conf`. So every console script finds the configs from any folder, from a checkout or from an
installed wheel, with nothing to set.

A researcher *adds* configs next to ours with Hydra's own `--config-dir <folder>` or
`hydra.searchpath=[file://<folder>]`: their groups and presets join ours (docs/extending.md).
`TRANSFERLAB_CONF=<folder>` *replaces* ours with another folder of the same layout (a modified copy of conf/).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "transferlab.conf"
ENV = "TRANSFERLAB_CONF"
VERSION_BASE = "1.3"


def search_path() -> str:
    """Hydra's primary config path: `pkg://transferlab.conf`, or the absolute folder `TRANSFERLAB_CONF` names."""
    folder = os.environ.get(ENV)
    return str(Path(folder).expanduser().resolve()) if folder else f"pkg://{PACKAGE}"


def initialize():
    """Hydra's compose API on the configs the CLI reads: `with conf_source.initialize(): cfg = compose("config")`."""
    from hydra import initialize_config_dir, initialize_config_module

    import transferlab.config  # noqa: F401 - the schemas conf/ starts from (Hydra's plugin scan imports them too)

    path = search_path()
    if path.startswith("pkg://"):
        return initialize_config_module(PACKAGE, version_base=VERSION_BASE)
    return initialize_config_dir(path, version_base=VERSION_BASE)
