"""Helpers beside the core API, as Ray has them in `ray.util`.

`placement_group` and its friends (zfabric/util/placement_group.py) raise
NotSupportedError: zfabric has no placement groups.
"""
from .placement_group import (get_current_placement_group, get_placement_group,
                              placement_group, placement_group_table, remove_placement_group)

__all__ = ["placement_group", "get_placement_group", "remove_placement_group",
           "placement_group_table", "get_current_placement_group"]
