"""A training run's progress bar on the driver.

Ray Train runs the loop in worker processes and hands the driver nothing until the run ends. Rank 0 therefore
writes ``<run dir>/progress.json`` (at most once a second, and at the end of every epoch; atomically, on the
run's storage that the driver also reads), and the driver draws it as a tqdm bar: steps done of all epochs,
rate and ETA, and the epoch, loss and samples/s of the latest step. Notes the loop writes (e.g. the checkpoint
a resume skipped) are printed above the bar.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from reid.core import io

PROGRESS_FILE = "progress.json"
log = logging.getLogger(__name__)


def progress_path(run_dir: str) -> str:
    return io.join(run_dir, PROGRESS_FILE)


class Progress:
    """Rank 0's side: ``update`` after each step, ``note`` for a line the user should see."""

    def __init__(self, run_dir: str | None, epochs: int, steps_per_epoch: int, attempt: str = "") -> None:
        self.path = progress_path(run_dir) if run_dir else None
        self.state: dict[str, Any] = {"epochs": epochs, "steps_per_epoch": max(1, steps_per_epoch), "epoch": 0,
                                      "step": 0, "loss": None, "samples_per_s": None, "notes": [],
                                      "attempt": attempt or str(time.time())}
        self._last = 0.0

    def update(self, epoch: int, step: int, loss: float | None = None, samples_per_s: float | None = None,
               force: bool = False) -> None:
        self.state.update(epoch=epoch, step=step, loss=loss, samples_per_s=samples_per_s)
        now = time.monotonic()
        if force or now - self._last >= 1.0:
            self._write()
            self._last = now

    def note(self, message: str) -> None:
        self.state["notes"].append(message)
        self._write()

    def forward_warnings(self) -> None:
        """Send this worker's own warnings (``reid.*`` loggers, WARNING and up) to the driver as notes: the
        workers' output reaches the driver's console only with ``--verbose``, our warnings always should."""
        if self.path:
            logging.getLogger("reid").addHandler(_NoteHandler(self))

    def _write(self) -> None:
        if self.path:
            try:
                io.write_text_atomic(self.path, json.dumps(self.state))
            except OSError:  # progress is for the eyes only: never fail training over it
                pass


class _NoteHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.WARNING)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.note(f"{record.levelname}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a note must never fail the training step that logged it
            pass


def _read(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(io.read_text(path))
    except (OSError, ValueError):
        return None


class ProgressBar:
    """The driver's side: a thread that polls the progress file and draws it until :meth:`close`."""

    def __init__(self, run_dir: str, desc: str) -> None:
        from tqdm import tqdm

        self.path, self.desc = progress_path(run_dir), desc
        self.start_state = _read(self.path)  # a previous run's file: ignored until this run writes its own
        self.bar = tqdm(total=0, desc=desc, unit="step", dynamic_ncols=True, leave=True)
        self.notes_seen = 0
        self.attempt: str | None = None
        self.last: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"progress-{desc}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        state = _read(self.path)
        if not state or state == self.start_state or state == self.last:
            return  # nothing new: no redraw (each redraw is a line where stderr is not a terminal)
        self.last = state
        if state.get("attempt") != self.attempt:  # a new worker group (start, resume, restart after a failure)
            self.attempt, self.notes_seen = state.get("attempt"), 0
        steps = int(state["steps_per_epoch"])
        self.bar.total = int(state["epochs"]) * steps
        self.bar.n = min(self.bar.total, int(state["epoch"]) * steps + int(state["step"]))
        postfix = {"epoch": f"{min(int(state['epoch']) + 1, int(state['epochs']))}/{state['epochs']}"}
        if state.get("loss") is not None:
            postfix["loss"] = f"{state['loss']:.4f}"
        if state.get("samples_per_s"):
            postfix["samples/s"] = f"{state['samples_per_s']:.1f}"
        self.bar.set_postfix(postfix, refresh=False)
        for note in state.get("notes", [])[self.notes_seen:]:
            level, _, text = note.partition(": ")
            if level in ("WARNING", "ERROR", "CRITICAL"):
                log.log(getattr(logging, level), "%s (worker): %s", self.desc, text)
            else:
                log.info("%s: %s", self.desc, note)
        self.notes_seen = len(state.get("notes", []))
        self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.refresh()
        self.bar.close()
