"""Paths through pyarrow filesystems, so local folders, shared mounts and ``s3://`` work unchanged.

Writes go to a temporary name in the same folder and are renamed when complete: a reader never sees a
partial file.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """``path`` (local path or URI) → (filesystem, path inside it)."""
    path = str(path)
    if is_uri(path) and not path.startswith("file://"):
        return pafs.FileSystem.from_uri(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); URIs unchanged."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def list_files(folder: str, suffix: str = "") -> list[str]:
    """Names (not paths) of the plain files directly in ``folder`` ending in ``suffix``; [] if absent."""
    fs, p = resolve(folder)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(suffix))


@contextmanager
def open_input(path: str) -> Iterator:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as stream:
        yield stream


def read_bytes(path: str) -> bytes:
    with open_input(path) as stream:
        return stream.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a unique temporary name and a rename. The temporary name starts with ``.``,
    so a dataset reader of the folder (``pandas.read_parquet(folder)``) never sees a partial file; a local file is
    flushed to disk before the rename (a crash leaves the old file or the new one, never a torn one); the
    temporary file or object is removed when the write fails."""
    fs, p = resolve(path)
    split = posixpath.split if is_uri(path) else os.path.split
    parent, name = split(p)
    fs.create_dir(parent, recursive=True)
    tmp = (posixpath.join if is_uri(path) else os.path.join)(parent, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        if is_uri(path):
            with fs.open_output_stream(tmp) as out:
                out.write(data)
        else:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        fs.move(tmp, p)
    except BaseException:
        _remove_quietly(fs, tmp)
        raise
    if not is_uri(path):
        _fsync_dir(parent)


def write_file_atomic(path: str, produce: Callable[[str], None], suffix: str = "") -> None:
    """Publish a file that a library can only write to a local path (``produce(local_path)``: an exporter) at
    ``path``, local or an object store, atomically as :func:`write_bytes_atomic` does. ``suffix``: the extension
    the library wants on its file."""
    with tempfile.TemporaryDirectory(prefix="reid-write-") as scratch:
        local = os.path.join(scratch, f"file{suffix}")
        produce(local)
        with open(local, "rb") as f:
            write_bytes_atomic(path, f.read())


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
    except OSError:  # the store is what failed; the temporary name still starts with "." and is never read
        pass


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def delete_file(path: str) -> None:
    fs, p = resolve(path)
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        fs.delete_file(p)


def remove_tree(path: str) -> None:
    """Delete a folder and everything under it (nothing when it does not exist)."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def fingerprint(path: str) -> dict[str, int | str]:
    """Size and sha256 of a file's bytes (streamed): what identifies an input, where a path would let an edited
    file through."""
    import hashlib

    fs, inner = resolve(path)
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(inner) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def read_parquet(path: str, columns: list[str] | None = None, filters=None, max_rows: int | None = None):
    """One Parquet file (local path or URI) as a pyarrow Table; the one Parquet read helper of the project.

    ``max_rows``: only the file's first rows (read batch by batch, so a sample of a large shard does not read
    the whole file); not with ``filters``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, inner = resolve(path)
    if max_rows is None:
        return pq.read_table(inner, filesystem=fs, columns=columns, filters=filters)
    if filters is not None:
        raise ValueError("read_parquet: max_rows and filters cannot be combined")
    with fs.open_input_file(inner) as stream:
        parquet = pq.ParquetFile(stream)
        first = next(parquet.iter_batches(batch_size=max(1, max_rows), columns=columns), None)
        if first is None:
            return parquet.schema_arrow.empty_table().select(columns) if columns else parquet.schema_arrow.empty_table()
        return pa.Table.from_batches([first])
