"""Split a group's entities into N stable shards, so a large group can fan out over mapped tasks.

The hash is FNV-1a (64-bit) over the UTF-8 bytes of the entity key, passed through the
MurmurHash3 64-bit finalizer (``fmix64``) so that the low bits are well mixed, then taken
modulo N::

    h = 0xcbf29ce484222325
    for byte in entity_id.encode():
        h = ((h ^ byte) * 0x100000001b3) mod 2**64
    shard = fmix64(h) % n

It is defined on bytes, not on Python's randomised ``hash()``, so every process (and any other
language) puts an entity in the same shard. :func:`shard_of` is the scalar form; :func:`shard_ids`
and :func:`shard_mask` are vectorised over an Arrow string array with numpy (one pass per byte
position, no Python loop per entity).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    h ^= h >> 33
    return h


def entity_hash(entity_id: str) -> int:
    """The 64-bit hash of one entity key (FNV-1a over UTF-8, then fmix64)."""
    h = FNV_OFFSET
    for byte in entity_id.encode():
        h = ((h ^ byte) * FNV_PRIME) & _MASK
    return _fmix64(h)


def shard_of(entity_id: str, n: int) -> int:
    """The shard (0..n-1) of one entity key."""
    _check(0, n)
    return entity_hash(entity_id) % n


def _check(index: int, n: int) -> None:
    if n < 1 or not 0 <= index < n:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got ({index}, {n})")


def _as_string_array(ids: Any) -> pa.Array:
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if not isinstance(ids, pa.Array):
        ids = pa.array(list(ids) if not isinstance(ids, Sequence) else ids, type=pa.large_string())
    if ids.null_count:
        raise ValueError("entity ids must not be null")
    if not pa.types.is_large_string(ids.type):
        ids = ids.cast(pa.large_string())
    return ids


def hash_ids(ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised :func:`entity_hash`: a uint64 array, one hash per id."""
    import numpy as np

    arr = _as_string_array(ids)
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    if data.size == 0:
        data = np.zeros(1, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    longest = int(lengths.max()) if n else 0
    last = data.size - 1
    with np.errstate(over="ignore"):
        for k in range(longest):
            live = lengths > k
            byte = data[np.minimum(starts + k, last)].astype(np.uint64)
            h = np.where(live, (h ^ byte) * prime, h)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def shard_ids(ids: Iterable[str] | pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """The shard (0..n-1) of every id, as an int64 array."""
    import numpy as np

    _check(0, n)
    return (hash_ids(ids) % np.uint64(n)).astype(np.int64)


def shard_mask(ids: Iterable[str] | pa.Array | pa.ChunkedArray, shard: tuple[int, int]) -> np.ndarray:
    """A boolean array: which ids fall in ``shard = (index, count)``."""
    index, n = shard
    _check(index, n)
    return shard_ids(ids, n) == index


def filter_shard(ids: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The ids of ``ids`` that fall in ``shard`` (all of them when ``shard`` is None), order kept."""
    if shard is None:
        return list(ids)
    import numpy as np

    ids = list(ids)
    if not ids:
        return []
    keep = np.flatnonzero(shard_mask(ids, shard))
    return [ids[i] for i in keep]
