"""resdepth: CIFAR networks by depth: plain vs residual as in He et al. 2016, section 4.2, pre-activation ResNets and
your own network families (resdepth.families)."""

__version__ = "0.1.0"

from .models import build_model, list_models

__all__ = ["__version__", "build_model", "list_models"]
