"""Great Expectations verdicts over a comparison, and a schema-parity suite old vs new.

The shadow verdict is a GX validation of a frame with one row per entity and one status column
per feature (``match``, ``mismatch``, ``lagging``, ``noise``, ``missing_in_new``,
``missing_in_old``): each feature must be ``match``/``lagging``/``noise`` for at least the
consistency threshold (``mostly``), and the frame must hold every requested entity. Users add
their own expectations through ``extra_expectations``. GX is imported inside the functions
(its import takes about 3.5 s of CPU, 7 s wall on a busy 2-core machine), never at module
import, so DAG parsing stays light; :func:`quiet_gx` runs before every GX import so that its
start-up chatter (about 200 "Skipping registering function ..." lines) stays out of task logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare.engine import STATUS_NAMES, Verdict

if TYPE_CHECKING:
    import pandas as pd

    from airflow_fsmigration.compare.engine import ComparisonResult
    from airflow_fsmigration.plan.model import FeatureGroup

log = logging.getLogger("airflow_fsmigration.compare")

AGREEING = ("match", "lagging", "noise")

# GX's loggers that speak at INFO while it imports and builds a context; nothing of ours.
# ``data_context.types.base`` sets its own level to INFO when imported, so it is named too.
GX_NOISY_LOGGERS = ("great_expectations", "great_expectations.data_context.types.base")


def quiet_gx() -> None:
    """Keep GX's start-up INFO lines out of task logs; its warnings and errors still show.

    Called before each GX import and again after it (a GX module resets its own level on import).
    Only GX's loggers are touched: ``airflow_fsmigration.*`` keeps its level. Set
    ``FSMIG_GX_LOG_LEVEL=INFO`` to see GX's chatter again when debugging GX itself.
    """
    level = logging.getLevelName((os.environ.get("FSMIG_GX_LOG_LEVEL") or "WARNING").upper())
    for name in GX_NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level if isinstance(level, int) else logging.WARNING)


# Which information_schema types faithfully hold each plan dtype. Anything else is a parity failure.
COMPATIBLE_TYPES: dict[str, tuple[str, ...]] = {
    "int64": ("bigint", "integer", "smallint", "numeric"),
    "float64": ("double precision", "numeric"),
    "string": ("text", "character varying", "character"),
    "bool": ("boolean",),
    "timestamp": ("timestamp with time zone",),
}
TYPE_HINTS: dict[str, str] = {
    "timestamp without time zone": "no time zone: values shift by the session offset; use timestamptz",
    "real": "single precision keeps ~7 digits: use double precision",
    "date": "a date drops the time of day: use timestamptz",
}


@dataclass
class GxVerdict:
    """The outcome of a GX validation: success, the per-expectation results, where the docs are."""

    suite: str
    success: bool
    verdict: Verdict
    results: list[dict[str, Any]] = field(default_factory=list)
    docs_index: str | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "success": self.success,
            "verdict": str(self.verdict),
            "results": self.results,
            "docs_index": self.docs_index,
        }


def status_frame(result: ComparisonResult) -> pd.DataFrame:
    """One row per entity, one status column per feature, from the flags the engine kept.

    When the run was too large to keep flags (see ``ComparisonAccumulator.flags_cap``), the frame
    is rebuilt from the counts with anonymous rows: the same shares, so the same verdict.
    """
    import numpy as np
    import pandas as pd

    names = list(STATUS_NAMES)
    flags = result.flags
    cols: dict[str, Any] = {}
    if flags is not None:
        cols["entity_id"] = flags["entity_id"].to_pylist()
        for name, stats in result.features.items():
            labels = np.array(names, dtype=object)[flags[name]]
            if stats.noise:
                labels[labels == "mismatch"] = "noise"
            cols[name] = pd.Categorical(labels, categories=[*names, "noise"])
        return pd.DataFrame(cols)
    n = result.entities_compared
    cols["entity_id"] = [None] * n
    for name, s in result.features.items():
        parts = [
            ("match", s.matched),
            ("lagging", s.lagging),
            ("noise" if s.noise else "mismatch", s.mismatched),
            ("missing_in_new", s.missing_in_new),
            ("missing_in_old", s.missing_in_old),
        ]
        cols[name] = pd.Categorical(
            np.repeat([p for p, _ in parts], [c for _, c in parts]), categories=[*names, "noise"]
        )
    return pd.DataFrame(cols)


def _context(docs_dir: Path | None) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    quiet_gx()

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(
            site_name="fsmig",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
            },
        )
    return context


def _validate(
    suite_name: str,
    frame: pd.DataFrame,
    expectations: Iterable[Any],
    docs_dir: Path | None,
) -> tuple[bool, list[dict[str, Any]], str | None]:
    quiet_gx()
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _context(docs_dir)
    asset = context.data_sources.add_pandas("fsmig").add_dataframe_asset(name=suite_name)
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
    )
    actions: list[Any] = (
        [UpdateDataDocsAction(name="docs", site_names=["fsmig"])] if docs_dir is not None else []
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[validation],
            actions=actions,
            result_format={"result_format": "SUMMARY"},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    results = []
    for suite_result in run.run_results.values():
        for r in suite_result.results:
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
            results.append(
                {
                    "expectation": r.expectation_config.type,
                    "column": kwargs.get("column"),
                    "kwargs": kwargs,
                    "success": bool(r.success),
                    "unexpected_percent": r.result.get("unexpected_percent"),
                    "observed_value": r.result.get("observed_value"),
                }
            )
    index = None
    if docs_dir is not None and (docs_dir / "index.html").exists():
        index = str(docs_dir / "index.html")
    return bool(run.success), results, index


def gx_verdict(
    result: ComparisonResult,
    *,
    threshold: float | None = None,
    extra_expectations: Iterable[Any] | Callable[[ComparisonResult], Iterable[Any]] = (),
    docs_dir: str | Path | None = None,
) -> GxVerdict:
    """The shadow verdict as a GX validation of :func:`status_frame` (threshold as ``mostly``).

    An inconclusive comparison stays inconclusive whatever GX says: the validation then runs only
    for the record (and the docs), it cannot turn a run that did not read a store into a pass.
    """
    quiet_gx()
    import great_expectations.expectations as gxe

    mostly = result.threshold if threshold is None else threshold
    frame = status_frame(result)
    expectations: list[Any] = [
        gxe.ExpectColumnValuesToBeInSet(column=name, value_set=list(AGREEING), mostly=mostly)
        for name in result.features
    ]
    if result.entities_requested is not None:
        expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=result.entities_requested))
    extra = extra_expectations(result) if callable(extra_expectations) else extra_expectations
    expectations.extend(extra)
    suite = f"shadow_{result.group}"
    success, results, index = _validate(suite, frame, expectations, Path(docs_dir) if docs_dir else None)
    if result.verdict is Verdict.INCONCLUSIVE or result.errors:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.PASS if success else Verdict.FAIL
    log.info("GX suite %s on %d entities: %s", suite, len(frame), "success" if success else "failed")
    return GxVerdict(suite=suite, success=success, verdict=verdict, results=results, docs_index=index)


def schema_frame(
    group: FeatureGroup,
    new_columns: Mapping[str, str],
    result: ComparisonResult | None = None,
    *,
    nullable: Mapping[str, bool] | None = None,
) -> pd.DataFrame:
    """One row per plan column (entity key and features): present, type and declared nullability.

    Schema only: names, types and what the new store *declares* about nulls. Differences in the
    data (null counts, values) are the shadow comparison's to judge, which explains them per
    feature; ``result`` is accepted for callers that still pass one and is not read.

    ``nullable`` maps column -> declared nullable (``information_schema.columns.is_nullable``).
    A feature whose null policy keeps nulls as values (``null_equals_null``) must not be declared
    ``NOT NULL``: the new store would reject or rewrite the nulls the old store serves.
    """
    import pandas as pd

    del result  # data belong to the shadow comparison
    rows = []
    specs = [(group.entity_key, str(group.entity_dtype), None)] + [
        (f.name, str(f.dtype), f) for f in group.features
    ]
    for name, dtype, feature in specs:
        new_type = new_columns.get(name)
        type_ok = new_type in COMPATIBLE_TYPES[dtype] if new_type is not None else False
        if name == group.entity_key and new_type is not None:
            type_ok = True  # any key type works: keys are compared as text
        declared = None if nullable is None else nullable.get(name)
        policy = str(feature.null_policy) if feature is not None else None
        null_ok = not (declared is False and policy == "null_equals_null")
        hint = TYPE_HINTS.get(new_type or "", "" if new_type else "column missing from the new view")
        if not null_ok and not hint:
            hint = (
                "declared NOT NULL in the new store, but the plan's null policy null_equals_null "
                "keeps nulls as values: drop the NOT NULL or set the feature's null_policy"
            )
        rows.append(
            {
                "column": name,
                "plan_dtype": dtype,
                "new_type": new_type,
                "present": new_type is not None,
                "type_ok": bool(type_ok),
                "null_ok": bool(null_ok),
                "null_policy": policy,
                "declared_nullable": declared,
                "hint": hint,
            }
        )
    return pd.DataFrame(rows)


def schema_parity(
    group: FeatureGroup,
    new_columns: Mapping[str, str],
    *,
    result: ComparisonResult | None = None,
    nullable: Mapping[str, bool] | None = None,
    docs_dir: str | Path | None = None,
    extra_expectations: Iterable[Any] = (),
) -> GxVerdict:
    """GX suite: every plan column exists in the new view with a faithful type and nullability.

    ``new_columns`` is ``NewStore.columns(group)`` (name -> information_schema type) and
    ``nullable`` ``NewStore.nullability(group)``. ``result`` is ignored (see :func:`schema_frame`).
    """
    quiet_gx()
    import great_expectations.expectations as gxe

    frame = schema_frame(group, new_columns, result, nullable=nullable)
    expectations = [
        gxe.ExpectColumnValuesToBeInSet(column="present", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="type_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="null_ok", value_set=[True]),
        *extra_expectations,
    ]
    suite = f"schema_parity_{group.name}"
    success, results, index = _validate(suite, frame, expectations, Path(docs_dir) if docs_dir else None)
    bad = frame[~(frame["present"] & frame["type_ok"] & frame["null_ok"])]
    for row in bad.itertuples():
        results.append(
            {
                "expectation": "fsmig_column_parity",
                "column": row.column,
                "kwargs": {"plan_dtype": row.plan_dtype, "new_type": row.new_type},
                "success": False,
                "unexpected_percent": None,
                "observed_value": row.hint or f"{row.new_type} does not hold {row.plan_dtype}",
            }
        )
    return GxVerdict(
        suite=suite,
        success=success,
        verdict=Verdict.PASS if success else Verdict.FAIL,
        results=results,
        docs_index=index,
    )
