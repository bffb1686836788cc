"""detres.engine: the task-agnostic training machinery and the config-to-objects builders.

- ``trainer.train(...)``: the one iteration-based loop (detection and classification), AMP, clipping,
  periodic checkpoints/evaluation, resume, non-finite-loss stop.
- ``checkpoint``: atomic checkpoint files with sha256 sidecars, RNG state, ``find_last_checkpoint``.
- ``distributed``: torchrun/DDP helpers (NCCL on GPUs, gloo on CPU).
- ``logging``: metrics.jsonl + TensorBoard + tqdm progress on rank 0.
- ``solver``: SGD, linear-scaling rule, warmup + multi-step LR.
- ``builders``: the only code that reads a ``DetConfig``: ``build_model``, ``build_train_dataset``,
  ``build_test_dataset``, ``build_evaluator``, ``build_optimizer``, ``build_scheduler``, ``run_train_det``.
- ``visualize``: detections drawn with torchvision.utils.draw_bounding_boxes.
"""
