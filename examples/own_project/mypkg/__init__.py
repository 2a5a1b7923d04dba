"""A researcher's own package for transferlab: a backbone (`nets.py`) and a task (`data.py`), used through the
config files in ../conf without changing transferlab."""
