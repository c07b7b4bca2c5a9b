"""The datasets a run read, as MLflow datasets: a crop output by its job's identity and manifest, a sequences file
by its bytes; the same data gives the same digest, other data another, and nothing here can stop a job."""

import json

import pyarrow as pa

from reid.core.contracts.manifest import ShardedOutput, record_run
from reid.runtime.run_inputs import crops_dataset, sequences_dataset

SEQUENCE = {"seq_id": "7_0_0+7_0_1+7_0_2+7_0_3", "annotations": [
    {"charId": "a", "charInstances": [{"face": "7_0_0_face_0", "body": "7_0_0_body_0"},
                                      {"body": "7_0_2_body_0"}]},
    {"charId": "b", "charInstances": [{"face": "7_0_1_face_0"}]}]}


def _crops(root, ids_per_shard: dict[str, list[str]], instances_sha256: str = "ab" * 32) -> str:
    """A finished-looking crop output: its job identity and committed shards (ids only)."""
    output = ShardedOutput(str(root), "instance_id")
    output.bind_job({"comics_root": str(root.parent / "corpus"), "pages_per_shard": 2, "face_scale": 1.2,
                     "jpeg_quality": 95, "instances_fingerprint": {"size": 10, "sha256": instances_sha256}})
    for shard, ids in ids_per_shard.items():
        output.commit(shard, pa.table({"instance_id": ids}), pa.table({"id": pa.array([], pa.string())}), len(ids))
    return str(root)


def test_crops_dataset_digest_follows_the_data_not_the_path_or_the_run_record(tmp_path):
    shards = {"7-00000": ["7_0_0_face_0", "7_0_0_body_0"], "7-00001": ["7_2_0_face_0"]}
    first = crops_dataset(_crops(tmp_path / "a" / "crops", shards))
    assert first["name"] == "crops" and len(first["digest"]) == 32
    assert json.loads(first["profile"])["num_rows"] == 2  # one row per shard
    assert json.loads(first["source"]) == {"uri": str(tmp_path / "a" / "crops")}
    assert [c["name"] for c in json.loads(first["schema"])["mlflow_colspec"]] == \
        ["shard", "input_rows", "rows", "error_rows", "checksum"]
    record_run(str(tmp_path / "a" / "crops"), "sqlite:///x.db", "0" * 32)  # the crop job's run: not the data
    assert crops_dataset(str(tmp_path / "a" / "crops"))["digest"] == first["digest"]
    copy = crops_dataset(_crops(tmp_path / "b" / "crops", shards))  # same data elsewhere: same dataset
    assert copy["digest"] == first["digest"] and copy["source"] != first["source"]
    fewer = crops_dataset(_crops(tmp_path / "c" / "crops", {"7-00000": shards["7-00000"]}))
    other_csv = crops_dataset(_crops(tmp_path / "d" / "crops", shards, instances_sha256="cd" * 32))
    assert len({first["digest"], fewer["digest"], other_csv["digest"]}) == 3


def test_sequences_dataset_is_the_file_by_its_bytes(tmp_path):
    path = tmp_path / "validation_sequences.json"
    path.write_text(json.dumps([SEQUENCE]))
    dataset = sequences_dataset(str(path))
    assert dataset["name"] == "validation_sequences" and json.loads(dataset["profile"])["num_rows"] == 1
    path.write_text(json.dumps([SEQUENCE], indent=1))
    assert sequences_dataset(str(path))["digest"] != dataset["digest"]


def test_what_cannot_be_described_is_none_never_an_error(tmp_path, caplog):
    assert crops_dataset(str(tmp_path / "missing")) is None
    (tmp_path / "bad.json").write_text("{")
    assert sequences_dataset(str(tmp_path / "bad.json")) is None
    assert "could not describe" in caplog.text
