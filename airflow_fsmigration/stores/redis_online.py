"""The legacy online store: Redis, one hash per entity, read fast enough for 1M-entity compares.

Layout (what the demo generator writes, and what most home-grown feature stores look like):

- one Redis **hash per entity** at ``group.legacy_online.key_template.format(entity=<id>)``,
  e.g. ``fs:user_txn_stats:u42``; a key that does not exist means the entity is absent;
- one **field per feature**, named like the feature; a null value is an absent field;
- ``legacy_online.timestamp_field`` (e.g. ``_ts``), when set, holds the source event time as
  epoch seconds in decimal (``"1732500000.25"``; ISO-8601 with an offset is accepted too). It
  becomes ``_source_ts``;
- values per ``legacy_online.encoding``:

  ========= =========================================== ==========================================
  dtype     ``string``                                  ``json`` (each field one JSON scalar)
  ========= =========================================== ==========================================
  int64     ``42``                                      ``42``
  float64   ``repr(x)``: ``3.14``, ``nan``, ``inf``     ``3.14``
  bool      ``true`` / ``false`` (also ``1`` / ``0``)   ``true`` / ``false``
  string    the raw text                                ``"text"`` (JSON string, escapes allowed)
  timestamp ISO-8601 with offset                        ``"2026-11-25T01:02:03.000004+00:00"``
  null      absent field                                absent field or ``null``
  ========= =========================================== ==========================================

Speed: redis-py spends most of its time building Python objects per reply. This reader builds
the pipelined ``HMGET`` commands for a whole batch with Arrow string kernels, sends them from a
writer thread while the main thread receives, and parses the replies with ``hiredis.Reader``
into one Arrow list array per batch; numbers, booleans and timestamps are then parsed column
by column with Arrow casts, never value by value in Python.

The key, field and value handling is a :class:`RedisLayout`, so Feast's layout (hashed field
names, protobuf values) plugs in as another layout without touching the pipelining.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.stores.base import DEFAULT_CHUNK, HistoryUnavailable, Progress, rechunk
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, arrow_type, conform, empty_frame
from airflow_fsmigration.stores.sharding import filter_shard

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.stores")

BATCH = 20_000  # entities per pipelined batch: bounds memory, keeps both ends busy
PARSE_AT = 8 << 20  # parse received replies in slices of about this many bytes
_PONG = b"+PONG\r\n"
_SENTINEL = "\x00"


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


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class HashPerEntityLayout:
    """The legacy layout described in the module docstring (``string`` or ``json`` values)."""

    def _affixes(self, group: FeatureGroup) -> tuple[str, str]:
        template = group.legacy_online.key_template
        try:
            marked = template.format(entity=_SENTINEL)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"group '{group.name}': key_template {template!r} must contain only the '{{entity}}' "
                f"placeholder ({exc})"
            ) from None
        prefix, _, suffix = marked.partition(_SENTINEL)
        return prefix, suffix

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
        prefix, suffix = self._affixes(group)
        return f"{_glob_escape(prefix)}*{_glob_escape(suffix)}"

    def ids_from_keys(self, group: FeatureGroup, keys: list[bytes]) -> list[str]:
        prefix, suffix = (a.encode() for a in self._affixes(group))
        end = -len(suffix) if suffix else None
        return [
            k[len(prefix) : end].decode()
            for k in keys
            if k.startswith(prefix) and k.endswith(suffix) and len(k) >= len(prefix) + len(suffix)
        ]

    def decode(self, group: FeatureGroup, ids: pa.Array, columns: list[pa.Array]) -> pa.Table:
        import pyarrow as pa

        json_values = group.legacy_online.encoding == "json"
        arrays: list[pa.Array] = [ids.cast(pa.string())]
        names = [ENTITY]
        for feature, raw in zip(group.features, columns, strict=False):
            try:
                arrays.append(
                    _decode_json(raw, str(feature.dtype))
                    if json_values
                    else _decode_string(raw, str(feature.dtype))
                )
            except (pa.ArrowInvalid, ValueError) as exc:
                raise ValueError(
                    f"group '{group.name}', feature '{feature.name}': Redis values are not "
                    f"{group.legacy_online.encoding}-encoded {feature.dtype}: {exc}"
                ) from None
            names.append(feature.name)
        if group.legacy_online.timestamp_field:
            raw = columns[len(group.features)]
            try:
                arrays.append(_decode_epoch(_unquote(raw) if json_values else raw.cast(pa.string())))
            except (pa.ArrowInvalid, ValueError) as exc:
                raise ValueError(
                    f"group '{group.name}': timestamp field '{group.legacy_online.timestamp_field}' "
                    f"is not epoch seconds or ISO-8601: {exc}"
                ) from None
        else:
            arrays.append(pa.nulls(len(ids), arrow_type("timestamp")))
        names.append(SOURCE_TS)
        return pa.Table.from_arrays(arrays, names=names)

    def encode(self, group: FeatureGroup, table: pa.Table) -> list[pa.Array]:
        encoding = str(group.legacy_online.encoding)
        columns = [encode_value_column(table.column(f.name), str(f.dtype), encoding) for f in group.features]
        if group.legacy_online.timestamp_field:
            columns.append(encode_epoch(table.column(SOURCE_TS)))
        return columns


_TRUE = ["true", "1", "True", "TRUE"]
_FALSE = ["false", "0", "False", "FALSE"]


def _decode_bool(text: pa.Array) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    is_true = pc.is_in(text, value_set=pa.array(_TRUE))
    is_false = pc.is_in(text, value_set=pa.array(_FALSE))
    bad = pc.and_(pc.is_valid(text), pc.invert(pc.or_(is_true, is_false)))
    if pc.any(bad).as_py():
        sample = pc.filter(text, bad)[0].as_py()
        raise ValueError(f"{pc.sum(bad).as_py()} value(s) are not true/false/1/0, e.g. {sample!r}")
    return pc.if_else(pc.is_valid(text), is_true, pa.scalar(None, pa.bool_()))


def _to_int(text: pa.Array) -> pa.Array:
    """int64 from decimal text; integral floats such as ``42.0`` are accepted too."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(text, pa.int64())
    except pa.ArrowInvalid:
        as_float = pc.cast(text, pa.float64())
        return pc.cast(as_float, pa.int64())  # safe cast: raises on a fractional value


def _parse_text(text: pa.Array, dtype: str) -> pa.Array:
    """Typed values from their text form (the same after either encoding's unwrapping)."""
    import pyarrow as pa

    if dtype == "string":
        return text
    if dtype == "int64":
        return _to_int(text)
    if dtype == "float64":
        return text.cast(pa.float64())
    if dtype == "bool":
        return _decode_bool(text)
    if dtype == "timestamp":
        return text.cast(arrow_type("timestamp"))
    raise ValueError(f"unknown dtype {dtype!r}")


def _decode_string(raw: pa.Array, dtype: str) -> pa.Array:
    import pyarrow as pa

    return _parse_text(raw.cast(pa.string()), dtype)


def _unquote(raw: pa.Array) -> pa.Array:
    """JSON scalars as text: ``null`` becomes a null, a JSON string loses its quotes and escapes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = raw.cast(pa.string())
    text = pc.if_else(pc.equal(text, "null"), pa.scalar(None, pa.string()), text)
    quoted = pc.and_(pc.starts_with(text, '"'), pc.ends_with(text, '"'))
    if not pc.any(quoted).as_py():
        return text
    escaped = pc.and_(quoted, pc.match_substring(text, "\\"))
    stripped = pc.utf8_slice_codeunits(text, 1, -1)
    out = pc.if_else(quoted, stripped, text)
    if pc.any(escaped).as_py():
        # Escapes are rare; only those values go through the JSON parser.
        values = out.to_pylist()
        for i in pc.indices_nonzero(escaped).to_pylist():
            values[i] = json.loads(text[i].as_py())
        out = pa.array(values, type=pa.string())
    return out


def _decode_json(raw: pa.Array, dtype: str) -> pa.Array:
    return _parse_text(_unquote(raw), dtype)


def _decode_epoch(text: pa.Array) -> pa.Array:
    """``_source_ts`` from epoch seconds in decimal text, or from ISO-8601 with an offset (mixed is fine)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts_type = arrow_type("timestamp")
    numeric = pc.fill_null(
        pc.match_substring_regex(text, r"^\s*-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\s*$"), True
    )
    seconds = pc.cast(pc.if_else(numeric, text, pa.scalar(None, pa.string())), pa.float64())
    epoch = pc.cast(pc.round(pc.multiply(seconds, 1_000_000.0)), pa.int64()).cast(ts_type)
    if pc.all(numeric).as_py():
        return epoch
    iso = pc.if_else(numeric, pa.scalar(None, pa.string()), text).cast(ts_type)
    return pc.if_else(numeric, epoch, iso)


def _resp_bulk(values: pa.Array) -> pa.Array:
    """``$<len>\r\n<value>\r\n`` per value (null stays null), built with Arrow kernels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = values.cast(pa.binary())
    lengths = pc.binary_length(values).cast(pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(b"$", lengths, b"\r\n", values, b"\r\n", b"")


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


def _hset_payload(keys: pa.Array, fields: list[bytes], values: list[pa.Array]) -> tuple[bytes, int]:
    """``DEL key`` then ``HSET key <non-null fields>`` per row; returns (payload, replies expected)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(keys)
    count = np.zeros(n, dtype=np.int64)
    segments = []
    for name, column in zip(fields, values, strict=True):
        count += column.is_valid().to_numpy(zero_copy_only=False)
        head = b"$%d\r\n%s\r\n" % (len(name), name)
        segments.append(pc.binary_join_element_wise(head, _resp_bulk(column), b""))
    key_bulk = _resp_bulk(keys)
    deletes = pc.binary_join_element_wise(b"*2\r\n$3\r\nDEL\r\n", key_bulk, b"")
    argc = pa.array(2 + 2 * count).cast(pa.string()).cast(pa.binary())
    body = pc.binary_join_element_wise(*segments, b"", null_handling="replace", null_replacement=b"")
    hsets = pc.binary_join_element_wise(b"*", argc, b"\r\n$4\r\nHSET\r\n", key_bulk, body, b"")
    hsets = hsets.filter(pa.array(count > 0))
    payload = b"".join(_data_view(a) for a in (deletes, hsets) if len(a))
    return payload, n + len(hsets)


def _data_view(array: pa.Array) -> memoryview:
    """The bytes of all values of a binary/string array, back to back (no copy)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    return memoryview(array.buffers()[2])[offsets[0] : offsets[-1]]


class _Raw:
    """A plain socket speaking RESP, for pipelined bulk reads; hiredis parses the replies."""

    def __init__(self, params: dict[str, Any], conn_id: str) -> None:
        import hiredis

        self.conn_id = conn_id
        timeout = float(params.get("socket_timeout") or 60)
        try:
            if params.get("path"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(float(params.get("socket_connect_timeout") or 5))
                sock.connect(params["path"])
            else:
                sock = socket.create_connection(
                    (params.get("host") or "127.0.0.1", int(params.get("port") or 6379)),
                    timeout=float(params.get("socket_connect_timeout") or 5),
                )
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if params.get("ssl"):
                    import ssl

                    context = ssl.create_default_context()
                    if params.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                    sock = context.wrap_socket(sock, server_hostname=params.get("host"))
            sock.settimeout(timeout)
        except OSError as exc:
            raise StoreUnavailable(conn_id, "Redis", exc) from exc
        self.sock = sock
        self.reader = hiredis.Reader()
        self.buf = bytearray(1 << 20)
        hello: list[tuple[bytes, ...]] = []
        if params.get("password"):
            auth = [b"AUTH"]
            if params.get("username"):
                auth.append(str(params["username"]).encode())
            auth.append(str(params["password"]).encode())
            hello.append(tuple(auth))
        if int(params.get("db") or 0):
            hello.append((b"SELECT", str(int(params["db"])).encode()))
        for cmd in hello:
            reply = self.call(*cmd)
            if isinstance(reply, Exception):
                self.close()
                raise StoreUnavailable(conn_id, "Redis", reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _recv_into_reader(self) -> None:
        try:
            n = self.sock.recv_into(self.buf)
        except OSError as exc:
            raise StoreUnavailable(self.conn_id, "Redis", exc) from exc
        if n == 0:
            raise StoreUnavailable(self.conn_id, "Redis", ConnectionError("server closed the connection"))
        self.reader.feed(self.buf, 0, n)  # type: ignore[arg-type]  # hiredis accepts any buffer

    def call(self, *args: bytes) -> Any:
        import hiredis

        try:
            self.sock.sendall(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub says 1-tuple
        except OSError as exc:
            raise StoreUnavailable(self.conn_id, "Redis", exc) from exc
        while (reply := self.reader.gets()) is False:
            self._recv_into_reader()
        return reply

    def _start_writer(self, payloads: Iterator[tuple[Any, int]]) -> _Writer:
        writer = _Writer(self.sock, payloads)
        writer.start()
        return writer

    def _finish(self, writer: _Writer, completed: bool) -> None:
        """Wait for the writer and surface its failure.

        After an early exit (an error, or the caller closing the generator) the socket is shut
        down: that unblocks a writer stuck in ``sendall``, and the replies still in flight would
        otherwise be read as the next command's. The writer's resulting broken pipe is not
        raised: it would hide the reason the reader stopped. After a complete pipeline the socket
        stays open for the next one, even if the writer thread is still winding down.
        """
        if not completed:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        writer.join(timeout=30)
        if completed and writer.failure is not None:
            exc = writer.failure
            if isinstance(exc, OSError):
                raise StoreUnavailable(self.conn_id, "Redis", exc) from exc
            raise exc

    def pipeline(self, payloads: Iterator[tuple[Any, int]]) -> Iterator[list[Any]]:
        """Send each payload (``count`` commands) from a writer thread; yield each batch's replies.

        Sending and receiving overlap, so the server never waits for the client to finish
        parsing, and the socket buffers can never fill up both ways (the classic pipeline deadlock).
        """
        writer = self._start_writer(payloads)
        completed = False
        try:
            while (count := writer.counts.get()) is not None:
                replies: list[Any] = []
                gets = self.reader.gets
                while len(replies) < count:
                    reply = gets()
                    if reply is False:
                        if writer.failure is not None:
                            break
                        self._recv_into_reader()
                        continue
                    replies.append(reply)
                if writer.failure is not None:
                    break
                yield replies
            completed = True
        finally:
            self._finish(writer, completed)

    def hmget_columns(
        self, payloads: Iterator[tuple[Any, int]], total: int, width: int
    ) -> Iterator[tuple[int, list[pa.Array]]]:
        """Pipelined HMGETs of ``width`` fields, ``total`` replies in all, as binary Arrow columns.

        Yields ``(replies, columns)`` in order. Received bytes are parsed in large slices by the
        vectorised parser of :mod:`._resp`; if that refuses (an error reply, an odd value), the
        rest of the stream goes through hiredis, which raises on error replies like redis-py.
        """
        import itertools

        import numpy as np

        from airflow_fsmigration.stores._resp import Unparseable, parse_hmget

        # A PING after the last command: its "+PONG" reply marks the end of the stream, so the
        # reader can block in recv and still know when to parse the last, short slice.
        writer = self._start_writer(itertools.chain(payloads, [(b"*1\r\n$4\r\nPING\r\n", 0)]))
        buf = np.empty(PARSE_AT * 2, dtype=np.uint8)
        filled = done = 0
        fallback = starved = False
        completed = False
        try:
            while done < total:
                if fallback:
                    replies = self._gets_some(total - done)
                    done += len(replies)
                    yield len(replies), _columns_from_replies(replies, width)
                    continue
                # Parse in big slices, and the last slice once the end marker has arrived.
                if (
                    filled
                    and not starved
                    and (filled >= PARSE_AT or bytes(buf[max(filled - 7, 0) : filled]) == _PONG)
                ):
                    pass
                else:
                    if filled == buf.size:
                        buf = np.concatenate([buf, np.empty(buf.size, dtype=np.uint8)])
                    try:
                        n = self.sock.recv_into(buf[filled:].data)
                    except OSError as exc:
                        raise StoreUnavailable(self.conn_id, "Redis", exc) from exc
                    if n == 0:
                        raise StoreUnavailable(
                            self.conn_id, "Redis", ConnectionError("server closed the connection")
                        )
                    filled += n
                    starved = False
                    continue
                try:
                    count, used, columns = parse_hmget(buf[:filled].data, width)
                except Unparseable as exc:
                    log.debug("Redis replies need the general parser (%s); switching to hiredis", exc)
                    self.reader.feed(buf[:filled].tobytes())
                    filled = 0
                    fallback = True
                    continue
                starved = count == 0  # a reply is cut off: receive before parsing again
                if count and columns is not None:
                    done += count
                    rest = filled - used
                    buf[:rest] = buf[used:filled]
                    filled = rest
                    yield count, columns
            completed = True
        finally:
            self._finish(writer, completed)

    def _gets_some(self, most: int) -> list[Any]:
        """At least one reply from hiredis (receiving as needed), at most ``most``."""
        replies: list[Any] = []
        gets = self.reader.gets
        while len(replies) < most:
            reply = gets()
            if reply is False:
                if replies:
                    break
                self._recv_into_reader()
                continue
            if isinstance(reply, Exception):
                raise reply
            replies.append(reply)
        return replies


class _Writer(threading.Thread):
    """Sends pipelined payloads; counts go to the reader, a failure is kept for it to raise."""

    def __init__(self, sock: socket.socket, payloads: Iterator[tuple[Any, int]]) -> None:
        import queue

        super().__init__(name="fsmig-redis-writer", daemon=True)
        self.sock = sock
        self.payloads = payloads
        self.counts: queue.Queue[int | None] = queue.Queue()
        self.failure: BaseException | None = None
        self.sent_all = threading.Event()

    def run(self) -> None:
        try:
            for payload, count in self.payloads:
                self.counts.put(count)
                self.sock.sendall(payload)
        except BaseException as exc:
            self.failure = exc
        finally:
            self.sent_all.set()
            self.counts.put(None)


def _is_reply_error(exc: BaseException) -> bool:
    import hiredis

    return isinstance(exc, hiredis.ReplyError)


def _columns_from_replies(replies: list[Any], width: int) -> list[pa.Array]:
    """hiredis replies (lists of bytes or None) as binary columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    nested = pa.array(replies, type=pa.list_(pa.binary()))
    return [pc.list_element(nested, j) for j in range(width)]


class _LazyRaw:
    """A raw connection opened on first use."""

    def __init__(self, params: dict[str, Any], conn_id: str) -> None:
        self.params, self.conn_id = params, conn_id
        self.raw: _Raw | None = None

    def get(self) -> _Raw:
        if self.raw is None:
            self.raw = _Raw(self.params, self.conn_id)
        return self.raw

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None


def _hmget_payload(keys: pa.Array, fields: list[bytes]) -> memoryview:
    """RESP ``HMGET key f1 .. fn`` for every key, built with Arrow kernels in one buffer."""
    import pyarrow.compute as pc

    head = f"*{len(fields) + 2}\r\n$5\r\nHMGET\r\n".encode()
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
    return _data_view(pc.binary_join_element_wise(head, _resp_bulk(keys), tail, b""))


class _SeenHashes:
    """Ids already produced by a scan, kept as sorted 64-bit hashes (bounded memory)."""

    def __init__(self) -> None:
        import numpy as np

        self.merged = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()

    def fresh(self, ids: list[str]) -> list[str]:
        """The ids not seen before, in order; marks them seen."""
        import numpy as np

        from airflow_fsmigration.stores.sharding import hash_ids

        if not ids:
            return []
        hashes = hash_ids(ids)
        old = np.isin(hashes, self.merged)
        out = []
        for i, h in enumerate(hashes.tolist()):
            if old[i] or h in self.recent:
                log.debug("scan: skipping id %r, already produced (same 64-bit key hash)", ids[i])
                continue
            self.recent.add(h)
            out.append(ids[i])
        if len(self.recent) >= 1_000_000:
            self.merged = np.union1d(self.merged, np.fromiter(self.recent, dtype=np.uint64))
            self.recent.clear()
        return out


class RedisOnlineSource:
    """The legacy Redis online store of a plan (current values only)."""

    store = "Redis"

    def __init__(
        self,
        url_or_client: str | Any,
        plan: MigrationPlan | None = None,
        conn_id: str = "legacy_online",
        *,
        layout: RedisLayout | None = None,
        batch_size: int = BATCH,
    ) -> None:
        import redis
        from redis.connection import parse_url

        self.plan = plan
        self.conn_id = conn_id
        self.layout: RedisLayout = layout or HashPerEntityLayout()
        self.batch_size = batch_size
        if isinstance(url_or_client, str):
            self.params = dict(parse_url(url_or_client))
            self.client = redis.Redis.from_url(url_or_client, socket_connect_timeout=5, socket_timeout=60)
            self._own_client = True
        else:
            self._own_client = False
            self.client = url_or_client
            self.params = dict(url_or_client.connection_pool.connection_kwargs)
        connection_class = self.params.pop("connection_class", None)
        if connection_class is not None and "SSL" in connection_class.__name__:
            self.params["ssl"] = True

    def __repr__(self) -> str:
        return f"RedisOnlineSource(conn_id={self.conn_id!r})"

    def __enter__(self) -> RedisOnlineSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the control client if this source made it (bulk reads open their own sockets)."""
        if self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()

    def _group(self, group: FeatureGroup | str) -> FeatureGroup:
        if isinstance(group, str):
            if self.plan is None:
                raise ValueError(f"group '{group}' given by name, but this source has no plan")
            return self.plan.groups[group]
        return group

    def _redis_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(self.conn_id, self.store, exc) from exc

    # -- reads -----------------------------------------------------------------------------

    def read(self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array) -> pa.Table:
        import pyarrow as pa

        g = self._group(group)
        tables = list(self._read_batches(g, entity_ids))
        if not tables:
            return empty_frame(g)
        return conform(pa.concat_tables(tables), g)

    def read_as_of(self, group: FeatureGroup | str, entity_ids: Sequence[str], as_of: datetime) -> pa.Table:
        raise HistoryUnavailable(self.conn_id, self.store, self._group(group).name)

    def _read_batches(self, g: FeatureGroup, entity_ids: Sequence[str] | pa.Array) -> Iterator[pa.Table]:
        import pyarrow as pa

        ids = entity_ids if isinstance(entity_ids, pa.Array) else pa.array(list(entity_ids), type=pa.string())
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if len(ids) == 0:
            return
        unique = ids.unique()  # first occurrences, in order: one row per entity, like the SQL stores
        if len(unique) < len(ids):
            ids = unique
        fields = self.layout.fields(g)
        step = self.batch_size
        slices = [ids.slice(i, step) for i in range(0, len(ids), step)]

        def payloads() -> Iterator[tuple[memoryview, int]]:
            for chunk in slices:
                yield _hmget_payload(self.layout.keys(g, chunk), fields), len(chunk)

        raw = _Raw(self.params, self.conn_id)
        # Existence checks go over a second connection: the first one is busy with the pipeline.
        aux = _LazyRaw(self.params, self.conn_id)
        progress = Progress(f"group '{g.name}': reading Redis ({self.conn_id})", total=len(ids))
        start = 0
        try:
            for count, columns in raw.hmget_columns(payloads(), len(ids), len(fields)):
                yield self._batch_table(g, ids.slice(start, count), columns, aux)
                start += count
                progress.add(count)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable) or not _is_reply_error(exc):
                raise
            raise ValueError(
                f"group '{g.name}': Redis ({self.conn_id}) refused HMGET: {exc}. "
                f"Are the keys of '{g.legacy_online.key_template}' hashes?"
            ) from None
        finally:
            raw.close()
            aux.close()

    def _batch_table(
        self, g: FeatureGroup, ids: pa.Array, columns: list[pa.Array], aux: _LazyRaw
    ) -> pa.Table:
        present = self._present(g, ids, columns, aux)
        if present is not None:
            ids = ids.filter(present)
            columns = [c.filter(present) for c in columns]
        return self.layout.decode(g, ids, columns)

    def _present(
        self, g: FeatureGroup, ids: pa.Array, columns: list[pa.Array], aux: _LazyRaw
    ) -> pa.Array | None:
        """Which rows exist: a row whose fields are all absent may be a missing key, so ask EXISTS."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        all_null = np.ones(len(ids), dtype=bool)
        for col in columns:
            all_null &= col.is_null().to_numpy(zero_copy_only=False)
        if not all_null.any():
            return None
        unsure = np.flatnonzero(all_null)
        keys = self.layout.keys(g, ids.take(pa.array(unsure)))
        exists = np.zeros(len(unsure), dtype=bool)
        payload = _data_view(pc.binary_join_element_wise(b"*2\r\n$6\r\nEXISTS\r\n", _resp_bulk(keys), b""))
        for replies in aux.get().pipeline(iter([(payload, len(unsure))])):
            exists[:] = np.asarray(replies, dtype=np.int64) > 0
        keep = ~all_null
        keep[unsure] = exists
        return pa.array(keep)

    # -- writing (demo data, benchmarks, keep-warm tests) -------------------------------------

    def write(self, group: FeatureGroup | str, table: pa.Table) -> int:
        """Write a frame in this layout (replacing each entity's hash); returns entities written.

        A row whose fields are all null is deleted, not written: Redis has no empty hashes.
        """
        g = self._group(group)
        table = conform(table, g)
        if table.num_rows == 0:
            return 0
        fields = self.layout.fields(g)
        step = self.batch_size
        chunks = [table.slice(i, step) for i in range(0, table.num_rows, step)]

        def payloads() -> Iterator[tuple[bytes, int]]:
            for chunk in chunks:
                keys = self.layout.keys(g, chunk.column(ENTITY).combine_chunks())
                yield _hset_payload(keys, fields, self.layout.encode(g, chunk))

        raw = _Raw(self.params, self.conn_id)
        progress = Progress(f"group '{g.name}': writing Redis ({self.conn_id})", total=table.num_rows)
        try:
            for chunk, replies in zip(chunks, raw.pipeline(payloads()), strict=False):
                errors = [r for r in replies if isinstance(r, Exception)]
                if errors:
                    raise ValueError(f"group '{g.name}': Redis ({self.conn_id}) refused a write: {errors[0]}")
                progress.add(chunk.num_rows)
        finally:
            raw.close()
        return table.num_rows

    # -- listing ---------------------------------------------------------------------------

    def entity_ids(
        self, group: FeatureGroup | str, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        """Entity ids found by ``SCAN MATCH`` on the key template, sorted; at most ``limit``.

        With a limit the scan stops early, so the ids are the first ones Redis returns
        (arbitrary but cheap), then sorted.
        """
        g = self._group(group)
        found: set[str] = set()
        for ids in self._scan_ids(g):
            found.update(filter_shard(ids, shard))
            if limit is not None and len(found) >= limit:
                break
        result = sorted(found)
        return result[:limit] if limit is not None else result

    def _scan_ids(self, g: FeatureGroup, count: int = 10_000) -> Iterator[list[str]]:
        pattern = self.layout.match_pattern(g)
        cursor = 0
        while True:
            cursor, keys = self._redis_call(self.client.scan, cursor=cursor, match=pattern, count=count)
            if keys:
                yield self.layout.ids_from_keys(g, keys)
            if int(cursor) == 0:
                return

    def scan(
        self,
        group: FeatureGroup | str,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[pa.Table]:
        """Every entity of the group (or one shard), ``chunk_size`` rows at a time.

        SCAN may return a key twice (when Redis resizes its table mid-scan), so ids are
        deduplicated across the scan by their 64-bit key hash (:mod:`.sharding`), 8 bytes per
        entity instead of a set of strings (80 MB rather than about 1 GB for 10M entities). Two
        distinct ids with the same 64-bit hash would make the second one skipped; for n entities
        that has probability about n^2 / 2^65 (3e-6 for 10M), and a skip is logged.
        """
        g = self._group(group)
        seen = _SeenHashes()

        def tables() -> Iterator[pa.Table]:
            pending: list[str] = []
            for ids in self._scan_ids(g):
                pending.extend(seen.fresh(filter_shard(ids, shard)))
                if len(pending) >= chunk_size:
                    yield self.read(g, pending)
                    pending = []
            if pending:
                yield self.read(g, pending)

        yield from rechunk(tables(), chunk_size)

    def freshness(self, group: FeatureGroup | str) -> datetime | None:
        """The newest ``timestamp_field`` over all entities (a full scan), or None without one."""
        import pyarrow.compute as pc

        g = self._group(group)
        if not g.legacy_online.timestamp_field:
            return None
        newest: datetime | None = None
        for table in self.scan(g):
            value = pc.max(table.column(SOURCE_TS)).as_py()
            if value is not None and (newest is None or value > newest):
                newest = value
        return newest.astimezone(UTC) if newest is not None else None

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server answers."""
        self._redis_call(self.client.ping)
