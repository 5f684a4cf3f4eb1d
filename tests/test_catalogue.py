"""The catalogue of commands and events, and the reason tables, checked against themselves."""
from __future__ import annotations

import inspect
import struct

import pytest

from appliance.snapshot import attribute_names

from appliance import catalogue as C
from appliance import reasons as R

COMMAND_CLASSES = sorted(C.COMMANDS.values(), key=lambda cls: cls.KIND)


@pytest.mark.parametrize("cls", COMMAND_CLASSES, ids=lambda cls: cls.NAME)
def test_command_fields_are_slots(cls: type[C.Command]) -> None:
    names = tuple(name for name, _ in cls.FIELDS)
    slots = attribute_names(cls)     # __slots__, or the compiled build's native attributes
    assert set(names) <= set(slots), "every persistent field is a slot"
    assert set(slots) - set(names) <= {"ref", "leaves", "filled"}, "the rest is engine state"
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("cls", COMMAND_CLASSES, ids=lambda cls: cls.NAME)
def test_command_fields_have_struct_codes_and_constructor_arguments(cls: type[C.Command]) -> None:
    for name, code in cls.FIELDS:
        struct.calcsize("<" + code)
    params = inspect.signature(cls).parameters
    assert {name for name, _ in cls.FIELDS} == set(params), "every field can be given by name, and only fields"


def test_command_kinds_and_names_are_unique() -> None:
    assert all(kind == cls.KIND for kind, cls in C.COMMANDS.items())
    assert len({cls.NAME for cls in COMMAND_CLASSES}) == len(COMMAND_CLASSES)
    declared = {v for k, v in vars(C).items() if k.startswith("CMD_")}
    assert declared == set(C.COMMANDS)


def test_event_layouts_name_every_event_kind_field_first() -> None:
    kinds = [v for k, v in vars(C.Ev).items() if not k.startswith("_")]
    assert len(set(kinds)) == len(kinds), "every event kind is one number"
    assert set(kinds) == set(C.EVENT_LAYOUTS)
    assert not [k for k in vars(C) if k.startswith("EV_")], "event kinds live in one namespace, Ev"
    names = set()
    for kind, (name, fields) in C.EVENT_LAYOUTS.items():
        assert isinstance(name, str) and name, kind
        assert fields[0] == "kind", name
        assert len(set(fields)) == len(fields), name
        names.add(name)
    assert len(names) == len(C.EVENT_LAYOUTS)
    assert C.EVENT_NAMES == {kind: name for kind, (name, _) in C.EVENT_LAYOUTS.items()}


def test_replace_actions_are_distinct() -> None:
    actions = [v for k, v in vars(C).items() if k.startswith("REPL_")]
    assert sorted(actions) == list(range(len(actions)))


def _constants(prefix_filter: bool) -> dict[str, int]:
    """Integer constants of appliance.reasons: cancel reasons (CANCEL_*) or reject reasons (the rest)."""
    return {
        name: value
        for name, value in vars(R).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
        and name.startswith("CANCEL_") == prefix_filter
    }


def test_reject_reason_table_covers_every_reject_constant() -> None:
    codes = _constants(False)
    assert codes, "no reject reasons found"
    assert set(codes.values()) == set(R.REJECT_REASONS), "REJECT_REASONS and the constants disagree"
    assert len(set(codes.values())) == len(codes), "two reject reasons share a code"
    for name, code in codes.items():
        assert 1000 <= code <= 4999, name
        assert R.REJECT_REASONS[code], name
        assert R.describe(code).startswith(f"{code} ")


def test_cancel_reason_table_covers_every_cancel_constant() -> None:
    codes = _constants(True)
    assert codes, "no cancel reasons found"
    assert set(codes.values()) == set(R.CANCEL_REASONS), "CANCEL_REASONS and the constants disagree"
    assert len(set(codes.values())) == len(codes), "two cancel reasons share a code"
    assert all(R.CANCEL_REASONS[code] for code in codes.values())


def test_event_as_dict_names_every_field() -> None:
    o = C.NewOrder(7, 1, 0, 100, 10000)
    o.ref = 3
    ev = (C.Ev.EXECUTED, o, o, 10, 10000, 1, 90, 10, 0, 10)
    d = C.event_as_dict(ev)
    assert list(d) == ["event", *C.EVENT_LAYOUTS[C.Ev.EXECUTED][1][1:]]
    assert d["maker"] == {"order_id": 7, "ref": 3}
