"""Channel groups as the reports name them: a group is one row, named by its first layer and how many more
share its channels; its importance is the summed scores of its units, counted once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GroupImportance:
    """A channel group's summed criterion scores (each unit counted once, not on every layer the group spans),
    and the part of that sum the run removed."""

    layer: str  # the group's first prunable layer, which names it
    label: str  # the layer and how many more layers share the group's channels
    total: float
    removed: float = 0.0


def group_of_layer(analysis) -> dict[str, int]:
    """Layer name -> the channel group its output kernels belong to (the first, for a layer in several)."""
    out: dict[str, int] = {}
    for g in analysis.groups:
        for name in g.layers:
            out.setdefault(name, g.id)
    return out


def plus_layers(more: int) -> str:
    """' (+3 layers)' after a channel group's first layer: how many more layers share its channels."""
    return "" if more <= 0 else f" (+{more} layer{'s' if more > 1 else ''})"


def group_importance(analysis, scores: dict[int, float], removed=()) -> list[GroupImportance]:
    """Per channel group in layer order (a prunable layer outside any group is its own row): the summed scores
    of its units and of those in ``removed``."""
    groups = group_of_layer(analysis)
    members: dict[object, list[str]] = {}
    for layer in analysis.layers.values():
        if layer.prunable_kernels:
            members.setdefault(groups.get(layer.name, layer.name), []).append(layer.name)
    rows = {key: GroupImportance(names[0], names[0] + plus_layers(len(names) - 1), 0.0)
            for key, names in members.items()}
    gone = set(int(r) for r in removed)
    for r, s in scores.items():
        key = analysis.group_of.get(r)
        row = rows.get(key) or rows.get(analysis.unit_kernels[r][0][0])
        if row is None:
            continue
        row.total += float(s)
        if int(r) in gone:
            row.removed += float(s)
    return list(rows.values())
