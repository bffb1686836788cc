"""detres.utils: the helpers every layer shares, each written exactly once.

- ``comm``: torch.distributed (torchrun) queries, reductions, gathers and DDP wrapping.
- ``amp``: the one mixed-precision policy (autocast on CUDA; fp32 on the CPU).
- ``io``: atomic file writes, the data root, and a pickle reader that runs no code.
- ``rng``: seeding and capturing/restoring every random generator (for exact resume).

This package imports nothing else from detres, so any layer may use it.
"""
