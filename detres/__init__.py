"""detres: the residual networks of He et al. (2015) in torchvision's Faster R-CNN.

The layers follow the data flow: utils -> config -> data -> backbones -> modeling -> evaluation ->
engine -> tasks (see ARCHITECTURE.md). The public entry points are ``detres.backbones`` (the backbones
for any detector), ``detres.modeling.build_detector`` and ``detres.tasks`` (what the tools run).
"""

__version__ = "0.1.0"
