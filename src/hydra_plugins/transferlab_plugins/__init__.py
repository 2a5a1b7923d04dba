"""transferlab's Hydra plugins (Hydra only loads plugins from the `hydra_plugins` namespace package).

Hydra imports this package whenever it starts (it scans `hydra_plugins` for plugins: the CLI, the compose API,
sweep workers), so importing transferlab's config schemas here registers them for every composition of conf/.
"""

import transferlab.config  # noqa: F401 - registers the `schema/*` configs conf/ starts from
