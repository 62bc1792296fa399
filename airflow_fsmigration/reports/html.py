"""A small toolkit for self-contained HTML reports: one file, inline CSS and inline SVG charts.

Reports are opened from a laptop, attached to tickets and printed for change reviews, so they
carry no external assets (no CDN, no JavaScript). Text is escaped with :mod:`markupsafe` (the
escaper Jinja uses): any ``str`` passed in is treated as text, and only :class:`Markup` values
(what the helpers here return) pass through as HTML. Charts are drawn with matplotlib's Agg/SVG
backend, imported inside the functions so importing this module stays cheap at DAG-parse time.

Typical use::

    body = section("Groups", table(["group", "status"], [["user_txn_stats", badge("pass")]]))
    write_page(out / "report.html", page("Shadow report", body))
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

__all__ = [
    "Markup",
    "badge",
    "bar_chart",
    "bullet_list",
    "code",
    "details",
    "escape",
    "histogram",
    "kv_table",
    "layered_graph",
    "line_chart",
    "page",
    "paragraph",
    "section",
    "svg_from_figure",
    "table",
    "write_page",
]

# Status -> (css class, label). Unknown statuses render neutral rather than green.
_BADGES = {
    "pass": "ok",
    "passed": "ok",
    "ok": "ok",
    "green": "ok",
    "covered": "ok",
    "low": "ok",
    "fail": "bad",
    "failed": "bad",
    "error": "bad",
    "red": "bad",
    "gap": "bad",
    "high": "bad",
    "breach": "bad",
    "inconclusive": "warn",
    "warn": "warn",
    "warning": "warn",
    "medium": "warn",
    "unknown": "warn",
    "not run": "warn",
    "skipped": "muted",
}

# Palette shared by badges and charts so a report reads the same in tables and figures.
COLORS = {
    "ok": "#1a7f37",
    "bad": "#cf222e",
    "warn": "#bf8700",
    "muted": "#6e7781",
    "accent": "#0969da",
    "grid": "#d0d7de",
}
SERIES_COLORS = ("#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#6e7781", "#1b7c83", "#953800")

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d0d7de; --bg-alt:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.subtitle, .meta { color: var(--muted); margin: 0 0 12px; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: var(--bg-alt); padding: 1px 4px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; width: 100%; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; white-space: nowrap; }
.badge.ok { background: #1a7f37; } .badge.bad { background: #cf222e; }
.badge.warn { background: #bf8700; } .badge.muted { background: #6e7781; }
.chart { margin: 8px 0 16px; } .chart svg { max-width: 100%; height: auto; }
ul.findings li { margin: 2px 0; }
details { margin: 6px 0 12px; } summary { cursor: pointer; color: var(--accent); }
.note { border-left: 4px solid var(--line); padding: 4px 12px; color: var(--muted); margin: 8px 0; }
.note.bad { border-color: #cf222e; color: var(--fg); } .note.warn { border-color: #bf8700; color: var(--fg); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
pre.diff { font: 12px/1.45 ui-monospace, monospace; background: var(--bg-alt); padding: 8px 12px; overflow-x: auto; }
pre.diff .add { color: #1a7f37; } pre.diff .del { color: #cf222e; } pre.diff .hunk { color: var(--muted); }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; } table, .chart, figure { break-inside: avoid; }
  details { display: block; } details > summary { display: none; }
  .badge { border: 1px solid #000; color: #000 !important; background: none !important; }
}
"""


def page(
    title: str,
    body: str | Markup,
    *,
    subtitle: str | None = None,
    generated_at: datetime | None = None,
    footer: str | None = None,
) -> Markup:
    """A complete HTML document: ``<head>`` with inline CSS, a title block and ``body``.

    ``body`` is trusted only when it is :class:`Markup` (what the helpers return); plain text is escaped.
    """
    meta = Markup("")
    if subtitle:
        meta += Markup('<p class="subtitle">{}</p>').format(subtitle)
    if generated_at is not None:
        meta += Markup('<p class="meta">generated {}</p>').format(generated_at.isoformat(timespec="seconds"))
    foot = Markup("<footer>{}</footer>").format(footer) if footer else Markup("")
    return Markup(
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>{title}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        "<h1>{title}</h1>\n{meta}\n{body}\n{foot}\n</body>\n</html>\n"
    ).format(title=title, css=Markup(_CSS), meta=meta, body=body, foot=foot)


def section(title: str, *parts: str | Markup, anchor: str | None = None, level: int = 2) -> Markup:
    """A heading and its content; ``anchor`` becomes the heading's id for in-page links."""
    ident = Markup(' id="{}"').format(anchor) if anchor else Markup("")
    head = Markup("<h{level}{ident}>{title}</h{level}>\n").format(level=level, ident=ident, title=title)
    return head + Markup("\n").join(_as_html(p) for p in parts)


def paragraph(text: str | Markup, *, kind: str | None = None) -> Markup:
    """A paragraph; ``kind`` ("bad", "warn") renders it as a highlighted note."""
    if kind:
        return Markup('<p class="note {}">{}</p>').format(kind, text)
    return Markup("<p>{}</p>").format(text)


def bullet_list(items: Iterable[str | Markup], *, css_class: str = "findings") -> Markup:
    lis = Markup("").join(Markup("<li>{}</li>").format(i) for i in items)
    return Markup('<ul class="{}">{}</ul>').format(css_class, lis)


def details(summary: str, *parts: str | Markup) -> Markup:
    """A collapsible block (expanded when printed)."""
    inner = Markup("\n").join(_as_html(p) for p in parts)
    return Markup("<details><summary>{}</summary>\n{}\n</details>").format(summary, inner)


def code(text: str) -> Markup:
    return Markup("<code>{}</code>").format(text)


def badge(status: str, label: str | None = None) -> Markup:
    """A coloured status pill: pass (green), fail (red), inconclusive (amber), others grey."""
    css = _BADGES.get(status.lower().strip(), "muted")
    return Markup('<span class="badge {}">{}</span>').format(css, label if label is not None else status)


def _cell(value: Any) -> tuple[Markup, bool]:
    """Cell HTML and whether it is numeric (right-aligned)."""
    if value is None:
        return Markup('<span class="meta">-</span>'), False
    if isinstance(value, Markup):
        return value, False
    if isinstance(value, bool):
        return escape("yes" if value else "no"), False
    if isinstance(value, int):
        return escape(f"{value:,}"), True
    if isinstance(value, float):
        return escape(_fmt_float(value)), True
    return escape(str(value)), False


def _fmt_float(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
    empty: str = "none",
) -> Markup:
    """An HTML table; cells are escaped unless they are :class:`Markup`. Numbers are right-aligned."""
    head = Markup("").join(Markup("<th>{}</th>").format(h) for h in headers)
    body = Markup("")
    count = 0
    for row in rows:
        count += 1
        cells = Markup("")
        for value in row:
            html, numeric = _cell(value)
            cells += (
                Markup('<td class="num">{}</td>').format(html)
                if numeric
                else Markup("<td>{}</td>").format(html)
            )
        body += Markup("<tr>{}</tr>\n").format(cells)
    if not count:
        body = Markup('<tr><td colspan="{}" class="meta">{}</td></tr>').format(len(headers), empty)
    cap = Markup("<caption>{}</caption>").format(caption) if caption else Markup("")
    return Markup("<table>{}<thead><tr>{}</tr></thead>\n<tbody>\n{}</tbody></table>").format(cap, head, body)


def kv_table(pairs: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Markup:
    """A two-column key/value table."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return table(["", ""], [[k, v] for k, v in items])


def write_page(path: str | Path, html: str | Markup) -> Path:
    """Write a page as UTF-8, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(html), encoding="utf-8")
    return path


def _as_html(part: str | Markup) -> Markup:
    return part if isinstance(part, Markup) else Markup("<p>{}</p>").format(part)


# --- charts ----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # Figure() directly (not pyplot): no global state, no GUI backend, safe in threads.
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color=COLORS["grid"], linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


_XML_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def svg_from_figure(fig: Any, *, alt: str = "") -> Markup:
    """Render a matplotlib figure as an inline ``<svg>`` wrapped in a ``<figure>``.

    Text stays text (``svg.fonttype: none``) so the page is small and searchable; the hash salt
    is fixed so the same data gives the same bytes (reports diff cleanly).
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": alt or "fsmig"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = _SVG_METADATA.sub("", _XML_PROLOG.sub("", buf.getvalue(), count=1), count=1)
    label = Markup(' role="img" aria-label="{}"').format(alt) if alt else Markup("")
    svg = svg.replace("<svg ", f"<svg{label} ", 1)
    return Markup('<figure class="chart">{}</figure>').format(Markup(svg))


def _threshold_line(ax: Any, threshold: float, label: str | None) -> None:
    """A dashed horizontal line at ``threshold``, labelled at the right edge."""
    ax.axhline(threshold, color="#1f2328", linestyle="--", linewidth=1)
    ax.annotate(
        label or f"threshold {threshold:g}",
        xy=(1, threshold),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        fontsize=8,
    )


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "",
    ylabel: str = "",
    threshold: float | None = None,
    threshold_label: str | None = None,
    higher_is_better: bool = True,
    colors: Sequence[str] | None = None,
    width: float = 7.5,
    height: float = 3.2,
    ylim: tuple[float, float] | None = None,
) -> Markup:
    """Bars per label with an optional dashed threshold line.

    With a threshold and no explicit ``colors``, bars on the good side are green and the others red
    (``higher_is_better`` says which side is good).
    """
    fig, ax = _figure(width, height)
    if colors is None:
        if threshold is None:
            colors = [COLORS["accent"]] * len(values)
        else:
            colors = [
                COLORS["ok"]
                if ((v >= threshold) if higher_is_better else (v <= threshold))
                else COLORS["bad"]
                for v in values
            ]
    positions = list(range(len(values)))
    ax.bar(positions, values, color=list(colors), width=0.65)
    ax.set_xticks(
        positions,
        [str(label) for label in labels],
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    if threshold is not None:
        _threshold_line(ax, threshold, threshold_label)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_ylabel(ylabel)
    return svg_from_figure(fig, alt=title or ylabel or "bar chart")


def line_chart(
    x: Sequence[Any],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str = "",
    ylabel: str = "",
    threshold: float | None = None,
    threshold_label: str | None = None,
    width: float = 7.5,
    height: float = 3.2,
    ylim: tuple[float, float] | None = None,
    markers: bool = True,
) -> Markup:
    """One line per series over a shared x axis (datetimes or numbers); ``None`` leaves a gap."""
    fig, ax = _figure(width, height)
    for i, (name, ys) in enumerate(series.items()):
        clean = [float("nan") if v is None else v for v in ys]
        ax.plot(
            list(x),
            clean,
            label=name,
            color=SERIES_COLORS[i % len(SERIES_COLORS)],
            marker="o" if markers else None,
            markersize=3,
            linewidth=1.5,
        )
    if threshold is not None:
        _threshold_line(ax, threshold, threshold_label)
    if x and isinstance(x[0], datetime):
        fig.autofmt_xdate()
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_ylabel(ylabel)
    return svg_from_figure(fig, alt=title or ylabel or "line chart")


def histogram(
    values: Sequence[float],
    *,
    bins: int | Sequence[float] = 30,
    title: str = "",
    xlabel: str = "",
    log: bool = False,
    threshold: float | None = None,
    threshold_label: str | None = None,
    width: float = 7.5,
    height: float = 3.0,
) -> Markup:
    """Distribution of ``values`` (e.g. absolute differences); NaNs are dropped."""
    fig, ax = _figure(width, height)
    clean = [v for v in values if v is not None and v == v]
    if clean:
        ax.hist(clean, bins=bins, color=COLORS["accent"], log=log)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color=COLORS["muted"])
    if threshold is not None:
        ax.axvline(threshold, color="#1f2328", linestyle="--", linewidth=1)
        ax.annotate(
            threshold_label or f"{threshold:g}",
            xy=(threshold, 1),
            xycoords=("data", "axes fraction"),
            ha="left",
            va="top",
            fontsize=8,
        )
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return svg_from_figure(fig, alt=title or xlabel or "histogram")


def layered_graph(
    columns: Sequence[Sequence[str]],
    edges: Iterable[tuple[str, str]],
    *,
    colors: Mapping[str, str] | None = None,
    column_labels: Sequence[str] | None = None,
    legend: Mapping[str, str] | None = None,
    title: str = "",
) -> Markup:
    """A left-to-right drawing of a DAG whose nodes are already in columns (e.g. waves).

    ``edges`` are ``(upstream, downstream)``; ``colors`` maps a node to a fill colour and
    ``legend`` maps a label to a colour.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    rows = max((len(c) for c in columns), default=1)
    fig, ax = _figure(max(4.0, 2.9 * len(columns)), max(2.2, 0.9 * rows + 0.8))
    ax.grid(False)
    ax.axis("off")
    pos: dict[str, tuple[float, float]] = {}
    box_w, box_h = 2.3, 0.55
    for ci, col in enumerate(columns):
        offset = (rows - len(col)) / 2
        for ri, name in enumerate(col):
            pos[name] = (ci * 3.0, -(ri + offset))
    for up, down in edges:
        if up not in pos or down not in pos:
            continue
        (x1, y1), (x2, y2) = pos[up], pos[down]
        ax.add_patch(
            FancyArrowPatch(
                (x1 + box_w / 2, y1),
                (x2 - box_w / 2, y2),
                arrowstyle="-|>",
                mutation_scale=12,
                color="#57606a",
                linewidth=1.1,
                connectionstyle="arc3,rad=0.08" if y1 != y2 else "arc3,rad=0",
                shrinkA=2,
                shrinkB=2,
            )
        )
    for name, (x, y) in pos.items():
        fill = (colors or {}).get(name, "#ddf4ff")
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2),
                box_w,
                box_h,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=fill,
                edgecolor="#1f2328",
                linewidth=0.8,
            )
        )
        ax.text(x, y, name, ha="center", va="center", fontsize=8.5, color="#1f2328")
    for ci, label in enumerate(column_labels or ()):
        ax.text(
            ci * 3.0, 0.75, label, ha="center", va="bottom", fontsize=9, fontweight="bold", color="#59636e"
        )
    ax.set_xlim(-box_w / 2 - 0.2, (len(columns) - 1) * 3.0 + box_w / 2 + 0.2)
    ax.set_ylim(-(rows - 1) - box_h - 0.3, 1.2)
    if legend:
        ax.legend(
            handles=[Patch(facecolor=c, edgecolor="#1f2328", label=lbl) for lbl, c in legend.items()],
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=len(legend),
            frameon=False,
            fontsize=8,
        )
    ax.set_title(title, fontsize=11, loc="left")
    return svg_from_figure(fig, alt=title or "dependency graph")
