"""detres.engine: the task-agnostic training machinery. It reads no config.

- ``trainer``: :class:`~detres.engine.trainer.Trainer`, the one iteration loop (detection and
  classification): AMP, gradient clipping, non-finite-loss stop, exact resume from its state dict.
- ``hooks``: what a run does around the loop: checkpoints, evaluation, metrics and progress.
- ``checkpoint``: atomic checkpoint files with sha256 sidecars, ``find_last_checkpoint``.
- ``logging``: metrics.jsonl + TensorBoard + tqdm progress on rank 0.
- ``solver``: SGD, the linear scaling rule, warmup + multi-step LR.

The tasks (:mod:`detres.tasks`) build the model, data and evaluation from a config and hand them here.
"""
