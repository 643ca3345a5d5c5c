"""What identifies a run, in one place: which config fields are its protocol and which only say how it was
executed, and the grouping of runs into seeds of one setting that the table, the plots and the sweep planner share.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

from ..models.families import Family, PaperNumber, family_of_run, family_order, recorded_version
from .runs import RUN_CONFIG_SECTIONS, Run

# TrainConfig fields that change how a run executes but not what it computes: a resumed run may change them,
# and runs that differ only in them are seeds of one setting.
EXECUTION_FIELDS = ("device", "threads", "compile", "cuda_graph", "channels_last", "eval_batch_size", "tensorboard",
                    "checkpoint_every", "deterministic")


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A saved or planned config without its execution fields (and the shortcut of a family that takes none, which
    builds nothing): two runs with equal ones compute the same thing."""
    ignored = set(EXECUTION_FIELDS) | (set() if family_of_run(config).shortcuts else {"shortcut"})
    kept = {k: v for k, v in config.items() if k not in ignored}
    if isinstance(kept.get("data"), dict):  # the dataset's display name is a label, not what the run computes
        kept["data"] = {k: v for k, v in kept["data"].items() if k != "dataset_name"}
        if isinstance(kept["data"].get("data_dir"), str):  # one folder, however given (relative: from here)
            kept["data"]["data_dir"] = absolute_path(kept["data"]["data_dir"])
    return kept


def absolute_path(path: str) -> str:
    """A folder as an absolute path, ~ expanded and links kept as named (a path recorded relative to where it was
    given is ambiguous from anywhere else)."""
    return os.path.abspath(os.path.expanduser(path))


def config_difference(saved: dict[str, Any], asked: dict[str, Any], most: int = 3) -> str:
    """'lr: 0.1 there, 0.05 asked', for the first few fields where two configs compute different things ('' where
    they compute the same)."""
    diffs = differing_fields(comparable(saved), comparable(asked))
    return "; ".join(f"{key}: {there} there, {here} asked" for key, there, here in diffs[:most])


def differing_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) where two configs differ, a nested table (data, options) by its own keys
    ('data.data_dir'), not as a whole dict."""
    diffs = []
    for key in [*new, *(k for k in old if k not in new)]:
        there, here = old.get(key), new.get(key)
        if there == here:
            continue
        if isinstance(there, dict) and isinstance(here, dict):
            diffs += differing_fields(there, here, f"{prefix}{key}.")
        else:
            diffs.append((f"{prefix}{key}", there, here))
    return diffs


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
    family: Family = field(default_factory=lambda: Family("unknown"), compare=False, repr=False)
    # the setting as (key, value) pairs: one table column per key, one figure panel column per setting
    axes: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def study(self) -> tuple[str, str]:
        """(dataset, setting): what one set of figures shows."""
        return self.dataset, self.setting

    @property
    def variant(self) -> str:
        """The kind as figures and tables name it: 'residual', or 'residual-B' for the shortcut that is not the
        family's default ('preact-A' for preact, whose default is B); files use families.file_name of it."""
        return self.family.variant(self.shortcut)


def group_key(run: Run, axes: tuple[tuple[str, str], ...] = ()) -> GroupKey:
    """The run's group: its family (from config.json, never imported), and its shortcut where the family takes one
    (a run of an earlier version that does not say: A); axes: its values where runs differ (`setting_axes`)."""
    family = family_of_run(run.config)
    shortcut = str(run.setting("shortcut") or family.default_shortcut or "A") if family.shortcuts else ""
    return GroupKey(dataset_name(run.config), family.name, shortcut, int(run.setting("depth", 0)), axes_text(axes),
                    family, axes)


def dataset_name(config: dict[str, Any]) -> str:
    """The dataset as tables and figures name it: its --dataset-name if the run was given one, else cifar10,
    synthetic, ...; for an image folder the folder's own name (/tmp/cifar10-jpeg -> cifar10-jpeg), which says more
    than 'folder' and fits in a file name."""
    data = config.get("data", {})
    dataset = str(data.get("dataset", "unknown"))
    given = data.get("dataset_name")  # --dataset-name; read from a file, so kept to what a file name may hold
    if isinstance(given, str) and file_safe(given):
        return file_safe(given)
    if dataset != "folder" or not data.get("data_dir"):
        return dataset
    return file_safe(PurePath(absolute_path(str(data["data_dir"]))).name) or dataset


def file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:64]


def group_runs(runs: list[Run]) -> dict[GroupKey, list[Run]]:
    """Runs grouped by dataset, kind, shortcut and depth (the seeds of one setting), plain before residual;
    runs of one such group that were trained differently are kept apart by their setting."""
    groups: dict[GroupKey, list[Run]] = {}
    for run, axes in zip(runs, setting_axes(runs), strict=True):
        groups.setdefault(group_key(run, axes), []).append(run)
    return {key: groups[key] for key in sorted(groups, key=group_order)}


def group_order(key: GroupKey) -> tuple:
    """Dataset, setting, the built-in families in their order (plain, residual, preact, ...) then the others, a
    family's default shortcut first, then shallow to deep: the order of table rows, figure panels and legends."""
    return (key.dataset, setting_order(key.axes), key.setting, family_order(key.kind), key.kind,
            key.family.shown_shortcut(key.shortcut) != "", key.shortcut, key.depth)


def setting_order(axes: tuple[tuple[str, str], ...]) -> tuple:
    """Settings in the order of their values, numbers as numbers (lr 0.01 before 0.1, width 2 before 10), a value
    that runs do not give ('-') or give as none (no --init: He init) first."""
    def value(text: str) -> tuple:
        try:
            return (0, float(text), "")
        except ValueError:
            return (-1 if text in ("-", "none") else 1, 0.0, text)
    return tuple((name, value(text)) for name, text in axes)


# Saved config keys that do not make runs different experiments: the group key, the seed, how a run executed,
# where its data lives, and raw values that "resolved" holds as they took effect (--epochs -> iterations).
NOT_PROTOCOL = {"kind", "depth", "shortcut", "seed", "epochs", "iterations", "precision", *RUN_CONFIG_SECTIONS, "data",
                "options", *EXECUTION_FIELDS}
# The warm-up settings only matter to a run that warmed up; which runs do is "resolved"'s warmup (a mode such as
# auto or deep is only the rule that decided it).
WARMUP_FIELDS = ("warmup", "warmup_min_depth", "warmup_lr", "warmup_until_error", "warmup_max_iterations")
NOT_DATA_PROTOCOL = {"dataset", "data_dir", "train_size", "test_size", "val_size", "dataset_name"}
# Protocol fields a later version added, and what a config.json written before them meant: a run of 2026-11 has no
# `init` (He init, as `"init": null` says now), and must stay a seed of the same setting as today's runs
ADDED_LATER = {"init": None}


def run_protocol(run: Run) -> dict[str, str]:
    """What a run computed beyond its group key and seed, as text: equal protocols make seeds of one setting."""
    config, resolved = run.config, run.config.get("resolved", {})
    values = {**ADDED_LATER, **{key: value for key, value in config.items() if key not in NOT_PROTOCOL}}
    data = config.get("data", {})
    values.update({key: value for key, value in data.items() if key not in NOT_DATA_PROTOCOL
                   and (data.get("dataset") == "synthetic" or not key.startswith("synthetic_"))})
    if data.get("dataset") == "folder":
        values["data_dir"] = data.get("data_dir")  # for image folders the path is what names the dataset
    options = config.get("options")
    values.update(family_of_run(config).option_values(options if isinstance(options, dict) else {}))
    for key in ("iterations", "train_size", "test_size", "val_size"):
        values[key] = resolved.get(key, config.get(key, data.get(key)))
    if "warmup" in resolved:
        for key in WARMUP_FIELDS:
            values.pop(key, None)
        values["warmup"] = resolved["warmup"]
        if resolved["warmup"]:
            values.update({key: config.get(key) for key in WARMUP_FIELDS[2:]})
    source = resolved.get("family", {}).get("source") if isinstance(resolved.get("family"), dict) else None
    if isinstance(source, dict) and source.get("distribution") and not family_of_run(config).builtin:
        values["family_version"] = f"{source['distribution']} {source.get('version')}"  # another version: another net
    values["precision"] = run_precision(run)
    values["network_version"] = recorded_version(config)  # a fixed net is another net: its runs are kept apart
    return {key: json.dumps(value) for key, value in values.items()}


def run_precision(run: Run) -> str:
    """The precision the run trained in: as resolved, else what auto meant on its device (tf32 on CUDA)."""
    config = run.config
    precision = config.get("precision", "auto")
    device = str(config.get("environment", {}).get("device", ""))
    return str(config.get("resolved", {}).get("precision") or (precision if precision != "auto" else
                                                               "tf32" if device.startswith("cuda") else "fp32"))


def axes_text(axes: tuple[tuple[str, str], ...]) -> str:
    """A run's setting as labels, titles and notes show it: 'lr 0.05, width 2' ('' where nothing differs)."""
    return ", ".join(f"{key} {value}" for key, value in axes)


def setting_axes(runs: list[Run]) -> list[tuple[tuple[str, str], ...]]:
    """Per run, its values of the settings that differ between runs of one dataset x kind x depth (a sweep's grid
    axes, or two sweeps' differences), as (key, value) pairs in key order; () where none differ.

    Only keys that actually split such a group count, and every run of that dataset is labelled by them, so
    each sweep's depths stay together in one figure and one block of the table."""
    protocols = [run_protocol(run) for run in runs]
    by_group: dict[GroupKey, list[dict[str, str]]] = {}
    for run, protocol in zip(runs, protocols, strict=True):
        by_group.setdefault(group_key(run), []).append(protocol)
    split_keys: dict[str, set[str]] = {}  # dataset -> keys that differ inside one of its groups
    for key, members in by_group.items():
        differing = {k for k in set().union(*members) if len({m.get(k) for m in members}) > 1}
        split_keys.setdefault(key.dataset, set()).update(differing)
    axes = []
    for run, protocol in zip(runs, protocols, strict=True):
        keys = sorted(split_keys.get(group_key(run).dataset, ()))
        axes.append(tuple((k, str(shown(protocol.get(k)))) for k in keys))
    return axes


def shown(value: str | None) -> str:
    """A protocol value as a label shows it: strings without their JSON quotes, booleans on/off and null as none (as
    folder names show them), a missing key as '-'."""
    if value is None:
        return "-"
    decoded = json.loads(value)
    if isinstance(decoded, bool):
        return "on" if decoded else "off"
    return decoded if isinstance(decoded, str) else "none" if decoded is None else value


def is_complete(run: Run) -> bool:
    """Done by its status, or (no status.json, e.g. copied results) its CSV reached the planned iterations."""
    planned = run.config.get("resolved", {}).get("iterations")
    reached = planned is not None and run.metrics["iteration"].iloc[-1] >= planned
    return run.finished or (run.status == "unknown" and reached)


# ---------------------------------------------------------------------------------------------- the paper's protocol
# §4.2's CIFAR-10 training, as far as a run's config can say: what a run must match for its numbers to stand
# beside its family's paper (Table 6 for residual nets; the follow-up paper kept this training, changing only the
# warm-up: see families.Protocol). The dataset, the shortcut, the split and the warm-up are checked apart, in
# `paper_differences`.
PAPER_TRAINING: dict[str, tuple[Any, str]] = {  # config key -> (the paper's value, how a difference reads)
    "batch_size": (128, "batch {}"),
    "lr": (0.1, "lr {}"),
    "lr_milestones": ([0.5, 0.75], "lr divided at {} of the iterations"),
    "lr_decay": (0.1, "lr multiplied by {} at the milestones"),
    "momentum": (0.9, "momentum {}"),
    "weight_decay": (1e-4, "weight decay {}"),
}
PAPER_ITERATIONS, PAPER_TRAIN_IMAGES, PAPER_TEST_IMAGES = 64_000, 50_000, 10_000
PAPER_WARMUP_DEPTH, PAPER_WARMUP_LR = 110, 0.01
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def paper_number(run: Run) -> PaperNumber | None:
    """The number of the run's family's paper for its depth (on its dataset and mini-batch where the paper has
    those), or None where the paper gives none."""
    family, data = family_of_run(run.config), run.config.get("data", {})
    if family.reference is None:
        return None
    return family.reference.lookup(str(data.get("dataset", "cifar10")), int(run.setting("depth", 0)),
                                   run.config.get("batch_size", 128))


def paper_differences(run: Run) -> list[str]:
    """How the run's protocol differs from its family's paper's CIFAR training, one short phrase each (the paper's
    value in brackets); empty when it matches. Values a hand-made config leaves out count as the paper's."""
    config, data, resolved = run.config, run.config.get("data", {}), run.config.get("resolved", {})
    family = family_of_run(config)
    datasets = family.reference.datasets if family.reference else ["cifar10"]
    differences = []
    if data.get("dataset", "cifar10") not in datasets:
        name = dataset_name(config)
        what = f"{name} (an image folder)" if data.get("dataset") == "folder" else name
        differences.append(f"dataset {what} (paper: {' or '.join(DATASET_NAMES.get(d, d) for d in datasets)})")
    paper_shortcut = family.protocol.shortcut
    if family.shortcuts and paper_shortcut and (config.get("shortcut") or paper_shortcut) != paper_shortcut:
        differences.append(f"shortcut {config.get('shortcut')} (paper: {shortcut_words(paper_shortcut)})")
    number = paper_number(run)
    iterations = resolved.get("iterations", config.get("iterations", PAPER_ITERATIONS))
    if number and number.trained:
        differences.append(f"{iterations:,} iterations, lr /10 at {milestone_words(config)} (paper: {number.trained})")
    elif iterations != PAPER_ITERATIONS:
        differences.append(f"trained {iterations:,} iterations (paper: 64k)")
    expected = {**PAPER_TRAINING, "batch_size": (number.batch_size if number else 128, "batch {}")}
    if number and number.trained:  # its schedule is the note above
        del expected["lr_milestones"]
    for key, (paper, words) in expected.items():
        value = config.get(key, paper)
        if (list(value) if isinstance(value, (list, tuple)) else value) != paper:
            shown_value = ", ".join(f"{v:.0%}" for v in value) if key == "lr_milestones" else f"{value:g}"
            paper_value = ", ".join(f"{v:.0%}" for v in paper) if key == "lr_milestones" else f"{paper:g}"
            differences.append(f"{words.format(shown_value)} (paper: {paper_value})")
    differences += split_differences(data, resolved)
    if not data.get("augment", True):
        differences.append("no augmentation (paper: pad 4, random crop, flip)")
    differences += [] if number and number.trained else warmup_differences(run, family)
    differences += init_differences(config, resolved)
    differences += option_differences(config, family)
    if resolved.get("precision", config.get("precision")) == "bf16":
        differences.append("bf16 (paper: fp32)")
    return differences


def milestone_words(config: dict[str, Any]) -> str:
    milestones = config.get("lr_milestones", PAPER_TRAINING["lr_milestones"][0])
    return ", ".join(f"{m:.0%}" for m in milestones) if isinstance(milestones, (list, tuple)) else "?"


def init_differences(config: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    """The paper's nets start from He init; a run trained from --init (e.g. a constructed deeper net) does not."""
    if not config.get("init"):
        return []
    record = resolved.get("init") if isinstance(resolved.get("init"), dict) else {}
    where = PurePath(str(record.get("path") or config["init"])).name or str(config["init"])
    net = f"{record['net']} weights in " if record.get("net") else ""
    return [f"initialized from {net}{where} (paper: He init)"]


def option_differences(config: dict[str, Any], family: Family) -> list[str]:
    """The family's paper trained its nets at every option's default (the built-in families: width 1)."""
    options = config.get("options")
    values = family.option_values(options if isinstance(options, dict) else {})
    return [f"{o.name} {values[o.name]} (paper: {o.default})" for o in family.net_options
            if values[o.name] != o.default]


def on_paper_axes(run: Run, keys: list[str]) -> bool:
    """Whether the run's values on these setting keys (a sweep's axes) are the paper's: its differences from the
    paper stay the same when the keys are left out (a value left out counts as the paper's)."""
    if not keys:
        return True
    config = {k: v for k, v in run.config.items() if k not in keys}
    for section in ("data", "options", "resolved"):
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k not in keys}
    return paper_differences(replace(run, config=config)) == paper_differences(run)


def shortcut_words(shortcut: str) -> str:
    return {"A": "A, zero-padding", "B": "B, projection"}.get(shortcut, shortcut)


def split_differences(data: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    """The paper trains on all 50k training images (its 45k/5k split only set the schedule) and tests on all 10k."""
    differences = []
    if data.get("val_size"):
        differences.append(f"{data['val_size']:,} training images held out for validation (paper: trained on all 50k)")
    if data.get("train_size") is not None and data["train_size"] < PAPER_TRAIN_IMAGES:
        differences.append(f"a {data['train_size']:,}-image training subset (paper: all 50k)")
    elif not data.get("val_size") and resolved.get("train_size", PAPER_TRAIN_IMAGES) != PAPER_TRAIN_IMAGES:
        differences.append(f"{resolved['train_size']:,} training images (paper: 50k)")
    if resolved.get("test_size", PAPER_TEST_IMAGES) != PAPER_TEST_IMAGES:
        differences.append(f"tested on {resolved['test_size']:,} images (paper: the 10k test set)")
    return differences


def warmup_differences(run: Run, family: Family) -> list[str]:
    """§4.2 warms up the 110-layer ResNet (and, "trained as described above", the 1202-layer one): lr 0.01 until the
    training error is below 80%; nothing else. The follow-up paper warms up every pre-activation net for its first
    400 iterations. The family's protocol says which."""
    config, resolved, protocol = run.config, run.config.get("resolved", {}), family.protocol
    expected = protocol.warms_up(int(config.get("depth", 0)), PAPER_WARMUP_DEPTH)
    warmed = resolved.get("warmup", expected)
    if warmed != expected:
        return [f"a warm-up (paper: {protocol.no_warmup_words})" if warmed else
                f"no warm-up (paper: {protocol.warmup_words})"]
    if not warmed:
        return []
    lr = given(config, "warmup_lr", PAPER_WARMUP_LR)
    until = given(config, "warmup_until_error", protocol.warmup_until_error)
    length = given(config, "warmup_max_iterations", protocol.warmup_max_iterations)
    if protocol.fixed_warmup and (lr, until, length) != (PAPER_WARMUP_LR, protocol.warmup_until_error,
                                                         protocol.warmup_max_iterations):
        return [f"warm-up lr {lr:g} until training error < {until:g}% or iteration {length:,} "
                f"(paper: {protocol.warmup_words})"]
    if protocol.fixed_warmup:
        return []
    if (lr, until) != (PAPER_WARMUP_LR, protocol.warmup_until_error):
        return [f"warm-up lr {lr:g} until training error < {until:g}% (paper: 0.01 until < "
                f"{protocol.warmup_until_error:g}%)"]
    if run.warmup_end_reason == "cap":
        return [f"warm-up ended at its cap, iteration {run.warmup_end_iteration:,} (paper: at < "
                f"{protocol.warmup_until_error:g}% training error)"]
    return []


def given(config: dict[str, Any], key: str, default: Any) -> Any:
    """A config value, the default where a hand-made config leaves it out (or null)."""
    value = config.get(key)
    return default if value is None else value
