import json

import pyarrow as pa
import pytest

from reid.core.contracts.manifest import ShardedOutput, ShardIntegrityError, error_table
from reid.core.errors import ConfigError


def _rows(ids):
    return pa.table({"instance_id": ids, "value": list(range(len(ids)))})


def test_commit_resume_and_finalize(tmp_path):
    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    out.bind_job({"a": 1})
    out.commit("s0", _rows(["a", "b"]), error_table([{"id": "c", "shard": "s0", "stage": "x", "source": "f",
                                                     "reason": "bad"}]), input_rows=3)
    assert out.is_committed("s0") and not out.is_committed("s1")
    with pytest.raises(ShardIntegrityError, match="not committed"):
        out.finalize(["s0", "s1"])
    # a retried shard rewrites the same names: still exactly once
    out.commit("s1", _rows(["d"]), error_table([]), input_rows=1)
    out.commit("s1", _rows(["d"]), error_table([]), input_rows=1)
    totals = out.finalize(["s0", "s1"], expected_input_rows=4)
    assert totals == {"shards": 2, "input_rows": 4, "rows": 3, "error_rows": 1, "input_error_rows": 0}
    assert sorted(out.read().column("instance_id").to_pylist()) == ["a", "b", "d"]
    assert out.read_errors().column("reason").to_pylist() == ["bad"]
    assert json.loads((tmp_path / "o" / "_SUCCESS").read_text())["rows"] == 3
    assert not list((tmp_path / "o" / "data").glob("*.tmp-*"))


def test_integrity_errors(tmp_path):
    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    with pytest.raises(ShardIntegrityError, match="!= 3 input rows"):
        out.commit("s0", _rows(["a", "b"]), error_table([]), input_rows=3)
    with pytest.raises(ShardIntegrityError, match="duplicate"):
        out.commit("s0", _rows(["a", "a"]), error_table([]), input_rows=2)
    out.commit("s0", _rows(["a"]), error_table([]), input_rows=1)
    out.commit("s1", _rows(["a"]), error_table([]), input_rows=1)
    with pytest.raises(ShardIntegrityError, match="more than one shard"):
        out.finalize(["s0", "s1"])


def test_expected_input_rows_checked(tmp_path):
    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    out.commit("s0", _rows(["a"]), error_table([]), input_rows=1)
    with pytest.raises(ShardIntegrityError, match="1 input rows committed, expected 5"):
        out.finalize(["s0"], expected_input_rows=5)
    assert not (tmp_path / "o" / "_SUCCESS").exists()


def test_tampered_shard_detected(tmp_path):
    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    out.commit("s0", _rows(["a", "b"]), error_table([]), input_rows=2)
    # replace the data file behind the manifest's back
    import pyarrow.parquet as pq
    pq.write_table(_rows(["a"]), str(tmp_path / "o" / "data" / "s0.parquet"))
    with pytest.raises(ShardIntegrityError, match="do not match its manifest"):
        out.finalize(["s0"])


def test_bind_job_refuses_other_arguments(tmp_path):
    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    out.bind_job({"model": "a", "threshold": 0.8})
    out.bind_job({"model": "a", "threshold": 0.8})
    with pytest.raises(ConfigError, match="differs in \\['threshold'\\]"):
        out.bind_job({"model": "a", "threshold": 0.5})


def _error(id_: str, stage: str = "crop") -> dict[str, str]:
    return {"id": id_, "shard": "s0", "stage": stage, "source": "f", "reason": "bad"}


def test_every_error_row_is_read_by_the_usual_readers(tmp_path):
    """pandas/Arrow dataset readers skip files whose names start with '_' or '.': the input errors must not."""
    import pandas as pd
    import pyarrow.dataset as ds

    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    out.write_input_errors(error_table([_error("line 7", "input"), _error("line 9", "input")]))
    out.commit("s0", _rows(["a"]), error_table([_error("b")]), input_rows=2)
    out.commit("s1", _rows(["c"]), error_table([]), input_rows=1)
    out.finalize(["s0", "s1"])
    expected = ["b", "line 7", "line 9"]
    assert sorted(pd.read_parquet(tmp_path / "o" / "errors")["id"]) == expected
    assert sorted(ds.dataset(str(tmp_path / "o" / "errors")).to_table()["id"].to_pylist()) == expected
    assert sorted(out.read_errors()["id"].to_pylist()) == expected


def test_input_errors_of_an_older_output_are_still_read(tmp_path):
    """An output written before errors/input.parquet (errors/_input.parquet) resumes with its bad rows counted,
    and the next write replaces the old file."""
    import pyarrow.parquet as pq

    root = tmp_path / "o"
    (root / "errors").mkdir(parents=True)
    pq.write_table(error_table([_error("line 3", "input")]), str(root / "errors" / "_input.parquet"))
    out = ShardedOutput(str(root), "instance_id")
    assert out.read_input_errors()["id"].to_pylist() == ["line 3"]
    out.write_input_errors(error_table([_error("line 3", "input")]))
    assert sorted(p.name for p in (root / "errors").iterdir()) == ["input.parquet"]
    assert out.read_input_errors()["id"].to_pylist() == ["line 3"]


def test_a_resume_checks_its_inputs_by_contents(tmp_path):
    """Same paths, other bytes: a resumed job is refused, naming the input that changed and how to start fresh; an
    output written before fingerprints were recorded gets them."""
    out = ShardedOutput(str(tmp_path / "o"), "instance_id")
    old = {"size": 10, "sha256": "a" * 64}
    out.bind_job({"instances": "x.csv", "face_scale": 1.2})  # written by an older version: no fingerprint
    out.bind_job({"instances": "x.csv", "face_scale": 1.2, "instances_fingerprint": old})
    assert json.loads((tmp_path / "o" / "_job.json").read_text())["instances_fingerprint"] == old
    out.bind_job({"instances": "x.csv", "face_scale": 1.2, "instances_fingerprint": old})
    with pytest.raises(ConfigError, match=r"instances changed: 10 -> 12 bytes, sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb\): "
                                          r"resuming would mix the two\. To start fresh, give another --out"):
        out.bind_job({"instances": "x.csv", "face_scale": 1.2,
                      "instances_fingerprint": {"size": 12, "sha256": "b" * 64}})


def test_fingerprint_is_size_and_sha256(tmp_path):
    import hashlib

    from reid.core import io

    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n1,2\n" * 200_000)
    assert io.fingerprint(str(path)) == {"size": 1_600_000, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_read_parquet_reads_only_the_first_rows_when_asked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reid.core import io

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": list(range(10)), "b": [str(i) for i in range(10)]}), path, row_group_size=3)
    head = io.read_parquet(str(path), ["a"], max_rows=4)
    assert head.column_names == ["a"] and head["a"].to_pylist() == [0, 1, 2, 3]
    assert io.read_parquet(str(path), max_rows=50).num_rows == 10
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), tmp_path / "e.parquet")
    assert io.read_parquet(str(tmp_path / "e.parquet"), ["a"], max_rows=4).num_rows == 0
    with pytest.raises(ValueError, match="max_rows"):
        io.read_parquet(str(path), filters=[("a", ">", 2)], max_rows=4)


def test_crops_fingerprint_changes_when_the_crops_are_redone_and_a_resume_names_it(tmp_path):
    """The label job's identity holds the crops' fingerprint: re-cropping into the same folder between a killed
    label run and its re-run is refused, naming the crops and their row counts."""
    from reid.core.contracts.crops import crops_fingerprint, crops_output
    from reid.core.contracts.manifest import record_run

    root = str(tmp_path / "crops")
    crops = crops_output(root)
    crops.bind_job({"instances": "x.csv", "face_scale": 1.2})
    rows = pa.table({"instance_id": ["1_0_0_face_0", "1_0_0_body_0"]})
    crops.commit("s1_p0", rows, error_table([]), 2)
    before = crops_fingerprint(root)
    assert before["rows"] == 2 and before == crops_fingerprint(root)
    record_run(root, "sqlite:///elsewhere.db", "abc")  # a run recorded in _job.json is no change of contents
    assert crops_fingerprint(root) == before
    crops.commit("s1_p4", pa.table({"instance_id": ["1_4_0_face_0"]}), error_table([]), 1)
    after = crops_fingerprint(root)
    assert after["rows"] == 3 and after["sha256"] != before["sha256"]
    labels = ShardedOutput(str(tmp_path / "labels"), "instance_id")
    labels.bind_job({"crops": root, "crops_fingerprint": before})
    with pytest.raises(ConfigError, match=r"crops changed: 2 -> 3 rows"):
        labels.bind_job({"crops": root, "crops_fingerprint": after})
