"""Sorting a SimCLR checkpoint's variable names into the network's parts, and the training state skipped by rule.

The authors' code names variables by the layers that made them (``resnet.py``, ``model_util.py`` and
``tf2/model.py`` of google-research/simclr):

- encoder: ``…/conv2d_N/kernel`` and ``…/batch_normalization_N/{gamma,beta,moving_mean,moving_variance}``
  (``sync_batch_normalization_N`` in TF2 with global BN), N counting up in the order the layers were created;
  under ``base_model/`` in TF1 and under the Keras ``resnet`` layer in TF2;
- projection head layer j: ``head_contrastive/nl_j/…`` (TF1) or ``projection_head/nl_j/…`` (TF2), a ``dense``
  kernel and a batch norm (no ``beta`` on the last layer);
- classifier: ``head_supervised/linear_layer/dense/{kernel,bias}``.

What the checkpoint keeps only to continue training is skipped by the rules in :data:`SKIP_RULES`; every other
name that is none of the above is left in ``unmapped``, and the import refuses to drop it silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")
HEAD_SCOPES = ("head_contrastive", "projection_head")
SUPERVISED_SCOPE = "head_supervised"

# (what the rule skips, why, the names it matches): printed with their counts on every import
SKIP_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("optimiser slots and state (…/Momentum, Adam, LARS; TF2 .OPTIMIZER_SLOT, optimizer/)",
     re.compile(r"(^|/)(Momentum|Adam(_\d+)?|LARS\w*|beta[12]_power)$|\.OPTIMIZER_SLOT|^optimizer/")),
    ("exponential-moving-average copies (ema_model/…, …/ExponentialMovingAverage)",
     re.compile(r"(^|/)ema_model/|ExponentialMovingAverage")),
    ("training step counters (global_step, save_counter)", re.compile(r"(^|/)(global_step|save_counter)$")),
    ("the MoCo-style memory of negatives (…memory…)", re.compile(r"memory")),
)

_CONV = re.compile(r"conv2d(?:_(\d+))?$")
_BN = re.compile(r"((?:sync_)?batch_normalization)(?:_(\d+))?$")
_DENSE = re.compile(r"dense(?:_\d+)?$")
_HEAD_LAYER = re.compile(r"nl_(\d+)$")


@dataclass
class Layout:
    """A checkpoint's variable names by role. Encoder lists are in TensorFlow's creation order; BN and dense
    entries map a variable (``gamma``, ``kernel``, …) to its name."""

    convs: list[str] = field(default_factory=list)
    norms: list[dict[str, str]] = field(default_factory=list)
    head: dict[int, dict[str, str]] = field(default_factory=dict)
    supervised: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # rule -> names
    unmapped: list[str] = field(default_factory=list)

    @property
    def head_layers(self) -> int:
        return len(self.head)


def sort_names(names: list[str]) -> Layout:
    """Each name into its role, its skip rule, or ``unmapped``."""
    layout = Layout()
    convs: dict[int, list[str]] = {}
    norms: dict[tuple[str, int], dict[str, str]] = {}
    for name in sorted(names):
        rule = next((what for what, pattern in SKIP_RULES if pattern.search(name)), None)
        if rule is not None:
            layout.skipped.setdefault(rule, []).append(name)
        elif not _sort_part(name, layout, convs, norms):
            layout.unmapped.append(name)
    _order_encoder(layout, convs, norms)
    return layout


def _sort_part(name: str, layout: Layout, convs: dict, norms: dict) -> bool:
    """Files ``name`` under its part of the network; False when it belongs to none."""
    *scopes, layer, variable = [""] + name.split("/")
    if SUPERVISED_SCOPE in scopes:
        return bool(_DENSE.match(layer)) and variable in ("kernel", "bias") and _put(layout.supervised, variable, name)
    head_layer = next((int(m.group(1)) for s in scopes if (m := _HEAD_LAYER.match(s))), None)
    if head_layer is not None and any(scope in scopes for scope in HEAD_SCOPES):
        entry = layout.head.setdefault(head_layer, {})
        if _DENSE.match(layer) and variable == "kernel":
            return _put(entry, "kernel", name)
        return bool(_BN.match(layer)) and variable in BN_VARIABLES and _put(entry, variable, name)
    if (conv := _CONV.match(layer)) and variable == "kernel":
        convs.setdefault(int(conv.group(1) or 0), []).append(name)
        return True
    if (bn := _BN.match(layer)) and variable in BN_VARIABLES:
        entry = norms.setdefault((bn.group(1), int(bn.group(2) or 0)), {})
        return _put(entry, variable, name)
    return False


def _put(entry: dict[str, str], variable: str, name: str) -> bool:
    if variable in entry:  # a second variable for the same place: not one network's layout
        return False
    entry[variable] = name
    return True


def _order_encoder(layout: Layout, convs: dict[int, list[str]], norms: dict[tuple[str, int], dict[str, str]]
                   ) -> None:
    """The encoder's convs and BNs in creation order. Two layers sharing a number (two scopes of conv2d_5, or
    batch_normalization_3 beside sync_batch_normalization_3) cannot be ordered: they go to ``unmapped``."""
    for _, group in sorted(convs.items()):
        if len(group) == 1:
            layout.convs.extend(group)
        else:
            layout.unmapped.extend(group)
    one_kind = len({kind for kind, _ in norms}) == 1
    for _, entry in sorted(norms.items(), key=lambda item: item[0][1]):
        if one_kind:
            layout.norms.append(entry)
        else:
            layout.unmapped.extend(entry.values())
    layout.unmapped.sort()
