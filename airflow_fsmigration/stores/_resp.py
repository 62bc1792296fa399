"""Vectorised parsing of pipelined ``HMGET`` replies straight into Arrow columns.

hiredis builds one Python object per value (11M objects for 1M entities x 11 fields), which is
where a Python Redis client spends its time. An ``HMGET`` reply stream is regular: an array
header ``*<width>`` followed by ``width`` bulk strings ``$<len>\r\n<bytes>\r\n`` or nulls
``$-1``. So the whole received buffer is parsed with numpy:

1. every ``*`` or ``$`` at the start of a line is a candidate header; its digits run to the
   next CR;
2. each header says where the next one starts; if every candidate's successor is exactly the
   next candidate, the candidates *are* the reply structure (a value containing a line break
   followed by ``$``/``*`` breaks that chain and is caught, never misparsed);
3. value offsets go into one Arrow binary array over the received bytes, and each feature
   column is a single ``take``.

Anything unexpected (an error reply, a broken chain) raises :class:`Unparseable`; the caller
then hands the same bytes to hiredis, so correctness never depends on this fast path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


class Unparseable(ValueError):
    """The bytes are not a clean run of HMGET replies; parse them with hiredis instead."""


def _headers(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cr, value, state) per candidate: state 1 header, 2 not a header, 3 cut off by the buffer end.

    Headers of up to four characters (``$-1``, ``*11``, ``$123``) take a few gathers; longer
    or unusual ones go through :func:`_headers_general`.
    """
    size = buf.size
    # Candidates at least 6 bytes before the end (all but the last few: ``pos`` is sorted) are
    # gathered without bounds checks; the rest go to the general path.
    cut = int(np.searchsorted(pos, size - 6, side="right"))
    head = pos[:cut]
    b = [buf[head + k] for k in range(1, 6)]  # bytes 1..5 after the marker
    d = [x.astype(np.int32) - 48 for x in b[:4]]
    isd = [(x >= 0) & (x <= 9) for x in d]
    value = np.full(pos.size, -2, dtype=np.int64)
    cr = np.zeros(pos.size, dtype=np.int64)
    v = value[:cut]
    c = cr[:cut]
    one = isd[0] & (b[1] == 13)
    two = isd[0] & isd[1] & (b[2] == 13)
    nil = (b[0] == 45) & (b[1] == 49) & (b[2] == 13)
    three = isd[0] & isd[1] & isd[2] & (b[3] == 13)
    four = isd[0] & isd[1] & isd[2] & isd[3] & (b[4] == 13)
    v[one] = d[0][one]
    v[two] = (d[0] * 10 + d[1])[two]
    v[nil] = -1
    v[three] = (d[0] * 100 + d[1] * 10 + d[2])[three]
    v[four] = (d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3])[four]
    for width, mask in ((1, one), (2, two | nil), (3, three), (4, four)):
        c[mask] = head[mask] + 1 + width
    state = np.ones(pos.size, dtype=np.int8)
    odd = value == -2
    if odd.any():
        cr_o, value_o, state_o = _headers_general(buf, pos[odd])
        cr[odd], value[odd], state[odd] = cr_o, value_o, state_o
    return cr, value, state


def _headers_general(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The few candidates the fast path cannot judge: scan up to 20 bytes after each."""
    size = buf.size
    n = pos.size
    value = np.zeros(n, dtype=np.int64)
    cr = np.zeros(n, dtype=np.int64)
    state = np.zeros(n, dtype=np.int8)  # 0 still scanning
    neg = (pos + 1 < size) & (buf[np.minimum(pos + 1, size - 1)] == 45)
    ndig = np.zeros(n, dtype=np.int64)
    for k in range(1, 21):
        open_ = state == 0
        if not open_.any():
            break
        at = pos + k
        off = at >= size
        byte = buf[np.minimum(at, size - 1)].astype(np.int64)
        digit = (byte >= 48) & (byte <= 57) & ~off
        sign = (k == 1) & neg
        end = (byte == 13) & ~off & (ndig > 0)
        state[open_ & off] = 3
        state[open_ & end] = 1
        cr[open_ & end] = at[open_ & end]
        grow = open_ & digit & ~sign
        value[grow] = value[grow] * 10 + byte[grow] - 48
        ndig += grow
        state[open_ & ~off & ~end & ~digit & ~sign] = 2
    state[state == 0] = 2  # no CR within 20 bytes: not a header this reader sends back
    return cr, np.where(neg, -value, value), state


def parse_hmget(data: Any, width: int) -> tuple[int, int, list[pa.Array] | None]:
    """Parse the complete HMGET replies at the start of ``data`` (a bytes-like object).

    Returns ``(replies, bytes consumed, one binary column per field)``; a reply cut off by the
    end of ``data`` is left for the next call. Raises :class:`Unparseable` on anything else.
    """
    import pyarrow as pa

    buf = np.frombuffer(data, dtype=np.uint8)
    size = buf.size
    if size == 0:
        return 0, 0, None
    # Candidates: '$' or '*' right after a line feed (one pass over the bytes, then only LFs).
    after_lf = np.flatnonzero(buf[:-1] == 10) + 1
    lead = buf[after_lf]
    pos = np.concatenate(([0], after_lf[(lead == 36) | (lead == 42)]))
    if buf[0] not in (36, 42):
        raise Unparseable("stream does not start with a header")
    cr, value, state = _headers(buf, pos)
    if np.any(state == 2):
        keep = state != 2
        pos, cr, value, state = pos[keep], cr[keep], value[keep], state[keep]
    is_star = buf[pos] == 42
    null = value < 0
    length = np.where(is_star | null, 0, value)
    nxt = np.where(is_star | null, cr + 2, cr + 4 + length)
    complete = (state == 1) & (nxt <= size)
    bad = np.flatnonzero(~complete)
    m = int(bad[0]) if bad.size else pos.size
    step = width + 1
    # Judge every complete header, even of a reply not yet whole, so a malformed stream is
    # refused at once instead of waiting for bytes that will never come.
    if np.any(nxt[: m - 1] != pos[1:m]):
        raise Unparseable("headers do not chain")
    stars = np.flatnonzero(is_star[:m])
    if (
        stars.size != (m + step - 1) // step
        or np.any(stars != np.arange(0, m, step))
        or np.any(value[:m:step] != width)
    ):
        raise Unparseable("not HMGET replies")
    replies = m // step
    if replies == 0:
        return 0, 0, None
    used = replies * step
    consumed = int(nxt[used - 1])
    if consumed >= 2**31:
        raise Unparseable("batch too large")
    items = np.ones(used, dtype=bool)
    items[::step] = False
    s = (cr[:used] + 2)[items]
    ln = length[:used][items]
    valid = (value[:used][items] >= 0).reshape(replies, width)
    k = s.size
    offsets = np.empty(2 * k, dtype=np.int32)
    offsets[0::2] = s
    offsets[1::2] = s + ln
    base = pa.BinaryArray.from_buffers(
        pa.binary(), 2 * k - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    rows = np.arange(replies, dtype=np.int64) * (2 * width)
    columns = []
    for j in range(width):
        col = base.take(pa.array(rows + 2 * j))
        if not valid[:, j].all():
            bitmap = pa.py_buffer(np.packbits(valid[:, j], bitorder="little"))
            col = pa.Array.from_buffers(pa.binary(), replies, [bitmap, *col.buffers()[1:]])
        columns.append(col)
    return replies, consumed, columns
