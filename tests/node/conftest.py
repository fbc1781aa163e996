"""Fixtures of tests/node/: `nodes` (fake nodes, a thread each) and `clients`
(Clients connected to them), from tests/harness/fake_node.py."""
from tests.harness.fake_node import clients, nodes  # noqa: F401 (fixtures)
