"""fastjson (orjson with the standard library behind it) parses and writes exactly what `json` does."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun import fastjson

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_what_json_writes_parses_to_the_same_value(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode("utf-8")) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"x": NaN, "y": -Infinity}',  # the standard library accepts these; orjson does not
        '{"big": 123456789012345678901234567890}',  # past 64 bits: orjson makes it a float
        "[-9223372036854775809, 18446744073709551616, 18446744073709551615]",  # either side of 64 bits
        "[1e400, -1e400, 1e-400]",  # past a double: orjson refuses
        '"\\ud800"',  # a lone surrogate
        '{"a": 1, "a": 2}',  # a repeated key: the last wins in both
    ],
)
def test_what_only_the_standard_library_accepts_still_parses_as_it_did(text: str) -> None:
    got, want = fastjson.loads(text), json.loads(text)
    assert repr(got) == repr(want)  # repr: NaN is not equal to itself


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1,]", "nul"])
def test_what_neither_accepts_raises_the_standard_librarys_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as got:
        fastjson.loads(text)
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    assert str(got.value) == str(want.value)


@given(st.text())
def test_a_string_is_written_byte_for_byte_as_json_writes_it(text: str) -> None:
    assert fastjson.string_bytes(text) == json.dumps(text, ensure_ascii=False).encode("utf-8")


def test_a_lone_surrogate_fails_as_the_standard_library_fails() -> None:
    with pytest.raises(UnicodeEncodeError):
        fastjson.string_bytes("a\ud800b")


@pytest.mark.parametrize("text", ['{"x": NaN}', "[1e400]", '"\\ud800"', '{"a": 1, "a": 2}'])
def test_an_api_envelope_parses_as_json_does_but_for_integers_past_64_bits(text: str) -> None:
    assert repr(fastjson.loads_api(text)) == repr(json.loads(text))
    assert fastjson.loads_api('{"n": 12345678901234567890123}') == {"n": 1.2345678901234568e22}  # documented


def test_run_events_are_written_as_the_standard_library_writes_them() -> None:
    import json

    from batchrun.fastjson import dumps_text

    events = [
        (1764811234.123456, 231.5, 200, "ok", 1, "r0042", 400, 213, 48, 0, 1, 0.0, 4.5e-05, "default", None),
        [1e-7, 1e21, 0.1, -0.0, 2**63 - 1, True, 'ünïcode 🙂 "quoted" \n tab\t', "</script>"],
    ]
    assert json.loads(dumps_text(events)) == json.loads(json.dumps(events, ensure_ascii=False))
    for odd in (["lone \ud800 surrogate"], [2**70]):  # orjson refuses both: the standard library writes them
        assert dumps_text(odd) == json.dumps(odd, ensure_ascii=False)


@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1), st.text(), st.none()
        )
    )
)
def test_run_event_values_read_back_exactly(values: list) -> None:
    from batchrun.fastjson import dumps_text

    back = json.loads(dumps_text(values))
    assert back == values and [type(v) for v in back] == [type(v) for v in values]
