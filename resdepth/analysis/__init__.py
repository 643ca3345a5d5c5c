"""Why depth degrades plain nets and not residual ones, measured on trained runs: layer responses and gradient norms
(Figure 7, `responses.py`), a trained run loaded back for evaluation (`trained.py`), lesion studies (`lesion.py`) and
loss landscapes (`landscape.py`)."""

from .landscape import LandscapeConfig, landscape_runs
from .lesion import LesionConfig, lesion_runs
from .responses import analyze, build_figures

__all__ = ["LandscapeConfig", "LesionConfig", "analyze", "build_figures", "landscape_runs", "lesion_runs"]
