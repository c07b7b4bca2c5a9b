"""Typed, validating readers for the dataset formats of docs/DATA.md.

Every reader accepts the shipped formats exactly (odd column names included), ignores extra columns and
optional keys, and raises :class:`reid.core.errors.DataFormatError` naming the file, the row or entry, and the
reason for anything else. CSV row numbers are file line numbers (the header is line 1).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reid.core import io
from reid.core.data.ids import (
    MAX_IDS,
    PAGE_PANEL_PATTERN,
    IdError,
    PanelId,
    instance_id_column,
    panel_id_column,
    panel_image_relpath,
    parse_instance_id,
    parse_panel_id,
    parse_seq_id,
)
from reid.core.data.rows import BadRow, RowPolicy
from reid.core.errors import DataFormatError

INSTANCE_COLUMNS: tuple[str, ...] = ("series_id", "page_id", "type", "index", "char_index",
                                     "x_0", "y_0", "x1", "y_1")
BOX_COLUMNS: tuple[str, ...] = ("x_0", "y_0", "x1", "y_1")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# The seed names the validation split "validation" in one file and "val" in others: accept both.
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",), "validation": ("validation", "val"), "val": ("val", "validation"),
    "test": ("test",),
}


def csv_line(row_index: int) -> str:
    """Where the 0-based data row ``row_index`` of a CSV with a header stands, as an error message says it."""
    return f"line {row_index + 2}"


def require_columns(frame: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    """Raise DataFormatError naming ``source`` and the missing columns when ``frame`` lacks one of ``required``."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(source, f"missing column(s) {missing}; found {list(frame.columns)}")


def _int_column(frame: pd.DataFrame, column: str, source: str, row_offset: int) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(source, f"column {column!r} must be an integer, got {frame[column].iloc[i]!r}",
                              csv_line(row_offset + i))
    return values.to_numpy().astype(np.int64)


def validate_instances(frame: pd.DataFrame, source: str, row_offset: int = 0,
                       bad: list[BadRow] | None = None) -> pd.DataFrame:
    """Validate one chunk of ``merged_face_body.csv`` and add derived columns.

    Returns a frame with the docs/DATA.md columns typed, plus ``page`` / ``panel`` (ints), ``panel_id`` and
    ``instance_id`` (strings). ``row_offset`` is the chunk's first data-row index, for error messages.
    A missing column is a file-level error and always raises. A bad row (unparsable number, unknown type,
    page id that is not ``<page>_<panel>``, inverted box, negative id) raises at the first one when ``bad`` is
    None; otherwise it is appended to ``bad`` (file, line, reason) and left out of the result.
    """
    require_columns(frame, INSTANCE_COLUMNS, source)
    frame = frame.reset_index(drop=True)
    reasons = pd.Series("", index=frame.index, dtype=object)

    def flag(mask: pd.Series, message: pd.Series | str) -> None:
        new = np.asarray(mask, dtype=bool) & (reasons == "").to_numpy()
        if new.any():
            reasons[new] = message[new] if isinstance(message, pd.Series) else message

    def integers(column: str) -> pd.Series:
        values = pd.to_numeric(frame[column], errors="coerce")
        flag(values.isna() | (values != np.floor(values)),
             f"column {column!r} must be an integer, got " + frame[column].map(repr))
        return values

    series = integers("series_id")
    page_id = frame["page_id"].astype(str)
    parts = page_id.str.fullmatch(PAGE_PANEL_PATTERN)
    flag(~parts, "page_id " + page_id.map(repr) + " is not '<page>_<panel>' with integer parts")
    split = page_id.where(parts, "0_0").str.extract(f"^{PAGE_PANEL_PATTERN}$")
    types = frame["type"].astype(str).str.strip()
    flag(~types.isin(["face", "body"]), "type must be 'face' or 'body', got " + frame["type"].map(repr))
    index, char_index = integers("index"), integers("char_index")
    boxes = {}
    for column in BOX_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        flag(~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan)),
             f"column {column!r} must be a number, got " + frame[column].map(repr))
        boxes[column] = values.astype(np.float64)
    for lo, hi in (("x_0", "x1"), ("y_0", "y_1")):
        flag(boxes[hi] < boxes[lo], f"{hi} (" + boxes[hi].astype(str) + f") < {lo} (" + boxes[lo].astype(str) + ")")
    too_long = (split[0].str.len() > 15) | (split[1].str.len() > 15)  # no int conversion of 5,000 digits
    page = pd.to_numeric(split[0].where(~too_long, "0"))
    panel = pd.to_numeric(split[1].where(~too_long, "0"))
    flag((series < 0) | (page < 0) | (panel < 0) | (index < 0), "ids must be non-negative")
    _flag_out_of_bounds(flag, frame, page_id, too_long, series, page, panel, index, char_index)
    _record_bad_rows(reasons, source, row_offset, bad)
    columns = {"series_id": series, "page": page, "panel": panel, "type": types, "index": index,
               "char_index": char_index, **boxes}
    return _typed_instances(columns, (reasons == "").to_numpy(), row_offset)


def _record_bad_rows(reasons: pd.Series, source: str, row_offset: int, bad: list[BadRow] | None) -> None:
    """The rows with a reason: raised at the first one when ``bad`` is None, else appended to it."""
    bad_rows = np.flatnonzero((reasons != "").to_numpy())
    if len(bad_rows):
        if bad is None:
            i = int(bad_rows[0])
            raise DataFormatError(source, str(reasons.iloc[i]), csv_line(row_offset + i))
        bad.extend(BadRow(source, csv_line(row_offset + int(i)), str(reasons.iloc[i])) for i in bad_rows)


def _typed_instances(columns: dict[str, pd.Series], keep: np.ndarray, row_offset: int) -> pd.DataFrame:
    """The kept rows with the docs/DATA.md columns typed, plus ``panel_id``, ``instance_id`` and ``line``."""
    out = pd.DataFrame(index=columns["series_id"].index)
    out["series_id"] = columns["series_id"].to_numpy().astype(np.float64)
    out["page"], out["panel"] = columns["page"].to_numpy(), columns["panel"].to_numpy()
    out["type"] = columns["type"].to_numpy()
    out["index"] = columns["index"].to_numpy().astype(np.float64)
    out["char_index"] = columns["char_index"].to_numpy().astype(np.float64)
    for column in BOX_COLUMNS:
        out[column] = columns[column].to_numpy().astype(np.float64)
    out = out[keep].reset_index(drop=True)
    for column in ("series_id", "page", "panel", "index", "char_index"):
        out[column] = out[column].astype(np.int64)
    out = out[["series_id", "page", "panel", "type", "index", "char_index", *BOX_COLUMNS]]
    out["panel_id"] = panel_id_column(out["series_id"], out["page"], out["panel"])
    out["instance_id"] = instance_id_column(out["panel_id"], out["type"], out["index"])
    out["line"] = [row_offset + int(i) + 2 for i in np.flatnonzero(keep)]  # CSV line (header: line 1)
    return out


def _flag_out_of_bounds(flag, frame: pd.DataFrame, page_id: pd.Series, too_long: pd.Series, series: pd.Series,
                        page: pd.Series, panel: pd.Series, index: pd.Series, char_index: pd.Series) -> None:
    """Flag ids larger than any corpus uses (:data:`reid.core.data.ids.MAX_IDS`): planning work is linear in them
    (a page's windows are counted in panels), so one such row could stall the job."""
    def beyond(part: str) -> str:
        return f" is larger than any corpus uses (at most {MAX_IDS[part]})"

    def shown(values: pd.Series) -> pd.Series:
        return values.map(lambda v: repr(v) if len(str(v)) <= 60 else f"'{str(v)[:40]}...' ({len(str(v))} characters)")

    flag(series > MAX_IDS["series"], "series_id " + shown(frame["series_id"]) + beyond("series"))
    flag(too_long | (page > MAX_IDS["page"]), "page_id " + shown(page_id) + ": page" + beyond("page"))
    flag(panel > MAX_IDS["panel"], "page_id " + shown(page_id) + ": panel" + beyond("panel"))
    flag(index > MAX_IDS["index"], "index " + shown(frame["index"]) + beyond("index"))
    flag(char_index > MAX_IDS["index"], "char_index " + shown(frame["char_index"]) + beyond("index"))


def iter_instances(path: str, chunk_rows: int = 200_000, bad: list[BadRow] | None = None
                   ) -> Iterator[pd.DataFrame]:
    """Stream ``merged_face_body.csv`` in validated chunks (flat memory for the full corpus).

    With ``bad`` (a list), bad rows are collected there instead of raising (:func:`validate_instances`).
    Duplicate instance ids are only detected within a chunk here; :func:`read_instances` checks globally.
    """
    fs, fs_path = io.resolve(path)
    try:
        stream = fs.open_input_stream(fs_path)
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    with stream:
        try:
            reader = pd.read_csv(stream, dtype=str, keep_default_na=False, chunksize=chunk_rows)
            row_offset = 0
            for chunk in reader:
                yield validate_instances(chunk, path, row_offset, bad)
                row_offset += len(chunk)
        except pd.errors.EmptyDataError:
            raise DataFormatError(path, "file is empty (no header)") from None
        except pd.errors.ParserError as exc:
            raise DataFormatError(path, f"not a valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, f"not a text CSV file: {exc.reason} at byte {exc.start}") from None


def drop_duplicate_instances(chunk: pd.DataFrame, seen: set[str], source: str,
                             bad: list[BadRow] | None = None) -> pd.DataFrame:
    """Rows of ``chunk`` whose instance id was not seen before (in ``seen``, which is updated, or earlier in
    the chunk). A repeat raises when ``bad`` is None, else it is recorded there and left out: the first
    occurrence wins."""
    ids = chunk["instance_id"]
    dup = (ids.isin(seen) | ids.duplicated()).to_numpy()
    if dup.any():
        where = [f"line {n}" for n in chunk["line"].to_numpy()[dup]]
        reasons = [f"instance {i!r} appears twice" for i in ids[dup]]
        if bad is None:
            raise DataFormatError(source, reasons[0], where[0])
        bad.extend(BadRow(source, w, r) for w, r in zip(where, reasons, strict=True))
        chunk = chunk[~dup].reset_index(drop=True)
    seen.update(chunk["instance_id"])
    return chunk


def read_instances(path: str, bad: list[BadRow] | None = None) -> pd.DataFrame:
    """Read and validate the whole ``merged_face_body.csv`` (one row per face/body box). With ``bad`` (a list),
    bad rows are collected there and left out instead of raising."""
    seen: set[str] = set()
    chunks = [drop_duplicate_instances(c, seen, path, bad) for c in iter_instances(path, bad=bad)]
    return pd.concat(chunks, ignore_index=True) if chunks else validate_instances(
        pd.DataFrame(columns=list(INSTANCE_COLUMNS)), path)


def read_csv(path: str) -> pd.DataFrame:
    """A CSV (local or remote path) as strings, every value kept as written; a missing, empty or malformed file is
    a DataFormatError naming it."""
    try:
        with io.open_input(path) as stream:
            return pd.read_csv(stream, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, "file is empty (no header)") from None
    except pd.errors.ParserError as exc:
        raise DataFormatError(path, f"not a valid CSV: {exc}") from None


def _read_json(path: str) -> object:
    try:
        return json.loads(io.read_text(path))
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


@dataclass(frozen=True)
class CharInstance:
    """One appearance of a character in one panel: its face and/or body instance ids."""

    face: str | None
    body: str | None
    speech_bubbles: tuple = ()

    @property
    def panel_id(self) -> str:
        return str(parse_instance_id(self.face or self.body).panel_id)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Character:
    """A character of one sequence. ``char_id`` is only meaningful inside its sequence."""

    char_id: str
    instances: tuple[CharInstance, ...]


@dataclass(frozen=True)
class Sequence:
    """A labelled window of consecutive panels."""

    seq_id: str
    panels: tuple[PanelId, ...]
    characters: tuple[Character, ...] = field(default=())

    @property
    def series_id(self) -> int:
        return self.panels[0].series


def _json_type(value: object) -> str:
    """How a JSON value's type is named in an error message (``null``, ``3 (a number)``, ...)."""
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} ({kind})"


def _parse_sequence(entry: object, where: str, known: set[str] | None, source: str,
                    panels_per_window: int) -> Sequence:
    if not isinstance(entry, dict):
        raise DataFormatError(source, f"expected an object, got {type(entry).__name__}", where)
    if "seq_id" not in entry:
        raise DataFormatError(source, "missing key 'seq_id'", where)
    seq_id = entry["seq_id"]
    if not isinstance(seq_id, str):
        raise DataFormatError(source, f"'seq_id' must be a string, got {_json_type(seq_id)}", where)
    where = f"{where} (seq_id {seq_id!r})"
    try:
        panels = parse_seq_id(seq_id, panels_per_window)
    except IdError as exc:
        raise DataFormatError(source, str(exc), where) from None
    panel_names = {str(p) for p in panels}
    annotations = entry.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataFormatError(source, "'annotations' must be a list", where)
    characters, seen_chars = [], set()
    for a, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "charId" not in annotation:
            raise DataFormatError(source, f"annotation {a} has no 'charId'", where)
        char_id = str(annotation["charId"])
        if char_id in seen_chars:
            raise DataFormatError(source, f"charId {char_id!r} appears twice in the sequence", where)
        seen_chars.add(char_id)
        char_instances = annotation.get("charInstances", [])
        if not isinstance(char_instances, list):
            raise DataFormatError(source, f"charId {char_id!r}: 'charInstances' must be a list, got "
                                  f"{_json_type(char_instances)}", where)
        instances = [inst for k, entry_k in enumerate(char_instances)
                     if (inst := _parse_char_instance(entry_k, f"charId {char_id!r}", k, panel_names, known,
                                                      source, where)) is not None]
        characters.append(Character(char_id, tuple(instances)))
    return Sequence(str(seq_id), panels, tuple(characters))


def _parse_char_instance(inst: object, char: str, k: int, panel_names: set[str], known: set[str] | None,
                         source: str, where: str) -> CharInstance | None:
    """Instance ``k`` of one annotated character (``char`` names it in errors); None for a speech bubble only
    (no visual instance to re-identify)."""
    if not isinstance(inst, dict):
        raise DataFormatError(source, f"{char} instance {k} is not an object", where)
    bubbles = inst.get("speechBubbles")
    if bubbles is not None and not isinstance(bubbles, list):
        raise DataFormatError(source, f"{char} instance {k}: 'speechBubbles' must be a list, "
                              f"got {_json_type(bubbles)}", where)
    ids: dict[str, str | None] = {}
    for kind in ("face", "body"):
        value = inst.get(kind)
        if value is None or value == "":
            ids[kind] = None
            continue
        if not isinstance(value, str):
            raise DataFormatError(source, f"{char} instance {k}: {kind!r} must be an instance "
                                  f"id string, got {_json_type(value)}", where)
        try:
            parsed = parse_instance_id(value)
        except IdError as exc:
            raise DataFormatError(source, f"{char}: {exc}", where) from None
        if parsed.type != kind:
            raise DataFormatError(source, f"{char}: {kind} id {value!r} is a {parsed.type}", where)
        if str(parsed.panel_id) not in panel_names:
            raise DataFormatError(source, f"{char}: instance {value!r} is not in the sequence's panels", where)
        if known is not None and value not in known:
            raise DataFormatError(source, f"{char}: instance {value!r} is absent from the instance CSV", where)
        ids[kind] = value
    if ids["face"] is None and ids["body"] is None:
        return None
    if ids["face"] and ids["body"]:
        f, b = parse_instance_id(ids["face"]), parse_instance_id(ids["body"])
        if f.panel_id != b.panel_id:
            raise DataFormatError(source, f"{char}: face {ids['face']!r} and body {ids['body']!r} are in "
                                  "different panels", where)
    return CharInstance(ids["face"], ids["body"], tuple(bubbles or ()))


def read_sequences(path: str, known_instances: set[str] | None = None,
                   panels_per_window: int = 4, bad: list[BadRow] | None = None) -> list[Sequence]:
    """Read ``<split>_sequences.json``. With ``known_instances``, every referenced id must be in it.

    A file that is not JSON or not a list always raises. A bad entry (unparsable seq id, a character naming an
    instance of another panel or an unknown instance, a repeated seq id) raises when ``bad`` is None; otherwise
    it is appended to ``bad`` (file, entry and seq id, reason) and the whole entry is left out."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataFormatError(path, f"top level must be a list of sequences, got {type(data).__name__}")
    sequences, seen = [], set()
    for i, entry in enumerate(data):
        try:
            try:
                seq = _parse_sequence(entry, f"entry {i}", known_instances, path, panels_per_window)
            except DataFormatError:
                raise  # a ValueError too: already named, with its seq id
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                # a shape no check above foresaw: still this entry's fault, named as such, never a traceback
                raise DataFormatError(path, f"malformed entry ({type(exc).__name__}: {exc})", f"entry {i}") from None
            if seq.seq_id in seen:
                raise DataFormatError(path, f"seq_id {seq.seq_id!r} appears twice", f"entry {i}")
        except DataFormatError as exc:
            if bad is None:
                raise
            bad.append(BadRow(path, exc.where or f"entry {i}", exc.reason))
            continue
        seen.add(seq.seq_id)
        sequences.append(seq)
    return sequences


def read_sequences_checked(path: str, policy: RowPolicy, known_instances: set[str] | None = None,
                           panels_per_window: int = 4) -> tuple[list[Sequence], list[BadRow]]:
    """:func:`read_sequences` under a :class:`RowPolicy`: (good sequences, bad entries left out); raises at the
    first bad entry when strict, or when more than the policy's fraction of the entries are bad."""
    bad: list[BadRow] | None = None if policy.strict else []
    sequences = read_sequences(path, known_instances, panels_per_window, bad)
    policy.check(path, bad or [], len(sequences) + len(bad or []), unit="sequences")
    return sequences, bad or []


def read_char_map(path: str, known_instances: set[str] | None = None) -> dict[str, list[str]]:
    """Read ``<split>_char_{faces,bodies}.json``: ``{charId: [instance id, ...]}``."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, f"top level must be an object {{charId: [ids]}}, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for char_id, ids in data.items():
        if not isinstance(ids, list):
            raise DataFormatError(path, "value must be a list of instance ids", f"charId {char_id!r}")
        for value in ids:
            try:
                parse_instance_id(value)
            except IdError as exc:
                raise DataFormatError(path, str(exc), f"charId {char_id!r}") from None
            if known_instances is not None and value not in known_instances:
                raise DataFormatError(path, f"instance {value!r} is absent from the instance CSV",
                                      f"charId {char_id!r}")
        out[str(char_id)] = [str(v) for v in ids]
    return out


def split_file(seq_root: str, split: str, kind: str) -> str:
    """Path of a split's file, accepting the seed's inconsistent names.

    ``kind`` is ``sequences``, ``char_faces`` or ``char_bodies``; ``split`` is train/validation/val/test.
    """
    if split not in _SPLIT_ALIASES:
        raise DataFormatError(seq_root, f"unknown split {split!r}; expected one of {list(SPLITS)}")
    candidates = [io.join(seq_root, f"{name}_{kind}.json") for name in _SPLIT_ALIASES[split]]
    for candidate in candidates:
        if io.exists(candidate):
            return candidate
    raise DataFormatError(seq_root, f"no {kind} file for split {split!r}; looked for "
                          f"{[posixpath.basename(c) for c in candidates]}")


def read_split(seq_root: str, split: str, known_instances: set[str] | None = None) -> list[Sequence]:
    """Read the sequences of one split from the ``data/comics_seq`` folder (strict: a bad entry raises)."""
    return read_sequences(split_file(seq_root, split, "sequences"), known_instances)


def read_split_checked(seq_root: str, split: str, policy: RowPolicy, known_instances: set[str] | None = None
                       ) -> tuple[list[Sequence], list[BadRow]]:
    """One split under a :class:`RowPolicy` (:func:`read_sequences_checked`)."""
    return read_sequences_checked(split_file(seq_root, split, "sequences"), policy, known_instances)


def panel_image_path(comics_root: str, panel: PanelId | str) -> str:
    """``<comics_root>/raw_panel_images/<series>/<page>_<panel>.jpg``."""
    return io.join(comics_root, panel_image_relpath(parse_panel_id(panel) if isinstance(panel, str) else panel))
