"""The label job's thresholds come from the model's calibration unless flags say otherwise, and its finish step
refuses an output where one identity holds two characters of one panel (no Ray needed)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from reid.core.contracts.labels import LABEL_SCHEMA, labels_output, row_id
from reid.core.contracts.manifest import error_table
from reid.core.errors import ReidError
from reid.core.models import ModelConfig, ReIDNet, save_model_checkpoint
from reid.stages.label import LabelConfig, check_cannot_link, load_reid_model, resolve_thresholds

CALIBRATION = {"threshold": 0.61, "link_threshold": 1.05, "source": "validation sequences of fine-tuning run t"}


@pytest.fixture()
def calibrated_model(tmp_path):
    path = tmp_path / "model.pt"
    save_model_checkpoint(ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=32)), str(path),
                          extra={"calibration": CALIBRATION})
    return path


def test_thresholds_come_from_the_checkpoint_then_flags_then_the_paper(calibrated_model, tmp_path):
    cfg = LabelConfig(model=str(calibrated_model))
    _, _, extra = load_reid_model(cfg, with_extra=True)
    resolved, sources = resolve_thresholds(cfg, extra)
    assert (resolved.threshold, resolved.link_threshold) == (0.61, 1.05)
    assert all("checkpoint calibration" in sources[k] and "fine-tuning run t" in sources[k]
               for k in ("threshold", "link_threshold"))
    # a checkpoint calibrated before linking had options links as linking always did
    assert (resolved.link_distance, resolved.link_constraint) == ("centroid", "hard")
    assert "default" in sources["link_distance"]
    linked = {**extra, "calibration": {**extra["calibration"], "link_distance": "members", "link_constraint": "soft"}}
    resolved, sources = resolve_thresholds(cfg, linked)
    assert (resolved.link_distance, resolved.link_constraint) == ("members", "soft")
    assert sources["link_distance"] == "checkpoint calibration"
    resolved, sources = resolve_thresholds(LabelConfig(model=str(calibrated_model), link_distance="rerank"), linked)
    assert resolved.link_distance == "rerank" and sources["link_distance"] == "flag"
    resolved, sources = resolve_thresholds(LabelConfig(model=str(calibrated_model), threshold=0.9), extra)
    assert (resolved.threshold, resolved.link_threshold) == (0.9, 1.05) and sources["threshold"] == "flag"
    resolved, sources = resolve_thresholds(LabelConfig(model=str(calibrated_model)), {})
    assert (resolved.threshold, resolved.link_threshold) == (0.82, 0.82)
    assert "the paper's value" in sources["threshold"]


def _rows_table(rows):
    return pa.Table.from_pylist([{"row_id": row_id(r[0], r[1]), "instance_id": r[0], "type": "body",
                                 "panel_id": r[2], "series_id": 1, "window_id": r[1], "char_key": r[3],
                                 "identity": r[4], "series_identity": r[5], "distance": 0.0, "box": [0, 0, 1, 1],
                                 "model": "m", "model_sha256": "x", "run_id": "", "shard": "1-00000"}
                                for r in rows], schema=LABEL_SCHEMA)


def _commit(root, rows):
    labels_output(str(root)).commit("1-00000", _rows_table(rows), error_table([]), input_rows=len(rows))


def test_cannot_link_check_passes_a_clean_output_and_names_a_violation(tmp_path):
    # two characters of panel 1_0_0 (c0, c1) in different window identities, linked into one series identity
    ok = [("1_0_0_body_0", "W", "1_0_0", "1_0_0#0", 0, 0), ("1_0_0_body_1", "W", "1_0_0", "1_0_0#1", 1, 1),
          ("1_0_1_body_0", "W", "1_0_1", "1_0_1#0", 0, 0)]
    _commit(tmp_path / "ok", ok)
    assert check_cannot_link(str(tmp_path / "ok"))["cannot_link_checked_rows"] == 3
    bad = [*ok[:1], ("1_0_0_body_1", "W", "1_0_0", "1_0_0#1", 1, 0)]
    _commit(tmp_path / "bad", bad)
    with pytest.raises(ReidError, match=r"series identity \(1, 0\) holds 1_0_0#0 and 1_0_0#1"):
        check_cannot_link(str(tmp_path / "bad"))


def test_a_shard_that_breaks_cannot_link_is_never_committed(tmp_path):
    """The series pass checks each final shard as it commits it: the job stops naming the violation, and the
    shard stays uncommitted (no _SUCCESS can cover it)."""
    from reid.stages.label.series import commit_checked

    ok = [("1_0_0_body_0", "W", "1_0_0", "1_0_0#0", 0, 0), ("1_0_0_body_1", "W", "1_0_0", "1_0_0#1", 1, 1)]
    bad = [ok[0], ("1_0_0_body_1", "W", "1_0_0", "1_0_0#1", 0, 1)]  # one window identity, two characters
    table = _rows_table(bad)
    with pytest.raises(ReidError, match=r"window identity \('W', 0\) holds 1_0_0#0 and 1_0_0#1 \(shard 1-00000\)"):
        commit_checked(str(tmp_path / "bad"), "1-00000", table, error_table([]), input_rows=2)
    assert not labels_output(str(tmp_path / "bad")).is_committed("1-00000")
    summary = commit_checked(str(tmp_path / "ok"), "1-00000", _rows_table(ok), error_table([]), input_rows=2)
    assert labels_output(str(tmp_path / "ok")).is_committed("1-00000") and summary.rows == 2


def test_the_model_is_built_from_exactly_the_bytes_that_were_hashed(tmp_path, monkeypatch):
    """The checkpoint is replaced right after the job reads it: the job uses one consistent version (the bytes it
    hashed), and an actor that later finds other bytes refuses to go on."""
    import hashlib

    import torch

    from reid.core import io as reid_io
    from reid.core.errors import CheckpointError

    path = tmp_path / "model.pt"
    a, b = (ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=32)) for _ in range(2))
    save_model_checkpoint(a, str(path))
    save_model_checkpoint(b, str(tmp_path / "other.pt"))
    bytes_a = path.read_bytes()
    real_read = reid_io.read_bytes

    def read_then_replace(p):
        data = real_read(p)
        path.write_bytes((tmp_path / "other.pt").read_bytes())  # someone publishes a new model meanwhile
        return data

    monkeypatch.setattr(reid_io, "read_bytes", read_then_replace)
    model, sha = load_reid_model(LabelConfig(model=str(path)))
    monkeypatch.setattr(reid_io, "read_bytes", real_read)
    assert sha == hashlib.sha256(bytes_a).hexdigest()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in a.state_dict().items())
    with pytest.raises(CheckpointError, match="changed while the job ran"):
        load_reid_model(LabelConfig(model=str(path)), expected_sha256=sha)
