"""detres: the residual networks of He et al. (2015) in torchvision's Faster R-CNN.

The layers follow the data flow: utils -> config -> data -> backbones -> modeling -> evaluation ->
engine -> tasks (see ARCHITECTURE.md). The public entry points are ``detres.backbones`` (the backbones
for any detector), ``detres.modeling.build_detector``, ``detres.tasks`` (what the tools run) and
``detres.Predictor`` (a trained detector as a function of one image).
"""

__version__ = "0.1.0"

__all__ = ["Predictor"]


def __getattr__(name: str):
    # imported on first use, so that `import detres.backbones` does not load the whole package
    if name == "Predictor":
        from detres.tasks.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'detres' has no attribute {name!r}")
