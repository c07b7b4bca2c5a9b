"""Typed configs of ``jobs/review.py``: the app, ``export`` and ``export-sequences``."""

from __future__ import annotations

from dataclasses import dataclass, field

from reid.core import config

_LABELS = {"help": "output folder of jobs/label.py (LABELS)"}
_DB = {"help": "the review log (default: LABELS/review.db)"}


@dataclass(frozen=True)
class ReviewConfig:
    """Review and correct a labels output in the browser: merge, split, name, answer the doubt queue."""

    labels: str = field(default="", metadata=_LABELS)
    crops: str = field(default="", metadata={"help": "output folder of jobs/crop.py (the thumbnails)"})
    comics_root: str = field(default="", metadata={"help": "panel images (default: the crop job's comics_root)"})
    db: str = field(default="", metadata=_DB)
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface; "
                                                             "the token is still required)"})
    port: int = field(default=8765, metadata={"help": "port (0: any free port)"})
    token: str = field(default="", metadata={"help": "session token (default: a new random one, printed in the "
                                                     "URL)"})
    crop_cache_shards: int = field(default=16, metadata={"help": "crops shards kept in memory for thumbnails"})

    def __post_init__(self) -> None:
        config.check(bool(self.labels), "--labels is required")
        config.check(bool(self.crops), "--crops is required")
        config.check(0 <= self.port < 65536, f"port must be in 0..65535, got {self.port}")
        config.check(self.crop_cache_shards >= 1, "crop_cache_shards must be >= 1")


@dataclass(frozen=True)
class ExportConfig:
    """Write the effective labels (labels + review) with names: Parquet and CSV."""

    labels: str = field(default="", metadata=_LABELS)
    db: str = field(default="", metadata=_DB)
    out: str = field(default="", metadata={"help": "output file: FILE.parquet and FILE.csv are written (a .parquet "
                                                   "or .csv suffix writes that one only)"})

    def __post_init__(self) -> None:
        config.check(bool(self.labels), "--labels is required")
        config.check(bool(self.out), "--out is required")


@dataclass(frozen=True)
class ExportSequencesConfig:
    """Write the reviewed identities as labelled 4-panel sequences (COMICS sequence format) for fine-tuning."""

    labels: str = field(default="", metadata=_LABELS)
    db: str = field(default="", metadata=_DB)
    out: str = field(default="", metadata={"help": "output folder: <split>_sequences.json"})
    split: str = field(default="train", metadata={"help": "split name of the file written"})
    window_size: int = field(default=4, metadata={"help": "panels per sequence (windows of other lengths are "
                                                          "left out)"})
    min_characters: int = field(default=1, metadata={"help": "reviewed characters a window needs to be written"})
    across_windows: int = field(default=8, metadata={
        "help": "also write up to this many sequences per reviewed character that join two of its windows (the "
                "book-level positives fine-tuning cannot get from window sequences; 0: none)"})

    def __post_init__(self) -> None:
        config.check(bool(self.labels), "--labels is required")
        config.check(bool(self.out), "--out is required")
        config.check(self.window_size >= 1 and self.min_characters >= 1, "window_size, min_characters >= 1")
        config.check(self.across_windows >= 0, f"across_windows must be >= 0, got {self.across_windows}")
