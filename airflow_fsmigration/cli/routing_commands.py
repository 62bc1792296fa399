"""``fsmigrate status | rollback | freeze | reconcile | register | keepwarm``: routing without Airflow.

These talk straight to the registry Postgres (plan connection ``registry``) and the Redis mirror
(plan connection ``routing_mirror``, by default ``legacy_online``), resolved from ``AIRFLOW_CONN_*``, so the one-command
rollback works when the Airflow scheduler, API server or metadata DB is down.

``status`` compares three things per group: Postgres (the truth), the Redis mirror, and what the
running routers report they serve (``fsmig:router:*``, see :mod:`airflow_fsmigration.routing_wire`).
A mirror ahead of Postgres means the registry was restored from a backup: ``reconcile`` and
``rollback`` then raise the group's epoch (:mod:`airflow_fsmigration.registry.epochs`) so that
routers, which ignore a lower version, take the registry's state.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from airflow_fsmigration.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK

log = logging.getLogger("airflow_fsmigration.registry")


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()} (fsmigrate)"


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="routing state of every group (registry and Redis mirror)")
    p.add_argument("plan", type=Path, help="plan YAML file or folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--audit", metavar="GROUP", help="also print the audit log of GROUP")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "rollback", help="send every read of a group back to the old store now (works with Airflow down)"
    )
    p.add_argument("plan", type=Path)
    p.add_argument("group")
    p.add_argument("--reason", required=True, help="why (goes into the audit log)")
    p.add_argument("--actor", default=None, help="who (default user@host)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("freeze", help="stop a group's ramp where it stands, without moving traffic")
    p.add_argument("plan", type=Path)
    p.add_argument("group")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", default=None)
    p.set_defaults(func=cmd_freeze)

    p = sub.add_parser("reconcile", help="repair Redis routing keys that differ from the registry")
    p.add_argument("plan", type=Path)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("register", help="create the registry tables and add the plan's new groups as planned")
    p.add_argument("plan", type=Path)
    p.add_argument("--actor", default=None)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser(
        "keepwarm", help="check that a group's old store is still refreshed and record the check"
    )
    p.add_argument("plan", type=Path)
    p.add_argument("group")
    p.add_argument("--sample", type=int, default=50, help="online hashes to sample (default 50)")
    p.set_defaults(func=cmd_keepwarm)


class _Context:
    """The plan, the registry and (when reachable) the mirror, opened from the plan's connection ids."""

    def __init__(self, plan_path: Path, *, need_mirror: bool = False) -> None:
        from airflow_fsmigration.connections import StoreUnavailable, connect_postgres, connect_redis
        from airflow_fsmigration.plan import load_plan
        from airflow_fsmigration.registry.mirror import RoutingMirror
        from airflow_fsmigration.registry.routing import Registry

        self.plan = load_plan(plan_path)
        conns = self.plan.connections
        pg = connect_postgres(conns.registry, autocommit=True)
        self.registry = Registry(lambda: pg, plan=self.plan)
        self.registry.ensure_schema()
        self.redis: Any = None
        self.mirror_error: str | None = None
        try:
            self.redis = connect_redis(conns.mirror)
        except StoreUnavailable as exc:
            if need_mirror:
                raise
            self.mirror_error = str(exc)
        if self.redis is not None:
            self.registry.mirror = RoutingMirror(self.redis)

    def close(self) -> None:
        self.registry.close()
        if self.redis is not None:
            self.redis.close()


def _group_or_error(ctx: _Context, group: str) -> bool:
    if group in ctx.plan.groups:
        return True
    print(
        f"error: group '{group}' is not in plan '{ctx.plan.name}'; its groups: {', '.join(ctx.plan.groups)}",
        file=sys.stderr,
    )
    return False


def cmd_status(args: argparse.Namespace) -> int:
    ctx = _Context(args.plan)
    try:
        states = ctx.registry.states()
        reports = _router_reports(ctx.redis) if ctx.redis is not None else None
        rows: list[dict[str, Any]] = []
        for name in ctx.plan.groups:
            st = states.get(name)
            mirror: str
            if st is None:
                mirror = "-"
            elif ctx.registry.mirror is None:
                mirror = "unreachable"
            else:
                mirror = ctx.registry.mirror.diff(st) or "ok"
            rows.append(
                {
                    "group": name,
                    "phase": st.phase.value if st else "not registered",
                    "ramp_pct": st.ramp_pct if st else None,
                    "active_backend": st.active_backend.value if st else None,
                    "version": st.version if st else None,
                    "updated_at": st.updated_at.isoformat(timespec="seconds") if st else None,
                    "mirror": mirror,
                    "routers": _routers_verdict(st, reports, name),
                }
            )
        audit = [a.as_dict() for a in ctx.registry.audit(args.audit)] if args.audit else None
        if args.json:
            print(json.dumps({"plan": ctx.plan.name, "groups": rows, "audit": audit}, indent=2, default=str))
        else:
            _print_table(rows)
            if ctx.mirror_error:
                print(f"warning: Redis mirror unreachable: {ctx.mirror_error}", file=sys.stderr)
            if audit is not None:
                print(f"\naudit log of {args.audit}:")
                for a in audit:
                    src = f"{a['from_phase']} {a['from_pct']:g}%" if a["from_phase"] else "-"
                    run = f" [{a['dag_id']}/{a['run_id']}]" if a["dag_id"] else ""
                    print(
                        f"  v{a['version']} {a['at']} {src} -> {a['to_phase']} {a['to_pct']:g}% "
                        f"by {a['actor']}{run}: {a['reason']}"
                    )
        drift = [r for r in rows if r["mirror"] not in ("ok", "-") or r["routers"].startswith("DRIFT")]
        if not registered(rows):
            print("no group of this plan is registered yet: run `fsmigrate register PLAN`", file=sys.stderr)
        return EXIT_INCONCLUSIVE if drift else EXIT_OK
    finally:
        ctx.close()


def registered(rows: list[dict[str, Any]]) -> bool:
    return any(r["phase"] != "not registered" for r in rows)


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["group", "phase", "ramp_pct", "active_backend", "version", "updated_at", "mirror", "routers"]
    text = [
        [("" if r[c] is None else (f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]))) for c in cols]
        for r in rows
    ]
    widths = [max(len(c), *(len(t[i]) for t in text)) if text else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def _move(args: argparse.Namespace, what: str) -> int:
    from airflow_fsmigration.registry.model import IllegalTransition, UnknownGroup

    for flag, value in (("--reason", args.reason), ("--actor", args.actor)):
        if value is not None and not value.strip():
            print(
                f"error: {what} {args.group}: {flag} is blank; say {'why' if flag == '--reason' else 'who'} "
                "(it goes into the audit log)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
    ctx = _Context(args.plan)
    try:
        if not _group_or_error(ctx, args.group):
            return EXIT_BAD_INPUT
        actor = args.actor or default_actor()
        call = ctx.registry.rollback if what == "rollback" else ctx.registry.freeze
        try:
            state = call(args.group, reason=args.reason, actor=actor)
        except UnknownGroup as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except IllegalTransition as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if state.changed:
            print(
                f"{what}: group '{args.group}' is now {state.describe()}, backend {state.active_backend.value}"
            )
        else:
            print(f"{what}: nothing to do, group '{args.group}' is {state.describe()}")
        mirror = ctx.registry.mirror
        why = "Redis unreachable" if mirror is None else mirror.diff(state)
        if why is not None and mirror is not None and what == "rollback":
            # A restored registry: routers hold a newer version and would ignore this rollback.
            notes = _supersede_restored(ctx, [args.group])
            for group, note in notes.items():
                print(f"{group}: {note}", file=sys.stderr)
            if notes:
                state = ctx.registry.state(args.group)
                report = mirror.reconcile(_Only({args.group: state}), ctx.plan.name)
                why = next(iter(report.failed.values()), None) or mirror.diff(state)
        if why is not None:
            print(
                f"WARNING: committed in the registry, but the Redis mirror is {why}: routers have NOT heard it. "
                "Run `fsmigrate reconcile PLAN` as soon as Redis answers.",
                file=sys.stderr,
            )
            return EXIT_INCONCLUSIVE
        print("mirror: published to Redis; routers switch within milliseconds")
        return EXIT_OK
    finally:
        ctx.close()


def cmd_rollback(args: argparse.Namespace) -> int:
    return _move(args, "rollback")


def cmd_freeze(args: argparse.Namespace) -> int:
    return _move(args, "freeze")


def cmd_reconcile(args: argparse.Namespace) -> int:
    ctx = _Context(args.plan, need_mirror=True)
    try:
        assert ctx.registry.mirror is not None
        superseded = _supersede_restored(ctx, list(ctx.plan.groups))
        for group, note in superseded.items():
            print(f"  {group}: {note}")
        report = ctx.registry.mirror.reconcile(ctx.registry, ctx.plan.name)
        print(f"reconcile: {report.summary()}")
        for group, why in report.repaired.items():
            print(f"  repaired {group}: was {why}")
        for group, why in report.failed.items():
            print(f"  FAILED {group}: {why}", file=sys.stderr)
        return EXIT_FAILED if report.failed else EXIT_OK
    finally:
        ctx.close()


def cmd_register(args: argparse.Namespace) -> int:
    ctx = _Context(args.plan)
    try:
        added = ctx.registry.register_plan(ctx.plan, actor=args.actor or default_actor())
        print(f"registered {len(added)} new group(s) of plan '{ctx.plan.name}': {', '.join(added) or '-'}")
        return EXIT_OK
    finally:
        ctx.close()


def cmd_keepwarm(args: argparse.Namespace) -> int:
    from airflow_fsmigration.connections import connect_postgres, connect_redis
    from airflow_fsmigration.registry.keepwarm import check_warmth, warm_window_status

    ctx = _Context(args.plan)
    try:
        if not _group_or_error(ctx, args.group):
            return EXIT_BAD_INPUT
        conns = ctx.plan.connections
        online = connect_redis(conns.legacy_online)
        offline = connect_postgres(conns.legacy_offline, autocommit=True)
        try:
            check = check_warmth(
                ctx.plan,
                args.group,
                online_client=online,
                offline_conn=offline,
                registry_conn=ctx.registry.connection(),
                sample_size=args.sample,
            )
        finally:
            online.close()
            offline.close()
        print(check.summary())
        status = warm_window_status(ctx.plan, args.group, conn=ctx.registry.connection())
        print(f"keep-warm window: {status.explain()}")
        return EXIT_OK if check.passed else EXIT_FAILED
    finally:
        ctx.close()


class _Only:
    """A :class:`~airflow_fsmigration.registry.mirror.StateSource` of the given states only."""

    def __init__(self, states: dict[str, Any]) -> None:
        self._states = states

    def states(self, plan_name: str | None = None) -> dict[str, Any]:
        return self._states


def _supersede_restored(ctx: _Context, groups: list[str]) -> dict[str, str]:
    """Raise the epoch of each group whose mirror is ahead of Postgres (a restored registry)."""
    from airflow_fsmigration.registry.epochs import epoch_of
    from airflow_fsmigration.routing_wire import order_key

    notes: dict[str, str] = {}
    mirror = ctx.registry.mirror
    states = ctx.registry.states(ctx.plan.name) if groups else {}
    for group in groups:
        st = states.get(group)
        doc = mirror.read(group) if mirror is not None and st is not None else None
        if st is None or doc is None or order_key(doc) <= (epoch_of(st), st.version):
            continue
        epoch, version = order_key(doc)
        new = ctx.registry.supersede(
            group, epoch, version, reason=f"mirror at epoch {epoch} version {version} ahead of the registry"
        )
        if new is not None:
            notes[group] = (
                f"the Redis mirror (epoch {epoch}, version {version}) was ahead of the registry "
                f"(version {st.version}): a restored registry? epoch raised to {epoch_of(new)} so routers "
                "take the registry's state"
            )
    return notes


def _router_reports(client: Any) -> list[dict[str, Any]] | None:
    """What running routers report they apply (None when Redis cannot be read)."""
    from airflow_fsmigration.routing_wire import REPORT_PREFIX, decode_report

    try:
        keys = list(client.scan_iter(match=f"{REPORT_PREFIX}*", count=500))
        raws = client.mget(keys) if keys else []
    except Exception as exc:
        log.warning("could not read router reports from Redis (%s)", exc)
        return None
    return [doc for doc in map(decode_report, raws) if doc is not None]


def _routers_verdict(state: Any, reports: list[dict[str, Any]] | None, group: str) -> str:
    """``"N ok"``, ``"DRIFT: ..."`` (routers serve another state than the registry), or ``-``."""
    from airflow_fsmigration.registry.epochs import epoch_of

    if state is None or reports is None:
        return "-" if reports is not None else "unreadable"
    seen = [r["groups"][group] for r in reports if isinstance(r["groups"].get(group), dict)]
    if not seen:
        return "-"
    want = (epoch_of(state), state.version)
    off = [g for g in seen if (g.get("epoch") or 0, g.get("version")) != want]
    if not off:
        return f"{len(seen)} ok"
    shown = ", ".join(sorted({f"v{g.get('version')} {g.get('serving_pct')}%" for g in off}))
    return f"DRIFT: {len(off)} of {len(seen)} serve {shown}"
