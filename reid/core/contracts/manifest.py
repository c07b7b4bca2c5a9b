"""The sharded-output contract: exactly-once Parquet output of the batch jobs (crop, label).

Ray Data runs UDFs at least once, so output must be idempotent: every shard has a deterministic id,
its rows and its error rows are written to temporary names and renamed, and only then is the shard's
manifest entry written (also atomically). A shard is committed iff its manifest entry exists; a re-run
skips committed shards and rewrites the others whole. ``finalize`` checks that input rows = ok rows +
error rows, that ids are unique across shards, and only then writes ``_SUCCESS``.

Layout under ``root``::

    _job.json                 the job's identity (arguments that must match on resume) and the MLflow run that
                              tracks it (``mlflow_runs``: tracking URI -> run id; not part of the identity)
    data/<shard>.parquet      rows
    errors/<shard>.parquet    rows that could not be produced, with a reason
    errors/input.parquet      input rows refused before any shard (bad CSV lines, bad sequences), with a reason
    _manifest/<shard>.json    {shard, input_rows, rows, error_rows, checksum}
    _SUCCESS                  totals, written last
"""

from __future__ import annotations

import hashlib
import io as _io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reid.core import io
from reid.core.errors import ConfigError, ReidError

ERROR_SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.string()), ("stage", pa.string()),
                          ("source", pa.string()), ("reason", pa.string())])


# Not "_input": dataset readers (pandas.read_parquet(<root>/errors), pyarrow.dataset) skip names starting with
# "_" or ".", so every row of errors/ must sit in a plainly named file. Shard ids are "<series>-<block>", never
# "input". The old name is still read (and removed when the input errors are rewritten), so an output written
# before the rename resumes.
INPUT_ERRORS = "input"
LEGACY_INPUT_ERRORS = "_input"


class ShardIntegrityError(ReidError):
    """Committed output does not add up (missing, duplicated or miscounted rows)."""


FINGERPRINT = "_fingerprint"  # suffix of the identity keys that hold an input file's size and sha256
JOB_FILE = "_job.json"
# The key of _job.json that records which MLflow run tracks the job writing this folder, per tracking URI: a re-run
# that resumes the folder continues that run; another folder is another job, hence another run.
RUNS_KEY = "mlflow_runs"


def _read_job_file(root: str) -> dict[str, Any]:
    path = io.join(root, JOB_FILE)
    return json.loads(io.read_text(path)) if io.exists(path) else {}


def recorded_run(root: str, tracking_uri: str) -> str | None:
    """The id of the MLflow run (in the store at ``tracking_uri``) recorded in ``<root>/_job.json``; None when the
    folder has none (a new job, or one tracked in another store)."""
    return _read_job_file(root).get(RUNS_KEY, {}).get(tracking_uri)


def record_run(root: str, tracking_uri: str, run_id: str) -> None:
    """Record in ``<root>/_job.json`` that the run ``run_id`` of the store at ``tracking_uri`` tracks the job that
    writes ``root``; the job's identity (:meth:`ShardedOutput.bind_job`) is kept as it is."""
    job = _read_job_file(root)
    runs = job.get(RUNS_KEY, {})
    if runs.get(tracking_uri) != run_id:
        job[RUNS_KEY] = {**runs, tracking_uri: run_id}
        io.write_text_atomic(io.join(root, JOB_FILE), json.dumps(job, indent=1, sort_keys=True))


def _describe_change(key: str, before: Any, after: Any) -> str:
    name = key[: -len(FINGERPRINT)]
    if isinstance(before, dict) and isinstance(after, dict) and "rows" in after:
        return (f"{name} changed: {before.get('rows')} -> {after.get('rows')} rows, sha256 "
                f"{str(before.get('sha256'))[:12]} -> {str(after.get('sha256'))[:12]}")
    if isinstance(before, dict) and isinstance(after, dict):
        return (f"{name} changed: {before.get('size')} -> {after.get('size')} bytes, sha256 "
                f"{str(before.get('sha256'))[:12]} -> {str(after.get('sha256'))[:12]}")
    return f"{name} changed"


def ids_checksum(ids: Iterable[str]) -> str:
    """Order-independent checksum of a set of row ids."""
    h = hashlib.sha256()
    for value in sorted(ids):
        h.update(value.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def error_rows_line(root: str, what: str) -> str:
    """The line a job prints to say where its error rows are: every file of ``<root>/errors/`` (one folder, read
    whole by ``pandas.read_parquet``), the input rows it left out in ``errors/input.parquet``."""
    folder = io.join(root, "errors")
    return (f"errors: {what}, one row each with its reason, in {folder} (pandas.read_parquet({folder!r}); "
            f"the input rows left out alone: {io.join(folder, INPUT_ERRORS + '.parquet')})")


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = _io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def error_table(rows: list[dict[str, str]]) -> pa.Table:
    """Rows of (id, shard, stage, source, reason) as an Arrow table with :data:`ERROR_SCHEMA`."""
    return pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)


@dataclass(frozen=True)
class ShardSummary:
    shard: str
    input_rows: int
    rows: int
    error_rows: int
    checksum: str
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "input_rows": self.input_rows, "rows": self.rows,
                "error_rows": self.error_rows, "checksum": self.checksum}


def summaries_batch(summaries: list[ShardSummary]) -> dict[str, list]:
    """Shard summaries as one Ray Data batch (a column per field): what every stage's shard task returns."""
    return {key: [getattr(s, key) for s in summaries]
            for key in ("shard", "input_rows", "rows", "error_rows", "checksum", "skipped")}


class ShardedOutput:
    """The committed state of one job's sharded output folder. Cheap to construct and to pickle."""

    def __init__(self, root: str, id_column: str) -> None:
        self.root = root
        self.id_column = id_column

    def _path(self, *parts: str) -> str:
        return io.join(self.root, *parts)

    def bind_job(self, identity: dict[str, Any]) -> None:
        """Record the job's identity, or check that a resumed job has the same one: its arguments and the contents
        of its inputs (``*_fingerprint`` keys: :func:`reid.core.io.fingerprint`). An output written before fingerprints
        were recorded has them added. The MLflow run recorded there (:func:`record_run`) is kept and is no part
        of the identity."""
        path = self._path(JOB_FILE)
        runs = None
        if io.exists(path):
            previous = json.loads(io.read_text(path))
            runs = previous.pop(RUNS_KEY, None)
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k)
                             and not (k.endswith(FINGERPRINT) and k not in previous))
            if changed:
                inputs = [_describe_change(k, previous.get(k), identity.get(k)) for k in changed
                          if k.endswith(FINGERPRINT)]
                arguments = [k for k in changed if not k.endswith(FINGERPRINT)]
                what = "; ".join(inputs + ([f"differs in {arguments}"] if arguments else []))
                raise ConfigError(f"{self.root} holds output of a job with other inputs or arguments ({what}): "
                                  f"resuming would mix the two. To start fresh, give another --out (or delete "
                                  f"{self.root}); to resume, run with the inputs and arguments it was started with")
            if previous == identity:
                return
        job = {**identity, **({RUNS_KEY: runs} if runs else {})}
        io.write_text_atomic(path, json.dumps(job, indent=1, sort_keys=True))

    def committed(self) -> dict[str, ShardSummary]:
        out = {}
        for name in io.list_files(self._path("_manifest"), ".json"):
            entry = json.loads(io.read_text(self._path("_manifest", name)))
            out[entry["shard"]] = ShardSummary(**entry, skipped=True)
        return out

    def data_path(self, shard: str) -> str:
        """The rows file of ``shard`` (whether committed or not)."""
        return self._path("data", f"{shard}.parquet")

    def errors_path(self, shard: str) -> str:
        """The error rows file of ``shard``."""
        return self._path("errors", f"{shard}.parquet")

    def sidecar_path(self, kind: str, shard: str) -> str:
        """A per-shard file that a job writes beside its rows before the commit (``<root>/<kind>/<shard>.parquet``)."""
        return self._path(kind, f"{shard}.parquet")

    def input_errors_path(self) -> str:
        """The error rows of the job's input: rows refused while planning, before any shard exists."""
        return self._path("errors", f"{INPUT_ERRORS}.parquet")

    def write_input_errors(self, errors: pa.Table) -> None:
        """Record the input rows the job left out (replaced on every run: planning re-reads the input)."""
        io.write_bytes_atomic(self.input_errors_path(), table_to_parquet_bytes(errors))
        io.delete_file(self._path("errors", f"{LEGACY_INPUT_ERRORS}.parquet"))

    def read_input_errors(self) -> pa.Table:
        """The input rows the job left out (also from an output written before ``errors/input.parquet``)."""
        for name in (INPUT_ERRORS, LEGACY_INPUT_ERRORS):
            path = self._path("errors", f"{name}.parquet")
            if io.exists(path):
                return io.read_parquet(path).cast(ERROR_SCHEMA)
        return ERROR_SCHEMA.empty_table()

    def summary(self, shard: str) -> ShardSummary:
        """The manifest entry of a committed shard (``skipped=True``: committed by an earlier attempt)."""
        entry = json.loads(io.read_text(self._path("_manifest", f"{shard}.json")))
        return ShardSummary(**entry, skipped=True)

    def is_committed(self, shard: str) -> bool:
        return io.exists(self._path("_manifest", f"{shard}.json"))

    def is_complete(self) -> bool:
        return io.exists(self._path("_SUCCESS"))

    def commit(self, shard: str, rows: pa.Table, errors: pa.Table, input_rows: int) -> ShardSummary:
        """Write one shard's rows and error rows, then its manifest entry. Idempotent."""
        if rows.num_rows + errors.num_rows != input_rows:
            raise ShardIntegrityError(f"shard {shard}: {rows.num_rows} rows + {errors.num_rows} errors "
                                      f"!= {input_rows} input rows")
        ids = rows.column(self.id_column).to_pylist() + errors.column("id").to_pylist()
        if len(set(ids)) != len(ids):
            raise ShardIntegrityError(f"shard {shard}: duplicate ids within the shard")
        io.write_bytes_atomic(self._path("data", f"{shard}.parquet"), table_to_parquet_bytes(rows))
        io.write_bytes_atomic(self._path("errors", f"{shard}.parquet"), table_to_parquet_bytes(errors))
        summary = ShardSummary(shard, input_rows, rows.num_rows, errors.num_rows, ids_checksum(ids))
        io.write_text_atomic(self._path("_manifest", f"{shard}.json"), json.dumps(summary.to_dict()))
        return summary

    def verify(self, remedy: str = "") -> None:
        """Check, from each committed shard's Parquet footer alone, that its data and error files are whole and
        hold the rows its manifest entry says (a file truncated or replaced after the commit). Cheap: no data
        pages are read. Raises :class:`ShardIntegrityError` naming the shard, the file and ``remedy``."""
        for shard, summary in sorted(self.committed().items()):
            for path, expected in ((self.data_path(shard), summary.rows), (self.errors_path(shard),
                                                                            summary.error_rows)):
                try:
                    fs, inner = io.resolve(path)
                    with fs.open_input_file(inner) as handle:
                        rows = pq.ParquetFile(handle).metadata.num_rows
                except (OSError, pa.ArrowException) as exc:
                    raise ShardIntegrityError(f"{path}: shard {shard} of {self.root} is unreadable (truncated or "
                                              f"corrupt: {exc}){remedy}") from None
                if rows != expected:
                    raise ShardIntegrityError(f"{path}: shard {shard} of {self.root} holds {rows} rows, its "
                                              f"manifest entry says {expected}{remedy}")

    def data_files(self) -> list[str]:
        """Paths of committed data files (only shards with a manifest entry)."""
        return [self._path("data", f"{s}.parquet") for s in sorted(self.committed())]

    def error_files(self) -> list[str]:
        return [self._path("errors", f"{s}.parquet") for s in sorted(self.committed())]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return _concat([io.read_parquet(p, columns) for p in self.data_files()])

    def read_errors(self) -> pa.Table:
        """Error rows of every committed shard and of the input."""
        tables = [io.read_parquet(p) for p in self.error_files()] + [self.read_input_errors()]
        return _concat(tables) if tables else ERROR_SCHEMA.empty_table()

    def finalize(self, expected_shards: Iterable[str], expected_input_rows: int | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Verify the committed shards add up, then write ``_SUCCESS``. Returns the totals."""
        committed = self.committed()
        expected = set(expected_shards)
        missing = sorted(expected - set(committed))
        if missing:
            raise ShardIntegrityError(f"{self.root}: {len(missing)} shard(s) not committed, e.g. {missing[:5]}")
        unexpected = sorted(set(committed) - expected)
        if unexpected:
            raise ShardIntegrityError(f"{self.root}: committed shards not in this job: {unexpected[:5]}")
        seen: set[str] = set()
        totals = {"shards": len(committed), "input_rows": 0, "rows": 0, "error_rows": 0}
        for shard, summary in sorted(committed.items()):
            ids = (io.read_parquet(self._path("data", f"{shard}.parquet"), [self.id_column])
                   .column(self.id_column).to_pylist()
                   + io.read_parquet(self._path("errors", f"{shard}.parquet"), ["id"]).column("id").to_pylist())
            if len(ids) != summary.rows + summary.error_rows or ids_checksum(ids) != summary.checksum:
                raise ShardIntegrityError(f"{self.root}: shard {shard} files do not match its manifest entry")
            dup = seen.intersection(ids)
            if dup:
                raise ShardIntegrityError(f"{self.root}: ids in more than one shard, e.g. {sorted(dup)[:5]}")
            seen.update(ids)
            for key in ("input_rows", "rows", "error_rows"):
                totals[key] += getattr(summary, key)
        if totals["rows"] + totals["error_rows"] != totals["input_rows"]:
            raise ShardIntegrityError(f"{self.root}: rows + errors != input rows ({totals})")
        if expected_input_rows is not None and totals["input_rows"] != expected_input_rows:
            raise ShardIntegrityError(f"{self.root}: {totals['input_rows']} input rows committed, "
                                      f"expected {expected_input_rows}")
        totals["input_error_rows"] = self.read_input_errors().num_rows
        totals.update(extra or {})
        io.write_text_atomic(self._path("_SUCCESS"), json.dumps(totals, indent=1))
        return totals


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows] or tables[:1]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")
