"""detres: the residual networks of He et al. (2015) in torchvision's Faster R-CNN.

The data flow follows the folders: data -> backbones -> modeling -> evaluation -> engine.
"""

__version__ = "0.1.0"
