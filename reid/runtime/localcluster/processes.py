"""Processes of a local cluster: launching them, finding the ones we own, stopping them by PID.

Linux only: processes are read with psutil, the ownership tag from /proc.

Ownership. Every process we launch gets `REID_LOCAL_CLUSTER=<cluster id>/<role>` in its environment,
which Ray hands down to what it spawns, and each `ray start` runs in a session of its own whose id the
state directory records (PID files). Ray's process titles overwrite the environment of some daemons, and
job drivers get sessions of their own, so a process counts as ours if it carries the tag, runs in one of
our sessions, or descends from either. Stopping signals exactly those processes: never `ray stop`, never
a process name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from reid.core.errors import ReidError

TAG_ENV = "REID_LOCAL_CLUSTER"


class LocalClusterError(ReidError, RuntimeError):
    """Starting, stopping or inspecting a local cluster failed; the message names the process and why."""


# --------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessInfo:
    """One live process; `create_time` (psutil's) tells a reused PID apart."""

    pid: int
    parent_pid: int
    name: str
    session_id: int
    create_time: float
    tag: str | None


_ATTRS = ["pid", "ppid", "name", "status", "create_time"]
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def _tag(pid: int) -> str | None:
    # Read by hand: psutil's environ() stops at the first empty entry, and Ray's process titles leave runs of
    # NULs at the start of some daemons' environment block (their whole environment reads as empty).
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{TAG_ENV}=".encode()
    return next(
        (e[len(prefix) :].decode(errors="replace") for e in environ.split(b"\0") if e.startswith(prefix)),
        None,
    )


def _info(values: dict[str, Any]) -> ProcessInfo | None:
    """A ProcessInfo from psutil's `as_dict(_ATTRS)`, or None for a zombie or a process that is gone."""
    if values["status"] in _GONE or values["create_time"] is None or values["ppid"] is None:
        return None
    pid = int(values["pid"])
    try:
        session_id = os.getsid(pid)  # psutil does not expose the session
    except OSError:
        return None
    return ProcessInfo(
        pid=pid,
        parent_pid=int(values["ppid"]),
        name=str(values["name"]),
        session_id=session_id,
        create_time=float(values["create_time"]),
        tag=_tag(pid),
    )


def read_process(pid: int) -> ProcessInfo | None:
    """The process `pid`, or None if it is gone or a zombie."""
    try:
        return _info(psutil.Process(pid).as_dict(_ATTRS, ad_value=None))
    except psutil.NoSuchProcess:
        return None


def _tag_matches(tag: str | None, wanted: str) -> bool:
    return tag is not None and (tag == wanted or tag.startswith(wanted + "/"))


def _snapshot() -> dict[int, ProcessInfo]:
    me = os.getpid()
    infos = (_info(proc.info) for proc in psutil.process_iter(_ATTRS, ad_value=None) if proc.pid != me)
    return {info.pid: info for info in infos if info is not None}


def owned_processes(
    tag: str, session_ids: Iterable[int] = (), trust_sessions: bool = False
) -> tuple[list[ProcessInfo], set[int]]:
    """Processes we started: tagged `tag` (or `tag/...`), in one of `session_ids`, or descended from those.

    Ray's process titles overwrite the environment of some daemons (dashboard modules, agents), so the
    tag alone misses them; the session ids (PID files) and the process tree catch them. A recorded
    session counts only while a tagged process still lives in it (a session id is not reused while it
    has members), unless `trust_sessions` says it was confirmed already. Returns (processes, sessions).
    """
    snapshot = _snapshot()
    owned = {pid for pid, info in snapshot.items() if _tag_matches(info.tag, tag)}
    sessions = set(session_ids)
    if not trust_sessions:
        sessions = {snapshot[pid].session_id for pid in owned} & sessions
    owned |= {pid for pid, info in snapshot.items() if info.session_id in sessions}
    children: dict[int, list[int]] = {}
    for info in snapshot.values():
        children.setdefault(info.parent_pid, []).append(info.pid)
    pending = list(owned)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in owned:
                owned.add(child)
                pending.append(child)
    return [snapshot[pid] for pid in sorted(owned)], sessions


def stop_owned(tag: str, session_ids: Iterable[int] = (), grace_s: float = 3.0) -> list[ProcessInfo]:
    """Terminate everything `owned_processes` finds, re-scanning for late children; returns what was
    signalled. Raises LocalClusterError naming any process still alive afterwards."""
    processes, sessions = owned_processes(tag, session_ids)
    signalled: list[ProcessInfo] = []
    for _ in range(3):
        if not processes:
            return signalled
        signalled += processes
        survivors = terminate(processes, grace_s)
        if survivors:
            raise LocalClusterError(f"{tag}: processes survived SIGKILL: {_describe(survivors)}")
        processes, _ = owned_processes(tag, sessions, trust_sessions=True)
    raise LocalClusterError(f"{tag}: processes keep appearing while stopping: {_describe(processes)}")


def _live(info: ProcessInfo) -> psutil.Process | None:
    """`info`'s process while it runs: None once it is gone, a zombie, or its PID belongs to a new process."""
    try:
        process = psutil.Process(info.pid)
        if process.create_time() != info.create_time or process.status() in _GONE:
            return None
    except psutil.NoSuchProcess:
        return None
    return process


def process_alive(info: ProcessInfo) -> bool:
    """True while `info`'s process runs (not a zombie, not a new process that reused its PID)."""
    return _live(info) is not None


def _signal_all(processes: Iterable[ProcessInfo], kill: bool) -> None:
    for info in processes:
        process = _live(info)
        if process is None:
            continue
        try:  # psutil checks again that the PID was not reused before it signals
            if kill:
                process.kill()
            else:
                process.terminate()
        except psutil.NoSuchProcess:
            pass


def _wait_gone(processes: list[ProcessInfo], timeout_s: float) -> list[ProcessInfo]:
    # Polled by hand: psutil.wait_procs counts a zombie that is not our child as alive, and the daemons of
    # a killed node stay zombies until their new parent (PID 1 in a container, which may never) reaps them.
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in processes if process_alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [p for p in remaining if process_alive(p)]
    return remaining


def terminate(processes: list[ProcessInfo], grace_s: float = 3.0) -> list[ProcessInfo]:
    """SIGTERM `processes`, SIGKILL what is left after `grace_s`; returns any that still survive."""
    _signal_all(processes, kill=False)
    remaining = _wait_gone(processes, grace_s)
    _signal_all(remaining, kill=True)
    return _wait_gone(remaining, 10.0)


def _describe(processes: Iterable[ProcessInfo]) -> str:
    return ", ".join(f"{p.name}[{p.pid}]" for p in processes)


# ---------------------------------------------------------------------- launching: tools, ports, logs, files


def _venv_tool(name: str) -> str:
    """The console script `name` next to this interpreter (the project's venv), so nodes run our versions."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise LocalClusterError(f"{candidate} not found: install the project (`make venv`) first")
    return str(candidate)


def port_in_use(port: int) -> OSError | None:
    """Why a server could not bind `port` on every interface now (a listener holds it), or None when it could."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like the servers themselves: connections in TIME_WAIT do not block, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as error:
            return error
    return None


def _require_free_port(port: int, what: str) -> None:
    error = port_in_use(port)
    if error is not None:
        raise LocalClusterError(f"port {port} for the {what} is in use ({error}); choose another")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _launch(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `command` in a new session with output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
