"""What a :class:`reid.runtime.tracking.Tracker` could not send to MLflow, on disk.

Two kinds of JSONL file of one format (one operation a line, with the run id, store, experiment and job folder it
belongs to), both beside a job's output:

- a tracker's **journal**, ``mlflow_unlogged_<run key>.<tracker token>.pending.jsonl``: every operation the tracker
  had to buffer, appended as it was buffered and removed once the buffer drained; what is left of it after its
  process died is adopted by the next tracker of the run to close (:meth:`Tracker.close`);
- the **spool file**, ``mlflow_unlogged_<run key>.jsonl``: what was still unlogged when a tracker closed.

:func:`reid.runtime.tracking.replay` sends either into the runs they belong to (``python -m
reid.runtime.tracking replay FILE``).
"""

from __future__ import annotations

import gc
import glob
import json
import os
import re
import socket
from collections.abc import Container, Iterable
from typing import Any


def journal_path(spool_path: str, token: str) -> str:
    """The journal of the tracker ``token`` beside its spool file."""
    return f"{spool_path.removesuffix('.jsonl')}.{token}.pending.jsonl"


def orphan_journals(spool_path: str, own_journal: str) -> list[str]:
    """The journals of other trackers beside ``spool_path`` (same run key; tokens are 32 hex digits)."""
    stem = spool_path.removesuffix(".jsonl")
    pattern = re.compile(re.escape(os.path.basename(stem)) + r"\.[0-9a-f]{32}\.pending\.jsonl")
    return sorted(p for p in glob.glob(glob.escape(stem) + ".*.pending.jsonl")
                  if pattern.fullmatch(os.path.basename(p)) and p != own_journal)


def writer(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` marked with the host and process that journal it (:func:`writer_alive` reads them)."""
    return {**entry, "host": socket.gethostname(), "pid": os.getpid()}


def writer_alive(entry: dict[str, Any], open_tokens: Container[str]) -> bool:
    """Whether the tracker that journalled ``entry`` may still be running: one of ``open_tokens`` (the trackers
    open in this process), or another live process of this host. Another host's process cannot be asked: False."""
    import psutil

    if entry.get("host") != socket.gethostname():
        return False
    pid = entry.get("pid")
    if pid == os.getpid():
        if entry.get("tracker") in open_tokens:
            gc.collect()  # a tracker dropped unclosed inside a reference cycle is freed only by the collector
        return entry.get("tracker") in open_tokens
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):  # gone, or no pid recorded
        return False


def append_entries(path: str, entries: Iterable[dict[str, Any]]) -> None:
    """Append ``entries`` to the JSONL file ``path`` (created with its folder)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write("".join(json.dumps(e, default=str) + "\n" for e in entries))


def read_entries(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
