"""What the legacy Redis bytes mean: the key layout and the value encoding, column by column.

Values follow :mod:`airflow_fsmigration.semantics` (the one definition the comparator, serving
and keep-warm share). The common spellings are decoded with Arrow kernels over whole columns;
only values those kernels do not cover (``42.0`` among plain integers, ``nan`` among decimals,
unusual ISO forms, JSON escapes, invalid UTF-8) go value by value through the semantics
functions, so both give the same answer by construction. A value no rule accepts becomes a null
plus a true flag in the ``_undecodable.<feature>`` column, never an error for the whole read.

Layout (what the demo generator writes, and what most home-grown feature stores look like):

- one Redis **hash per entity** at ``group.legacy_online.key_template.format(entity=<id>)``,
  e.g. ``fs:user_txn_stats:u42``; a key that does not exist means the entity is absent;
- one **field per feature**, named like the feature; a null value is an absent field;
- ``legacy_online.timestamp_field`` (e.g. ``_ts``), when set, holds the source event time as
  epoch seconds in decimal (``"1732500000.25"``; ISO 8601 is accepted too). It becomes
  ``_source_ts``; an unreadable one is a null (it only excuses lag);
- values per ``legacy_online.encoding``, as written by :func:`encode_value_column`:

  ========= =========================================== ==========================================
  dtype     ``string``                                  ``json`` (each field one JSON scalar)
  ========= =========================================== ==========================================
  int64     ``42``                                      ``42``
  float64   ``repr(x)``: ``3.14``, ``nan``, ``inf``     ``3.14``
  bool      ``true`` / ``false``                        ``true`` / ``false``
  string    the raw text                                ``"text"`` (JSON string, escapes allowed)
  timestamp ISO-8601 with offset                        ``"2026-11-25T01:02:03.000004+00:00"``
  null      absent field                                absent field or ``null``
  ========= =========================================== ==========================================

  and read with the wider rules of :mod:`~airflow_fsmigration.semantics` (``t``/``f``/``yes``/
  ``no`` booleans, integral decimals, naive ISO timestamps, epoch numbers).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Protocol

from airflow_fsmigration import semantics
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, UNDECODABLE_PREFIX, arrow_type

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from airflow_fsmigration.plan.model import FeatureGroup

log = logging.getLogger("airflow_fsmigration.stores")

_WS = " \t\r\n"
_JSON_PLAIN = r'^"[^"\\\x00-\x1f]*"$'
_INT_ZERO_FRACTION = r"^-?[0-9]{1,18}\.0*$"
_INT_PLAIN = r"^-?[0-9]{1,18}$"
_FLOAT = r"^[+-]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|(?i:nan|inf|infinity))$"
_ISO = r"^(19|2[0-9])[0-9]{2}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
_ISO_AWARE = _ISO + r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
_ISO_NAIVE = _ISO + r"$"


class RedisLayout(Protocol):
    """How a group's entities map to Redis keys, fields and values."""

    def keys(self, group: FeatureGroup, ids: pa.Array) -> pa.Array:
        """The Redis key of each entity id (vectorised; returns a binary array)."""
        ...

    def fields(self, group: FeatureGroup) -> list[bytes]:
        """The hash fields to HMGET, in order: one per feature, then the timestamp field if any."""
        ...

    def match_pattern(self, group: FeatureGroup) -> str:
        """A SCAN MATCH glob that selects this group's keys."""
        ...

    def ids_from_keys(self, group: FeatureGroup, keys: list[bytes]) -> list[str]:
        """Entity ids from scanned keys (keys that do not belong to the group are dropped)."""
        ...

    def decode(self, group: FeatureGroup, ids: pa.Array, columns: list[pa.Array]) -> pa.Table:
        """The frame of present entities from raw binary columns aligned with :meth:`fields`."""
        ...

    def encode(self, group: FeatureGroup, table: pa.Table) -> list[pa.Array]:
        """The inverse of :meth:`decode`: one text column per field (null = absent field)."""
        ...


class HashPerEntityLayout:
    """The legacy layout described in the module docstring (``string`` or ``json`` values)."""

    def _affixes(self, group: FeatureGroup) -> tuple[str, str]:
        try:
            return semantics.key_affixes(group.legacy_online.key_template)
        except ValueError as exc:
            raise ValueError(f"group '{group.name}': {exc}") from None

    def keys(self, group: FeatureGroup, ids: pa.Array) -> pa.Array:
        import pyarrow as pa
        import pyarrow.compute as pc

        prefix, suffix = self._affixes(group)
        return pc.binary_join_element_wise(prefix, ids.cast(pa.string()), suffix, "").cast(pa.binary())

    def fields(self, group: FeatureGroup) -> list[bytes]:
        names = [f.name.encode() for f in group.features]
        if group.legacy_online.timestamp_field:
            names.append(group.legacy_online.timestamp_field.encode())
        return names

    def match_pattern(self, group: FeatureGroup) -> str:
        self._affixes(group)
        return semantics.key_pattern(group.legacy_online.key_template)

    def ids_from_keys(self, group: FeatureGroup, keys: list[bytes]) -> list[str]:
        template = group.legacy_online.key_template
        self._affixes(group)
        found = (semantics.entity_from_key(template, k) for k in keys)
        return [e for e in found if e is not None]

    def decode(self, group: FeatureGroup, ids: pa.Array, columns: list[pa.Array]) -> pa.Table:
        import pyarrow as pa

        encoding = str(group.legacy_online.encoding)
        arrays: list[pa.Array] = [ids.cast(pa.string())]
        names = [ENTITY]
        flags: list[tuple[str, pa.Array]] = []
        for feature, raw in zip(group.features, columns, strict=False):
            values, bad = decode_column(raw, str(feature.dtype), encoding)
            arrays.append(values)
            names.append(feature.name)
            if bad is not None:
                flags.append((UNDECODABLE_PREFIX + feature.name, pa.array(bad, type=pa.bool_())))
                sample = raw.filter(pa.array(bad))[0].as_py()
                log.warning(
                    "group '%s', feature '%s': %d value(s) are not %s-encoded %s, e.g. %r; read as null "
                    "and flagged undecodable",
                    group.name,
                    feature.name,
                    int(bad.sum()),
                    encoding,
                    feature.dtype,
                    sample[:80] if isinstance(sample, bytes) else sample,
                )
        if group.legacy_online.timestamp_field:
            arrays.append(decode_column(columns[len(group.features)], "timestamp", encoding)[0])
        else:
            arrays.append(pa.nulls(len(ids), arrow_type("timestamp")))
        names.append(SOURCE_TS)
        for name, flag in flags:
            names.append(name)
            arrays.append(flag)
        return pa.Table.from_arrays(arrays, names=names)

    def encode(self, group: FeatureGroup, table: pa.Table) -> list[pa.Array]:
        encoding = str(group.legacy_online.encoding)
        columns = [encode_value_column(table.column(f.name), str(f.dtype), encoding) for f in group.features]
        if group.legacy_online.timestamp_field:
            columns.append(encode_epoch(table.column(SOURCE_TS)))
        return columns


# --------------------------------------------------------------------------- decoding


def _mask(arr: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as False."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    import pyarrow.compute as pc

    return _mask(pc.match_substring_regex(text, pattern))


def _only(text: pa.Array, rows: np.ndarray) -> pa.Array:
    """``text`` where ``rows``, null elsewhere."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pa.array(rows), text, pa.scalar(None, text.type))


def _cast_or_none(text: pa.Array, target: pa.DataType) -> pa.Array | None:
    import pyarrow as pa

    try:
        return text.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _all_valid(text: pa.Array) -> np.ndarray:
    return _mask(text.is_valid())


def _fast_int(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Plain and ``.0``-suffixed decimals.

    Arrow's own cast decides a column of plain decimals; it also takes ``0x10``, so it counts
    only when every value is ASCII digits after an optional ``-``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    direct = _cast_or_none(text, pa.int64())
    if direct is not None and pc.all(pc.ascii_is_decimal(pc.utf8_ltrim(text, "-"))).as_py() is not False:
        return direct, _all_valid(text)
    plain = _matches(text, _INT_PLAIN)
    zero_fraction = _matches(text, _INT_ZERO_FRACTION)
    decided = plain | zero_fraction
    if zero_fraction.any():
        text = pc.replace_substring_regex(text, r"\.0*$", "")
    return _only(text, decided).cast(pa.int64()), decided


def _fast_float(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Arrow's cast where it agrees with the rule (it also takes ``nan(1)``), else pattern-gated."""
    import pyarrow as pa
    import pyarrow.compute as pc

    direct = _cast_or_none(text, pa.float64())
    if direct is not None and not (
        pc.any(pc.is_nan(direct)).as_py() and pc.any(pc.match_substring(text, "(")).as_py()
    ):
        return direct, _all_valid(text)
    decided = _matches(text, _FLOAT)
    values = _cast_or_none(_only(text, decided), pa.float64())
    if values is None:
        return pa.nulls(len(text), pa.float64()), decided & False
    return values, decided


def _fast_bool(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    words = semantics.BOOL_WORDS
    true_set = pa.array([k.decode() for k, v in words.items() if v])
    false_set = pa.array([k.decode() for k, v in words.items() if not v])
    lower = pc.ascii_lower(text)
    true, false = pc.is_in(lower, value_set=true_set), pc.is_in(lower, value_set=false_set)
    if pc.any(pc.invert(pc.or_(true, false))).as_py():  # some need trimming (or are not booleans)
        lower = pc.utf8_trim(lower, _WS)
        true, false = pc.is_in(lower, value_set=true_set), pc.is_in(lower, value_set=false_set)
    values = pc.if_else(true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_())))
    return values, _all_valid(text)  # every spelling is decided: the rest is undecodable


def _epoch_seconds(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Non-negative epoch seconds below 1e11 with at most 6 decimals, exactly (no float64)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(text)
    dot = np.asarray(pc.fill_null(pc.find_substring(text, "."), -1).to_numpy(zero_copy_only=False))
    length = np.asarray(pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))
    digits = pc.replace_substring(text, ".", "", max_replacements=1)
    whole = np.where(dot >= 0, dot, length)
    frac = np.where(dot >= 0, length - dot - 1, 0)
    ok = _mask(pc.ascii_is_decimal(digits)) & (whole <= 11) & (frac <= 6) & (length > 0)
    if not ok.any():
        return pa.nulls(n, arrow_type("timestamp")), ok
    ints = np.asarray(pc.fill_null(_only(digits, ok).cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
    micros = ints * (10 ** (6 - np.where(ok, frac, 6))).astype(np.int64)
    return pa.array(micros, type=pa.int64(), mask=~ok).cast(arrow_type("timestamp")), ok


def _fast_timestamp(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """ISO 8601 by Arrow's parser where it agrees with the rule, epoch seconds exactly."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = arrow_type("timestamp")
    # Arrow takes a subset of what fromisoformat takes, alike; a failing cast is slow (about
    # 2 us a value), so only try it when a sample of the column looks like dates.
    sample = [text[i].as_py() for i in range(0, len(text), max(1, len(text) // 8))]
    if all(v is None or v[4:5] == "-" for v in sample):
        direct = _cast_or_none(text, ts)
        if direct is not None:
            return direct, _all_valid(text)
    values, decided = _epoch_seconds(text)
    rest = _all_valid(text) & ~decided
    if not rest.any():
        return values, decided
    aware = rest & _matches(text, _ISO_AWARE)
    if aware.any():
        parsed = _cast_or_none(_only(text, aware), ts)
        if parsed is not None:
            values = pc.if_else(pa.array(aware), parsed, values)
            decided = decided | aware
    naive = rest & _matches(text, _ISO_NAIVE)
    if naive.any():
        parsed = _cast_or_none(_only(text, naive), pa.timestamp("us"))
        if parsed is not None:
            values = pc.if_else(pa.array(naive), parsed.cast(pa.int64()).cast(ts), values)
            decided = decided | naive
    return values, decided


_FAST = {"int64": _fast_int, "float64": _fast_float, "bool": _fast_bool, "timestamp": _fast_timestamp}


def _unwrap_json(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """JSON scalars as text (:func:`~airflow_fsmigration.semantics.json_unwrap`), vectorised.

    Returns the text and the rows left to the scalar path (quoted values with escapes).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.if_else(pc.equal(text, "null"), pa.scalar(None, pa.string()), text)
    quoted = _mask(pc.starts_with(text, '"'))
    if not quoted.any():
        return text, quoted
    plain = _matches(text, _JSON_PLAIN)
    text = pc.if_else(pa.array(plain), pc.utf8_slice_codeunits(text, 1, -1), text)
    return text, quoted & ~plain


def decode_column(raw: pa.Array, dtype: str, encoding: str = "string") -> tuple[pa.Array, np.ndarray | None]:
    """A typed column from raw Redis values, and the undecodable rows (None when there are none).

    Undecodable values are nulls in the typed column; each gets True in the returned mask.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    target = arrow_type(dtype)
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    n = len(raw)
    text = _cast_or_none(raw, pa.string())
    if text is None:  # invalid UTF-8 somewhere: every value goes the scalar way
        values, decided = pa.nulls(n, target), np.zeros(n, dtype=bool)
        slow = _mask(raw.is_valid())
    else:
        slow = np.zeros(n, dtype=bool)
        if encoding == "json":
            text, slow = _unwrap_json(text)
        if dtype == "string":
            values, decided = text, _mask(text.is_valid())
        else:
            # Padded values are rare: the kernels leave them undecided and the scalar rule strips them.
            values, decided = _FAST[dtype](text)
        decided &= ~slow
        # a value the kernels did not decide (or a non-null that came out null) goes the scalar way
        slow |= _mask(text.is_valid()) & ~decided
    bad = decided & _mask(values.is_null()) & _mask(text.is_valid()) if text is not None else decided & False
    if slow.any():
        rows = np.flatnonzero(slow)
        picked = raw.take(pa.array(rows)).to_pylist()
        decoded = [semantics.decode_value(v, dtype, encoding) for v in picked]
        failed = np.array([d is semantics.UNDECODABLE for d in decoded], dtype=bool)
        bad[rows[failed]] = True
        replacement = pa.array([None if d is semantics.UNDECODABLE else d for d in decoded], type=target)
        values = pc.replace_with_mask(values, pa.array(slow), replacement)
    return (values if values.type == target else values.cast(target)), (bad if bad.any() else None)


# --------------------------------------------------------------------------- encoding


def _json_string(text: pa.Array) -> pa.Array:
    """JSON string literals; only values that need escapes go through :func:`json.dumps`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    needs = pc.fill_null(pc.match_substring_regex(text, r'["\\\x00-\x1f]'), False)
    quoted = pc.binary_join_element_wise('"', text, '"', "")
    if not pc.any(needs).as_py():
        return quoted
    values = quoted.to_pylist()
    for i in pc.indices_nonzero(needs).to_pylist():
        values[i] = json.dumps(text[i].as_py())
    return pa.array(values, type=pa.string())


def encode_value_column(column: pa.Array, dtype: str, encoding: str) -> pa.Array:
    """A typed column as the text the legacy store keeps (see the module docstring); nulls stay null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if dtype == "bool":
        text = pc.if_else(column, "true", "false")
    elif dtype == "timestamp":
        utc = column.cast(arrow_type("timestamp"))
        text = pc.binary_join_element_wise(pc.strftime(utc, "%Y-%m-%dT%H:%M:%S"), "+00:00", "")
    else:
        text = column.cast(pa.string())
    if encoding == "json" and dtype in ("string", "timestamp"):
        text = _json_string(text)
    return text


def encode_epoch(column: pa.Array) -> pa.Array:
    """``_source_ts`` as exact epoch seconds in decimal (``1732500000.250000``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    micros = column.cast(arrow_type("timestamp")).cast(pa.int64())
    seconds = pc.floor(pc.divide(micros.cast(pa.float64()), 1_000_000.0)).cast(pa.int64())
    frac = pc.subtract(micros, pc.multiply(seconds, 1_000_000))
    return pc.binary_join_element_wise(
        seconds.cast(pa.string()), ".", pc.utf8_lpad(frac.cast(pa.string()), 6, "0"), ""
    )
