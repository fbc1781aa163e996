"""The runtime env descriptor a task carries in `opts["env"]` (node/runtime_env.py),
as the wire checks it (protocol_checks.env_problem)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.protocol_checks import ENV_MAX_MODULES, ENV_MAX_VARS, env_problem

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "0123456789abcdef" * 4
OID_A, OID_B, OID_C = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
GOOD = {"wd": SHA_A, "mods": [SHA_B], "vars": {"X": "1", "EMPTY": ""},
        "pkgs": {SHA_A: OID_A, SHA_B: OID_B}}


def execute(opts):
    return p.Execute(b"\x05" * 16, "f", b"\x06" * 16, 1, 0, [OID_A, OID_B], [2, 2], b"", b"",
                     b"", [b"", b""], opts)


def test_a_good_descriptor_travels():
    assert env_problem(GOOD) == "" and env_problem({"vars": {"A": "b"}}) == ""
    msg = execute({"env": GOOD})
    assert p.decode(p.encode(msg)).opts == {"env": GOOD}


@pytest.mark.parametrize("bad", [
    "not a dict", {"other": 1},
    {"wd": SHA_A},                                        # names no package object
    {"wd": "A" * 64, "pkgs": {"A" * 64: OID_A}},          # not lower-case hex
    {"wd": SHA_A[:-1], "pkgs": {SHA_A[:-1]: OID_A}},      # not a sha256
    {"wd": SHA_A, "pkgs": {SHA_A: b"short"}},
    {"mods": SHA_A, "pkgs": {SHA_A: OID_A}},              # mods must be a list
    {"mods": [SHA_C] * (ENV_MAX_MODULES + 1), "pkgs": {SHA_C: OID_C}},
    {"vars": {"A=B": "x"}}, {"vars": {"": "x"}}, {"vars": {"A": 1}}, {"vars": {"A": "\0"}},
    {"vars": {f"V{i}": "" for i in range(ENV_MAX_VARS + 1)}},
    {"vars": ["A"]}, {"pkgs": [SHA_A]},
])
def test_nonsense_is_refused_on_the_wire(bad):
    assert env_problem(bad)
    with pytest.raises(p.ProtocolError, match="bad task option 'env'"):
        p.decode(p.encode(execute({"env": bad})))


junk = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70)
                    | st.binary(max_size=24),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=70), inner, max_size=4), max_leaves=12)


@given(st.dictionaries(st.sampled_from(["wd", "mods", "vars", "pkgs", "x"]), junk, max_size=4))
def test_any_value_gets_a_verdict_never_an_exception(env):
    assert isinstance(env_problem(env), str)
