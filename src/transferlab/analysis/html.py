"""One self-contained report.html: images embedded as base64, tables inline, no external links, no scripts."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from transferlab.store.atomic import atomic_path

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}.cap{color:#555;font-size:.9em}
.fail{color:#a00}"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><i>none</i></p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)


def write_html(path: Path, title: str, notes: list[str], figures: list[tuple[str, Path, str]],
               tables: list[tuple[str, pd.DataFrame]], failed: pd.DataFrame) -> Path:
    """Assemble the report; `notes` are short lines shown first (counts, crossover n*)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='cap'>generated {stamp}</p>",
             "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    for name, img, caption in figures:
        parts.append(f"<h2>{html.escape(name)}</h2>{_img(img)}<p class='cap'>{html.escape(caption)}</p>")
    for name, df in tables:
        parts.append(f"<h2>{html.escape(name)}</h2>{_table(df)}")
    parts.append(f"<h2 class='fail'>Failed runs ({len(failed)})</h2>{_table(failed)}")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    return path
