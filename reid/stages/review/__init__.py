"""Review stage: a local web app to review and correct a labels output, its exports, and the review log.

``jobs/review.py`` serves :func:`~reid.stages.review.serve.serve`; actions go to an append-only SQLite log beside the
labels (:mod:`reid.core.contracts.review`), replayed by :mod:`reid.core.corrections`; the label job's ``--corrections``
reads the same log. Modules: :mod:`~reid.stages.review.config`, :mod:`~reid.stages.review.corpus` (labels + log in memory),
:mod:`~reid.stages.review.views` (corpus, book, identity, queue, "more like this"), :mod:`~reid.stages.review.media` (crops,
panels), :mod:`~reid.stages.review.app` (FastAPI, token), :mod:`~reid.stages.review.serve`, :mod:`~reid.stages.review.export`.
"""

from reid.stages.review.config import ExportConfig, ExportSequencesConfig, ReviewConfig
from reid.stages.review.export import effective_labels, export_labels, export_sequences, reviewed_sequences

__all__ = ["ExportConfig", "ExportSequencesConfig", "ReviewConfig", "effective_labels", "export_labels",
           "export_sequences", "reviewed_sequences"]
