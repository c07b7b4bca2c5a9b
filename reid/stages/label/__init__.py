"""Label stage: identities for every character instance of every panel window of the corpus.

Three passes, each exactly once and resumable (a killed job re-run finishes only what is missing):

1. *Windows* (Ray Data): one work unit per crops shard (a block of whole pages of one series). CPU tasks
   read the unit's crops, pair them into character instances (a face and/or a body,
   :func:`reid.core.contracts.crops.pair_rows`), decode them and apply the eval transform's geometry (uint8, so the
   decoding scales with the cluster's CPUs and not with the GPU actor). An actor pool (the model loaded once
   per actor, on a GPU when the cluster has them) embeds each character instance once, in batches, clusters
   every window with the assigner (:func:`reid.core.label_window.cluster_window`) and commits the unit under
   ``<out>/_windows/`` (:class:`reid.core.contracts.manifest.ShardedOutput`) with two sidecars written before the commit:
   ``centroids/<shard>.parquet`` (one centre per window identity) and, with ``--sequences`` or
   ``--save-embeddings``, ``embeddings/<shard>.parquet`` (one per character instance).
2. *Series* (Ray tasks, one per series): link the window identities of a series into series-level
   identities by clustering their centres (:func:`reid.core.assign.link_windows`; no re-embedding), then commit
   every shard of the series again under ``<out>/`` with ``series_identity`` filled in. Linking is a pure
   function of the committed centres, so a re-run after a kill recomputes the same links.
3. *Finish* (driver): check the counts and ids add up, write ``_SUCCESS``, evaluate against ground truth
   when there is some, write ``metrics.json`` and the visual report (a ``report_writer`` such as :func:`reid.stages.report.write_report`), log to MLflow.

Windows: by default every page with instances is cut into windows of ``window_size`` consecutive panel
numbers every ``stride`` panels, from panel 0 until a window reaches the page's last panel with instances
(so the last window of a page may be shorter); windows with no instance are skipped. With ``--sequences``
the windows are exactly the annotated ones. A window id is its panel ids joined by ``+`` (the seq_id
format). With overlapping windows (``stride < window_size``, or annotated sequences) an instance belongs to
several windows: **the output has one row per (instance, window)**, ``row_id = <instance_id>@<window_id>``.

Output (``<out>/``, read it with :func:`reid.core.contracts.labels.read_labels`): ``data/<shard>.parquet`` rows of :data:`LABEL_SCHEMA`
(``identity``: within the window, 0..K-1; ``series_identity``: within the series; ``distance``: to the
identity's centre), and ``errors/<shard>.parquet``: one row per (instance, window) that could not be
labelled (crop missing or failed in the crop job, or crop bytes that do not decode) with the reason. Those
are *unassigned*, never dropped: data + errors hold every (instance, window) exactly once.

Modules: :mod:`~reid.stages.label.config` (LabelConfig, driver-side checks, the model and its thresholds),
:mod:`~reid.stages.label.plan` (work units and their crops), :mod:`~reid.stages.label.windows` (pass 1),
:mod:`~reid.stages.label.series` (pass 2 and the cannot-link check), :mod:`~reid.stages.label.evaluate`,
:mod:`~reid.stages.label.job` (the driver). The output contract is :mod:`reid.core.contracts.labels`.
"""

from reid.core.contracts.labels import (
    CENTROID_SCHEMA,
    EMBEDDING_SCHEMA,
    LABEL_SCHEMA,
    ROW_ID_SEP,
    UNASSIGNED,
    iter_labels,
    read_labels,
    row_id,
    window_panels,
    windows_root,
)
from reid.stages.label.config import (
    LabelConfig,
    check_inputs,
    job_identity,
    load_reid_model,
    resolve_thresholds,
)
from reid.stages.label.evaluate import evaluate, evaluate_ground_truth, evaluate_sequences, identity_counts
from reid.stages.label.job import run_label
from reid.stages.label.plan import plan_items, read_shard_input, sliding_windows
from reid.stages.label.series import check_cannot_link, finish_series, link_series, run_series_pass
from reid.stages.label.windows import (
    ShardLabeler,
    actor_threads,
    commit_shard,
    decoding_fused,
    label_rows,
    pool_size,
    prepare_shard,
    run_windows_pass,
)

__all__ = [
    "CENTROID_SCHEMA", "EMBEDDING_SCHEMA", "LABEL_SCHEMA", "ROW_ID_SEP", "UNASSIGNED", "LabelConfig", "ShardLabeler",
    "actor_threads", "check_cannot_link", "check_inputs", "commit_shard", "decoding_fused", "evaluate",
    "evaluate_ground_truth", "evaluate_sequences", "finish_series", "identity_counts", "iter_labels", "job_identity",
    "label_rows", "link_series", "load_reid_model", "plan_items", "pool_size", "prepare_shard", "read_labels",
    "read_shard_input", "resolve_thresholds", "row_id", "run_label", "run_series_pass", "run_windows_pass",
    "sliding_windows", "window_panels", "windows_root",
]
