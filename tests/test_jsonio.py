"""The tools' JSON (tools/jsonio.py, msgspec): what the standard library reads back, key order as asked."""
from __future__ import annotations

import json

import msgspec
import pytest

from tools import jsonio


def test_tool_json_is_read_back_by_the_standard_library_as_written() -> None:
    doc = {"b": 1, "a": [1, 2.5, None, True], "é": "naïve", "big": 2**70, "neg": -(2**63), "n": {"z": [], "y": {}}}
    line = jsonio.dumps(doc)
    assert "\n" not in line and ", " not in line          # one compact line (JSONL)
    assert json.loads(line) == doc and list(json.loads(line)) == list(doc)   # the caller's key order
    assert jsonio.loads(line) == doc and jsonio.loads(line.encode()) == doc
    assert jsonio.dumps(doc, sort_keys=True) == json.dumps(doc, sort_keys=True, separators=(",", ":"),
                                                          ensure_ascii=False)
    assert jsonio.dumps(doc, indent=1, sort_keys=True) == json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False)
    assert json.loads(jsonio.dumps({"x": float("nan")})) == {"x": None}   # valid JSON, not NaN


def test_malformed_json_is_a_value_error_as_with_the_standard_library(tmp_path) -> None:
    for bad in ('{"seq": 4', "not json", ""):
        with pytest.raises(ValueError):
            jsonio.loads(bad)
    p = tmp_path / "x.json"
    p.write_text('{"a": [1, 2]}')
    assert jsonio.load_path(str(p)) == {"a": [1, 2]}
    with pytest.raises(msgspec.DecodeError):
        p.write_text("[1,")
        jsonio.load_path(str(p))
