"""The vectorised HMGET reply parser agrees with hiredis, and refuses what it cannot parse exactly."""

from __future__ import annotations

import random

import hiredis
import pytest

from airflow_fsmigration.stores._resp import Unparseable, parse_hmget

pytestmark = pytest.mark.unit


def encode(replies: list[list[bytes | None]]) -> bytes:
    out = []
    for reply in replies:
        out.append(b"*%d\r\n" % len(reply))
        for v in reply:
            out.append(b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v))
    return b"".join(out)


def columns_of(data: bytes, width: int) -> list[list[bytes | None]]:
    _, used, columns = parse_hmget(data, width)
    assert used == len(data)
    return [c.to_pylist() for c in columns]


def hiredis_columns(data: bytes, width: int) -> list[list[bytes | None]]:
    reader = hiredis.Reader()
    reader.feed(data)
    replies = []
    while (r := reader.gets()) is not False:
        replies.append(r)
    return [[r[j] for r in replies] for j in range(width)]


def test_values_nulls_and_awkward_bytes():
    replies = [
        [b"1", None, b"hello"],
        [b"", b"3.14", None],
        [b"x\r\ny", b"$a*", b"1" * 10_050],  # a long value: a 5-digit header
        [b"*", b"$", b"-1"],
    ]
    assert columns_of(encode(replies), 3) == [
        [b"1", b"", b"x\r\ny", b"*"],
        [None, b"3.14", b"$a*", b"$"],
        [b"hello", None, b"1" * 10_050, b"-1"],
    ]


def test_a_cut_off_reply_is_left_for_the_next_call():
    data = encode([[b"a", b"b"], [b"c", b"dd"]])
    for cut in range(1, len(data)):
        count, used, _ = parse_hmget(data[:cut], 2)
        first_reply = len(encode([[b"a", b"b"]]))
        assert (count, used) == ((1, first_reply) if cut >= first_reply else (0, 0)), cut


def test_random_replies_match_hiredis():
    rng = random.Random(7)
    alphabet = [b"a", b"1", b".", b"-", b"$", b"*", b"\r", b"\n", b" ", "é".encode()]
    width = 5
    replies = []
    for _ in range(2_000):
        reply = []
        for _ in range(width):
            if rng.random() < 0.2:
                reply.append(None)
            else:
                # '$' and '*' anywhere but first; CR and LF anywhere except "LF then $/*"
                text = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
                reply.append(b"v" + text.replace(b"\n$", b"\n.").replace(b"\n*", b"\n."))
        replies.append(reply)
    data = encode(replies)
    assert columns_of(data, width) == hiredis_columns(data, width)


@pytest.mark.parametrize(
    "data",
    [
        encode([[b"a\n$1", b"b"]]),  # a value that looks like a header after a line break
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        encode([[b"a", b"b", b"c"]]),  # three fields where two were asked
        b"*-1\r\n",
        encode([[b"*1", b"b"]]),  # a value that is itself a valid header: the chain breaks, caught
    ],
)
def test_anything_unexpected_is_refused_not_misparsed(data):
    with pytest.raises(Unparseable):
        parse_hmget(data, 2)
