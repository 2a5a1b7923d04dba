"""transferlab's configs as the package `transferlab.conf` (setup.py maps this folder onto it), so that Hydra finds
them as `pkg://transferlab.conf` in an installed wheel as in this checkout. Only the YAML files here are configs."""
