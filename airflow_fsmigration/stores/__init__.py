"""Feature sources behind one protocol (:class:`~airflow_fsmigration.stores.base.FeatureSource`).

- :mod:`.redis_online`: the legacy Redis online store (one hash per entity), pipelined raw reads;
- :mod:`.postgres_offline`: the legacy offline history table, latest and as-of reads via ADBC;
- :mod:`.new_store`: the Postgres-wire new store (RisingWave, Postgres): deploy, read, read as of;
- :mod:`.dialect`: every RisingWave / Postgres difference;
- :mod:`.sharding`: the stable entity-key hash that splits a group over mapped tasks;
- :mod:`.frames`: the Arrow frame every source returns.

Nothing is imported here, so importing a submodule at DAG-parse time stays cheap.
"""

from __future__ import annotations
