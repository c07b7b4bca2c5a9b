"""The training progress file and the driver's bar drawn from it (no Ray: both sides in one process)."""

from __future__ import annotations

import json
import logging

from reid.stages.train.progress import Progress, ProgressBar, progress_path


def test_bar_follows_rank_zeros_progress_and_prints_its_warnings(tmp_path, caplog):
    run = str(tmp_path)
    (tmp_path / "progress.json").write_text(json.dumps({"attempt": "old", "epochs": 9, "steps_per_epoch": 9,
                                                        "epoch": 9, "step": 0, "notes": ["stale"]}))
    bar = ProgressBar(run, "pretrain")  # a previous run's file is not drawn
    progress = Progress(run, epochs=2, steps_per_epoch=5)
    progress.forward_warnings()
    try:
        progress.update(0, 3, 1.25, 40.0, force=True)
        bar.refresh()
        assert (bar.bar.n, bar.bar.total) == (3, 10)
        with caplog.at_level(logging.INFO, logger="reid"):
            logging.getLogger("reid.runtime.tracking").warning("MLflow at X: 2 operation(s) could not be logged")
            progress.note("resumed from a checkpoint: continuing at epoch 1")
            progress.update(2, 0, 1.0, 41.0, force=True)  # the last epoch ended
            bar.close()
    finally:
        logging.getLogger("reid").handlers = [h for h in logging.getLogger("reid").handlers
                                              if type(h).__name__ != "_NoteHandler"]
    assert bar.bar.n == bar.bar.total == 10
    messages = [r.getMessage() for r in caplog.records if r.name == "reid.stages.train.progress"]
    assert messages == ["pretrain (worker): MLflow at X: 2 operation(s) could not be logged",
                        "pretrain: resumed from a checkpoint: continuing at epoch 1"]
    assert "stale" not in " ".join(messages)
    assert json.loads(open(progress_path(run)).read())["epoch"] == 2


def test_no_progress_file_on_other_ranks(tmp_path, monkeypatch):
    """Ranks other than 0 get no run folder: they write nothing, anywhere (a write to a relative default path
    would land in the working directory, here an empty one), and forward no warnings."""
    monkeypatch.chdir(tmp_path)
    handlers = list(logging.getLogger("reid").handlers)
    progress = Progress(None, epochs=1, steps_per_epoch=1)
    progress.forward_warnings()
    progress.update(0, 1, force=True)
    progress.note("x")
    assert progress.path is None and not list(tmp_path.iterdir())
    assert logging.getLogger("reid").handlers == handlers
