"""resdepth: CIFAR networks by depth: plain vs residual as in He et al. 2016, section 4.2, pre-activation ResNets and
your own network families (resdepth.models.families).

The package's folders are its layers; a module imports only from its own folder or from a layer below it
(tests/test_layout.py holds this): errors.py and config.py, then models/ (the networks and their families),
results/ (the results format, tables, figures), train/ (data, the trainer, fused seeds), sweep/ and analysis/
(running grids; measuring trained nets), bench/ (speed), cli/ (the command line).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

from ._version import __version__
from .errors import UserError

__all__ = ["UserError", "__version__", "build_model", "list_models"]


def __getattr__(name: str) -> object:
    # torch loads with the first network asked for, not with the package: `resdepth` starts at once, so a Ctrl-C in
    # its first seconds reaches the command line's own handling rather than an import's traceback
    if name in ("build_model", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'resdepth' has no attribute {name!r}")

# Modules that stood at the top before the folders (0.1): their import paths keep working (`from resdepth.families
# import Family` in a user's family module, `from resdepth.data import DataConfig`), each as the module it moved
# to, loaded when first imported.
MOVED_MODULES = {
    "resdepth.families": "resdepth.models.families",
    "resdepth.nets": "resdepth.models.nets",
    "resdepth.data": "resdepth.train.data",
    "resdepth.fused": "resdepth.train.fused",
    "resdepth.tables": "resdepth.results.tables",
    "resdepth.plots": "resdepth.results.plots",
}


class _MovedModule(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns what sys.modules holds once this returns: the moved module itself, not a copy.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        moved_to = MOVED_MODULES.get(name)
        return importlib.util.spec_from_loader(name, _MovedModule(moved_to)) if moved_to else None


if not any(type(finder).__name__ == _MovedModules.__name__ for finder in sys.meta_path):  # reload too
    sys.meta_path.append(_MovedModules())
