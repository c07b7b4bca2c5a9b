"""Fault injection, for the fault tests only: every job calls these at named points, and they do nothing unless
the job's ``--fail-after-shards`` / ``--fault-epoch`` flag asks for a failure.

Named points:
- :func:`pause_before_commit` (crop and label work units): with fault injection on, each unit waits
  :data:`PAUSE_S` before committing, because Ray Data otherwise finishes a tiny job before the driver's exit lands.
- :func:`driver_exit_after` (crop and label drivers): the driver process dies (``os._exit(3)``) once it has seen
  ``limit`` committed units, leaving the rest uncommitted, as a killed job would.
- :func:`worker_dies_on` (crop and label work units): the process working on one named shard dies on every
  attempt, as one killed for memory would (``--fail-shard``).
- :func:`worker_exit_once` (training loops): Ray Train worker rank 0 dies once, mid-epoch ``fault_epoch`` (a
  marker file makes it happen once per run, so the restarted worker group gets past it).
"""

from __future__ import annotations

import json
import logging
import os
import time

from reid.core import io

log = logging.getLogger(__name__)
PAUSE_S = 1.0


def pause_before_commit(fail_after_shards: int) -> None:
    """Slow a work unit down (only while fault injection is on), so the driver's exit lands mid-job."""
    if fail_after_shards:
        time.sleep(PAUSE_S)


def driver_exit_after(done: int, limit: int, what: str = "shards") -> None:
    """Exit the driver process (no clean-up, as a kill would) once ``done`` reaches ``limit`` (> 0)."""
    if limit and done >= limit:
        log.error("fault injection: driver exits after %d %s", done, what)
        os._exit(3)


def worker_dies_on(shard: str, fail_shard: str) -> None:
    """Kill this worker process whenever it works on ``fail_shard`` (as the kernel's or Ray's OOM killer would
    kill a unit too large for its memory, on every attempt)."""
    if fail_shard and shard == fail_shard:
        log.error("fault injection: the worker on shard %s dies", shard)
        os._exit(137)


def registered_checkpoint_epochs(run_folder: str) -> set[int]:
    """Epochs whose checkpoint Ray Train has registered (its ``checkpoint_manager_snapshot.json``)."""
    snapshot = io.join(run_folder, "checkpoint_manager_snapshot.json")
    try:
        results = json.loads(io.read_text(snapshot)).get("checkpoint_results", [])
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return {int(r["metrics"]["epoch"]) for r in results if "epoch" in r.get("metrics", {})}


def worker_exit_once(fault_epoch: int, epoch: int, marker_dir: str, rank: int) -> None:
    """Kill this Ray Train worker once, mid-epoch ``fault_epoch`` (rank 0 only; ``fault_epoch < 0``: never).

    The worker first waits (up to a minute) until Ray Train has registered the previous epoch's checkpoint: a
    report still in flight when a worker dies is lost, and the test is about restoring from a checkpoint, not
    about that race.
    """
    if fault_epoch < 0 or epoch != fault_epoch or rank != 0:
        return
    marker = io.join(marker_dir, f"_fault_injected_epoch{epoch}")
    if io.exists(marker):
        return
    deadline = time.time() + 60
    while epoch > 0 and time.time() < deadline and (epoch - 1) not in registered_checkpoint_epochs(marker_dir):
        time.sleep(0.5)
    io.write_text_atomic(marker, str(time.time()))
    log.error("fault injection: worker rank 0 exits at epoch %d", epoch)
    os._exit(1)
