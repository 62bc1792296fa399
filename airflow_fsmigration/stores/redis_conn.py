"""Redis wire plumbing for bulk reads and writes: raw RESP sockets, pipelining, payload building.

redis-py spends most of its time building Python objects per reply. These helpers build the
pipelined commands for a whole batch with Arrow string kernels, send them from a writer thread
while the main thread receives, and parse the replies with the vectorised parser of
:mod:`._resp` (hiredis when that refuses) into binary Arrow columns. What the bytes mean is
:mod:`.redis_codec`'s business; which keys to read is :mod:`.redis_online`'s.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.connections import StoreUnavailable

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("airflow_fsmigration.stores")

PARSE_AT = 8 << 20  # parse received replies in slices of about this many bytes
_PONG = b"+PONG\r\n"


def _resp_bulk(values: pa.Array) -> pa.Array:
    """``$<len>\r\n<value>\r\n`` per value (null stays null), built with Arrow kernels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = values.cast(pa.binary())
    lengths = pc.binary_length(values).cast(pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(b"$", lengths, b"\r\n", values, b"\r\n", b"")


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
