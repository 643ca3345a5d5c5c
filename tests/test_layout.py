"""The package's folders are its layers: a module imports from its own folder or from a layer below, never above.

The imports are read from the source (every `import` and `from ... import`, inside functions too), so an import
that runs back up fails here before it can become a cycle.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import resdepth

PACKAGE = Path(resdepth.__file__).parent

# Lowest first. Siblings on one level (sweep/, analysis/) never import each other.
LEVELS: list[set[str]] = [{"errors", "_version"}, {"config"}, {"models"}, {"results"}, {"train"},
                          {"sweep", "analysis"}, {"bench"}, {"cli"}, {"__main__"}]
LEVEL = {part: index for index, parts in enumerate(LEVELS) for part in parts}


def part_of(module: str) -> str | None:
    """The layer part (`train` for resdepth.train.data) of a resdepth module; None for the root package itself."""
    names = module.split(".")
    return names[1] if len(names) > 1 else None


def module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    names = list(relative.parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every resdepth import of the file at path."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            # `from . import x` may name a submodule: count it as that module
            found += [(node.lineno, f"{module}.{alias.name}" if not node.module else module) for alias in node.names]
    return [(line, module) for line, module in found if module.split(".")[0] == root.name]


def upward_imports(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent)
        importer = module_name(path, root)
        own = part_of(importer)
        if own is None:
            continue  # the root package is the public face: it imports the builders, as resdepth.build_model
        for line, module in imported_modules(path, root):
            target = part_of(module)
            if target is None:
                problems.append(f"{where}:{line}: imports the package root, which imports models/ (import from the "
                                "module itself)")
                continue
            if target == own:
                continue
            if target not in LEVEL or own not in LEVEL:
                problems.append(f"{where}:{line}: {module} is in no level (add it to LEVELS)")
            elif LEVEL[target] >= LEVEL[own]:
                problems.append(f"{where}:{line}: {own}/ imports {module}, a level not below it")
    return problems


def test_no_module_imports_its_own_layer_or_one_above() -> None:
    assert upward_imports(PACKAGE) == []


def test_every_folder_and_top_module_has_a_level() -> None:
    parts = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    parts |= {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert parts == set(LEVEL)


def test_the_check_finds_an_import_that_runs_up_and_one_between_siblings(tmp_path: Path) -> None:
    root = tmp_path / "resdepth"
    for folder in ("models", "train", "sweep", "analysis"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "nets.py").write_text("def build():\n    from ..train.trainer import Trainer\n")
    (root / "sweep" / "runner.py").write_text("from resdepth.analysis import analyze\nfrom ..train import data\n")
    (root / "analysis" / "lesion.py").write_text("from . import trained\nfrom ..models import nets\n")
    assert upward_imports(root) == [
        "resdepth/models/nets.py:2: models/ imports resdepth.train.trainer, a level not below it",
        "resdepth/sweep/runner.py:1: sweep/ imports resdepth.analysis, a level not below it",
    ]


@pytest.mark.parametrize("old, new", sorted(resdepth.MOVED_MODULES.items()))
def test_a_module_from_before_the_folders_imports_as_the_module_it_moved_to(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_import_paths_readme_documents_work_in_a_fresh_interpreter() -> None:
    # A fresh process, so that nothing this suite imported first makes an old path work by accident
    code = """
from resdepth import build_model, list_models
from resdepth.families import DepthRule, Family, get_family, response_layers
from resdepth.train import TrainConfig, run_training
from resdepth.data import DataConfig
from resdepth.fused import run_fused_training
from resdepth.sweep import SweepConfig, make_cells
from resdepth.results import load_runs
from resdepth.tables import summarize, summarize_runs
from resdepth.analysis import analyze, build_figures
import resdepth.families, resdepth.models.families
assert resdepth.families is resdepth.models.families and get_family("residual") is not None
assert build_model("resnet20") is not None and "resnet56" in list_models("res*")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
