"""Processes of a local cluster: launching them, finding the ones we own through /proc, stopping them by PID.

Linux only: processes are found through /proc.

Ownership. Every process we launch gets `REID_LOCAL_CLUSTER=<cluster id>/<role>` in its environment,
which Ray hands down to what it spawns, and each `ray start` runs in a session of its own whose id the
state directory records (PID files). Ray's process titles overwrite the environment of some daemons, and
job drivers get sessions of their own, so a process counts as ours if it carries the tag, runs in one of
our sessions, or descends from either. Stopping signals exactly those processes: never `ray stop`, never
a process name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reid.errors import ReidError

TAG_ENV = "REID_LOCAL_CLUSTER"


class LocalClusterError(ReidError, RuntimeError):
    """Starting, stopping or inspecting a local cluster failed; the message names the process and why."""


# --------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessInfo:
    """One live process as /proc shows it; `start_ticks` tells a reused PID apart."""

    pid: int
    parent_pid: int
    name: str
    session_id: int
    start_ticks: int
    tag: str | None


def read_process(pid: int) -> ProcessInfo | None:
    """The process `pid`, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[k - 3] is field k of proc(5)
    if fields[0] in ("Z", "X"):
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        environ = b""
    prefix = f"{TAG_ENV}=".encode()
    tag = next(
        (e[len(prefix) :].decode(errors="replace") for e in environ.split(b"\0") if e.startswith(prefix)),
        None,
    )
    return ProcessInfo(
        pid=pid,
        parent_pid=int(fields[1]),
        name=name,
        session_id=int(fields[3]),
        start_ticks=int(fields[19]),
        tag=tag,
    )


def _tag_matches(tag: str | None, wanted: str) -> bool:
    return tag is not None and (tag == wanted or tag.startswith(wanted + "/"))


def _snapshot() -> dict[int, ProcessInfo]:
    processes = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            info = read_process(int(entry.name))
            if info is not None:
                processes[info.pid] = info
    return processes


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


def process_alive(info: ProcessInfo) -> bool:
    """True while `info`'s process runs (not a zombie, not a new process that reused its PID)."""
    current = read_process(info.pid)
    return current is not None and current.start_ticks == info.start_ticks


def _signal_all(processes: Iterable[ProcessInfo], sig: signal.Signals) -> None:
    for info in processes:
        if process_alive(info):
            try:
                os.kill(info.pid, sig)
            except ProcessLookupError:
                pass


def _wait_gone(processes: list[ProcessInfo], timeout_s: float) -> list[ProcessInfo]:
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in processes if process_alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [p for p in remaining if process_alive(p)]
    return remaining


def terminate(processes: list[ProcessInfo], grace_s: float = 3.0) -> list[ProcessInfo]:
    """SIGTERM `processes`, SIGKILL what is left after `grace_s`; returns any that still survive."""
    _signal_all(processes, signal.SIGTERM)
    remaining = _wait_gone(processes, grace_s)
    _signal_all(remaining, signal.SIGKILL)
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


def _require_free_port(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like the servers themselves: connections in TIME_WAIT do not block, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as error:
            raise LocalClusterError(
                f"port {port} for the {what} is in use ({error}); choose another"
            ) from None


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now (tests must not clash with a running cluster)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


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
