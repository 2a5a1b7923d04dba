"""Terminal output for people: a short rich table of a finished run."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_result(record: dict, run_dir: str | Path) -> None:
    m = record["metrics"]
    source = record["source"] or "nothing transferred"
    table = Table(title=f"transferlab: {source} -> {record['target']} ({record['backbone']})",
                  show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("transfer", f"{record['transfer']} (cut={record['cut']}, upper={record['upper']}, "
                     f"{record.get('trainable_set') or 'freeze=' + str(record['freeze'])})"),
        ("trainable blocks", ", ".join(record["trainable_blocks"])),
        ("trainable / total params", f"{record['trainable_params']:,} / {record['total_params']:,}"),
        ("train examples (n_per_class)", f"{record['n_train']} ({record['n_per_class']})"),
        ("seed / data_seed", f"{record['seed']} / {record['data_seed']}"),
        ("source model", str(record["source_cache"])),
        ("epochs / optimizer steps", f"{m.get('epochs')} / {m.get('steps')}"
                                     + (" (still rising at the end)" if record.get("converged") is False else "")),
        (f"val/acc ({record.get('select') or 'best_val'}: epoch {record.get('selected_epoch')})",
         f"{m.get('val/acc', float('nan')):.4f}"),
        ("test/acc", f"{m.get('test/acc', float('nan')):.4f}"),
        ("wall time", f"{record['wall_s']:.1f} s"),
    ]
    tuning = record.get("tuning") or {}
    if tuning.get("chosen"):  # a tuned point (run/tuning.py): what it chose, among how many
        chosen = ", ".join(f"{k}={v}" for k, v in tuning["chosen"].items())
        rows.insert(-3, ("tuned", f"{chosen} (best of {len(tuning.get('candidates') or [])} candidates)"))
    scores = (record.get("scores") or {}).get("methods") or {}
    if scores:  # before training, on the training subset (run/scoring.py)
        rows.insert(-3, ("transferability scores", ", ".join(
            f"{name} {'–' if s['value'] is None else format(s['value'], '.3f')}" for name, s in scores.items())))
    for k, v in rows:
        table.add_row(k, v)
    console = Console()
    console.print(table)
    console.print(f"results: {Path(run_dir) / 'result.json'}")
