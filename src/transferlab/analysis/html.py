"""One self-contained report.html that stands alone as the record of a sweep: images embedded as base64, tables
inline, no external links, no scripts.

Order: the setup (how the runs were made: `analysis.provenance`), the answer in one paragraph per setting
(`analysis.answer`), counts and notes, figures, then the tables: the paper tables first (`analysis.tables`: arms x
n, best in bold, ties with a dagger), then the detail tables with their grouping keys left out. A section with
nothing to show is left out, never printed empty. The page fits its width: text and long values (paths, hashes,
commands) wrap, images scale down, and a table too wide for the page scrolls inside its own box, never the page.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from transferlab.analysis.collect import CURVE_COLUMNS
from transferlab.store.atomic import atomic_path

if TYPE_CHECKING:
    from transferlab.analysis.provenance import Setup
    from transferlab.analysis.tables import Cell, Grid

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.4}h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
h3{font-size:1em;margin:1.2em 0 .3em}p,li,td,th{overflow-wrap:anywhere}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right;vertical-align:top}th{background:#f4f4f4}caption{text-align:left;font-size:1.05em;padding:.2em 0}
.scroll{overflow-x:auto;max-width:100%}.scroll td,.scroll th{overflow-wrap:normal;white-space:nowrap}
table.kv{width:100%;table-layout:fixed;font-size:.9em}table.kv th{width:12em;text-align:left;background:#f8f8f8}
table.kv td{text-align:left}table.grid td:first-child,table.grid th:first-child{text-align:left}
pre,code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f5f5f5;padding:.4em .6em;margin:.2em 0}
.hash{word-break:break-all}img{max-width:100%;height:auto;border:1px solid #eee}
.cap{color:#555;font-size:.9em}.answer p{margin:.5em 0}.fail{color:#a00}"""

KEY_COLUMNS = ("setting_key", "context_key", "line_key", "arm_key", "baseline_key", "reference_line_key",
               "fingerprint", "fingerprint_recorded")


def _e(text) -> str:
    return html.escape(str(text))


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(Path(path).name)}" src="data:image/png;base64,{data}">'


def _blank(v) -> bool:
    """No value: None, NaN, NA or an empty string."""
    if isinstance(v, str):
        return v == ""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or array: a value
        return False


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def readable(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(a table for people, "column = value" of the columns equal in every row). Grouping keys and empty columns
    are left out, columns equal in every row are said once above the table instead of in every row, scratch rows
    have no source (scratch copies nothing), and the per-epoch curves are never dumped into a cell."""
    out = df.drop(columns=[c for c in df.columns if c in KEY_COLUMNS or c in CURVE_COLUMNS])
    if "source" in out and "is_scratch" in df:
        out = out.assign(source=out["source"].where(~df["is_scratch"].fillna(False).astype(bool), None))
    out = out.loc[:, [c for c in out.columns if not out[c].map(_blank).all()]]
    same = []
    if len(out) > 1:
        for c in list(out.columns):
            values = out[c].map(lambda v: "" if _blank(v) else _show(v))
            if values.nunique() == 1 and values.iloc[0] != "":
                same.append(f"{c} = {values.iloc[0]}")
                out = out.drop(columns=[c])
    return out, same


def _table(df: pd.DataFrame) -> str:
    table, same = readable(df)
    # |x| below 5e-7 is float noise in these tables (a metric measured on fewer than a million examples)
    body = table.to_html(index=False, float_format=lambda v: "0" if abs(v) < 5e-7 else f"{v:.4g}", na_rep="–",
                         border=0)
    head = f"<p class='cap'>In every row: {_e('; '.join(same))}</p>" if same else ""
    return f"{head}<div class='scroll'>{body}</div>"


def _cell(c: Cell) -> str:
    from transferlab.analysis.tables import UNCORRECTED

    text = _e(c.text)
    if c.best and c.text != "–":
        text = f"<b>{text}</b>"
    return (text + ("<sup>*</sup>" if c.significant else "") + (f"<sup>{UNCORRECTED}</sup>" if c.uncorrected else "")
            + ("<sup>†</sup>" if c.tied else ""))


def grid_html(g: Grid) -> str:
    head = "".join(f"<th>n={_e(n)}</th>" for n in g.columns)
    rows = "".join(f"<tr><td>{_e(arm)}</td>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>"
                   for arm, cells in g.rows)
    notes = "".join(f"<br>{_e(n)}" for n in g.notes)[4:]
    return (f"<div class='scroll'><table class='grid'><caption>{_e(g.caption)}</caption><thead><tr><th>arm</th>"
            f"{head}</tr></thead><tbody>{rows}</tbody></table></div><p class='cap'>{notes}</p>")


def _lines(items: Iterable[str], code: bool = False) -> str:
    wrap = (lambda s: f"<code>{_e(s)}</code>") if code else _e
    return "<br>".join(wrap(s) for s in items)


def setup_html(s: Setup) -> str:
    """The setup block: commands, config differences, training, source model, data files, splits, versions."""
    parts = ["<section id='setup'><h2>Setup</h2>"]
    if s.commands:
        parts.append(f"<h3>Command{'s' * (len(s.commands) > 1)} that made the sweep (sweep.json)</h3>")
        for c in s.commands:
            where = ", ".join(x for x in (c["started"], c["host"] and f"host {c['host']}", c["outcome"]) if x)
            parts.append(f"<pre>{_e(c['command'])}</pre><p class='cap'>{_e(where)}</p>")
    else:
        parts.append("<p class='cap'>No sweep.json in this folder: the command line was not recorded; the runs' "
                     "configs below say what they ran.</p>")
    if s.superseded:
        parts.append(f"<details><summary>{len(s.superseded)} earlier launch{'es' * (len(s.superseded) > 1)} "
                     "superseded (every point it declared was declared again, or dropped, by a later launch)"
                     "</summary>")
        for c in s.superseded:
            where = ", ".join(x for x in (c["started"], c["host"] and f"host {c['host']}", c["outcome"]) if x)
            parts.append(f"<pre>{_e(c['command'])}</pre><p class='cap'>{_e(where)}</p>")
        parts.append("</details>")
    rows = []
    if s.variation:
        rows.append(("what the intervals over seeds include",
                     "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in s.variation)))
    if s.varied:
        rows.append(("varied across runs", _lines((f"{k}: {v}" for k, v in s.varied), code=True)))
    if s.changed:
        rows.append(("set differently from the defaults",
                     _lines((f"{k}={v}   (default {d})" for k, v, d in s.changed), code=True)
                     + f"<br><span class='cap'>compared with {_e(s.defaults_note)}</span>"))
    elif s.defaults_note:
        rows.append(("set differently from the defaults", f"nothing <span class='cap'>(compared with "
                     f"{_e(s.defaults_note)})</span>"))
    for label, value in s.training:
        rows.append((label, _e(value)))
    if s.sources:
        rows.append(("source model" + "s" * (len(s.sources) > 1),
                     "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in s.sources)))
    if s.data:
        rows.append(("data files (sha256)", "<br>".join(
            f"{_e(role)}: <code class='hash'>{_e(files)}</code><br>&nbsp;&nbsp;sha256 "
            f"<code class='hash'>{_e(sha)}</code>" for role, files, sha in s.data)))
    if s.splits:
        rows.append(("split sizes", "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in s.splits)))
    if s.environment:
        rows.append(("versions", "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in s.environment)))
    if rows:
        parts.append("<table class='kv'>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
                     + "</table>")
    parts.append("</section>")
    return "".join(parts)


def write_html(path: Path, title: str, notes: list[str], figures: list[tuple[str, Path, str]],
               tables: list[tuple[str, pd.DataFrame]], failed: pd.DataFrame, *, setup: Setup | None = None,
               answer: list[tuple[str, str]] | None = None, grids: list[Grid] | None = None) -> Path:
    """Assemble the page. `notes` are short lines (counts, warnings); `tables` the detail tables, each shown only
    when it has rows; `grids` the paper tables; `failed` listed only when a run failed."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class='cap'>generated {stamp}</p>"]
    if setup is not None:
        parts.append(setup_html(setup))
    if answer:
        parts.append("<section id='answer' class='answer'><h2>The answer</h2>"
                     + "".join(f"<p><b>{_e(where)}</b>. {_e(text)}</p>" for where, text in answer) + "</section>")
    if notes:
        parts.append("<section id='notes'><h2>Counts and notes</h2><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></section>")
    if figures:
        parts.append("<section id='figures'>")
        for name, img, caption in figures:
            pdf = Path(img).with_suffix(".pdf")
            vector = f" Vector: figures/{pdf.name}." if pdf.exists() else ""
            parts.append(f"<h2>{_e(name)}</h2>{_img(img)}<p class='cap'>{_e(caption)}{_e(vector)}</p>")
        parts.append("</section>")
    if grids:
        parts.append("<section id='paper-tables'><h2>Tables (also as tables/*.tex and tables/*.md)</h2>"
                     + "".join(grid_html(g) for g in grids) + "</section>")
    shown = [(name, df) for name, df in tables if df is not None and not df.empty]
    if shown:
        parts.append("<section id='tables'>")
        parts += [f"<h2>{_e(name)}</h2>{_table(df)}" for name, df in shown]
        parts.append("</section>")
    if failed is not None and len(failed):
        parts.append(f"<section id='failed'><h2 class='fail'>Failed runs ({len(failed)})</h2>{_table(failed)}"
                     "</section>")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    return path
