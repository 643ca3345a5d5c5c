"""Why depth degrades plain nets and not residual ones, measured on trained runs: layer responses and gradient norms
(Figure 7, `responses.py`), a trained run loaded back for evaluation (`trained.py`), lesion studies (`lesion.py`) and
loss landscapes (`landscape.py`)."""

from .responses import analyze, build_figures

__all__ = ["analyze", "build_figures"]
