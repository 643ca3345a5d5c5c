"""What identifies a run, in one place: which config fields are its protocol and which only say how it was
executed, and the grouping of runs into seeds of one setting that the table, the plots and the sweep planner share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .results import Run

# TrainConfig fields that change how a run executes but not what it computes: a resumed run may change them,
# and runs that differ only in them are seeds of one setting.
EXECUTION_FIELDS = ("device", "threads", "compile", "cuda_graph", "channels_last", "eval_batch_size", "tensorboard")


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A saved or planned config without its execution fields: two runs with equal ones compute the same thing."""
    return {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}


KIND_ORDER = {"plain": 0, "residual": 1}


@dataclass(frozen=True, order=True)
class GroupKey:
    """What the seeds of one group share. shortcut is '' for plain nets, which have none. setting is '' unless
    runs of one dataset x kind x depth were trained differently (e.g. two sweeps with other --iterations in one
    folder): then it names what differs ('iterations 400, lr 0.05'), so those are never averaged as seeds."""

    dataset: str
    kind: str
    shortcut: str
    depth: int
    setting: str = ""

    @property
    def variant(self) -> str:
        """The kind as figures and tables name it: 'residual', or 'residual-B' for projection shortcuts."""
        return self.kind if self.shortcut in ("", "A") else f"{self.kind}-{self.shortcut}"


def group_key(run: Run, setting: str = "") -> GroupKey:
    kind = str(run.setting("kind", "unknown"))
    shortcut = str(run.setting("shortcut", "A")) if kind == "residual" else ""
    return GroupKey(str(run.setting("dataset", "unknown")), kind, shortcut, int(run.setting("depth", 0)), setting)


def group_runs(runs: list[Run]) -> dict[GroupKey, list[Run]]:
    """Runs grouped by dataset, kind, shortcut and depth (the seeds of one setting), plain before residual;
    runs of one such group that were trained differently are kept apart by their setting."""
    groups: dict[GroupKey, list[Run]] = {}
    for run, setting in zip(runs, setting_labels(runs)):
        groups.setdefault(group_key(run, setting), []).append(run)
    order = lambda key: (key.dataset, key.setting, KIND_ORDER.get(key.kind, 2), key.kind, key.shortcut, key.depth)  # noqa: E731
    return {key: groups[key] for key in sorted(groups, key=order)}


# Saved config keys that do not make runs different experiments: the group key, the seed, how a run executed,
# where its data lives, and raw values that "resolved" holds as they took effect (--epochs -> iterations).
NOT_PROTOCOL = {"kind", "depth", "shortcut", "seed", "epochs", "iterations", "precision", "resolved", "environment",
                "data", *EXECUTION_FIELDS}
NOT_DATA_PROTOCOL = {"dataset", "data_dir", "train_size", "test_size", "val_size"}


def run_protocol(run: Run) -> dict[str, str]:
    """What a run computed beyond its group key and seed, as text: equal protocols make seeds of one setting."""
    config, resolved = run.config, run.config.get("resolved", {})
    values = {key: value for key, value in config.items() if key not in NOT_PROTOCOL}
    data = config.get("data", {})
    values.update({key: value for key, value in data.items() if key not in NOT_DATA_PROTOCOL
                   and (data.get("dataset") == "synthetic" or not key.startswith("synthetic_"))})
    if data.get("dataset") == "folder":
        values["data_dir"] = data.get("data_dir")  # for image folders the path is what names the dataset
    for key in ("iterations", "train_size", "test_size", "val_size"):
        values[key] = resolved.get(key, config.get(key, data.get(key)))
    precision = config.get("precision", "auto")
    device = str(config.get("environment", {}).get("device", ""))
    values["precision"] = resolved.get("precision") or (precision if precision != "auto" else
                                                        "tf32" if device.startswith("cuda") else "fp32")
    return {key: json.dumps(value) for key, value in values.items()}


def setting_labels(runs: list[Run]) -> list[str]:
    """Per run, '' or the values of the settings that differ between runs of one dataset x kind x depth.

    Only keys that actually split such a group count, and every run of that dataset is labelled by them, so
    each sweep's depths stay together in one figure and one block of the table."""
    protocols = [run_protocol(run) for run in runs]
    by_group: dict[GroupKey, list[dict[str, str]]] = {}
    for run, protocol in zip(runs, protocols):
        by_group.setdefault(group_key(run), []).append(protocol)
    split_keys: dict[str, set[str]] = {}  # dataset -> keys that differ inside one of its groups
    for key, members in by_group.items():
        differing = {k for k in set().union(*members) if len({m.get(k) for m in members}) > 1}
        split_keys.setdefault(key.dataset, set()).update(differing)
    labels = []
    for run, protocol in zip(runs, protocols):
        keys = sorted(split_keys.get(group_key(run).dataset, ()))
        labels.append(", ".join(f"{k} {shown(protocol.get(k))}" for k in keys))
    return labels


def shown(value: str | None) -> str:
    """A protocol value as a label shows it: strings without their JSON quotes, a missing key as '-'."""
    if value is None:
        return "-"
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else value


def is_complete(run: Run) -> bool:
    """Done by its status, or (no status.json, e.g. copied results) its CSV reached the planned iterations."""
    planned = run.config.get("resolved", {}).get("iterations")
    reached = planned is not None and run.metrics["iteration"].iloc[-1] >= planned
    return run.finished or (run.status == "unknown" and reached)
