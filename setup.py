"""Install detres: `pip install -e .` (add `[test]` for the test runner).

torch and torchvision are pinned to the one pair that is known to install and import together
here; torchvision's C++ operators (RoIAlign, RoIPool, NMS) only load against the torch they were
built for, so the two move together or not at all.
"""
from setuptools import find_packages, setup

setup(
    name="detres",
    version="0.1.0",
    description="Deep residual networks (He et al., 2015) in torchvision's Faster R-CNN, faithful to the paper",
    packages=find_packages(include=["detres", "detres.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "pycocotools>=2.0.7",
        "msgspec>=0.18",  # COCO annotation files decoded without building their polygons (data/coco.py)
        "faster-coco-eval>=1.8,<2",  # the COCO evaluator (pycocotools' numbers, C++ speed); pycocotools is its test oracle
        "albumentations>=2.0,<2.1",
        "opencv-python-headless",
        "pyyaml>=6.0",
        "tqdm",
        "tensorboard",
        "pillow",
        "matplotlib",
        "scikit-learn",
        "psutil",  # tools/benchmark.py scale: memory (PSS) of a process and its DataLoader workers
    ],
    # onnx/onnxruntime: tools/export.py --format onnx and its check; the tests exercise both
    extras_require={"test": ["pytest>=8", "onnx", "onnxruntime"], "onnx": ["onnx", "onnxruntime"]},
)
