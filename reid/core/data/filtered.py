"""Reader of the seed's curated SSL instance lists, ``filtered_all_{face,body}[_100k].csv`` (docs/DATA.md)."""

from __future__ import annotations

import posixpath

import pandas as pd

from reid.core.data.formats import csv_line, read_csv, require_columns
from reid.core.data.ids import IdError, instance_id_column, panel_id_column, parse_page_panel
from reid.core.errors import DataFormatError


def parse_crop_path(img_path: str, type_: str) -> tuple[int, int, int, int]:
    """``.../<series>/<page>_<panel>/<idx>.jpg`` (faces) or ``.../<series>/<page>_<panel>/bodies/<idx>.jpg``
    (bodies) → (series, page, panel, index). Only the last path parts are meaningful."""
    parts = posixpath.normpath(str(img_path).replace("\\", "/")).split("/")
    if type_ == "body":
        if len(parts) < 4 or parts[-2] != "bodies":
            raise ValueError(f"body crop path {img_path!r} does not end in <series>/<page>_<panel>/bodies/<idx>.jpg")
        series, page_panel, name = parts[-4], parts[-3], parts[-1]
    else:
        if len(parts) < 3:
            raise ValueError(f"face crop path {img_path!r} does not end in <series>/<page>_<panel>/<idx>.jpg")
        series, page_panel, name = parts[-3], parts[-2], parts[-1]
    stem, ext = posixpath.splitext(name)
    try:
        page, panel = parse_page_panel(page_panel)
    except IdError:
        page = panel = -1
    if page < 0 or ext.lower() not in (".jpg", ".jpeg", ".png") or not stem.isdigit() or not series.isdigit():
        raise ValueError(f"{type_} crop path {img_path!r} does not end in <series>/<page>_<panel>/"
                         f"{'bodies/' if type_ == 'body' else ''}<idx>.jpg with integer parts")
    return int(series), page, panel, int(stem)


def read_filtered(path: str, type_: str) -> pd.DataFrame:
    """Read ``filtered_all_{face,body}[_100k].csv``: the curated SSL instances.

    Returns columns ``img_path``, ``series_id``, ``page``, ``panel``, ``index``, ``panel_id``, ``instance_id``.
    """
    if type_ not in ("face", "body"):
        raise ValueError(f"type must be 'face' or 'body', got {type_!r}")
    frame = read_csv(path)
    require_columns(frame, ("img_path",), path)
    rows = []
    for i, img_path in enumerate(frame["img_path"]):
        try:
            series, page, panel, index = parse_crop_path(img_path, type_)
        except ValueError as exc:
            raise DataFormatError(path, str(exc), csv_line(i)) from None
        rows.append((img_path, series, page, panel, index))
    out = pd.DataFrame(rows, columns=["img_path", "series_id", "page", "panel", "index"])
    out["panel_id"] = panel_id_column(out["series_id"], out["page"], out["panel"])
    out["instance_id"] = instance_id_column(out["panel_id"], pd.Series(type_, index=out.index), out["index"])
    return out
