"""Ray's placement groups (`ray.util.placement_group` and its module): zfabric
has none. Each call raises NotSupportedError in one line, so code written for
Ray stops where it needs them, saying so."""
from __future__ import annotations

from ..compat import placement_group


def get_placement_group(name: str):
    """NotSupportedError: zfabric has no placement groups."""
    return placement_group()


def remove_placement_group(group):
    """NotSupportedError: zfabric has no placement groups."""
    return placement_group()


def placement_group_table(group=None):
    """NotSupportedError: zfabric has no placement groups."""
    return placement_group()


def get_current_placement_group():
    """None: no task runs in a placement group (zfabric has none), as in Ray
    outside of one."""
    return None


__all__ = ["placement_group", "get_placement_group", "remove_placement_group",
           "placement_group_table", "get_current_placement_group"]
