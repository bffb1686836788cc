"""The backbone contract: every output a backbone returns is declared as (name, channels, stride).

A declaration is made by the code that builds the layer producing that output, so the table can never
drift from the network (detectron2's ShapeSpec and timm's feature_info follow the same idea).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """What one named output of a backbone looks like.

    channels: the number of channels C of the map `[N, C, H, W]`.
    stride: the input pixels per map cell; `H == ceil(H_in / stride)` up to the rounding of the stem.
    """

    channels: int
    stride: int


def check_out_features(requested, available) -> tuple[str, ...]:
    """Validate a user's `out_features` against the names a network can produce.

    Returns the requested names sorted into network order. Raises ValueError naming the bad entry.
    """
    if isinstance(requested, str):
        requested = (requested,)
    requested = tuple(requested)
    if not requested:
        raise ValueError(f"out_features is empty; choose from {list(available)}")
    for name in requested:
        if name not in available:
            raise ValueError(f"unknown feature {name!r}; this backbone produces {list(available)}")
    return tuple(n for n in available if n in requested)


class DeclaredFeatures:
    """Mixin for trunks: `feature_specs` and `out_channels` read from the declarations the builder made.

    The class using it sets `_all_specs` (name -> FeatureSpec of every map the built layers produce)
    and `_out_features` (the names forward() returns, in network order) while building.
    """

    _all_specs: dict[str, FeatureSpec]
    _out_features: tuple[str, ...]

    @property
    def feature_specs(self) -> dict[str, FeatureSpec]:
        """name -> FeatureSpec of every map forward() returns."""
        return {n: self._all_specs[n] for n in self._out_features}

    @property
    def out_channels(self) -> int:
        """Channels of the last returned map (torchvision's detectors read this)."""
        return self._all_specs[self._out_features[-1]].channels
