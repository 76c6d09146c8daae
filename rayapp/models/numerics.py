"""Float arithmetic settings for training on CPUs.

`flush_denormals()`: subnormal floats (below 1.2e-38 in float32) are flushed to zero in this
thread's arithmetic and read as zero (x86 FTZ/DAZ, through torch's public
`torch.set_flush_denormal`). Adam's moments of weights that stop getting gradient (a ReLU unit
that no longer fires) decay by beta each step into the subnormal range and stay there, and x86
handles subnormals 3-10x slower than normal floats: in a Pong fine-tuning run 1.05M of the first
fully connected layer's 1.6M first moments were subnormal at 20k steps, and the learner's
updates/s had fallen from 7 to 4 (benchmarks/denormals.py measures it). Values that small change
no update. Call it in the thread that trains (Ray Train runs the loop in a thread of its own).
"""

from __future__ import annotations

__all__ = ["flush_denormals"]


def flush_denormals() -> bool:
    """Flush subnormals to zero in this thread; False where the CPU cannot (not x86 with SSE3)."""
    import torch

    return bool(torch.set_flush_denormal(True))

