"""Sweeps: which points a sweep has and how their folders are named (`points`), what state each point is in on
disk and the sweep's record (`state`), and local workers that end with their sweep (`orphan`). The Hydra sweeper
plugin (`hydra_plugins.transferlab_plugins.sweeper`) wires them into `-m` runs. Torch-free."""
