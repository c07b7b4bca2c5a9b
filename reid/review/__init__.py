"""Review stage: a local web app to review and correct a labels output, its exports, and the review log.

``jobs/review.py`` serves :func:`~reid.review.serve.serve`; actions go to an append-only SQLite log beside the
labels (:mod:`reid.contracts.review`), replayed by :mod:`reid.corrections`; the label job's ``--corrections``
reads the same log. Modules: :mod:`~reid.review.config`, :mod:`~reid.review.corpus` (labels + log in memory),
:mod:`~reid.review.views` (corpus, book, identity, queue, "more like this"), :mod:`~reid.review.media` (crops,
panels), :mod:`~reid.review.app` (FastAPI, token), :mod:`~reid.review.serve`, :mod:`~reid.review.export`.
"""

from reid.review.config import ExportConfig, ExportSequencesConfig, ReviewConfig
from reid.review.export import effective_labels, export_labels, export_sequences, reviewed_sequences

__all__ = ["ExportConfig", "ExportSequencesConfig", "ReviewConfig", "effective_labels", "export_labels",
           "export_sequences", "reviewed_sequences"]
