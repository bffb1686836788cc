"""detres.tasks: the only code that reads a config and wires data, model, evaluation and the engine.

- ``detection``: the C4 Faster R-CNN (tools/train_det.py, eval.py, predict.py).
- ``classification``: ImageNet pretraining (tools/train_cls.py).
- ``common``: what both share: the solver with the linear scaling rule, and a training run with the
  default hooks (metrics, checkpoints, evaluation) and resume.
"""
