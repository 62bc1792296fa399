"""List and embedding values: Feast's protobuf lists, plain Redis JSON arrays, and how they compare.

The reference encoder is protobuf itself with a vendored copy of the list part of
``feast/types/Value.proto`` (field numbers checked against Feast 0.67's ``Value_pb2``).
"""

from __future__ import annotations

import math

import pytest

from airflow_fsmigration import semantics
from airflow_fsmigration import semantics_lists as sl
from airflow_fsmigration.stores import feast_codec as fc

pytestmark = pytest.mark.unit


def _value_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(
        name="fsmig_test_lists.proto", package="fsmiglists", syntax="proto3"
    )
    T = descriptor_pb2.FieldDescriptorProto
    lists = {
        "StringList": T.TYPE_STRING,
        "Int32List": T.TYPE_INT32,
        "Int64List": T.TYPE_INT64,
        "DoubleList": T.TYPE_DOUBLE,
        "FloatList": T.TYPE_FLOAT,
    }
    for name, typ in lists.items():
        m = f.message_type.add(name=name)
        m.field.add(name="val", number=1, type=typ, label=3)
    null = f.enum_type.add(name="Null")
    null.value.add(name="NULL", number=0)
    msg = f.message_type.add(name="Value")
    msg.oneof_decl.add(name="val")
    for name, number, typ, type_name in [
        ("int64_val", 4, T.TYPE_INT64, None),
        ("string_list_val", 12, T.TYPE_MESSAGE, ".fsmiglists.StringList"),
        ("int32_list_val", 13, T.TYPE_MESSAGE, ".fsmiglists.Int32List"),
        ("int64_list_val", 14, T.TYPE_MESSAGE, ".fsmiglists.Int64List"),
        ("double_list_val", 15, T.TYPE_MESSAGE, ".fsmiglists.DoubleList"),
        ("float_list_val", 16, T.TYPE_MESSAGE, ".fsmiglists.FloatList"),
        ("null_val", 19, T.TYPE_ENUM, ".fsmiglists.Null"),
    ]:
        field = msg.field.add(name=name, number=number, type=typ, label=1, oneof_index=0)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("fsmiglists.Value")), {
        n: get(pool.FindMessageTypeByName(f"fsmiglists.{n}")) for n in lists
    }


Value, LISTS = _value_class()


def enc(field: str, kind: str, vals) -> bytes:
    return Value(**{field: LISTS[kind](val=vals)}).SerializeToString()


def test_feast_int_float_and_string_lists_decode_as_protobuf_wrote_them():
    ints = [0, 1, -1, 2**40, -(2**63), 2**63 - 1]
    raw = [
        enc("int64_list_val", "Int64List", ints),
        enc("int32_list_val", "Int32List", [-5, 7]),
        enc("int64_list_val", "Int64List", []),  # an empty list is not a null
        b"",
        None,
        Value(null_val=0).SerializeToString(),
    ]
    assert fc.decode_list_values(raw, "list_int64").to_pylist() == [ints, [-5, 7], [], None, None, None]
    doubles = [0.1, -1e300, 3.5]
    floats = [0.1, 2.5]
    out = fc.decode_list_values(
        [enc("double_list_val", "DoubleList", doubles), enc("float_list_val", "FloatList", floats)],
        "embedding",
    ).to_pylist()
    assert out[0] == doubles
    assert out[1] == [float(__import__("numpy").float32(0.1)), 2.5]  # float32 widened exactly
    words = ["", "é", "🚀 emoji", "a" * 300]
    assert fc.decode_list_values(
        [enc("string_list_val", "StringList", words)], "list_string"
    ).to_pylist() == [words]
    # decode_values hands list dtypes to the list decoder.
    assert fc.decode_values([enc("int64_list_val", "Int64List", [3])], "list_int64").to_pylist() == [[3]]


def test_a_feast_value_of_another_type_is_refused_by_name():
    with pytest.raises(ValueError, match=r"feature 'f'.*int64_val, which a list_int64 column cannot hold"):
        fc.decode_list_values([Value(int64_val=3).SerializeToString()], "list_int64", what="feature 'f'")
    with pytest.raises(ValueError, match="string_list_val"):
        fc.decode_list_values([enc("string_list_val", "StringList", ["x"])], "list_float64")
    with pytest.raises(ValueError, match="Feast value 0"):
        fc.decode_list_values([enc("double_list_val", "DoubleList", [1.0])[:-2]], "list_float64")


def test_plain_redis_json_arrays_decode_with_null_and_empty_distinct():
    dv = semantics.decode_value
    assert dv(b"[1, 2, 9007199254740993]", "list_int64") == [1, 2, 9007199254740993]  # exact, not float
    assert dv(b"[2.0]", "list_int64") == [2]
    assert (
        dv(b"[]", "list_int64") == [] and dv(b"null", "list_int64") is None and dv(None, "list_int64") is None
    )
    assert dv('["a", null, "é"]', "list_string") == ["a", None, "é"]
    nan = dv(b"[NaN, 1.5]", "list_float64")
    assert math.isnan(nan[0]) and nan[1] == 1.5
    for bad, dtype in [
        (b"[2.5]", "list_int64"),
        (b'["1"]', "list_int64"),
        (b"[true]", "list_float64"),
        (b"[1]", "list_string"),
        (b"{}", "list_int64"),
        (b"1,2", "list_int64"),
        (b"\xff", "list_string"),
    ]:
        assert dv(bad, dtype) is semantics.UNDECODABLE, bad


def test_numeric_lists_compare_element_wise_with_tolerance_and_say_why_not():
    c = sl.compare_lists
    assert c([1.0, 2.0], [1.0, 2.0000001], "list_float64", atol=1e-6).match
    v = c([1.0, 2.0], [1.0, 2.1], "list_float64", atol=1e-6)
    assert not v.match and v.reason == "element 1 differs: 2.0 (old) vs 2.1 (new)"
    assert c([1, 2], [1, 2, 3], "list_int64").reason == "length mismatch: 2 (old) vs 3 (new) elements"
    assert "another order" in c([1, 2, 3], [3, 1, 2], "list_int64").reason
    assert c([1, 2, 3], [3, 1, 2], "list_int64", order="set").match
    assert c(["b", "a", "a"], ["a", "b"], "list_string", order="set").match
    assert not c(["a"], ["A"], "list_string").match
    assert c([float("nan")], [float("nan")], "list_float64").match
    # The same rule through semantics.values_match (what the comparison calls for one pair).
    assert semantics.values_match([1, 2], [1, 2], "list_int64")
    assert not semantics.values_match([1, 2], [2, 1], "list_int64")
    assert not semantics.values_match(semantics.UNDECODABLE, [1], "list_int64")


def test_null_and_empty_list_follow_the_null_policy():
    c = sl.compare_lists
    assert c(None, None, "list_int64").match
    v = c(None, [], "list_int64")
    assert not v.match and v.reason == "null (old) vs an empty list"
    assert c([], None, "list_int64", null_policy="null_equals_zero").match
    assert not c(None, [0], "list_int64", null_policy="null_equals_zero").match
    assert not c(None, None, "list_int64", null_policy="nulls_never_match").match


def test_embeddings_by_cosine_or_l2_with_explanations():
    c = sl.compare_lists
    a = [1.0, 2.0, 2.0]  # norm 3
    assert c(a, [1.0000001, 2.0, 2.0], "embedding", metric="cosine", atol=1e-6, dim=3).match
    scaled = [x * 2 for x in a]
    assert c(a, scaled, "embedding", metric="cosine", atol=1e-9).match  # cosine ignores scale
    v = c(a, scaled, "embedding", metric="l2", atol=1e-6)
    assert not v.match and "scaled by 2" in v.reason
    raw = [3.0, 4.0]
    v = c(raw, [0.6, 0.8], "embedding", metric="l2", atol=1e-6)
    assert "normalised to unit length (old norm 5)" in v.reason
    v = c(a, [2.0, -1.0, 0.0], "embedding", metric="cosine", atol=0.01)
    assert not v.match and v.reason.startswith("cosine distance 1")
    assert c(a, [1.0, 2.0, 2.0000001], "embedding", metric="l2", atol=1e-6).match
    v = c(a, [1.0, 2.0], "embedding", metric="cosine", dim=3)
    assert v.reason == "length mismatch: the new vector has 2 elements, dim is 3"
    # Element-wise on an embedding explains a scale too.
    assert "scaled by 2" in c(a, scaled, "embedding", atol=1e-6).reason
