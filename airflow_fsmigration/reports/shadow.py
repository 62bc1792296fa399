"""The shadow report: one self-contained HTML page per comparison run.

What a reviewer needs to decide whether old and new agree: the verdict and why, the match rate
per feature against the threshold, the explanations with their fixes, how the differing values
are distributed, and the mismatch rate run after run (from the result store). Built with the
shared helpers of :mod:`airflow_fsmigration.reports.html` (inline CSS and SVG, no assets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.reports import html as h

if TYPE_CHECKING:
    from airflow_fsmigration.compare.engine import ComparisonResult
    from airflow_fsmigration.compare.gx import GxVerdict
    from airflow_fsmigration.compare.results import ShadowRun, SoakStatus


def _pct(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def _summary(
    result: ComparisonResult, gx: GxVerdict | None, soak: SoakStatus | None, out_dir: Path | None
) -> Any:
    pairs: list[tuple[str, Any]] = [
        ("verdict", h.badge(str(result.verdict))),
        ("match rate", _pct(result.match_rate, 4)),
        ("threshold", _pct(result.threshold, 2)),
        ("entities requested", result.entities_requested if result.entities_requested is not None else "all"),
        ("entities compared", result.entities_compared),
        ("in both stores", result.entities_both),
        ("missing in new / in old", f"{result.missing_in_new} / {result.missing_in_old}"),
        (
            "staleness SLA (lag allowance)",
            f"{result.staleness_s:g} s" if result.staleness_s is not None else "n/a",
        ),
        ("logical time", result.logical_time.isoformat() if result.logical_time else "n/a"),
        ("run id", h.code(result.run_id)),
    ]
    if result.shard:
        pairs.append(("shard", result.shard))
    if result.started_at and result.finished_at:
        pairs.append(("duration", f"{(result.finished_at - result.started_at).total_seconds():.1f} s"))
    if gx is not None:
        docs: Any = ""
        if gx.docs_index:
            target = gx.docs_index
            if out_dir is not None:
                target = os.path.relpath(gx.docs_index, out_dir)
            docs = h.Markup(' <a href="{}">Data Docs</a>').format(target)
        pairs.append(("Great Expectations", h.badge(str(gx.verdict)) + docs))
    if soak is not None:
        pairs.append(
            (
                "soak",
                h.badge(
                    "pass" if soak.satisfied else "inconclusive", "green" if soak.satisfied else "soaking"
                )
                + h.Markup(" {}").format(soak.reason),
            )
        )
    parts = [h.kv_table(pairs)]
    for reason in result.reasons:
        parts.append(h.paragraph(reason, kind="bad" if str(result.verdict) == "fail" else "warn"))
    return h.section("Summary", *parts, anchor="summary")


def _features(result: ComparisonResult) -> Any:
    names = list(result.features)
    rates = [(f.match_rate or 0.0) * 100 for f in result.features.values()]
    low = min([*rates, result.threshold * 100]) if rates else 0.0
    chart = h.bar_chart(
        names,
        rates,
        title="Match rate per feature (%)",
        ylabel="% of values agreeing",
        threshold=result.threshold * 100,
        threshold_label=f"threshold {result.threshold:.2%}",
        ylim=(max(0.0, low - (100 - low) * 0.2 - 0.05), 100.0 + (100 - low) * 0.05 + 0.01),
    )
    rows = []
    for f in result.features.values():
        tol = ", ".join(
            x for x in (f"atol {f.atol:g}" if f.atol else "", f"rtol {f.rtol:g}" if f.rtol else "") if x
        )
        rows.append(
            [
                f.name,
                f.dtype,
                tol or "exact",
                f.null_policy,
                f.compared,
                f.matched,
                f.lagging,
                f.mismatched,
                f.missing_in_new + f.missing_in_old,
                _pct(f.match_rate),
                h.badge("pass" if (f.match_rate or 0) >= result.threshold else "fail")
                if f.match_rate is not None
                else h.badge("inconclusive"),
                f"within churn {_pct(f.churn)}" if f.noise else "",
            ]
        )
    tbl = h.table(
        [
            "feature",
            "dtype",
            "tolerance",
            "null policy",
            "compared",
            "matched",
            "lagging",
            "mismatched",
            "missing",
            "match rate",
            "status",
            "noise",
        ],
        rows,
    )
    return h.section("Features", chart, tbl, anchor="features")


def _diff_block(text: str) -> h.Markup:
    """A unified diff, added lines green and removed lines red (escaped)."""
    lines = []
    for line in text.splitlines():
        css = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
        css = "hunk" if line.startswith(("@@", "---", "+++")) else css
        lines.append(h.Markup('<span class="{}">{}</span>').format(css, line) if css else h.escape(line))
    return h.Markup('<pre class="diff">{}</pre>').format(h.Markup("\n").join(lines))


def _causes(result: ComparisonResult) -> Any:
    """Root causes first: what is wrong, on which features, the proof and the fix."""
    verdict = h.paragraph(
        h.badge(str(result.verdict))
        + h.Markup(" match rate {} against the threshold {}; {} root cause(s) below").format(
            _pct(result.match_rate, 4), _pct(result.threshold, 2), len(result.causes)
        )
    )
    if not result.causes:
        text = (
            "No mismatches: nothing to diagnose."
            if not result.mismatched_values
            else "No root cause could be established; see the value patterns under Explanations."
        )
        return h.section("Root causes", verdict, h.paragraph(text), anchor="causes")
    parts: list[Any] = [
        verdict,
        h.paragraph(
            "Each mismatching entity is attributed to one cause; a cause is proven when replaying the "
            "group's definition with the change shown reproduces the legacy values of the sampled "
            "mismatching entities and leaves the matching control entities unchanged."
        ),
    ]
    for i, c in enumerate(result.causes, start=1):
        proof = h.badge("pass", "proven by replay") if c.proven else h.badge("inconclusive", "value pattern")
        parts.append(
            h.Markup('<h3 id="cause-{}">{}. {} {}</h3>').format(i, i, c.kind.replace("_", " "), proof)
        )
        rows = [[f, n, f"{c.shares.get(f, 0):.0%}"] for f, n in c.features.items()]
        parts.append(h.paragraph(c.evidence))
        parts.append(h.paragraph(h.Markup("<strong>Fix:</strong> {}").format(c.fix)))
        if c.rewrite is not None and c.rewrite.diff:
            parts.append(h.paragraph(f"Change to the definition ({c.rewrite.description}):"))
            parts.append(_diff_block(c.rewrite.diff))
        if len(c.features) > 1:
            parts.append(
                h.bar_chart(
                    list(c.features),
                    [c.shares.get(f, 0) * 100 for f in c.features],
                    title=f"Share of each feature's mismatches explained by {c.kind}",
                    ylabel="% of the feature's mismatches",
                    ylim=(0.0, 105.0),
                )
            )
        parts.append(h.table(["feature", "mismatching values explained", "share"], rows))
        if c.samples:
            parts.append(h.paragraph(h.Markup("Sample entities: {}").format(", ".join(c.samples))))
    return h.section("Root causes", *parts, anchor="causes")


def _explanations(result: ComparisonResult) -> Any:
    rows = [
        [
            h.code(str(e.kind)),
            e.feature or "(entities)",
            e.rows,
            f"{e.share:.0%}",
            e.evidence,
            e.fix,
            ", ".join(e.samples[:5]),
        ]
        for e in result.explanations
    ]
    return h.section(
        "Value patterns",
        h.paragraph(
            "The evidence under the root causes, per feature. Each mismatching value is assigned to at most one pattern; rows of one feature add up to its "
            "mismatches. Share is of the feature's mismatches (of all mismatching values for missing keys)."
        ),
        h.table(
            ["pattern", "feature", "rows", "share", "evidence", "suggested fix", "sample entities"],
            rows,
            empty="no mismatches to explain",
        ),
        anchor="explanations",
    )


def _deltas(result: ComparisonResult) -> Any:
    parts: list[Any] = []
    for f in result.features.values():
        if not f.mismatched:
            continue
        if f.deltas:
            unit = " (s)" if f.dtype == "timestamp" else ""
            parts.append(
                h.histogram(
                    f.deltas,
                    bins=40,
                    title=f"{f.name}: new - old for mismatching values{unit}",
                    xlabel=f"difference{unit}, sample of {len(f.deltas)} of {f.mismatched}",
                    log=True,
                    width=7.0,
                    height=2.6,
                )
            )
        if f.worst:
            parts.append(
                h.details(
                    f"{f.name}: largest differences",
                    h.table(
                        ["entity", "old", "new", "new - old"],
                        [[w["entity_id"], w["old"], w["new"], w["delta"]] for w in f.worst],
                    ),
                )
            )
    if not parts:
        parts.append(h.paragraph("No mismatching values."))
    return h.section("Differences", *parts, anchor="deltas")


def _history(result: ComparisonResult, series: Sequence[ShadowRun]) -> Any:
    if not series:
        return h.section(
            "Over time", h.paragraph("No earlier runs recorded for this group."), anchor="history"
        )
    rows = [
        [
            r.logical_time.isoformat(timespec="seconds"),
            h.badge(r.verdict),
            _pct(r.match_rate, 4),
            r.entities_compared,
        ]
        for r in list(series)[-30:][::-1]
    ]
    table = h.details(
        f"last {len(rows)} runs", h.table(["logical time", "verdict", "match rate", "entities"], rows)
    )
    if len(series) < 2:  # one point makes no line (and a meaningless time axis)
        return h.section("Over time", h.paragraph("One run recorded so far."), table, anchor="history")
    chart = h.line_chart(
        [r.logical_time for r in series],
        {"mismatch rate %": [None if r.match_rate is None else (1 - r.match_rate) * 100 for r in series]},
        title="Mismatch rate per run (%)",
        ylabel="% of values differing",
        threshold=(1 - result.threshold) * 100,
        threshold_label=f"allowed {(1 - result.threshold):.2%}",
    )
    return h.section("Over time", chart, table, anchor="history")


def _gx(gx: GxVerdict | None, schema: GxVerdict | None) -> Any:
    parts: list[Any] = []
    for v in (gx, schema):
        if v is None:
            continue
        rows = [
            [
                h.code(r["expectation"]),
                r.get("column") or "",
                h.badge("pass" if r["success"] else "fail"),
                "" if r.get("unexpected_percent") is None else f"{r['unexpected_percent']:.3f}%",
                "" if r.get("observed_value") is None else str(r["observed_value"]),
            ]
            for r in v.results
        ]
        parts.append(
            h.section(
                v.suite, h.table(["expectation", "column", "result", "unexpected", "observed"], rows), level=3
            )
        )
    if not parts:
        return h.Markup("")
    return h.section("Great Expectations", *parts, anchor="gx")


def render_shadow_report(
    result: ComparisonResult,
    *,
    series: Sequence[ShadowRun] = (),
    gx: GxVerdict | None = None,
    schema: GxVerdict | None = None,
    soak: SoakStatus | None = None,
    out_dir: Path | None = None,
    kind: str = "shadow",
) -> h.Markup:
    """The whole page as HTML text (``kind`` "pit": a point-in-time validation, same layout)."""
    body = h.Markup("\n").join(
        [
            _causes(result),
            _summary(result, gx, soak, out_dir),
            _features(result),
            _explanations(result),
            _deltas(result),
            _history(result, series),
            _gx(gx, schema),
        ]
    )
    pit = kind == "pit"
    return h.page(
        f"{'Point-in-time validation' if pit else 'Shadow comparison'}: {result.group}",
        body,
        subtitle="old offline history (reference) vs the new definition as of the same times"
        if pit
        else "old store (reference) vs new store, same entities, per-feature tolerances",
        generated_at=datetime.now(UTC),
        footer="airflow-fsmigration shadow report",
    )


def write_shadow_report(
    result: ComparisonResult,
    out_dir: str | Path,
    *,
    series: Sequence[ShadowRun] = (),
    gx: GxVerdict | None = None,
    schema: GxVerdict | None = None,
    soak: SoakStatus | None = None,
    kind: str = "shadow",
) -> Path:
    """Write ``shadow_<group>_<time>.html`` (and ``.json`` with the full result) into ``out_dir``."""
    import json

    out = Path(out_dir)
    stamp = (result.logical_time or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{kind}_{result.group}_{stamp}.html"
    page = render_shadow_report(
        result, series=series, gx=gx, schema=schema, soak=soak, out_dir=out, kind=kind
    )
    h.write_page(path, page)
    data = result.to_dict()
    if gx is not None:
        data["gx"] = gx.to_dict()
    if schema is not None:
        data["schema_parity"] = schema.to_dict()
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    return path
