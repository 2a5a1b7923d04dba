"""One experiment, end to end: setup and validation, the source model, the plan, the fit, the run record.

`identity` (when two runs are the same) and `record` (result.json) are torch-free, so the sweeper can import them
without the training stack; import `experiment` for `run`.
"""
