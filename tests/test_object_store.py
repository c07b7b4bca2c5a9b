"""Outputs on an object store: atomic writes, checkpoints and exports go through one filesystem layer
(``reid.core.io``), against a real S3-compatible server (moto's server mode, started here on a free port)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest
import torch

from reid.core import io as reid_io
from reid.runtime.raycluster import free_ports

BUCKET = "comic-reid-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the environment pyarrow reads its endpoint and keys from."""
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fs = None
        for _ in range(100):
            try:
                fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                                       allow_bucket_creation=True)
                fs.create_dir(BUCKET)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("moto server did not start")
        yield {"fs": fs, "root": f"s3://{BUCKET}"}
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _objects(fs: pafs.FileSystem, prefix: str) -> list[str]:
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
                  if i.type == pafs.FileType.File)


def test_atomic_write_on_s3_leaves_no_temporary_object(s3):
    path = reid_io.join(s3["root"], "atomic", "summary.json")
    reid_io.write_text_atomic(path, '{"ok": true}')
    assert reid_io.read_text(path) == '{"ok": true}'
    assert _objects(s3["fs"], f"{BUCKET}/atomic") == [f"{BUCKET}/atomic/summary.json"]


def test_a_failed_write_removes_its_temporary_file_locally_and_on_s3(s3, tmp_path):
    class Boom(Exception):
        pass

    def fail(local: str) -> None:
        with open(local, "wb") as f:
            f.write(b"partial")
        raise Boom

    for folder in (str(tmp_path / "local"), reid_io.join(s3["root"], "failed")):
        # an exporter that fails half-way: nothing is published
        with pytest.raises(Boom):
            reid_io.write_file_atomic(reid_io.join(folder, "model.pt"), fail)
        assert not reid_io.exists(reid_io.join(folder, "model.pt"))
        # a write that fails after its temporary file or object exists (a local file is created on open; an S3
        # stream closed by the error still uploads what it has): the temporary is removed
        with pytest.raises(TypeError):
            reid_io.write_bytes_atomic(reid_io.join(folder, "summary.json"), object())
        assert not reid_io.exists(reid_io.join(folder, "summary.json"))
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == []
    assert _objects(s3["fs"], f"{BUCKET}/failed") == []


def test_checkpoint_and_torchscript_export_go_to_s3_not_to_a_local_folder(s3, tmp_path, monkeypatch):
    from reid.core.models import ModelConfig, ReIDNet
    from reid.core.models.checkpoint import load_model_checkpoint, save_model_checkpoint
    from reid.core.models.export import export_torchscript

    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would create ./s3:/... here
    net = ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=48)).eval()
    checkpoint = reid_io.join(s3["root"], "train", "final", "model.pt")
    save_model_checkpoint(net, checkpoint, extra={"stage": "finetune"})
    loaded, config, extra = load_model_checkpoint(checkpoint)
    assert config.face_size == 32 and extra["stage"] == "finetune"
    exported = reid_io.join(s3["root"], "train", "final", "reid_net.torchscript.pt")
    export_torchscript(net, exported)
    scripted = torch.jit.load(io.BytesIO(reid_io.read_bytes(exported)))
    face = torch.rand(2, 3, 32, 32)
    body = torch.rand(2, 3, 48, 48)
    mask = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(scripted(face, body, mask, mask), loaded.eval()(face, body, mask, mask), atol=1e-5)
    assert _objects(s3["fs"], f"{BUCKET}/train") == [f"{BUCKET}/train/final/model.pt",
                                                     f"{BUCKET}/train/final/reid_net.torchscript.pt"]
    assert os.listdir(tmp_path) == []  # nothing written on the driver's disk
