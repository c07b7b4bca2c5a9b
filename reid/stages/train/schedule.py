"""Learning-rate schedules as pure functions of the global step, so a resumed run follows the same schedule."""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine_lambda(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """LR factor of step ``step``: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``
    (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return fn
