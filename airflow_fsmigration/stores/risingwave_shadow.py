"""The new store reading a group's rebuilt twin, for the shadow comparison before a swap.

A redefinition builds ``<group>__fsmig_build`` beside the live view. The deploy operator
shadow-compares that build with the legacy store (and measures it against the live view)
through :class:`BuildView`, and swaps it in only when the comparison with the old store passed:
a build that disagrees, or that could not be read, leaves the live view serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_fsmigration.stores.dialect import build_name
from airflow_fsmigration.stores.new_store import NewStore

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan


class BuildView(NewStore):
    """The new store, reading one group's rebuilt twin instead of its live view (every read path)."""

    def __init__(self, url: str, plan: MigrationPlan, group: str, conn_id: str = "new_store") -> None:
        super().__init__(url, plan, conn_id)
        self.built = group

    def relation(self, group: str) -> str:
        return build_name(group) if group == self.built else group


__all__ = ["BuildView"]
