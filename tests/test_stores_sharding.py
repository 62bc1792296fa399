"""The entity-key shard hash: stable across processes, vectorised form equal to the scalar form."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from airflow_fsmigration.stores.sharding import entity_hash, filter_shard, shard_ids, shard_mask, shard_of

pytestmark = pytest.mark.unit

IDS = [f"user_{i}" for i in range(5000)] + ["", "é", "日本", "a" * 300, "x y\tz"]


def test_known_values_never_change():
    # Pinned so a refactor that changes shard assignment (and silently reshuffles mapped
    # tasks, or another language's router) fails here.
    assert entity_hash("") == 0xEFD01F60BA992926
    assert entity_hash("u1") == 0x63B9B7F52C45B2B1
    assert [shard_of(s, 16) for s in ("u1", "u2", "user_42", "é")] == [1, 6, 15, 11]


def test_vectorised_equals_scalar_for_every_id():
    vector = shard_ids(pa.array(IDS), 7)
    scalar = np.array([shard_of(s, 7) for s in IDS])
    assert (vector == scalar).all()
    assert (shard_ids(IDS, 7) == scalar).all()  # a plain list too
    sliced = pa.array(IDS).slice(100, 50)  # an Arrow slice with a non-zero offset
    assert (shard_ids(sliced, 7) == scalar[100:150]).all()


def test_shards_are_disjoint_complete_and_balanced():
    parts = [filter_shard(IDS, (i, 4)) for i in range(4)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(IDS)
    assert len(flat) == len(set(flat)) == len(IDS)
    assert all(abs(len(p) - len(IDS) / 4) < len(IDS) * 0.05 for p in parts), [len(p) for p in parts]
    assert filter_shard(IDS, None) == IDS
    assert int(shard_mask(IDS, (0, 1)).sum()) == len(IDS)


def test_same_shards_in_another_process():
    code = "from airflow_fsmigration.stores.sharding import shard_of; print([shard_of(f'user_{i}', 13) for i in range(50)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([shard_of(f"user_{i}", 13) for i in range(50)])


@pytest.mark.parametrize("shard", [(4, 4), (-1, 3), (0, 0)])
def test_bad_shard_is_a_clear_error(shard):
    with pytest.raises(ValueError, match=r"0 <= index < count"):
        shard_mask(IDS, shard)


def test_null_ids_are_rejected():
    with pytest.raises(ValueError, match=r"must not be null"):
        shard_ids(pa.array(["a", None]), 2)


def test_scan_dedupe_by_hash_across_merges():
    from airflow_fsmigration.stores import redis_online

    seen = redis_online._SeenHashes()
    assert seen.fresh(["a", "b", "a"]) == ["a", "b"]
    assert seen.fresh(["b", "c"]) == ["c"]
    seen.merged = np.union1d(seen.merged, np.fromiter(seen.recent, dtype=np.uint64))  # as after a merge
    seen.recent.clear()
    assert seen.fresh(["c", "d", "a"]) == ["d"]
    assert seen.fresh([]) == []
