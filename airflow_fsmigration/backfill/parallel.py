"""Chunks on several store connections at once: one Postgres backend per core does the work.

A chunk is one statement on one backend, so a sequential run keeps one server core busy while
the others idle. Here ``workers`` threads each open their own connection (a clone of the
caller's: same parameters and password) and take the next pending chunk until none is left.
Nothing about a chunk changes: it still runs under its advisory lock and re-reads its
checkpoint, so chunk order does not matter and an interrupted parallel run resumes like any
other. The run's claim stays on the caller's registry connection. After a failure no new
chunk starts; chunks already running finish (and checkpoint), then the first error is raised.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.backfill.checkpoints import Chunk

__all__ = ["clone_connection", "default_workers", "run_parallel"]


def default_workers(mode: str, chunks: int) -> int:
    """Spines use up to two connections (``FSMIG_BACKFILL_WORKERS`` overrides); grids one.

    The client's core count stands in for the server's (the same machine in tests and the
    bench); a grid's chunks are cheap next to their snapshot statements, so it stays sequential
    unless asked.
    """
    env = os.environ.get("FSMIG_BACKFILL_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return min(int(env), max(1, chunks))
    if mode != "spine":
        return 1
    return max(1, min(2, os.cpu_count() or 1, chunks))


def clone_connection(conn: Any) -> Any:
    """A new autocommit psycopg connection with ``conn``'s parameters (``info.dsn`` omits the password)."""
    import psycopg

    info = conn.info
    kwargs: dict[str, Any] = {"autocommit": True}
    if info.password:
        kwargs["password"] = info.password
    return psycopg.connect(info.dsn, **kwargs)


def run_parallel(
    chunks: list[Chunk],
    workers: int,
    open_conns: Callable[[], tuple[Any, Any]],
    work: Callable[[Chunk, Any, Any], Any],
) -> Iterator[tuple[Chunk, Any, BaseException | None]]:
    """Yield ``(chunk, outcome, error)`` as chunks finish, ``work(chunk, store, registry)`` on ``workers`` threads.

    ``open_conns`` gives each thread its (store, registry) connections; both are closed (a
    registry connection that is the store's is closed once) when the thread ends.
    """
    todo: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
    for c in chunks:
        todo.put(c)
    done: queue.SimpleQueue[tuple[Chunk | None, Any, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def loop() -> None:
        try:
            store, registry = open_conns()
        except BaseException as exc:  # reported to the caller like a chunk's error
            stop.set()
            done.put((None, None, exc))
            done.put((None, None, None))
            return
        try:
            while not stop.is_set():
                try:
                    chunk = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    done.put((chunk, work(chunk, store, registry), None))
                except BaseException as exc:
                    stop.set()
                    done.put((chunk, None, exc))
        finally:
            for c in {id(store): store, id(registry): registry}.values():
                c.close()
            done.put((None, None, None))  # this thread has ended

    threads = [threading.Thread(target=loop, name=f"fsmig-backfill-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    alive = len(threads)
    first_error: tuple[Chunk | None, BaseException] | None = None
    while alive:
        chunk, outcome, error = done.get()
        if chunk is None and error is None:
            alive -= 1
            continue
        if error is not None:
            if first_error is None:
                first_error = (chunk, error)
            continue
        assert chunk is not None
        yield chunk, outcome, None
    for t in threads:
        t.join()
    if first_error is not None:
        chunk, error = first_error
        yield chunk if chunk is not None else chunks[0], None, error
