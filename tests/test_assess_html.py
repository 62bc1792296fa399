"""The shared HTML report toolkit: escaping, badges, self-contained inline SVG charts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.reports import html as h


@pytest.mark.unit
def test_text_is_escaped_and_markup_passes_through():
    page = h.page(
        "<T>",
        h.section("a & b", h.table(["<h>"], [["<script>x</script>"], [h.badge("pass")]])),
        subtitle="x<y",
    )
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<title>&lt;T&gt;</title>" in page and "a &amp; b" in page and "x&lt;y" in page
    assert '<span class="badge ok">pass</span>' in page


@pytest.mark.unit
def test_badges_and_cells():
    assert 'class="badge bad"' in h.badge("fail")
    assert 'class="badge warn"' in h.badge("inconclusive")
    assert 'class="badge muted"' in h.badge("something else")  # unknown is never green
    table = h.table(["n", "x", "b", "none"], [[12345, 0.123456, True, None]])
    assert '<td class="num">12,345</td>' in table and '<td class="num">0.1235</td>' in table
    assert "<td>yes</td>" in table
    assert "none" in h.table(["a"], [], empty="none")


@pytest.mark.unit
def test_charts_are_inline_svg_without_external_assets():
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    charts = [
        h.bar_chart(["a", "b"], [0.99, 0.999], threshold=0.995, title="rates"),
        h.line_chart(
            [t0 + timedelta(days=i) for i in range(4)], {"rate": [1.0, None, 0.9, 1.0]}, threshold=0.95
        ),
        h.histogram([0.1, 0.2, 0.2, float("nan")], bins=3, title="deltas"),
        h.histogram([], title="empty"),
        h.layered_graph([["a", "b"], ["c"]], [("a", "c"), ("b", "c")], column_labels=["wave 1", "wave 2"]),
    ]
    page = h.page("charts", h.Markup("").join(charts))
    assert page.count("<svg") == 5
    assert "<?xml" not in page and "<metadata>" not in page
    assert re.search(r"<(link|script|img)\b", page) is None
    assert re.search(r'(src|href)="https?://', page) is None
    assert 'aria-label="rates"' in page
    # Same data, same bytes: reports diff cleanly.
    assert h.bar_chart(["a"], [1.0], title="t") == h.bar_chart(["a"], [1.0], title="t")
