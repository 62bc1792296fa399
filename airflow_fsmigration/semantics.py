"""One meaning for every key, legacy value, tolerance and null: the rules all paths share.

The comparator, the serving router, keep-warm and the reports used to carry their own copies of
these rules and disagreed on the edges (escaped braces in a key template, ``t``/``f`` booleans,
``"42.0"`` integers, naive timestamps, which side ``rtol`` scales). Each rule now lives here
once; faster vectorised code elsewhere (the Redis reader's Arrow kernels) handles only a subset
it can prove equal and hands everything else to the functions below, and a property test checks
that all paths agree.

Import cost matters (serving imports this): the standard library only at import time; numpy is
imported inside the vectorised helpers.

**Keys.** ``key_template`` has the meaning of :meth:`str.format` with exactly one field,
``{entity}`` (``{{`` and ``}}`` are literal braces); any other field, a conversion or a format
spec is a :class:`ValueError`.

**Legacy values** (``decode_value``), per plan dtype, from bytes or text; with ``json`` encoding
the value is first unwrapped (``null`` is a null, a ``"..."`` value must be a JSON string and
becomes its content, anything else is taken as its own text), then the text rules apply:

- ``int64``: ``42``, ``-7``, and integral decimals (``42.0``, ``4.2e1``), exact to int64 (never
  through float64); fractions, overflow, ``nan`` are undecodable;
- ``float64``: decimal or exponent notation, ``nan``, ``inf``, ``infinity`` (any case);
- ``bool``: ``1 0 true false t f yes no`` (any case);
- ``timestamp``: ISO 8601 (naive means UTC), or epoch seconds as a decimal number (an absolute
  value above 1e11 is epoch milliseconds);
- ``string``: the UTF-8 text, unchanged.

Surrounding spaces, tabs and line breaks are ignored except for strings. Anything else is
:data:`UNDECODABLE`, a value of its own (not an exception, not a null), so a comparison counts
it as its own mismatch category and one bad value never aborts a read.

**Tolerance** (symmetric): ``|a - b| <= atol + rtol * max(|a|, |b|)``. int64 and timestamps
(epoch microseconds, ``atol`` in seconds) take the difference exactly in integer arithmetic; the
bound is computed in float64 and floored. Floats: NaN equals NaN, an infinity equals only
itself. Booleans and strings: exact.

**Null policy**: ``null_equals_null`` (default; null = null, null vs a value differs),
``null_equals_zero`` (null also matches 0, 0.0, ``""``, False, or the epoch), and
``nulls_never_match``. An undecodable value matches nothing, whatever the policy.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from airflow_fsmigration import semantics_lists

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

DTYPES: Final = ("int64", "float64", "string", "bool", "timestamp")
NULL_POLICIES: Final = ("null_equals_null", "null_equals_zero", "nulls_never_match")
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MILLIS_ABOVE: Final = 1e11  # |epoch number| above this is milliseconds (1e11 s is the year 5138)
_US = timedelta(microseconds=1)
_BOUND_CAP = 1.8e19  # below 2**64: a floored bound always fits an unsigned 64-bit difference


class Undecodable:
    """The type of :data:`UNDECODABLE`: a legacy value no rule of its dtype accepts."""

    _instance: Undecodable | None = None

    def __new__(cls) -> Undecodable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDECODABLE"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDECODABLE"


UNDECODABLE: Final = Undecodable()


# --------------------------------------------------------------------------- keys


@functools.lru_cache(maxsize=256)
def key_affixes(template: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of a key template: a key is ``prefix + entity_id + suffix``.

    Raises ``ValueError`` unless the template has exactly one replacement field, ``{entity}``
    (no conversion or format spec); ``{{``/``}}`` are literal braces, as in :meth:`str.format`.
    """
    parts: list[str] = []
    fields = 0
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"key_template {template!r} is not a valid format string: {exc}") from None
    prefix = ""
    for literal, name, spec, conversion in parsed:
        parts.append(literal)
        if name is None:
            continue
        if name != "entity" or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"key_template {template!r} may only contain the '{{entity}}' field, found {shown!r} "
                "(write literal braces as '{{' and '}}')"
            )
        fields += 1
        prefix = "".join(parts)
        parts = []
    if fields != 1:
        raise ValueError(
            f"key_template {template!r} must contain the '{{entity}}' field exactly once, found {fields}"
        )
    return prefix, "".join(parts)


def format_key(template: str, entity_id: str) -> str:
    """The Redis key of ``entity_id``: ``template.format(entity=entity_id)``, validated."""
    prefix, suffix = key_affixes(template)
    return prefix + str(entity_id) + suffix


def entity_from_key(template: str, key: bytes | str) -> str | None:
    """The entity id of a key built from ``template``, or None for a key of another shape."""
    prefix, suffix = key_affixes(template)
    text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
    if len(text) < len(prefix) + len(suffix) or not text.startswith(prefix) or not text.endswith(suffix):
        return None
    return text[len(prefix) : len(text) - len(suffix)]


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis SCAN MATCH glob."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def key_pattern(template: str) -> str:
    """A SCAN MATCH glob selecting the keys of ``template``."""
    prefix, suffix = key_affixes(template)
    return f"{glob_escape(prefix)}*{glob_escape(suffix)}"


# --------------------------------------------------------------------------- decoding

_WS = b" \t\r\n"
_INT = re.compile(rb"[+-]?[0-9]+")
_DECIMAL = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FLOAT_WORDS = frozenset(
    {b"nan", b"+nan", b"-nan", b"inf", b"+inf", b"-inf", b"infinity", b"+infinity", b"-infinity"}
)
_JSON_PLAIN = re.compile(rb'"[^"\\\x00-\x1f]*"')
BOOL_WORDS: Final = {
    b"1": True, b"true": True, b"t": True, b"yes": True,
    b"0": False, b"false": False, b"f": False, b"no": False,
}  # fmt: skip


def _bytes(raw: bytes | str) -> bytes:
    if type(raw) is bytes:
        return raw
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)


def decode_int(raw: bytes | str) -> int | Undecodable:
    """An int64 from decimal text; integral decimals (``42.0``, ``4.2e1``) too, exactly."""
    if type(raw) is bytes and 0 < len(raw) < 19 and raw.isdigit():  # the common case, ASCII digits only
        return int(raw)
    text = _bytes(raw).strip(_WS)
    if _INT.fullmatch(text):
        value = int(text)
    elif _DECIMAL.fullmatch(text):
        try:
            exact = Decimal(text.decode("ascii"))
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
            return UNDECODABLE
        if exact.adjusted() > 19 or exact != exact.to_integral_value():
            return UNDECODABLE
        value = int(exact)
    else:
        return UNDECODABLE
    return value if INT64_MIN <= value <= INT64_MAX else UNDECODABLE


def decode_float(raw: bytes | str) -> float | Undecodable:
    if type(raw) is bytes:  # the common case: [-]digits[.digits], ASCII only
        body = raw[1:] if raw[:1] == b"-" else raw
        if body.replace(b".", b"", 1).isdigit():
            return float(raw)
    text = _bytes(raw).strip(_WS)
    if _DECIMAL.fullmatch(text) or text.lower() in _FLOAT_WORDS:
        return float(text)
    return UNDECODABLE


def decode_bool(raw: bytes | str) -> bool | Undecodable:
    value = BOOL_WORDS.get(raw) if type(raw) is bytes else None  # type: ignore[call-overload]
    if value is not None:
        return value
    value = BOOL_WORDS.get(_bytes(raw).strip(_WS).lower())
    return UNDECODABLE if value is None else value


def decode_string(raw: bytes | str) -> str | Undecodable:
    if type(raw) is bytes:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return UNDECODABLE
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return UNDECODABLE
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return UNDECODABLE


def epoch_micros(value: datetime) -> int:
    """Microseconds since the epoch of a datetime (naive means UTC), exactly."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _US


def from_epoch_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _epoch_number(number: Decimal) -> datetime | Undecodable:
    if not number.is_finite() or number.adjusted() > 20:
        return UNDECODABLE
    scale = 1000 if abs(number) > MILLIS_ABOVE else 1_000_000
    try:
        micros = int((number * scale).to_integral_value(ROUND_HALF_EVEN))
        return from_epoch_micros(micros)
    except (OverflowError, InvalidOperation, ValueError):
        return UNDECODABLE


def decode_timestamp(raw: bytes | str) -> datetime | Undecodable:
    """An aware UTC datetime from ISO 8601 (naive = UTC) or epoch seconds (milliseconds above 1e11)."""
    text = _bytes(raw).strip(_WS)
    if text[4:5] != b"-" and _DECIMAL.fullmatch(text):  # no decimal has a '-' at index 4
        return _epoch_number(Decimal(text.decode("ascii")))
    try:
        parsed = datetime.fromisoformat(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return UNDECODABLE
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is UTC:
        return parsed
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return UNDECODABLE


TEXT_DECODERS: Final[dict[str, Callable[[bytes | str], Any]]] = {
    "int64": decode_int,
    "float64": decode_float,
    "string": decode_string,
    "bool": decode_bool,
    "timestamp": decode_timestamp,
}


def json_unwrap(raw: bytes | str) -> bytes | str | Undecodable | None:
    """The text of a JSON-encoded legacy value: ``null`` is None, ``"..."`` its content, else as is."""
    data = _bytes(raw)
    if data == b"null":
        return None
    if data[:1] != b'"':
        return raw
    if _JSON_PLAIN.fullmatch(data):
        return data[1:-1]
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return UNDECODABLE
    return value if isinstance(value, str) else UNDECODABLE


def decode_value(raw: bytes | str | None, dtype: str, encoding: str = "string") -> Any:
    """A legacy value of ``dtype``: the typed value, None for a null, or :data:`UNDECODABLE`."""
    if raw is None:
        return None
    if str(dtype) in semantics_lists.ELEMENT_DTYPES:  # a JSON array, whatever the encoding
        return semantics_lists.decode_list_or(raw, str(dtype), UNDECODABLE)
    if str(encoding) == "json":
        unwrapped = json_unwrap(raw)
        if unwrapped is None or unwrapped is UNDECODABLE:
            return unwrapped
        raw = unwrapped  # type: ignore[assignment]  # bytes or str after the checks above
    try:
        decode = TEXT_DECODERS[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})") from None
    return decode(raw)  # type: ignore[arg-type]


def decoder(dtype: str, encoding: str = "string") -> Callable[[bytes | str], Any]:
    """A one-argument decoder for ``dtype`` (what serving binds once per feature)."""
    if str(dtype) not in TEXT_DECODERS:
        raise ValueError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    text = TEXT_DECODERS[str(dtype)]
    if str(encoding) != "json":
        return text
    dt = str(dtype)

    def decode_json(raw: bytes | str) -> Any:
        if type(raw) is bytes and raw[:1] != b'"':  # a JSON number or literal is its own text
            return None if raw == b"null" else text(raw)
        return decode_value(raw, dt, "json")

    return decode_json


def decode_source_ts(raw: Any, encoding: str | None = None) -> datetime | None:
    """A source event time as a store keeps it (text, JSON text, bytes, a number or a datetime).

    Text follows the ``timestamp`` rule of :func:`decode_value` under ``encoding``; with no
    encoding, a quoted value is unwrapped as JSON. None for a null, an empty value or one that
    does not decode: a source time only excuses lag or proves freshness, so an unreadable one
    simply proves nothing.
    """
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=UTC) if raw.tzinfo is None else raw.astimezone(UTC)
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            return None
        value = _epoch_number(Decimal(raw))
    else:
        if encoding is None:
            encoding = "json" if _bytes(raw)[:1] == b'"' else "string"
        value = decode_value(raw, "timestamp", encoding)
        if value is None:
            return None
    return None if value is UNDECODABLE else value  # type: ignore[return-value]


# --------------------------------------------------------------------------- tolerance


def _as_int(value: Any, dtype: str) -> int:
    if dtype == "timestamp" and isinstance(value, datetime):
        return epoch_micros(value)
    return int(value)


def within_tolerance(a: Any, b: Any, dtype: str, *, atol: float = 0.0, rtol: float = 0.0) -> bool:
    """Whether two non-null values agree: ``|a - b| <= atol + rtol * max(|a|, |b|)``.

    Timestamps are datetimes or epoch microseconds (``atol`` in seconds).
    """
    dtype = str(dtype)
    if dtype in ("bool", "string"):
        return bool(a == b)
    if dtype in ("int64", "timestamp"):
        ia, ib = _as_int(a, dtype), _as_int(b, dtype)
        if atol == 0 and rtol == 0:
            return ia == ib
        bound = (atol * 1_000_000 if dtype == "timestamp" else atol) + rtol * max(
            abs(float(ia)), abs(float(ib))
        )
        return abs(ia - ib) <= math.floor(min(bound, _BOUND_CAP))
    fa, fb = float(a), float(b)
    if fa == fb:
        return True
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb)
    if math.isinf(fa) or math.isinf(fb):
        return False
    return abs(fb - fa) <= atol + rtol * max(abs(fa), abs(fb))


def is_zero(value: Any, dtype: str) -> bool:
    """The value ``null_equals_zero`` lets a null match: 0, 0.0, ``""``, False, the epoch."""
    dtype = str(dtype)
    if value is None or value is UNDECODABLE:
        return False
    if dtype == "string":
        return value == ""
    if dtype == "timestamp":
        return _as_int(value, dtype) == 0
    if dtype == "bool":
        return value is False or value == 0
    return bool(value == 0)


def null_match(a_null: bool, b_null: bool, a_zero: bool, b_zero: bool, policy: str) -> bool:
    """Whether two values of which at least one is null agree under ``policy``."""
    policy = str(policy)
    if policy == "nulls_never_match":
        return False
    if a_null and b_null:
        return True
    if policy == "null_equals_zero":
        return (a_null and b_zero) or (a_zero and b_null)
    return False


def values_match(
    a: Any,
    b: Any,
    dtype: str,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    null_policy: str = "null_equals_null",
) -> bool:
    """The whole rule for one pair (``a`` old, ``b`` new): undecodable, nulls, then tolerance."""
    if a is UNDECODABLE or b is UNDECODABLE:
        return False
    if str(dtype) in semantics_lists.ELEMENT_DTYPES:
        return semantics_lists.list_match(a, b, str(dtype), atol, rtol, str(null_policy))
    if a is None or b is None:
        return null_match(a is None, b is None, is_zero(a, dtype), is_zero(b, dtype), null_policy)
    return within_tolerance(a, b, dtype, atol=atol, rtol=rtol)


def feature_match(feature: Any, a: Any, b: Any) -> bool:
    """:func:`values_match` with a plan feature's dtype, tolerances and null policy."""
    return values_match(
        a,
        b,
        str(feature.dtype),
        atol=float(feature.atol),
        rtol=float(feature.rtol),
        null_policy=str(feature.null_policy),
    )


# --------------------------------------------------------------------------- vectorised


def abs_diff_u64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` of two int64 arrays, exact as uint64 (no overflow, no float rounding)."""
    import numpy as np

    au, bu = a.view(np.uint64), b.view(np.uint64)
    return np.where(a >= b, au - bu, bu - au)


def values_equal(a: np.ndarray, b: np.ndarray, dtype: str, *, atol: float, rtol: float) -> np.ndarray:
    """:func:`within_tolerance` per row over numpy arrays (nulls are judged by the null policy).

    int64 and timestamps as int64 (epoch microseconds), floats as float64, bools as bool.
    """
    import numpy as np

    dtype = str(dtype)
    if dtype in ("bool", "string") or (atol == 0 and rtol == 0 and dtype != "float64"):
        return np.asarray(a == b)
    if dtype in ("int64", "timestamp"):
        a64, b64 = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
        bound = (atol * 1_000_000 if dtype == "timestamp" else atol) + rtol * np.maximum(
            np.abs(a64.astype(np.float64)), np.abs(b64.astype(np.float64))
        )
        limit = np.floor(np.minimum(bound, _BOUND_CAP)).astype(np.uint64)
        return np.asarray(abs_diff_u64(a64, b64) <= limit)
    af, bf = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(af) & np.isfinite(bf)
        close = finite & (np.abs(bf - af) <= atol + rtol * np.maximum(np.abs(af), np.abs(bf)))
    return np.asarray((af == bf) | close | (np.isnan(af) & np.isnan(bf)))


def null_policy_match(
    eq: np.ndarray, a_ok: np.ndarray, b_ok: np.ndarray, a_zero: np.ndarray, b_zero: np.ndarray, policy: str
) -> np.ndarray:
    """Per row: do the two values agree under ``policy`` (``eq`` judges rows where both are valued)."""
    both_ok = a_ok & b_ok
    if str(policy) == "nulls_never_match":
        return both_ok & eq
    both_null = ~a_ok & ~b_ok
    if str(policy) == "null_equals_zero":
        return (both_ok & eq) | both_null | (~a_ok & b_zero) | (a_zero & ~b_ok)
    return (both_ok & eq) | both_null
