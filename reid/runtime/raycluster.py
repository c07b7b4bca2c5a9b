"""Connecting to Ray the same way from every job: a cluster when one is named, else a local instance."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that nothing listens on right now (the one helper for a local
    Ray, a local cluster's servers and the tests' process groups)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:  # all bound at once: the OS gives distinct ports
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


# How often a work unit (a Ray task or actor call) whose process died is run again before the job gives up on it.
# Ray Data's defaults are "for ever" (tasks max_retries=-1, actors max_restarts=-1 and max_task_retries=-1), and
# Ray retries a process killed by its memory monitor on a separate counter, RAY_task_oom_retries, also -1
# (for ever) by default: a unit that always runs out of memory would hang the job.
UNIT_RETRIES = 3
OOM_RETRIES_ENV = "RAY_task_oom_retries"
# Ray ends an idle worker process within a second once a node holds more workers than its soft limit (by default
# the node's CPU count, actors included). A training run's actors (Train's controller and workers, Ray Data's
# coordinators) fill that on a small node, so each Ray Data task then started a new Python process that imported
# torch again: dozens per epoch. Idle workers are kept up to this many per node, and tasks reuse them.
WORKER_SOFT_LIMIT_ENV = "RAY_num_workers_soft_limit"
WORKER_SOFT_LIMIT = 32


def worker_soft_limit() -> int:
    """The idle-worker soft limit for Ray started here: ``$RAY_num_workers_soft_limit``, else
    :data:`WORKER_SOFT_LIMIT` or the machine's CPU count if larger."""
    return int(os.environ.get(WORKER_SOFT_LIMIT_ENV) or max(WORKER_SOFT_LIMIT, os.cpu_count() or 1))
_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # read by Ray's job client before its address argument


def task_retry_args(retries: int = UNIT_RETRIES) -> dict[str, int]:
    """``map_batches`` keyword arguments bounding the re-runs of a task-pool work unit whose process died."""
    return {"max_retries": retries}


def actor_retry_args(retries: int = UNIT_RETRIES) -> dict[str, int]:
    """``map_batches`` keyword arguments bounding an actor pool's restarts and the re-runs of its calls."""
    return {"max_restarts": retries, "max_task_retries": retries}


def lost_worker_error(exc: BaseException) -> BaseException | None:
    """The Ray error inside ``exc`` (its cause chain) saying that a worker process died or was killed (out of
    memory, node lost, actor dead), or None when ``exc`` is something else (a bug, a ReidError)."""
    import ray.exceptions as rex

    lost = tuple(getattr(rex, name) for name in ("WorkerCrashedError", "OutOfMemoryError", "ActorDiedError",
                                                 "ActorUnavailableError", "NodeDiedError", "TaskUnschedulableError")
                 if hasattr(rex, name))
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, lost):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def work_unit_lost(exc: BaseException, stage: str, retries: int, uncommitted: list[str]) -> Exception | None:
    """A :class:`reid.core.errors.WorkUnitLostError` for a Ray Data pass that stopped because a unit's process died
    more than ``retries`` times (None when ``exc`` is another failure, to be raised as it is). It names the
    shards left uncommitted; committed ones stay, so the same command resumes."""
    from reid.core.errors import WorkUnitLostError

    cause = lost_worker_error(exc)
    if cause is None:
        return None
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    return WorkUnitLostError(
        f"{stage}: a work unit's process died {retries + 1} times (killed for memory, or its node lost: "
        f"{type(cause).__name__}: {first_line}); {len(uncommitted)} shard(s) not committed, e.g. "
        f"{sorted(uncommitted)[:5]}. The committed shards are kept: give the workers more memory (or fewer "
        f"shards per task) and run the same command again, or raise --unit-retries")


def job_client(address: str | None = None, headers: dict[str, str] | None = None):
    """Ray's ``JobSubmissionClient`` of the job server at ``address`` (None: the one ``RAY_API_SERVER_ADDRESS``
    or ``RAY_ADDRESS`` names). The client prefers those variables to its argument, so a process whose
    environment names another Ray (a test session's own, a stale shell) would reach that one: ``address`` is
    put in ``RAY_API_SERVER_ADDRESS`` while the client is made, then the variable is restored. With
    ``RAY_AUTH_MODE=token`` the client sends the token itself; ``headers`` are added to every request."""
    from ray.job_submission import JobSubmissionClient

    if address is None:
        return JobSubmissionClient(headers=headers)
    saved = os.environ.get(_API_SERVER_ENV)
    os.environ[_API_SERVER_ENV] = address
    try:
        return JobSubmissionClient(address, headers=headers)
    finally:
        if saved is None:
            del os.environ[_API_SERVER_ENV]
        else:
            os.environ[_API_SERVER_ENV] = saved


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet_data: bool = True) -> None:
    """Connect to ``address`` / ``$RAY_ADDRESS`` (e.g. inside ``ray job submit``), else start a local Ray.

    Never a bare ``ray.init()``: that would join whatever cluster happens to run on the machine. A local
    instance gets a GCS port chosen here and ``RAY_ADDRESS`` pointing at it, inherited by every Ray process
    it starts, so Ray's own helpers (e.g. Train's placement-group cleaner) find *this* instance even when
    other Ray instances run on the machine ("Found multiple active Ray instances").
    """
    import ray

    from reid.core import console

    console.quiet_libraries()  # Ray's own console handlers: its lines go to the job's log file
    # read by this driver (the owner of its tasks, which counts their retries) and by a Ray it starts; a value
    # set by the user wins. A cluster started elsewhere needs it in its nodes' environment (reid.runtime.localcluster).
    os.environ.setdefault(OOM_RETRIES_ENV, str(UNIT_RETRIES))
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        # the workers' output reaches this console only with --verbose; else it stays in Ray's session logs
        if address:
            ray.init(address=address, log_to_driver=console.verbose())
        else:
            (port,) = free_ports(1)
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)
            os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
            try:
                ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1",
                         _node_ip_address="127.0.0.1", log_to_driver=console.verbose(),
                         _system_config={"task_oom_retries": int(os.environ[OOM_RETRIES_ENV]),
                                         "num_workers_soft_limit": worker_soft_limit()})
            finally:
                del os.environ["RAY_GCS_SERVER_PORT"]  # only for this start; `ray start` elsewhere must not see it
        resources = ray.cluster_resources()
        log.info("Ray: %s, %d node(s), %g CPU%s; worker logs in %s", address or "local instance",
                 len([n for n in ray.nodes() if n.get("Alive")]), resources.get("CPU", 0),
                 f", {resources['GPU']:g} GPU" if resources.get("GPU") else "", session_logs_dir())
    ctx = ray.data.DataContext.get_current()  # imports Ray Data, which adds its own console handlers
    console.quiet_libraries()
    ctx.max_errored_blocks = 0  # never drop blocks silently (docs/DATA.md)
    if quiet_data:
        ctx.enable_progress_bars = False  # our jobs show their own progress bar


def session_logs_dir() -> str:
    """Where Ray keeps this session's logs (on the head node for a cluster): the workers' output, Ray Data's."""
    try:
        import ray._private.worker as worker

        return worker._global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - a private API: only for the message
        return "the Ray session folder (/tmp/ray/session_latest/logs on the head node)"


# Ray Data's per-operator resource reservation keeps part of the CPUs back for operators that may come later.
# Our task-pool stages are one operator over a handful of CPUs: with the reservation on, their tasks ran
# almost one at a time (docs/BENCHMARKS.md, the crop job).
TASK_POOL_OVERRIDES = {"op_resource_reservation_enabled": False}


@contextmanager
def data_context(**overrides: object) -> Iterator[None]:
    """Ray Data settings for the datasets *created* inside the block (each Dataset copies the context then)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = {key: getattr(ctx, key) for key in overrides}
    for key, value in overrides.items():
        setattr(ctx, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)
