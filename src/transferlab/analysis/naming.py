"""File names per setting: one suffix per setting label, shared by figures and tables so that
`figures/report_acc_vs_n_<tag>.png` and `tables/summary_<tag>.tex` of one setting carry the same tag."""

from __future__ import annotations

import re


def setting_tags(labels: list[str]) -> dict[str, str]:
    """File-name suffix per setting label ("" when there is one setting), unique and file-system safe."""
    if len(labels) == 1:
        return {labels[0]: ""}
    out: dict[str, str] = {}
    for label in labels:
        tag = "_" + re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_")
        out[label] = tag if tag not in out.values() else f"{tag}_{len(out)}"
    return out
