"""Config of a synthetic corpus (:class:`SyntheticConfig`, presets) and the constants of its formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reid.core.config import check, from_dict
from reid.core.errors import ConfigError

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
# The seed names the validation split "validation" in sequence files and "val" in char-map files.
CHAR_MAP_SPLIT_NAMES: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}
INSTANCE_CSV_COLUMNS: tuple[str, ...] = ("series_id", "page_id", "type", "index", "char_index",
                                         "x_0", "y_0", "x1", "y_1", "score")
FILTERED_CSV_COLUMNS: tuple[str, ...] = ("img_path", "series_id", "page_id", "index", "char_index")
FACE_CROP_PREFIX = "/datasets/comics/comics_crops_large_faces"
BODY_CROP_PREFIX = "/datasets/comics/comics_crops"
WINDOW_PANELS = 4
MIN_FILTERED_SIDE = {"face": 16, "body": 24}
STYLES: tuple[str, ...] = ("color", "inked")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, content and injected faults of a synthetic corpus (defaults: the ``demo`` preset)."""

    series: int = field(default=4, metadata={"help": "number of series (comic titles)"})
    pages: int = field(default=12, metadata={"help": "pages per series"})
    panels_per_page: int = field(default=6, metadata={"help": "most panels on a page (each has 4..this)"})
    cast: int = field(default=6, metadata={"help": "recurring characters per series"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed and config = same bytes"})
    max_chars_per_panel: int = field(default=4, metadata={"help": "most characters drawn in one panel"})
    lookalike_ratio: float = field(default=0.34, metadata={
        "help": "fraction of a cast that are look-alikes of another member (one attribute differs)"})
    closeup_rate: float = field(default=0.08, metadata={"help": "per appearance: close-up, face box only"})
    back_view_rate: float = field(default=0.08, metadata={"help": "per appearance: back view, body box only"})
    window_stride: int = field(default=2, metadata={"help": "panels between the starts of two windows"})
    split_by: str = field(default="auto", metadata={"help": "auto | series | page"})
    split_fractions: tuple[float, ...] = field(default=(0.7, 0.15, 0.15), metadata={
        "help": "train,validation,test fractions of series (or of each series' pages)"})
    min_panel_size: int = field(default=200, metadata={"help": "smallest panel side in pixels"})
    max_panel_size: int = field(default=400, metadata={"help": "largest panel side in pixels"})
    jpeg_quality: int = field(default=90, metadata={"help": "JPEG quality of the panel images"})
    corrupt_images: int = field(default=0, metadata={"help": "fault: panels whose JPEG bytes are broken"})
    missing_images: int = field(default=0, metadata={"help": "fault: panel files deleted but referenced"})
    offpage_partial: int = field(default=0, metadata={"help": "fault: boxes moved to straddle a page edge"})
    offpage_whole: int = field(default=0, metadata={"help": "fault: boxes moved wholly off the page"})
    style: str = field(default="color", metadata={
        "help": "color (identity shows in costume and hair colours) | inked (black-and-white line art with "
                "screentone: identity in shapes only; see reid/core/data/synthetic/inked.py)"})
    extras_rate: float = field(default=0.0, metadata={
        "help": "inked style: mean unnamed extras per panel (boxes in the instance CSV, in no sequence)"})

    def __post_init__(self) -> None:
        check(1 <= self.series <= 9000, f"series must be in 1..9000, got {self.series}")
        check(self.pages >= 1, f"pages must be >= 1, got {self.pages}")
        check(self.panels_per_page >= WINDOW_PANELS,
              f"panels_per_page must be >= {WINDOW_PANELS} (a window is {WINDOW_PANELS} panels), "
              f"got {self.panels_per_page}")
        check(self.cast >= 1, f"cast must be >= 1, got {self.cast}")
        check(self.max_chars_per_panel >= 1,
              f"max_chars_per_panel must be >= 1, got {self.max_chars_per_panel}")
        check(0.0 <= self.lookalike_ratio <= 0.5,
              f"lookalike_ratio must be in [0, 0.5], got {self.lookalike_ratio}")
        for name in ("closeup_rate", "back_view_rate"):
            check(0.0 <= getattr(self, name) <= 0.5, f"{name} must be in [0, 0.5], got {getattr(self, name)}")
        check(self.window_stride >= 1, f"window_stride must be >= 1, got {self.window_stride}")
        check(self.split_by in ("auto", "series", "page"),
              f"split_by must be auto, series or page, got {self.split_by!r}")
        check(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
              and abs(sum(self.split_fractions) - 1.0) < 1e-6,
              f"split_fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}")
        check(self.split_by != "series" or self.series >= 3,
              f"split_by='series' needs at least 3 series, got {self.series}")
        check(64 <= self.min_panel_size <= self.max_panel_size <= 4000,
              f"need 64 <= min_panel_size <= max_panel_size <= 4000, got {self.min_panel_size}, "
              f"{self.max_panel_size}")
        check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        check(self.style in STYLES, f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        check(0.0 <= self.extras_rate <= 3.0, f"extras_rate must be in [0, 3], got {self.extras_rate}")
        check(self.extras_rate == 0.0 or self.style == "inked",
              f"extras_rate needs style 'inked', got style {self.style!r}")
        for name in ("corrupt_images", "missing_images", "offpage_partial", "offpage_whole"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def effective_split_by(self) -> str:
        """``series`` or ``page``: what ``auto`` resolves to for this config."""
        if self.split_by != "auto":
            return self.split_by
        return "series" if self.series >= 8 else "page"


_INKED: dict[str, Any] = {"style": "inked", "cast": 7, "panels_per_page": 6, "max_chars_per_panel": 4,
                          "min_panel_size": 300, "max_panel_size": 800, "closeup_rate": 0.14,
                          "back_view_rate": 0.08, "extras_rate": 0.45}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"series": 2, "pages": 3, "panels_per_page": 6, "cast": 4},  # test fixture, ~1 s
    "demo": {},  # the dataclass defaults: ~1k instances
    "bench": {"series": 40, "pages": 140, "panels_per_page": 6, "cast": 8},  # ~100k instances
    # black-and-white books as hard as real manga pages: scan-sized panels, every scale, unnamed extras
    "inked-demo": {**_INKED, "series": 4, "pages": 16},
    "inked": {**_INKED, "series": 5, "pages": 50},  # the quality benchmark's size (>= 50 test sequences)
}


def preset_config(name: str, **overrides: Any) -> SyntheticConfig:
    """The config of preset ``name`` (one of :data:`PRESETS`) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return from_dict(SyntheticConfig, {**PRESETS[name], **overrides}, source=f"preset {name}")
