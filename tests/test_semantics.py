"""One meaning everywhere: keys, legacy values, tolerances and nulls agree across every path.

The property tests feed random values, key templates and tolerances through the semantics
functions, the comparator (the Redis reader's column decoder plus the comparison engine), the
serving side (the legacy backend's row decoding plus the router's shadow comparison) and
keep-warm, and assert they all give the same answer. The integration tests check the same with
a real Redis: an escaped-brace key template, and a batch holding "42.0" and an undecodable value.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_fsmigration import semantics
from airflow_fsmigration.compare.engine import ComparisonAccumulator, compare_tables
from airflow_fsmigration.compare.model import MATCH, Category
from airflow_fsmigration.plan.model import FeatureGroup
from airflow_fsmigration.registry.keepwarm import _probe_online, parse_source_ts
from airflow_fsmigration.serving.backends import LegacyRedisBackend
from airflow_fsmigration.serving.router import row_diffs
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, UNDECODABLE_PREFIX, arrow_type
from airflow_fsmigration.stores.redis_codec import decode_column
from airflow_fsmigration.stores.redis_online import HashPerEntityLayout, RedisOnlineSource

DTYPES = ("int64", "float64", "bool", "string", "timestamp")
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_group(
    dtype: str,
    *,
    encoding: str = "string",
    template: str = "fs:g:{entity}",
    atol: float = 0.0,
    rtol: float = 0.0,
    null_policy: str = "null_equals_null",
    ts_field: str | None = None,
) -> FeatureGroup:
    """A group with the feature under test ``v`` and an always-present ``k`` (so a hash exists)."""
    return FeatureGroup.model_validate(
        {
            "name": "g",
            "entity_key": "user_id",
            "definition": "sql/g.sql",
            "features": [
                {"name": "v", "dtype": dtype, "atol": atol, "rtol": rtol, "null_policy": null_policy},
                {"name": "k", "dtype": "string"},
            ],
            "legacy_online": {"key_template": template, "encoding": encoding, "timestamp_field": ts_field},
            "legacy_offline": {"table": "legacy.g_history"},
            "sla": {"p99_ms": 10, "max_staleness": "5m"},
            "qps": {"peak": 10, "average": 1},
        },
        strict=False,
    )


# --------------------------------------------------------------------------- strategies

INT_EDGES = [
    0,
    1,
    -1,
    42,
    2**53 - 1,
    2**53,
    2**53 + 1,
    -(2**53) - 1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
]
ints = st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**63 - 1), st.integers(-1000, 1000))
floats = st.floats(allow_nan=True, allow_infinity=True)
times = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2199, 12, 30))
BOOL_WORDS = ["1", "0", "true", "false", "t", "f", "yes", "no", "y", "n", "on", "2", "tru"]
JUNK = [
    b"",
    b" ",
    b"forty-two",
    b"42.5",
    b"1_000",
    b"nan",
    b"-",
    b"\xff\xfe",
    b"null",
    b'"',
    b'"x',
    b"0x10",
    b"nan(1)",
    b"1e",
    b".",
    b"23:59:60",
]


@st.composite
def cased(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if f else c for c, f in zip(word, flips, strict=True))


@st.composite
def int_text(draw: st.DrawFn) -> str:
    v = draw(ints)
    form = draw(st.sampled_from(["{}", "{}.0", "{}.000", "{}e0", " {} ", "{}.5", "+{}"]))
    return form.format(v)


@st.composite
def float_text(draw: st.DrawFn) -> str:
    v = draw(floats)
    return draw(
        st.sampled_from([repr(v), f"{v:.3e}", str(v).upper(), "1e400", "-inf", "NaN", "Infinity", ".5"])
    )


@st.composite
def ts_text(draw: st.DrawFn) -> str:
    t = draw(times)
    offset = timezone(timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60))))
    aware = t.replace(tzinfo=UTC)
    epoch = Decimal(semantics.epoch_micros(aware)) / 1_000_000
    return draw(
        st.sampled_from(
            [
                t.isoformat(),
                aware.isoformat(),
                aware.isoformat().replace("+00:00", "Z"),
                aware.astimezone(offset).isoformat(),
                t.isoformat(sep=" "),
                t.isoformat(timespec="seconds"),
                t.date().isoformat(),
                str(epoch),
                str(int(epoch)),
                str(int(epoch * 1000)),
                t.isoformat() + "junk",
                aware.isoformat(timespec="hours").replace("+00:00", "Z"),
                aware.isoformat().replace("T", "t"),
                t.isoformat() + ".1234567",
            ]
        )
    )


def text_for(dtype: str) -> st.SearchStrategy[str]:
    return {
        "int64": int_text(),
        "float64": float_text(),
        "bool": st.sampled_from(BOOL_WORDS).flatmap(cased),
        "string": st.text(max_size=12),
        "timestamp": ts_text(),
    }[dtype]


@st.composite
def raw_value(draw: st.DrawFn, dtype: str, encoding: str) -> bytes | None:
    """A legacy Redis field value: absent, a spelling of a value of ``dtype``, another dtype's, or junk."""
    kind = draw(st.sampled_from(["own", "own", "own", "other", "junk", "absent"]))
    if kind == "absent":
        return None
    if kind == "junk":
        return draw(st.one_of(st.sampled_from(JUNK), st.binary(max_size=6)))
    text = draw(text_for(dtype if kind == "own" else draw(st.sampled_from(DTYPES))))
    if encoding == "json" and draw(st.booleans()):
        text = json.dumps(text)
    return text.encode("utf-8", "surrogatepass")


def same(a: object, b: object) -> bool:
    """Equal values (NaN equals NaN, datetimes by instant, bool is not int)."""
    if a is semantics.UNDECODABLE or b is semantics.UNDECODABLE:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- decoding


@pytest.mark.unit
@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(DTYPES), encoding=st.sampled_from(["string", "json"]))
def test_every_reader_decodes_a_legacy_value_alike(data, dtype, encoding):
    """semantics, the Redis reader's column decoder, the serving backend and keep-warm agree."""
    raws = data.draw(st.lists(raw_value(dtype, encoding), min_size=1, max_size=8))
    want = [semantics.decode_value(r, dtype, encoding) for r in raws]

    group = make_group(dtype, encoding=encoding)
    ids = [f"e{i}" for i in range(len(raws))]
    table = HashPerEntityLayout().decode(
        group,
        pa.array(ids, type=pa.string()),
        [pa.array(raws, type=pa.binary()), pa.array([b"x"] * len(ids), type=pa.binary())],
    )
    flag = UNDECODABLE_PREFIX + "v"
    bad = table.column(flag).to_pylist() if flag in table.column_names else [False] * len(ids)
    for raw, w, got, flagged in zip(raws, want, table.column("v").to_pylist(), bad, strict=True):
        if isinstance(got, datetime):
            got = got.astimezone(UTC)
        assert flagged == (w is semantics.UNDECODABLE), (raw, w, got)
        assert same(None if w is semantics.UNDECODABLE else w, got), (raw, w, got)

    backend = LegacyRedisBackend(None, [group])
    for raw, w in zip(raws, want, strict=True):
        row = backend.decode_row("g", "e", {b"v": raw, b"k": b"x"} if raw is not None else {b"k": b"x"})
        served_bad = "v" in getattr(row, "undecodable", ())
        assert served_bad == (w is semantics.UNDECODABLE), (raw, w, row)
        assert same(None if served_bad else w, row["v"]), (raw, w, row)

    if dtype == "timestamp":  # keep-warm's source time: the same instant, or nothing
        for raw, w in zip(raws, want, strict=True):
            assert parse_source_ts(raw, encoding) == (None if w is semantics.UNDECODABLE else w), raw


@pytest.mark.unit
@pytest.mark.parametrize(
    ("dtype", "raw", "want"),
    [
        ("bool", b"t", True),
        ("bool", b"F", False),
        ("bool", b"Yes", True),
        ("int64", b"42.0", 42),
        ("int64", b"9007199254740993", 9007199254740993),
        ("int64", b"9223372036854775807", 2**63 - 1),
        ("int64", b"9223372036854775808", semantics.UNDECODABLE),
        ("int64", b"42.5", semantics.UNDECODABLE),
        ("timestamp", b"2026-11-25T01:00:00", datetime(2026, 11, 25, 1, tzinfo=UTC)),
        ("timestamp", b"1795568400000", datetime(2026, 11, 25, 1, tzinfo=UTC)),
        ("float64", b"forty-two", semantics.UNDECODABLE),
    ],
)
def test_the_cases_the_issue_names(dtype, raw, want):
    got = semantics.decode_value(raw, dtype)
    assert same(want, got)
    _, bad = decode_column(pa.array([raw, b"1"], type=pa.binary()), dtype)
    assert bool(bad is not None and bad[0]) == (want is semantics.UNDECODABLE)


# --------------------------------------------------------------------------- comparison

TOLERANCES = st.sampled_from([0.0, 0.0, 1e-12, 1e-9, 1e-6, 0.01, 0.5, 1.0, 2.0, 1000.0])


@st.composite
def new_value(draw: st.DrawFn, dtype: str, old: object) -> object:
    """A new-store value: null, a random one, or the old one moved a little (tolerance edges)."""
    if draw(st.integers(0, 9)) == 0:
        return None
    near = old is not None and old is not semantics.UNDECODABLE and draw(st.booleans())
    if dtype == "int64":
        if near:
            return min(
                max(old + draw(st.integers(-3, 3) | st.integers(-(2**12), 2**12)), -(2**63)), 2**63 - 1
            )
        return draw(ints.filter(lambda v: -(2**63) <= v < 2**63))
    if dtype == "float64":
        if near and math.isfinite(old):
            return (
                old
                + old * draw(st.sampled_from([0.0, 1e-12, -1e-9, 1e-6, 0.02]))
                + draw(st.sampled_from([0.0, 0.4, -1.5]))
            )
        return draw(floats)
    if dtype == "timestamp":
        if near:
            try:
                return old + timedelta(microseconds=draw(st.integers(-3_000_000, 3_000_000)))
            except OverflowError:
                return old
        return draw(times).replace(tzinfo=UTC)
    if dtype == "bool":
        return draw(st.booleans())
    return old if near else draw(st.sampled_from(["", "x", "42", "t"]))


def _new_table(group: FeatureGroup, ids: list[str], news: list[object]) -> pa.Table:
    dtype = str(group.features[0].dtype)
    return pa.table(
        {
            ENTITY: pa.array(ids, type=pa.string()),
            "v": pa.array(news, type=arrow_type(dtype)),
            "k": pa.array(["x"] * len(ids), type=pa.string()),
            SOURCE_TS: pa.nulls(len(ids), arrow_type("timestamp")),
        }
    )


@pytest.mark.unit
@PROPERTY
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    encoding=st.sampled_from(["string", "json"]),
    atol=TOLERANCES,
    rtol=TOLERANCES,
    policy=st.sampled_from(semantics.NULL_POLICIES),
)
def test_comparator_router_and_semantics_judge_alike(data, dtype, encoding, atol, rtol, policy):
    """The same legacy value and new value: one verdict, in the engine, the router and semantics."""
    group = make_group(dtype, encoding=encoding, atol=atol, rtol=rtol, null_policy=policy)
    raws = data.draw(st.lists(raw_value(dtype, encoding), min_size=1, max_size=8))
    olds = [semantics.decode_value(r, dtype, encoding) for r in raws]
    news = [data.draw(new_value(dtype, o)) for o in olds]
    ids = [f"e{i}" for i in range(len(raws))]
    want = [semantics.feature_match(group.features[0], o, n) for o, n in zip(olds, news, strict=True)]

    # the nightly comparison: the Redis reader's decoding, then the engine
    old_table = HashPerEntityLayout().decode(
        group,
        pa.array(ids, type=pa.string()),
        [pa.array(raws, type=pa.binary()), pa.array([b"x"] * len(ids), type=pa.binary())],
    )
    acc = ComparisonAccumulator(group, keep_flags=True)
    acc.add(old_table, _new_table(group, ids, news))
    flags = acc.status_flags()
    by_id = dict(zip(flags[ENTITY].to_pylist(), flags["v"].tolist(), strict=True))
    engine = [by_id[e] == MATCH for e in ids]

    # the serving side: the backend's row decoding, then the router's shadow comparison
    backend = LegacyRedisBackend(None, [group])
    router = []
    for raw, new in zip(raws, news, strict=True):
        old_row = backend.decode_row("g", "e", {b"v": raw, b"k": b"x"} if raw is not None else {b"k": b"x"})
        router.append(not row_diffs(group, old_row, {"v": new, "k": "x"}))

    assert engine == want, list(zip(raws, olds, news, engine, want, strict=True))
    assert router == want, list(zip(raws, olds, news, router, want, strict=True))
    assert acc.features["v"].undecodable == sum(o is semantics.UNDECODABLE for o in olds)


@pytest.mark.unit
@PROPERTY
@given(
    a=ints.filter(lambda v: -(2**63) <= v < 2**63),
    delta=st.integers(-(2**20), 2**20),
    atol=TOLERANCES,
    rtol=TOLERANCES,
    dtype=st.sampled_from(["int64", "timestamp"]),
)
def test_integer_tolerance_is_exact_and_vectorised_equals_scalar(a, delta, atol, rtol, dtype):
    b = min(max(a + delta, -(2**63)), 2**63 - 1)
    scalar = semantics.within_tolerance(a, b, dtype, atol=atol, rtol=rtol)
    vector = semantics.values_equal(
        np.array([a], dtype=np.int64), np.array([b], dtype=np.int64), dtype, atol=atol, rtol=rtol
    )
    assert bool(vector[0]) == scalar
    assert semantics.within_tolerance(b, a, dtype, atol=atol, rtol=rtol) == scalar  # symmetric
    if atol == 0 and rtol == 0:
        assert scalar == (a == b)  # a difference of 1 above 2**53 is still a difference


@pytest.mark.unit
@PROPERTY
@given(a=floats, b=floats, atol=TOLERANCES, rtol=TOLERANCES)
def test_float_tolerance_vectorised_equals_scalar(a, b, atol, rtol):
    scalar = semantics.within_tolerance(a, b, "float64", atol=atol, rtol=rtol)
    vector = semantics.values_equal(np.array([a]), np.array([b]), "float64", atol=atol, rtol=rtol)
    assert bool(vector[0]) == scalar == semantics.within_tolerance(b, a, "float64", atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- keys

_chars = st.characters(codec="utf-8", exclude_characters="{}\x00")
# a key template may not hold ASCII spaces or control characters (the plan refuses them)
_key_chars = st.characters(codec="utf-8", exclude_characters="{}" + "".join(map(chr, [*range(0x21), 0x7F])))
_literal = st.text(alphabet=_key_chars, max_size=6)
_piece = st.one_of(_literal, st.sampled_from(["{{", "}}", "{{v2}}", ":", "*", "?", "[x]", "\\"]))


@st.composite
def templates(draw: st.DrawFn) -> str:
    head = "".join(draw(st.lists(_piece, max_size=4)))
    tail = "".join(draw(st.lists(_piece, max_size=4)))
    return head + "{entity}" + tail


@pytest.mark.unit
@PROPERTY
@given(
    template=templates(), entity_ids=st.lists(st.text(_chars, min_size=1, max_size=8), min_size=1, max_size=5)
)
def test_every_path_builds_the_same_key(template, entity_ids):
    """The key is ``template.format(entity=id)`` for the reader, serving and keep-warm; ids come back."""
    group = make_group("string", template=template)
    want = [template.format(entity=e) for e in entity_ids]
    assert [semantics.format_key(template, e) for e in entity_ids] == want
    layout = HashPerEntityLayout()
    keys = layout.keys(group, pa.array(entity_ids, type=pa.string())).to_pylist()
    assert [k.decode() for k in keys] == want
    backend = LegacyRedisBackend(None, [group])
    assert [backend.key("g", e) for e in entity_ids] == want
    assert layout.ids_from_keys(group, keys) == entity_ids
    assert [semantics.entity_from_key(template, k) for k in want] == entity_ids
    prefix, suffix = template.format(entity="\x00").split("\x00")
    assert semantics.key_pattern(template) == layout.match_pattern(group)
    assert semantics.key_pattern(template) == semantics.glob_escape(prefix) + "*" + semantics.glob_escape(
        suffix
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "template",
    ["fs:{entity}:{other}", "fs:{}", "fs:{entity!r}", "fs:{entity:>4}", "{entity}{entity}", "fs:{"],
)
def test_a_template_with_other_fields_is_a_clear_error(template):
    with pytest.raises(ValueError, match="key_template"):
        semantics.key_affixes(template)


# --------------------------------------------------------------------------- real Redis

ESCAPED = "fs:{{v2}}:{entity}"


@pytest.mark.integration
def test_escaped_brace_template_reads_the_same_keys_everywhere(redis_url, redis_client):
    group = make_group("int64", template=ESCAPED, ts_field="_ts")
    now = time.time()
    for i in range(3):
        redis_client.hset(f"fs:{{v2}}:u{i}", mapping={"v": str(i), "k": "x", "_ts": f"{now - i:.3f}"})
    redis_client.hset(
        "fs:{{v2}}:u9", mapping={"v": "9", "k": "x"}
    )  # the literal text of the template: not ours

    with RedisOnlineSource(redis_url, None, "legacy_online") as source:
        assert source.entity_ids(group) == ["u0", "u1", "u2"]
        table = source.read(group, ["u0", "u1", "u2", "u9"])
        assert sorted(table.column(ENTITY).to_pylist()) == ["u0", "u1", "u2"]
        assert sorted(table.column("v").to_pylist()) == [0, 1, 2]
        written = source.write(group, table.slice(0, 1))
        assert written == 1 and redis_client.exists("fs:{v2}:u0")

    backend = LegacyRedisBackend(redis_client, [group])
    assert backend.key("g", "u1") == "fs:{v2}:u1"
    rows = backend.read("g", ["u0", "u1", "u2", "u9"])
    assert {e: r["v"] for e, r in rows.items()} == {"u0": 0, "u1": 1, "u2": 2}

    probe = _probe_online(SimpleNamespace(groups={"g": group}), "g", redis_client, 10, 10)
    assert (probe.sampled, probe.with_ts) == (3, 3), probe.problems
    assert probe.newest is not None and abs(probe.newest.timestamp() - now) < 1


@pytest.mark.integration
def test_one_odd_value_does_not_abort_the_comparison(redis_url, redis_client):
    """A batch with "42.0", "t" and one undecodable value: read, compared, the bad one counted."""
    group = make_group("int64")
    flags = make_group("bool")
    for i in range(50):
        redis_client.hset(f"fs:g:u{i}", mapping={"v": str(i), "k": "x"})
    redis_client.hset("fs:g:u7", mapping={"v": "7.0"})
    redis_client.hset("fs:g:u8", mapping={"v": "forty-two"})
    redis_client.hset("fs:g:u9", mapping={"v": "9007199254740993"})
    ids = [f"u{i}" for i in range(50)]
    with RedisOnlineSource(redis_url, None, "legacy_online") as source:
        old = source.read(group, ids)
    assert old.column(UNDECODABLE_PREFIX + "v").to_pylist().count(True) == 1
    new_values = [9007199254740993 if i == 9 else i for i in range(50)]
    result = compare_tables(group, old, _new_table(group, ids, new_values))
    v = result.features["v"]
    assert (v.compared, v.matched, v.mismatched, v.undecodable) == (50, 49, 1, 1)
    assert v.categories == {int(Category.UNDECODABLE): 1}

    # a bool feature written with t/f reads and matches too
    for i in range(4):
        redis_client.hset(f"fs:g:b{i}", mapping={"v": "tf"[i % 2], "k": "x"})
    bool_ids = [f"b{i}" for i in range(4)]
    with RedisOnlineSource(redis_url, None, "legacy_online") as source:
        old = source.read(flags, bool_ids)
    result = compare_tables(flags, old, _new_table(flags, bool_ids, [i % 2 == 0 for i in range(4)]))
    assert result.features["v"].matched == 4
