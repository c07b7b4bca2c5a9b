"""Errors that retrying cannot fix stop a Ray Train run at once.

Ray Train restarts the worker group from the last checkpoint on any worker error, up to ``max_failures``
times. That is right for a lost worker or node, wrong for our own diagnoses (:class:`reid.core.errors.ReidError`: a
bad input, a config or checkpoint mismatch, a non-finite loss), which fail the same way on every attempt.
:class:`StopOnNonRetryable` runs on the Ray Train controller: when a worker raised a ``ReidError`` it raises
:class:`NonRetryableTrainingError`, which the controller does not retry, and :func:`fit` re-raises the
worker's original error on the driver.
"""

from __future__ import annotations

from typing import Any

import ray.train

from reid.core.errors import ReidError


class NonRetryableTrainingError(ReidError):
    """A worker raised an error that retrying cannot fix; ``error`` is the worker's exception."""

    def __init__(self, rank: int, error: BaseException) -> None:
        self.rank, self.error = rank, error
        super().__init__(f"worker {rank}: {type(error).__name__}: {error} (not retried)")

    def __reduce__(self):
        return (self.__class__, (self.rank, self.error))


def user_error(exc: BaseException | None) -> BaseException | None:
    """The user exception inside Ray's wrappers (the worker's traceback wrapper, RayTaskError, chained)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ReidError):
            return exc
        exc = getattr(exc, "_base_exc", None) or getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return exc


class StopOnNonRetryable(ray.train.UserCallback):
    """Controller-side: turn a worker's ``ReidError`` into an immediate, unretried failure of the run."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for rank, exc in sorted(worker_exceptions.items()):
            error = user_error(exc)
            if isinstance(error, ReidError):
                raise NonRetryableTrainingError(rank, error)


def non_retryable_cause(exc: BaseException | None) -> BaseException | None:
    """The worker error behind a run that :class:`StopOnNonRetryable` stopped, else None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, NonRetryableTrainingError):
            return exc.error
        exc = getattr(exc, "controller_failure", None) or exc.__cause__
        seen += 1
    return None


def fit(trainer: Any, run_dir: str | None = None, desc: str = "train") -> Any:
    """``trainer.fit()`` with a progress bar drawn from ``run_dir``'s progress file (:mod:`reid.stages.train.progress`);
    a run stopped for a non-retryable worker error raises that error here."""
    from reid.stages.train.progress import ProgressBar

    bar = ProgressBar(run_dir, desc) if run_dir else None
    try:
        result = trainer.fit()
    except Exception as exc:
        cause = non_retryable_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if bar is not None:
            bar.close()
    cause = non_retryable_cause(result.error)
    if cause is not None:
        raise cause from None
    if result.error:
        raise result.error
    return result
