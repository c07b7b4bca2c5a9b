"""The on-disk contracts between stages: what one stage writes and the next reads, with their readers.

- :mod:`reid.core.contracts.manifest`: exactly-once sharded Parquet output (``data/``, ``errors/``, ``_manifest/``,
  ``_SUCCESS``) that the crop and label jobs write.
- :mod:`reid.core.contracts.crops`: the crop job's output (schema, shard ids, character instances).
- :mod:`reid.core.contracts.labels`: the label job's output (schema, row ids, window ids, readers).

Ray-free: any stage, notebook or test may import these; no stage reads another's files any other way.
docs/ARCHITECTURE.md describes the flow.
"""
