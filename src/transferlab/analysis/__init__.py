"""Sweep analysis: result.json files -> tidy tables -> statistics -> plots -> one HTML report (and W&B).

Each module has one job: `collect` reads, `stats` computes, `plots` draws, `html` assembles, `wandb_push` uploads.
"""
