"""List and embedding values: one meaning for decoding and comparing them (issue 15).

The scalar rules are in :mod:`airflow_fsmigration.semantics`; this module holds the rules for
list-valued features, which a data scientist judges differently from scalars:

**Dtypes.** ``list_int64``, ``list_float32``, ``list_float64``, ``list_string`` (variable length)
and ``embedding`` (a fixed-length float vector; its length is the feature's ``dim``).

**Legacy values** (:func:`decode_list`): plain Redis keeps a list as a JSON array (``[1, 2]``,
``["a", "b"]``, ``[]``); ``null`` is a null, ``[]`` an empty list, and the two stay distinct.
Integers must be integral (``2.0`` is 2, ``2.5`` is undecodable), floats take JSON numbers and
Python's ``NaN``/``Infinity`` literals, strings must be JSON strings; a null element is kept as
None. Anything else is :data:`~airflow_fsmigration.semantics.UNDECODABLE` (``semantics`` checks
it before calling here). Feast's protobuf lists
are decoded by :func:`airflow_fsmigration.stores.feast_codec.decode_list_values` into the same
Python values.

**Comparison** (:func:`compare_lists`, old ``a`` against new ``b``), each verdict with a reason
that names what differs:

- nulls follow the feature's null policy; ``null_equals_zero`` lets a null match an empty list,
  the other policies keep null and ``[]`` distinct;
- ``order: ordered`` (default) compares position by position; ``order: set`` compares the
  distinct elements, sorted, so ``[2, 1, 1]`` matches ``[1, 2]``;
- numeric elements match within ``|x - y| <= atol + rtol * max(|x|, |y|)`` (NaN equals NaN),
  strings exactly; a length difference is its own reason;
- embeddings with ``metric: cosine`` match when ``1 - cos(a, b) <= atol``; with ``metric: l2``
  when ``||a - b|| <= atol + rtol * max(||a||, ||b||)``; ``metric: elementwise`` uses the element
  rule. A failing pair is explained: a length mismatch (or a ``dim`` the value does not have),
  the same elements in another order, a vector scaled by a factor, or one normalised to unit length.

Standard library only, and nothing of the package: :mod:`semantics` calls here, never the reverse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

LIST_DTYPES: Final = ("list_int64", "list_float32", "list_float64", "list_string", "embedding")
ELEMENT_DTYPES: Final = {
    "list_int64": "int64",
    "list_float32": "float64",
    "list_float64": "float64",
    "list_string": "string",
    "embedding": "float64",
}
ORDERS: Final = ("ordered", "set")
METRICS: Final = ("elementwise", "cosine", "l2")


def is_list_dtype(dtype: Any) -> bool:
    return str(dtype) in ELEMENT_DTYPES


def _element(value: Any, kind: str) -> Any:
    """One decoded JSON element of ``kind``, or raise ValueError."""
    if value is None:
        return None
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError("not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    if kind == "int64":
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("not an integer")
            value = int(value)
        if not -(2**63) <= value < 2**63:
            raise ValueError("out of int64 range")
        return int(value)
    return float(value)


def decode_list(raw: bytes | str | None, dtype: str) -> list[Any] | None:
    """A legacy list value (a JSON array): a list, or None for a null.

    Raises ``ValueError`` for anything else; :func:`airflow_fsmigration.semantics.decode_value`
    turns that into ``UNDECODABLE`` (this module imports nothing of the package, so the two
    modules do not import each other).
    """
    if raw is None:
        return None
    kind = ELEMENT_DTYPES.get(str(dtype))
    if kind is None:
        raise KeyError(f"unknown list dtype {dtype!r} (one of {', '.join(LIST_DTYPES)})")
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        value = json.loads(text)  # integers parse as int (exact), never through float64
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("not a JSON array")
    return [_element(v, kind) for v in value]


def decode_list_or(raw: bytes | str | None, dtype: str, undecodable: Any) -> Any:
    """:func:`decode_list`, with ``undecodable`` (semantics' sentinel) for a value it refuses."""
    try:
        return decode_list(raw, dtype)
    except ValueError:
        return undecodable


def _null_match(a_null: bool, b_null: bool, a_empty: bool, b_empty: bool, policy: str) -> bool:
    """The scalar null policy with ``[]`` as a list's zero (see ``semantics.null_match``)."""
    if policy == "nulls_never_match":
        return False
    if a_null and b_null:
        return True
    return policy == "null_equals_zero" and ((a_null and b_empty) or (a_empty and b_null))


@dataclass(frozen=True)
class ListVerdict:
    """Whether two list values agree, and why not (None when they do)."""

    match: bool
    reason: str | None = None


_OK = ListVerdict(True)


def _close(x: Any, y: Any, kind: str, atol: float, rtol: float) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if kind == "string":
        return bool(x == y)
    if kind == "int64":
        return abs(int(x) - int(y)) <= math.floor(atol + rtol * max(abs(int(x)), abs(int(y))))
    fx, fy = float(x), float(y)
    if math.isnan(fx) or math.isnan(fy):
        return math.isnan(fx) and math.isnan(fy)
    if math.isinf(fx) or math.isinf(fy):
        return fx == fy
    return abs(fx - fy) <= atol + rtol * max(abs(fx), abs(fy))


def _first_difference(a: list[Any], b: list[Any], kind: str, atol: float, rtol: float) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not _close(x, y, kind, atol, rtol):
            return i
    return None


def _set_key(kind: str) -> Any:
    # Sorts None first and NaN after the numbers, so equal sets sort alike.
    def key(v: Any) -> tuple[int, Any]:
        if v is None:
            return (0, 0)
        if kind != "string" and isinstance(v, float) and math.isnan(v):
            return (2, 0)
        return (1, v)

    return key


def _distinct(values: list[Any], kind: str) -> list[Any]:
    out: list[Any] = []
    for v in sorted(values, key=_set_key(kind)):
        if not out or not _close(out[-1], v, kind, 0.0, 0.0):
            out.append(v)
    return out


def _norm(v: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in v))


def _vector_reason(a: list[float], b: list[float]) -> str | None:
    """A scaled or normalised vector, when that is what separates ``a`` and ``b``."""
    na, nb = _norm(a), _norm(b)
    if not na or not nb:
        return None
    cos = math.fsum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
    if cos < 1 - 1e-6:
        return None
    if abs(nb - 1) < 1e-6 <= abs(na - 1):
        return f"the new vector is the old one normalised to unit length (old norm {na:.6g})"
    if abs(na - 1) < 1e-6 <= abs(nb - 1):
        return f"the old vector is the new one normalised to unit length (new norm {nb:.6g})"
    return f"the new vector is the old one scaled by {nb / na:.6g} (same direction)"


def compare_lists(
    a: Any,
    b: Any,
    dtype: str,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    null_policy: str = "null_equals_null",
    order: str = "ordered",
    metric: str = "elementwise",
    dim: int | None = None,
) -> ListVerdict:
    """The whole rule for one pair of list values (``a`` old, ``b`` new), with the reason."""
    kind = ELEMENT_DTYPES.get(str(dtype))
    if kind is None:
        raise ValueError(f"unknown list dtype {dtype!r} (one of {', '.join(LIST_DTYPES)})")
    if str(order) not in ORDERS or str(metric) not in METRICS:
        raise ValueError(f"order must be one of {ORDERS} and metric one of {METRICS}")
    if a is None or b is None:
        if _null_match(a is None, b is None, a == [], b == [], str(null_policy)):
            return _OK
        side = "old" if a is None else "new"
        other = b if a is None else a
        return ListVerdict(False, f"null ({side}) vs {'an empty list' if other == [] else 'a list'}")
    a, b = list(a), list(b)
    if str(order) == "set":
        a, b = _distinct(a, kind), _distinct(b, kind)
    for side, v in (("old", a), ("new", b)):
        if dim is not None and len(v) != dim:
            return ListVerdict(
                False, f"length mismatch: the {side} vector has {len(v)} elements, dim is {dim}"
            )
    if len(a) != len(b):
        return ListVerdict(False, f"length mismatch: {len(a)} (old) vs {len(b)} (new) elements")
    if str(metric) != "elementwise" and kind == "float64" and a:
        if any(x is None for x in a + b):
            return ListVerdict(False, "a null element in a vector")
        fa, fb = [float(x) for x in a], [float(x) for x in b]
        if str(metric) == "cosine":
            na, nb = _norm(fa), _norm(fb)
            if not na or not nb:
                same = na == nb
                return _OK if same else ListVerdict(False, "one vector is all zeros")
            distance = 1 - math.fsum(x * y for x, y in zip(fa, fb, strict=True)) / (na * nb)
            if distance <= atol:
                return _OK
            return ListVerdict(False, f"cosine distance {distance:.6g} > {atol:g}")
        gap = math.sqrt(math.fsum((x - y) ** 2 for x, y in zip(fa, fb, strict=True)))
        if gap <= atol + rtol * max(_norm(fa), _norm(fb)):
            return _OK
        return ListVerdict(False, _vector_reason(fa, fb) or f"L2 distance {gap:.6g} is over the tolerance")
    at = _first_difference(a, b, kind, atol, rtol)
    if at is None:
        return _OK
    key = _set_key(kind)
    if (
        str(order) == "ordered"
        and _first_difference(sorted(a, key=key), sorted(b, key=key), kind, atol, rtol) is None
    ):
        return ListVerdict(False, "the same elements in another order (order: set would match)")
    if kind == "float64":
        reason = _vector_reason([float(x or 0) for x in a], [float(x or 0) for x in b])
        if reason:
            return ListVerdict(False, reason)
    return ListVerdict(False, f"element {at} differs: {a[at]!r} (old) vs {b[at]!r} (new)")


def list_match(a: Any, b: Any, dtype: str, atol: float, rtol: float, null_policy: str) -> bool:
    """The verdict alone, for ``semantics.values_match`` (ordered, element-wise)."""
    return compare_lists(a, b, dtype, atol=atol, rtol=rtol, null_policy=null_policy).match


def feature_compare(feature: Any, a: Any, b: Any) -> ListVerdict:
    """:func:`compare_lists` with a plan feature's dtype, tolerances, null policy, order, metric, dim."""
    return compare_lists(
        a,
        b,
        str(feature.dtype),
        atol=float(feature.atol),
        rtol=float(feature.rtol),
        null_policy=str(feature.null_policy),
        order=str(getattr(feature, "order", "ordered") or "ordered"),
        metric=str(getattr(feature, "metric", "elementwise") or "elementwise"),
        dim=getattr(feature, "dim", None),
    )
