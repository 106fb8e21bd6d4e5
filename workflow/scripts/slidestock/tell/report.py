"""The run report: ``slides.csv``, ``slides.parquet``, plots, a contact sheet and ``index.html``.

The table and its plots are :mod:`slidestock.tell.slidetable`'s. The HTML page is one file
(thumbnails as data URIs, plots as inline SVG, no network), and every string
that comes from metadata is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from slidestock.config import with_defaults
from slidestock.image.thumbnails import sheet_records, thumbnail_data_uri
from slidestock.tell.slidetable import summary
from slidestock.tell.status import group_failures, said

# The IDC paper the IDC team asks users to cite.
IDC_CITATION = (
    "Fedorov A, et al. National Cancer Institute Imaging Data Commons: Toward Transparency, "
    "Reproducibility, and Scalability in Imaging Artificial Intelligence. RadioGraphics 2023. "
    "https://doi.org/10.1148/rg.230180"
)


@dataclass(frozen=True)
class ReportInputs:
    """What the page shows besides the slide rows."""

    idc_version: str
    query: str
    cohort_header: Mapping[str, str]
    software: Mapping[str, str]
    wall_time_s: float | None
    sheet_max: int | None = None  # the most finished slides in the contact sheet; None: all
    target: Mapping[str, Any] | None = None  # the config's target section
    config_files: Sequence[str] = ()  # the config files the run was given
    run_date: str = "unknown"  # when the run's latest batch started


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return html.escape(str(value))


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.2f} MB"


_SCRIPT = """
const table = document.getElementById('slides');
const body = table.tBodies[0];
document.getElementById('filter').addEventListener('input', (event) => {
  const needle = event.target.value.toLowerCase();
  let shown = 0;
  for (const row of body.rows) {
    const match = row.textContent.toLowerCase().includes(needle);
    row.hidden = !match;
    if (match) shown += 1;
  }
  document.getElementById('shown').textContent = shown;
});
table.tHead.querySelectorAll('th').forEach((th, column) => {
  th.addEventListener('click', () => {
    const ascending = th.dataset.order !== 'asc';
    table.tHead.querySelectorAll('th').forEach((other) => delete other.dataset.order);
    th.dataset.order = ascending ? 'asc' : 'desc';
    const key = (row) => row.cells[column].dataset.value ?? row.cells[column].textContent;
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      const nx = parseFloat(x), ny = parseFloat(y);
      const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach((row) => body.appendChild(row));
  });
});
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.8em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.4em; vertical-align: top; }
th { cursor: pointer; background: #f3f0f5; position: sticky; top: 0; }
th[data-order=asc]::after { content: ' \\25B2'; } th[data-order=desc]::after { content: ' \\25BC'; }
tr.failed { background: #fde4e4; }
td.error { max-width: 16em; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
#slides th { white-space: normal; }
#slides td { white-space: nowrap; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; }
.sheet figure { margin: 0; width: 170px; font-size: 0.7em; text-align: center; }
.sheet img { max-width: 160px; max-height: 160px; border: 1px solid #ddd; }
.plots svg { margin: 0 1em 1em 0; border: 1px solid #eee; }
#patch-sample figure { width: auto; max-width: 100%; }
#patch-sample img { max-width: 320px; max-height: 320px; margin: 2px; vertical-align: middle; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
"""


def _number(value: Any, digits: int | None = None) -> tuple[str, str]:
    """A number's cell text (thousands separated, or ``digits`` decimals) and its sort value."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "", ""
    text = f"{value:,}" if digits is None else f"{value:,.{digits}f}"
    return text, str(value)


def _size(columns: Any, rows: Any) -> tuple[str, str]:
    """``512 x 384`` and its pixel count to sort by."""
    if columns is None or columns is pd.NA or rows is None or rows is pd.NA:
        return "", ""
    return f"{int(columns):,} x {int(rows):,}", str(int(columns) * int(rows))


# The slide table's columns after the slide (whose patient its cell's title says): header, then each cell's
# (text, sort value) from a report row. Sizes share a column each, and the scale and series size are left to
# slides.csv (which keeps every column), so that the table, error and file links included, fits 1280 px.
_COLUMNS: tuple[tuple[str, Callable[[Mapping[Hashable, Any]], tuple[str, str]]], ...] = (
    ("collection", lambda r: (_text(r["collection_id"]), _text(r["collection_id"]))),
    ("status", lambda r: (str(r["status"]), str(r["status"]))),
    ("level px", lambda r: _size(r["level_columns"], r["level_rows"])),
    ("level µm/px", lambda r: _number(r["level_spacing_um"], 3)),
    ("output px", lambda r: _size(r["output_columns"], r["output_rows"])),
    ("output µm/px across", lambda r: _number(r["output_spacing_um"], 2)),
    ("fetched bytes", lambda r: _number(r["bytes_fetched"])),
    ("fetched %", lambda r: _number(None if _missing(r["fraction_fetched"]) else 100 * r["fraction_fetched"], 2)),
    ("tissue", lambda r: _number(r["tissue_fraction"], 2)),
)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value)


def render_html(
    frame: pd.DataFrame,
    inputs: ReportInputs,
    svgs: Mapping[str, str],
    made: Mapping[Path, Image.Image] | None = None,
    sections: Sequence[str] = (),
) -> str:
    """The report page; the contact sheet from the thumbnails in ``made`` where there; ``sections`` after it."""
    stats = summary(frame)
    wall = "unknown" if inputs.wall_time_s is None else f"{inputs.wall_time_s:,.1f} s"
    facts = {
        "slides requested": stats["slides"],
        "done": stats["done"],
        "failed": stats["failed"],
        "bytes fetched": f"{_mb(stats['bytes_fetched'])} ({100 * stats['fraction_fetched']:.2f} % of whole series)",
        "whole-slide downloads would move": _mb(stats["series_bytes"]),
        "fetch and downsample wall time": wall,
        "target": _target_text(inputs.target),
        "run date": inputs.run_date,
        "config": ", ".join(inputs.config_files) or "unknown",
        "IDC version": f"v{inputs.idc_version}",
        "cohort source": inputs.cohort_header.get("source", ""),
        "filter": inputs.cohort_header.get("filter", ""),
        "n, seed": f"{inputs.cohort_header.get('n', '')}, {inputs.cohort_header.get('seed', '')}",
        "candidates before sampling": inputs.cohort_header.get("candidates", ""),
    }
    return "\n".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>slidestock report</title>\n<style>{_STYLE}</style></head><body>",
            "<h1>slidestock report</h1>",
            f'<p id="summary">{_counts_text(stats)}. '
            f"Fetched {_mb(stats['bytes_fetched'])} of the {_mb(stats['series_bytes'])} that whole-slide "
            f"downloads would have moved ({100 * stats['fraction_fetched']:.2f} %).</p>",
            '<dl class="facts">',
            *(f"<dt>{html.escape(k)}</dt><dd>{_cell(v)}</dd>" for k, v in facts.items()),
            "</dl>",
            _failures_html(frame),
            '<h2 id="plots-title">Plots</h2><div class="plots">',
            *svgs.values(),
            "</div>",
            _contact_sheet_html(frame, inputs.sheet_max, made),
            *sections,
            _table_html(frame),
            _citations_html(frame, inputs.idc_version),
            _software_html(inputs.software),
            '<h2>Cohort query</h2><pre id="query">' + html.escape(inputs.query) + "</pre>",
            f"<script>{_SCRIPT}</script>",
            "</body></html>\n",
        ]
    )


def _counts_text(stats: Mapping[str, Any]) -> str:
    """``5 of 6 slides done, 1 failed`` (and how many are not made for the current settings, when any)."""
    text = f"{stats['done']} of {stats['slides']} slides done, {stats['failed']} failed"
    return text + (f", {stats['not_made']} not made for the current settings yet" if stats["not_made"] else "")


def _target_text(section: Mapping[str, Any] | None) -> str:
    if not section:
        return "unknown"
    target = with_defaults("target", section)
    size = f"{target['mpp']:g} µm/px" if target["mpp"] is not None else f"long side {target['max_px']} px"
    return f"{size}, {target['format']}, backend {target['backend']}"


def _contact_sheet_html(frame: pd.DataFrame, sheet_max: int | None, made: Mapping[Path, Image.Image] | None) -> str:
    shown = sheet_records(frame, sheet_max)
    figures = [
        f'<figure><img loading="lazy" alt="{_cell(row["slide_id"])}" '
        f'src="{thumbnail_data_uri(Path(str(row["output_path"])), made)}">'
        f"<figcaption>{_cell(row['slide_id'])}<br>{_cell(row['output_columns'])} x "
        f"{_cell(row['output_rows'])} px</figcaption></figure>"
        for row in shown
    ]
    finished = int((frame["status"] == "done").sum())
    note = ""
    if sheet_max is not None and finished > sheet_max:
        note = (
            f'<p id="sheet-note">The first {len(shown):,} of {finished:,} finished slides '
            "(<code>report.contact_sheet_max</code>); the table below lists every slide.</p>"
        )
    return f'<h2>Contact sheet</h2>{note}<div class="sheet" id="sheet">{"".join(figures)}</div>'


def _files_cell(record: Mapping[Hashable, Any]) -> str:
    """Links from the page (results/report/) to the slide's image, record and log."""
    slide = html.escape(str(record["slide_id"]), quote=True)
    links = [(f"../slides/{slide}.json", "json"), (f"../../logs/slide/{slide}.log", "log")]
    if record.get("output_path"):
        image = html.escape(Path(str(record["output_path"])).name, quote=True)
        links.insert(0, (f"../slides/{image}", "image"))
    return "<td>" + " ".join(f'<a href="{href}">{name}</a>' for href, name in links) + "</td>"


def _table_html(frame: pd.DataFrame) -> str:
    names = ["slide", *(name for name, _ in _COLUMNS), "error", "files"]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows = []
    for record in frame.to_dict("records"):
        patient = _text(record["PatientID"])
        cells = f'<td title="patient {_cell(patient)}">{_cell(record["slide_id"])}</td>' if patient else ""
        cells = cells or f"<td>{_cell(record['slide_id'])}</td>"
        cells += "".join(_sortable(*cell(record)) for _, cell in _COLUMNS)
        error = _reason(record)
        cells += f'<td class="error" title="{_cell(error)}">{_cell(error)}</td>' + _files_cell(record)
        rows.append(f'<tr class="{_cell(record["status"])}">{cells}</tr>')
    return (
        "<h2>Slides</h2>"
        '<p><label>Filter: <input id="filter" type="search" placeholder="slide, collection, status..."></label> '
        f'<span id="shown">{len(frame)}</span> shown; click a column to sort.</p>'
        f'<table id="slides"><thead><tr>{header}</tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"
    )


def _sortable(text: str, value: str) -> str:
    """A cell whose sort value differs from its text carries it (``data-value``), for the page's script."""
    data = f' data-value="{html.escape(value, quote=True)}"' if value != text else ""
    return f"<td{data}>{html.escape(text)}</td>"


def _reason(record: Mapping[Hashable, Any]) -> str | None:
    """A failed slide's reason as it was said (its first line, numbers and all)."""
    if record.get("status") == "done" or not isinstance(record.get("error"), str):
        return None
    return said(str(record["error"]))


def _may_pass(record: Mapping[Hashable, Any]) -> bool:
    flag = record.get("retryable")
    return True if flag is None or flag is pd.NA else bool(flag)  # unknown: a re-run may help


def _failures_html(frame: pd.DataFrame, shown_per_reason: int = 20) -> str:
    """Failures grouped by reason (the first said as it was), with counts, whether a re-run may help, and links to
    the slides' logs."""
    failed = frame[frame["status"] == "failed"].to_dict("records")
    if not failed:
        return '<h2>Failures</h2><p id="failures">None.</p>'
    groups = group_failures((str(r["slide_id"]), _reason(r) or "no reason recorded", _may_pass(r)) for r in failed)
    items = []
    for group in groups:
        slides = group.slides
        what = (
            "may pass: running the same snakemake command again retries these"
            if group.may_pass
            else "permanent: not tried again unless <code>fetch.redo_failed: true</code>"
        )
        alike = f" (and {group.count - 1:,} alike)" if group.count > 1 else ""
        links = ", ".join(f'<a href="../../logs/slide/{html.escape(s, quote=True)}.log">{html.escape(s)}</a>'
                          for s in slides[:shown_per_reason])  # fmt: skip
        more = f" and {len(slides) - shown_per_reason:,} more" if len(slides) > shown_per_reason else ""
        items.append(
            f"<li><b>{group.count:,} x</b> {html.escape(group.first)}{alike} <i>({what})</i><br>{links}{more}</li>"
        )
    return f'<h2>Failures</h2><ul id="failures">{"".join(items)}</ul>'


def _citations_html(frame: pd.DataFrame, idc_version: str) -> str:
    sources = (
        frame.dropna(subset=["source_DOI"])
        .groupby(["collection_id", "source_DOI", "license_short_name"], dropna=False)
        .size()
        .reset_index(name="slides")
    )
    items = "".join(
        f'<li>{_cell(r["collection_id"])}: <a href="https://doi.org/{_cell(r["source_DOI"])}">'
        f"doi:{_cell(r['source_DOI'])}</a>, licence {_cell(r['license_short_name'])} ({r['slides']} slides)</li>"
        for r in sources.to_dict("records")
    )
    return (
        '<h2>How to cite</h2><ul id="citations">'
        f"<li>Images from the NCI Imaging Data Commons, release v{html.escape(idc_version)}: "
        f"{html.escape(IDC_CITATION)}</li>{items}</ul>"
    )


def _software_html(software: Mapping[str, str]) -> str:
    rows = "".join(f"<tr><td>{_cell(k)}</td><td>{_cell(v)}</td></tr>" for k, v in sorted(software.items()))
    return f'<h2>Software</h2><table id="software"><tbody>{rows}</tbody></table>'
