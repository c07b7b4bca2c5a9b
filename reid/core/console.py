"""What a job prints: our own lines and progress bars; Ray's, MLflow's and the libraries' logs go to a file.

By default a job's console shows a one-line start (what, where, which cluster), tqdm bars for the long phases,
our own warnings, errors with their cause, and a closing summary. Everything else (Ray's execution plans and
worker lines, MLflow's, Python warnings) is written to the job's log file, ``<out>/logs/<job>.log``, which the
start line names. ``--verbose`` (or ``REID_VERBOSE=1``) shows it all live, as before, and lets the Ray workers'
output through to the driver.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import TextIO

OURS = "reid"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_BUFFER_LIMIT = 50_000
_state: dict[str, object] = {"verbose": False, "file": None}


class _JobLog(logging.Handler):
    """The job's log file. Records are held in memory until :func:`open_log` (a job writes nothing, not even
    its log, before its inputs have been checked), then written as they come."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(_FORMAT))
        self.buffer: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        elif len(self.buffer) < _BUFFER_LIMIT:
            self.buffer.append(record)

    def open(self, path: str) -> None:
        if self.file is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.file = logging.FileHandler(path)
            self.file.setFormatter(self.formatter)
            for record in self.buffer:
                self.file.emit(record)
            self.buffer.clear()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


_job_log = _JobLog()


class _Stderr(logging.StreamHandler):
    """The console: writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream it was at
    set-up. A process that swaps ``sys.stderr`` later (pytest's capture, between tests of jobs run in-process)
    would otherwise leave the handler writing to a closed stream and lose the record."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ and setStream assign it: ignored
        pass


def verbose() -> bool:
    """Whether this job shows everything (``--verbose`` / ``REID_VERBOSE=1``)."""
    return bool(_state["verbose"]) or os.environ.get("REID_VERBOSE", "") not in ("", "0")


class _OursOnly(logging.Filter):
    """Console filter: our loggers at INFO and up; anybody else's only at ERROR (errors always reach us)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == OURS or record.name.startswith(OURS + ".") or record.levelno >= logging.ERROR


def setup(is_verbose: bool = False) -> None:
    """Route logging for a job process: call first thing in ``main`` (``reid.core.cli.run_main`` does)."""
    _state["verbose"] = is_verbose or verbose()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = _Stderr()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s" if not verbose() else _FORMAT))
    if not verbose():
        console.addFilter(_OursOnly())
    root.addHandler(console)
    root.addHandler(_job_log)
    logging.captureWarnings(True)  # Python warnings become log records (py.warnings): to the file, not the console
    if not verbose():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    quiet_libraries()


def log_to(path: str) -> str:
    """Name the job's log file (every record, ours and everybody's, INFO and up); it is written from
    :func:`open_log` on. Returns ``path``. Once a log is open (a pipeline running its stages in one process),
    it stays the log of everything the process does."""
    if _job_log.file is None:
        _state["file"] = path
    return str(_state["file"])


def log_for(cfg: object, job: str) -> str | None:
    """:func:`log_to` ``<out>/logs/<job>.log`` (training jobs: ``<storage>/<name>/logs/<job>.log``); a job
    whose output is a URI logs under ``runs/logs/``."""
    storage, name, out = (getattr(cfg, k, None) for k in ("storage", "name", "out"))
    folder = os.path.join(storage, name) if storage and name else out
    if not folder:
        return None
    if os.path.splitext(str(folder))[1] or os.path.isfile(str(folder)):  # --out names a file: log beside it
        folder = os.path.dirname(str(folder)) or "."
    if "://" in str(folder):
        folder = os.path.join("runs", "logs", job)
    return log_to(os.path.abspath(os.path.join(folder, "logs", f"{job}.log")))


def open_log() -> str | None:
    """Start writing the job's log file (the stages call this once their inputs passed the checks; a job that
    ends well calls it at the end in any case). Returns its path."""
    path = _state["file"]
    if path:
        _job_log.open(str(path))
    return path  # type: ignore[return-value]


LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow")


def quiet_libraries() -> None:
    """Take Ray's and MLflow's own console handlers off their loggers (call once they are imported: Ray after
    ``ray.init``, which may add them back; MLflow when a tracker opens); their records go to the job's log
    file instead. With ``--verbose`` they keep their console handlers and also reach the log file."""
    for name in LIBRARY_LOGGERS:
        if name.split(".")[0] not in sys.modules:
            continue
        logger = logging.getLogger(name)
        if _job_log not in logger.handlers and not logger.propagate:
            logger.addHandler(_job_log)
        if verbose():
            continue
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)


def log_file() -> str | None:
    """The job's log file, once :func:`log_to` named it."""
    return _state["file"]  # type: ignore[return-value]
