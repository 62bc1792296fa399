"""The two stores a router reads: the legacy Redis online store and the new Postgres-wire store.

Both answer ``read(group, entity_ids) -> {entity_id: {feature: value}}`` with values typed by the
plan (int, float, str, bool, aware datetime, ``None`` for null) and entities the store does not
have left out, so a caller sees the same shape whichever side served it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from airflow_fsmigration import semantics
from airflow_fsmigration.semantics import UNDECODABLE

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.serving")

_monotonic = time.monotonic

Rows = dict[str, dict[str, Any]]


class Backend(Protocol):
    """What the router needs from a store."""

    name: str

    def read(self, group: str, entity_ids: Sequence[str]) -> Rows: ...

    def close(self) -> None: ...


class UnknownGroup(KeyError):
    """The backend was not configured for a group."""

    def __init__(self, backend: str, group: str, known: Sequence[str]) -> None:
        super().__init__(
            f"{backend}: no feature group '{group}' (known: {', '.join(sorted(known)) or 'none'}); "
            "check the group name against the plan"
        )


# -- value decoding ------------------------------------------------------------------------


class UndecodableRow(dict[str, Any]):
    """A served old-store row in which some legacy values did not decode (served as null).

    ``undecodable`` names those features, so the router's shadow comparison counts them as
    mismatches, as the nightly comparison does; to every other caller it is a plain dict.
    """

    __slots__ = ("undecodable",)

    def __init__(self, row: dict[str, Any], undecodable: frozenset[str]) -> None:
        super().__init__(row)
        self.undecodable = undecodable


# (field as bytes, feature name, semantics decoder, memo of raw value -> decoded value)
_FieldDecoder = tuple[bytes, str, Callable[[bytes | str], Any], dict[Any, Any]]
_MISS = object()
# Raw values memoised per feature: ~100 bytes each, so at most ~100 KB per feature.
DECODE_MEMO_MAX = 1024


class LegacyRedisBackend:
    """The legacy online store: one Redis hash per entity at the plan's ``key_template``.

    Keys and values mean what :mod:`airflow_fsmigration.semantics` says (the comparator's
    meaning), so callers are served the "old value" the nightly comparison judged.

    One HGETALL for a single entity, a non-transactional pipeline for a batch. A missing hash
    is a missing entity; a missing field is a null. A value that does not decode is served as
    null, counted in ``decode_errors`` and logged once per (group, feature), since the old store
    is the fallback of last resort and must not fail a request over one bad field.

    Decoding is memoised per feature: a legacy value's meaning is a pure function of its raw
    bytes, dtype and encoding (:func:`semantics.decoder` decides it on a miss), and the results
    are immutable, so a repeated raw value ("DE", "true", "0") costs one dict lookup instead of a
    decode. Each feature keeps at most :data:`DECODE_MEMO_MAX` raw values (then only looks up).
    """

    name = "old"

    def __init__(self, client: Any, groups: Sequence[FeatureGroup]) -> None:
        self.client = client
        self.decode_errors = 0
        self._warned: set[tuple[str, str]] = set()
        self._groups: dict[str, tuple[str, str, list[_FieldDecoder]]] = {}
        for g in groups:
            try:
                prefix, suffix = semantics.key_affixes(g.legacy_online.key_template)
            except ValueError as exc:
                raise ValueError(f"group '{g.name}': {exc}") from None
            encoding = str(g.legacy_online.encoding)
            decoders: list[_FieldDecoder] = [
                (f.name.encode(), f.name, semantics.decoder(str(f.dtype), encoding), {}) for f in g.features
            ]
            self._groups[g.name] = (prefix, suffix, decoders)

    @classmethod
    def from_plan(cls, client: Any, plan: MigrationPlan) -> LegacyRedisBackend:
        return cls(client, list(plan.groups.values()))

    def key(self, group: str, entity_id: str) -> str:
        prefix, suffix, _ = self._spec(group)
        return prefix + entity_id + suffix

    def _spec(self, group: str) -> tuple[str, str, list[_FieldDecoder]]:
        try:
            return self._groups[group]
        except KeyError:
            raise UnknownGroup("legacy Redis backend", group, list(self._groups)) from None

    def read(self, group: str, entity_ids: Sequence[str]) -> Rows:
        prefix, suffix, decoders = self._spec(group)
        if len(entity_ids) == 1:
            raws = [self.client.hgetall(prefix + entity_ids[0] + suffix)]
        else:
            pipe = self.client.pipeline(transaction=False)
            for e in entity_ids:
                pipe.hgetall(prefix + e + suffix)
            raws = pipe.execute()
        out: Rows = {}
        for entity_id, raw in zip(entity_ids, raws, strict=True):
            if raw:
                out[entity_id] = self.decode_row(group, entity_id, raw, decoders)
        return out

    def decode_row(
        self,
        group: str,
        entity_id: str,
        raw: dict[bytes, bytes],
        decoders: list[_FieldDecoder] | None = None,
    ) -> dict[str, Any]:
        """One entity's hash (field -> raw value) as a served row; a bad value is a counted null."""
        if decoders is None:
            decoders = self._spec(group)[2]
        row: dict[str, Any] = {}
        bad: list[str] | None = None
        for field, name, decode, memo in decoders:
            value = raw.get(field)
            if value is None:
                row[name] = None
                continue
            decoded = memo.get(value, _MISS)
            if decoded is _MISS:
                decoded = decode(value)
                if len(memo) < DECODE_MEMO_MAX:
                    memo[value] = decoded
            if decoded is UNDECODABLE:
                row[name] = None
                self._bad_value(group, name, entity_id, value)
                bad = [*(bad or ()), name]
            else:
                row[name] = decoded
        return row if bad is None else UndecodableRow(row, frozenset(bad))

    def _bad_value(self, group: str, feature: str, entity_id: str, value: bytes) -> None:
        self.decode_errors += 1
        if (group, feature) not in self._warned:
            self._warned.add((group, feature))
            log.warning(
                "group '%s' feature '%s': legacy Redis value %r for entity %s does not decode; "
                "served as null (further bad values of this feature are only counted)",
                group,
                feature,
                value[:80],
                entity_id,
            )

    def close(self) -> None:
        """The Redis client belongs to the caller."""


class NewStoreTimeout(TimeoutError):
    """The new store did not answer within the group's client-side read timeout."""


# Client-side read timeout of the new store per group: max(floor, factor x the group's SLA p99).
# A healthy read is far below its p99 SLA; 5x leaves room for a loaded host's tail, and the
# 100 ms floor keeps a tight SLA (8 ms) from timing out on scheduler noise. A hung store then
# costs a caller at most this plus the old store's read, and each timeout is a breaker failure.
TIMEOUT_FLOOR_MS = 100.0
TIMEOUT_SLA_FACTOR = 5.0


def read_timeout_ms(
    p99_ms: float | None, *, floor_ms: float = TIMEOUT_FLOOR_MS, factor: float = TIMEOUT_SLA_FACTOR
) -> float:
    """The client-side read timeout for a group whose p99 SLA is ``p99_ms`` (None: the floor)."""
    return max(float(floor_ms), float(factor) * float(p99_ms or 0.0))


_CONN_CLASS: Any = None


def _deadline_connection() -> Any:
    """A psycopg ``Connection`` whose every wait on the socket ends at ``conn.deadline``.

    psycopg waits for the server with no limit of its own (``statement_timeout`` is enforced by
    the server, so a frozen server never answers it). ``Connection.wait`` takes a timeout
    (psycopg >= 3.2; it raises ``_WaitTimeout``); every query's wait goes through it, so
    overriding it bounds the whole read, prepare and execute included, by one deadline.
    """
    global _CONN_CLASS
    if _CONN_CLASS is not None:
        return _CONN_CLASS
    import psycopg

    wait_timeout = getattr(psycopg.errors, "_WaitTimeout", psycopg.errors.OperationalError)

    class DeadlineConnection(psycopg.Connection[Any]):
        deadline: float | None = None

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            deadline = self.deadline
            if deadline is None:
                return super().wait(gen, interval, timeout)
            left = deadline - _monotonic()
            if left <= 0:
                raise NewStoreTimeout("the read deadline passed before the query was sent")
            try:
                return super().wait(gen, interval, left if timeout is None else min(timeout, left))
            except wait_timeout as exc:
                if type(exc).__name__ != "_WaitTimeout":
                    raise
                raise NewStoreTimeout("the new store did not answer before the read deadline") from None

    _CONN_CLASS = DeadlineConnection
    return _CONN_CLASS


class PostgresBackend:
    """The new store over the Postgres wire protocol (Postgres, RisingWave).

    ``SELECT <key>::text, <features> FROM <schema>.<group> WHERE <key>::text = ANY(%s)`` on a
    small pool of connections. Every read has a client-side deadline derived from the group's
    SLA (:func:`read_timeout_ms`: ``max(100 ms, 5 x sla.p99_ms)`` unless given): waiting for a
    free connection, connecting and the query itself all end at it with
    :class:`NewStoreTimeout`, which the router's breaker counts as a failure. The server-side
    ``statement_timeout`` stays as a backstop, but it cannot fire on a frozen server (SIGSTOP,
    a hung host), which is why the deadline is kept on the client. A connection that failed or
    timed out is closed (never reused mid-query); the next read opens a fresh one.

    Until the store has answered once, a read waits for its connection up to
    ``connect_timeout_s`` instead: at a cold start (a model server starting, a load test's first
    requests) there is no pool yet, and a connect over a loaded host or a TLS handshake can take
    longer than a tight read timeout; failing those reads would only be noise. From the first
    successful connection on, every read ends at its deadline.

    :param url: libpq URL of the new store.
    :param plan: the migration plan (schema, entity keys, features, SLAs).
    :param pool_size: connections kept open at most.
    :param statement_timeout_ms: server-side timeout per query (backstop).
    :param connect_timeout_s: libpq connect timeout of the background connect (libpq's minimum
        is 2 s; a read waits for it only until its own deadline).
    :param read_timeout_ms: client-side deadline per read: one value for every group, or
        ``{group: ms}``; groups not given use :func:`read_timeout_ms` of their SLA.
    :param timeout_floor_ms: the floor of the SLA-derived timeout.
    :param timeout_sla_factor: the multiple of ``sla.p99_ms`` in the SLA-derived timeout.
    """

    name = "new"

    def __init__(
        self,
        url: str,
        plan: MigrationPlan,
        *,
        pool_size: int = 4,
        statement_timeout_ms: int = 2000,
        connect_timeout_s: int = 2,
        read_timeout_ms: float | Mapping[str, float] | None = None,
        timeout_floor_ms: float = TIMEOUT_FLOOR_MS,
        timeout_sla_factor: float = TIMEOUT_SLA_FACTOR,
    ) -> None:
        from psycopg import sql

        self.url = url
        self.pool_size = pool_size
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        self._late_lock = threading.Lock()
        self._connected_once = False
        self.timeouts = 0
        self._queries: dict[str, tuple[Any, list[tuple[str, Callable[[Any], Any] | None]]]] = {}
        self._timeout_s: dict[str, float] = {}
        schema = plan.new_store.schema_name
        for g in plan.groups.values():
            columns: list[sql.Composable] = [sql.SQL("{}::text").format(sql.Identifier(g.entity_key))]
            columns += [sql.Identifier(f.name) for f in g.features]
            query = sql.SQL("SELECT {cols} FROM {rel} WHERE {key}::text = ANY(%s)").format(
                cols=sql.SQL(", ").join(columns),
                rel=sql.Identifier(schema, g.name),
                key=sql.Identifier(g.entity_key),
            )
            self._queries[g.name] = (query, [(f.name, _PG_CONVERT.get(str(f.dtype))) for f in g.features])
            if isinstance(read_timeout_ms, Mapping) and g.name in read_timeout_ms:
                ms = float(read_timeout_ms[g.name])
            elif read_timeout_ms is not None and not isinstance(read_timeout_ms, Mapping):
                ms = float(read_timeout_ms)
            else:
                sla = getattr(g, "sla", None)
                ms = read_timeout_ms_for(sla, timeout_floor_ms, timeout_sla_factor)
            if not ms > 0:
                raise ValueError(
                    f"group '{g.name}': the new store's read timeout must be above 0 ms, got {ms}"
                )
            self._timeout_s[g.name] = ms / 1000.0

    def read_timeout_s(self, group: str) -> float:
        """The client-side deadline of one read of ``group``, in seconds."""
        return self._timeout_s[group]

    def _connect(self) -> Any:
        return _deadline_connection().connect(
            self.url,
            autocommit=True,
            connect_timeout=self.connect_timeout_s,
            options=f"-c statement_timeout={int(self.statement_timeout_ms)}",
            application_name="fsmig-router",
        )

    def _connect_by(self, deadline: float, group: str) -> Any:
        """Open a connection, waiting for it until ``deadline`` only.

        libpq's connect timeout cannot go below 2 s, and a frozen server accepts the TCP
        connection and then never answers. The connect runs on its own thread; a read gives up
        at its deadline, and a connection that arrives later is kept for the next read.
        """
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                conn = self._connect()
            except BaseException as exc:
                box["exc"] = exc
                done.set()
                return
            with self._late_lock:
                if not box.get("abandoned"):
                    box["conn"] = conn
                    done.set()
                    return
            self._park(conn)

        threading.Thread(target=run, name="fsmig-new-store-connect", daemon=True).start()
        if not self._connected_once:  # cold start: no pool to protect yet (see the class docstring)
            deadline = max(deadline, _monotonic() + self.connect_timeout_s)
        if not done.wait(max(0.0, deadline - _monotonic())):
            with self._late_lock:
                if "conn" not in box and "exc" not in box:
                    box["abandoned"] = True
                    self.timeouts += 1
                    raise NewStoreTimeout(
                        f"group '{group}': no connection to the new store within the read timeout "
                        f"({self._timeout_s[group] * 1000:g} ms)"
                    )
        if "exc" in box:
            raise box["exc"]
        self._connected_once = True
        return box["conn"]

    def _park(self, conn: Any) -> None:
        """Keep a late connection for the next read, unless the pool is closed or full."""
        self._connected_once = True
        if self._closed or self._idle.qsize() >= self.pool_size:
            with contextlib.suppress(Exception):
                conn.close()
        else:
            self._idle.put(conn)

    def read(self, group: str, entity_ids: Sequence[str]) -> Rows:
        try:
            query, columns = self._queries[group]
        except KeyError:
            raise UnknownGroup("new-store Postgres backend", group, list(self._queries)) from None
        if self._closed:
            raise RuntimeError("the new-store backend is closed")
        deadline = _monotonic() + self._timeout_s[group]
        if not self._slots.acquire(timeout=self._timeout_s[group]):
            self.timeouts += 1
            raise NewStoreTimeout(
                f"group '{group}': all {self.pool_size} new-store connections stayed busy for the "
                f"read timeout ({self._timeout_s[group] * 1000:g} ms)"
            )
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                cold = not self._connected_once
                conn = self._connect_by(deadline, group)
                if cold:  # the connect may have used the cold-start allowance: the query gets its own
                    deadline = max(deadline, _monotonic() + self._timeout_s[group])
            conn.deadline = deadline
            try:
                rows = conn.execute(query, (list(entity_ids),), prepare=True).fetchall()
            except NewStoreTimeout:
                self.timeouts += 1
                raise NewStoreTimeout(
                    f"group '{group}': the new store did not answer within the read timeout "
                    f"({self._timeout_s[group] * 1000:g} ms, from the group's SLA)"
                ) from None
            conn.deadline = None
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
            raise
        finally:
            if conn is not None:
                self._idle.put(conn)
            self._slots.release()
        out: Rows = {}
        for row in rows:
            out[row[0]] = {
                name: (convert(v) if convert is not None and v is not None else v)
                for (name, convert), v in zip(columns, row[1:], strict=True)
            }
        return out

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(Exception):
                conn.close()


def read_timeout_ms_for(sla: Any, floor_ms: float, factor: float) -> float:
    """:func:`read_timeout_ms` of a plan ``sla`` block (``None`` or no ``p99_ms``: the floor)."""
    return read_timeout_ms(getattr(sla, "p99_ms", None), floor_ms=floor_ms, factor=factor)


def _pg_float(value: Any) -> float:
    return float(value)


def _pg_int(value: Any) -> int:
    return int(value) if isinstance(value, Decimal) else value


def _pg_ts(value: Any) -> Any:
    return value if not isinstance(value, datetime) or value.tzinfo else value.replace(tzinfo=UTC)


_PG_CONVERT: dict[str, Callable[[Any], Any]] = {"float64": _pg_float, "int64": _pg_int, "timestamp": _pg_ts}
