"""patch_fpn and its report types; the package is split by job (see the module docstrings)."""

from ._fx_rewrite import find_upsample_nodes as find_upsample_nodes
from ._fx_rewrite import replace_upsample_node as replace_upsample_node
from ._patch_fpn import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
from ._patch_fpn import patch_fpn as patch_fpn
from ._report import PatchReport as PatchReport
from ._report import PatchSite as PatchSite
from ._runtime import UpsampleSite as UpsampleSite
from ._tracing import DEFAULT_LEAF_MODULES as DEFAULT_LEAF_MODULES
from ._upsamplers import Upsampler as Upsampler
from ._upsamplers import enlarge_or_interpolate as enlarge_or_interpolate

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_LEAF_MODULES",
    "PatchReport",
    "PatchSite",
    "UpsampleSite",
    "Upsampler",
    "enlarge_or_interpolate",
    "find_upsample_nodes",
    "patch_fpn",
    "replace_upsample_node",
]
