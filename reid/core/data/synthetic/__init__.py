"""Synthetic COMICS-format corpus: panel images, instance CSVs, sequence JSONs and ground truth.

``python -m reid.core.data.synthetic --out DIR [--preset tiny|demo|bench] [--series N --pages N --seed S ...]``
writes, in exactly the formats of ``docs/DATA.md``::

    DIR/raw_panel_images/<series>/<page>_<panel>.jpg
    DIR/data/ssl/merged_face_body.csv              (+ an extra ``score`` column readers must ignore)
    DIR/data/ssl/filtered_all_{face,body}.csv      (boxes with a min side of 16 px (faces) / 24 px (bodies))
    DIR/data/comics_seq/{train,validation,test}_sequences.json
    DIR/data/comics_seq/{train,val,test}_char_{faces,bodies}.json   (the seed's inconsistent naming)
    DIR/ground_truth.csv          one row per instance: global identity, split, view, visibility, fault
    DIR/ground_truth_charids.csv  one row per (sequence, charId): its global identity
    DIR/cast.json                 every series' cast: drawing attributes, look-alike relations
    DIR/faults.json, DIR/summary.json

Content: each series has a cast of recurring characters whose identity shows in face and body (palette,
head shape, hair, eyes, mouth, clothing pattern, accessory). Some cast members are *look-alikes* of another
(same palette and build, one shape attribute different). A page is a scene with a subset of the cast; its
panels show 1-4 of them with per-appearance variation (scale, position, flip, rotation/shear, arm/leg
pose, colour jitter, lighting tint, line and pixel noise, occlusion by other characters, balloons and the
panel border). Close-ups give face-only instances, back views body-only ones; a box whose visible part is
too small is not annotated. Sequences are windows of 4 consecutive panels of one page (stride
``window_stride``); their ``charId`` is an opaque hash of (seed, seq_id, identity), so the same character
gets another ``charId`` in another sequence (labels are relative to a sequence).

Splits: ``split_by="series"`` puts whole series into train/validation/test; ``"page"`` splits the pages of
every series. ``"auto"`` (default) splits by series when there are at least 8 series, else by page. Either
way a page (and so every window and instance on it) belongs to exactly one split.

Determinism: every random draw comes from a numpy Generator seeded by ``(seed, series_id[, page])``, so the
output is byte-identical for the same config whatever ``workers`` is (series are generated in parallel).

Faults (for tests; recorded in ``faults.json`` and the ground truth's ``fault`` column): ``corrupt_images``
panels get their JPEG bytes truncated or their header garbled (alternately) so decoding fails;
``missing_images`` panel files are deleted while the CSVs still reference them; ``offpage_partial`` boxes
are moved to straddle a page edge and ``offpage_whole`` boxes wholly outside the page (in
``merged_face_body.csv`` only; the filtered CSVs and ground truth boxes keep the true geometry).

Modules (each imports only those above it): ``config`` (SyntheticConfig, presets, constants), ``cast``
(a series' characters and look-alikes), ``drawing`` (one character's figure), ``panels`` (a page's scene
and panels: placement, occlusion, balloons, boxes), ``series`` (one series' pages, rows and windows),
``faults`` (injected faults), ``corpus`` (splits, charIds, writing every file), ``cli`` (the command line;
``__main__`` runs it).
"""

from reid.core.data.synthetic.cast import (
    ACCESSORIES,
    EYES,
    HAIR_STYLES,
    HEAD_SHAPES,
    MOUTHS,
    PATTERNS,
    RGB,
    SHAPE_ATTRIBUTES,
    CharacterDesign,
    make_cast,
)
from reid.core.data.synthetic.cli import main, parse_args
from reid.core.data.synthetic.config import (
    BODY_CROP_PREFIX,
    CHAR_MAP_SPLIT_NAMES,
    FACE_CROP_PREFIX,
    FILTERED_CSV_COLUMNS,
    INSTANCE_CSV_COLUMNS,
    MIN_FILTERED_SIDE,
    PRESETS,
    SPLITS,
    WINDOW_PANELS,
    SyntheticConfig,
    preset_config,
)
from reid.core.data.synthetic.corpus import CorpusSummary, corpus_paths, generate_corpus

__all__ = [
    "ACCESSORIES", "BODY_CROP_PREFIX", "CHAR_MAP_SPLIT_NAMES", "EYES", "FACE_CROP_PREFIX",
    "FILTERED_CSV_COLUMNS", "HAIR_STYLES", "HEAD_SHAPES", "INSTANCE_CSV_COLUMNS", "MIN_FILTERED_SIDE",
    "MOUTHS", "PATTERNS", "PRESETS", "RGB", "SHAPE_ATTRIBUTES", "SPLITS", "WINDOW_PANELS", "CharacterDesign",
    "CorpusSummary", "SyntheticConfig", "corpus_paths", "generate_corpus", "main", "make_cast", "parse_args",
    "preset_config",
]
