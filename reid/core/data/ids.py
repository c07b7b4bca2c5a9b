"""Instance, panel, page and sequence (window) ids of the COMICS-based datasets (docs/DATA.md): the one
definition of their format. Every reader, writer and test builds and parses them with these functions.

- panel id:    ``<series>_<page>_<panel>``                       e.g. ``1443_58_6``
- instance id: ``<series>_<page>_<panel>_<face|body>_<index>``   e.g. ``1443_58_6_face_0``
- page id:     ``<page>_<panel>``, as the CSVs' ``page_id`` column and the panel images' names write it
- seq id:      four consecutive panel ids joined by ``+`` (a window id of the label job likewise)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

InstanceType = Literal["face", "body"]
INSTANCE_TYPES: tuple[str, str] = ("face", "body")
ID_SEP = "_"
SEQ_SEP = "+"
# A page id as the corpus files write it: leading zeros are accepted there (and dropped from panel ids).
PAGE_PANEL_PATTERN = rf"(\d+){ID_SEP}(\d+)"

_INT = r"(0|[1-9]\d*)"
_PANEL_RE = re.compile(rf"^{_INT}{ID_SEP}{_INT}{ID_SEP}{_INT}$")
_INSTANCE_RE = re.compile(rf"^{_INT}{ID_SEP}{_INT}{ID_SEP}{_INT}{ID_SEP}(face|body){ID_SEP}{_INT}$")
_PAGE_PANEL_RE = re.compile(rf"^{PAGE_PANEL_PATTERN}$")


# The largest id of each part that a corpus may use. COMICS has ~4,000 series of at most a few hundred pages of
# at most a few dozen panels; the limits leave room for far larger corpora, yet bound the work one id can cause
# (a page's sliding windows are counted in panels: page id 0_100000000000 would loop ~1e11 times).
MAX_IDS: dict[str, int] = {"series": 9_999_999, "page": 99_999, "panel": 999, "index": 9_999}


class IdError(ValueError):
    """An id string does not parse; the message says which id and why."""


def _bounded_ints(text: str, kind: str, **digits: str) -> dict[str, int]:
    """The matched runs of digits of an id as ints, or IdError when one is beyond :data:`MAX_IDS`. A run longer
    than any limit is never converted (Python refuses ints of over 4,300 digits, and nothing that long is an id)."""
    shown = text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"
    values = {}
    for name, run in digits.items():
        value = int(run) if len(run) <= 18 else None
        if value is None or value > MAX_IDS[name]:
            number = run if value is not None else f"of {len(run)} digits"
            raise IdError(f"{kind} id {shown!r}: {name} {number} is larger than any corpus uses "
                          f"(at most {MAX_IDS[name]})")
        values[name] = value
    return values


@dataclass(frozen=True, order=True)
class PanelId:
    series: int
    page: int
    panel: int

    def __str__(self) -> str:
        return panel_id(self.series, self.page, self.panel)

    @property
    def page_panel(self) -> str:
        """The ``"<page>_<panel>"`` string used by the CSVs' ``page_id`` column."""
        return page_panel(self.page, self.panel)


@dataclass(frozen=True, order=True)
class InstanceId:
    series: int
    page: int
    panel: int
    type: str
    index: int

    def __str__(self) -> str:
        return instance_id(self.series, self.page, self.panel, self.type, self.index)

    @property
    def panel_id(self) -> PanelId:
        return PanelId(self.series, self.page, self.panel)


def parse_panel_id(text: str) -> PanelId:
    """Parse ``<series>_<page>_<panel>`` (non-negative ints, no leading zeros)."""
    m = _PANEL_RE.match(str(text))
    if not m:
        raise IdError(f"panel id {text!r} is not '<series>_<page>_<panel>' with integer parts")
    return PanelId(**_bounded_ints(str(text), "panel", series=m[1], page=m[2], panel=m[3]))


def parse_instance_id(text: str) -> InstanceId:
    """Parse ``<series>_<page>_<panel>_<face|body>_<index>``."""
    m = _INSTANCE_RE.match(str(text))
    if not m:
        raise IdError(
            f"instance id {text!r} is not '<series>_<page>_<panel>_<face|body>_<index>' with integer parts"
        )
    ids = _bounded_ints(str(text), "instance", series=m[1], page=m[2], panel=m[3], index=m[5])
    return InstanceId(ids["series"], ids["page"], ids["panel"], m[4], ids["index"])


def parse_seq_id(text: str, length: int = 4) -> tuple[PanelId, ...]:
    """Parse a seq id: ``length`` panel ids of one series joined by ``+``.

    The datasets use consecutive panels of one page; only "one series, distinct panels" is enforced so
    that windows crossing a page break (real data) are accepted.
    """
    parts = seq_panel_ids(str(text))
    if len(parts) != length:
        raise IdError(f"seq_id {text!r} has {len(parts)} '+'-joined panel ids, expected {length}")
    panels = []
    for part in parts:
        try:
            panels.append(parse_panel_id(part))
        except IdError as exc:
            raise IdError(f"seq_id {text!r}: {exc}") from None
    if len({p.series for p in panels}) != 1:
        raise IdError(f"seq_id {text!r}: panels belong to different series")
    if len(set(panels)) != len(panels):
        raise IdError(f"seq_id {text!r}: a panel appears twice")
    return tuple(panels)


def panel_id(series: int, page: int, panel: int) -> str:
    """``<series>_<page>_<panel>``."""
    return f"{series}{ID_SEP}{page}{ID_SEP}{panel}"


def instance_id(series: int, page: int, panel: int, type_: str, index: int) -> str:
    """``<series>_<page>_<panel>_<face|body>_<index>``."""
    return f"{panel_id(series, page, panel)}{ID_SEP}{type_}{ID_SEP}{index}"


def page_panel(page: int, panel: int) -> str:
    """``<page>_<panel>``: a page id of the CSVs, the stem of a panel image's file name."""
    return f"{page}{ID_SEP}{panel}"


def parse_page_panel(text: str) -> tuple[int, int]:
    """(page, panel) of a page id as the corpus files write it (:data:`PAGE_PANEL_PATTERN`); not bounded."""
    m = _PAGE_PANEL_RE.match(str(text))
    if not m:
        raise IdError(f"page id {text!r} is not '<page>_<panel>' with integer parts")
    return int(m[1]), int(m[2])


def seq_id(panels: Iterable[PanelId | str]) -> str:
    """The id of the sequence (window) made of ``panels``, in order."""
    return SEQ_SEP.join(str(p) for p in panels)


def seq_panel_ids(text: str) -> list[str]:
    """The panel id strings of a seq (window) id, unchecked (:func:`parse_seq_id` checks them)."""
    return text.split(SEQ_SEP)


def panel_id_column(series: pd.Series, page: pd.Series, panel: pd.Series) -> pd.Series:
    """:func:`panel_id` of every row of integer columns, at pandas speed (the instance CSV has millions)."""
    return series.astype(str) + ID_SEP + page.astype(str) + ID_SEP + panel.astype(str)


def instance_id_column(panel_ids: pd.Series, types: pd.Series, index: pd.Series) -> pd.Series:
    """:func:`instance_id` of every row, from its panel id, type and (integer) index columns."""
    return panel_ids + ID_SEP + types + ID_SEP + index.astype(str)


def panel_image_relpath(panel: PanelId) -> str:
    """Path of a panel JPEG below the COMICS root: ``raw_panel_images/<series>/<page>_<panel>.jpg``."""
    return f"raw_panel_images/{panel.series}/{page_panel(panel.page, panel.panel)}.jpg"
