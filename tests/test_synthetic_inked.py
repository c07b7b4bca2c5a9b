"""The inked style of the synthetic corpus: black-and-white pages where colour cannot decide identity.

Also: the coloured presets are exactly what they were before styles existed (a digest of the tiny corpus).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reid.core.data import formats
from reid.core.data.synthetic import generate_corpus, preset_config
from reid.core.data.synthetic.inked import grey_only, halftone
from reid.core.errors import ConfigError
from tests.helpers.corpus_items import colour_precision_at_1, random_network_precision_at_1, sequence_items

# sha256 over (relative path, bytes) of every file of preset "tiny", as generated before the inked style
TINY_DIGEST = "571a1f0cbe9b739c160fb578af125ed1fb52180f2ec26a90d6af409ba27be41d"


def _digest(root: str) -> str:
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def inked(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("inked"))
    summary = generate_corpus(out, preset_config("inked-demo", series=2, pages=8, seed=0))
    truth = pd.read_csv(f"{out}/ground_truth.csv", keep_default_na=False)
    return out, summary, truth


def test_coloured_presets_are_byte_for_byte_as_before(tmp_path):
    generate_corpus(str(tmp_path), preset_config("tiny"))
    assert _digest(str(tmp_path)) == TINY_DIGEST


def test_pages_are_black_and_white_scans_of_real_sizes(inked):
    root, summary, _ = inked
    sides, inked_share = [], []
    for series in summary.series_ids:
        folder = f"{root}/raw_panel_images/{series}"
        for name in sorted(os.listdir(folder))[:12]:
            with Image.open(f"{folder}/{name}") as im:
                assert im.mode == "L", name  # a grey JPEG, as scanned pages are
                pixels = np.asarray(im)
                sides += list(im.size)
            # ink and paper: most pixels are near black or near white (screentone is dots, not grey)
            inked_share.append(((pixels < 60) | (pixels > 195)).mean())
    assert 300 <= min(sides) and max(sides) <= 800
    assert min(inked_share) > 0.7 and np.mean(inked_share) > 0.8, inked_share


def test_fills_are_grey_tones_and_identity_is_in_shapes(inked):
    root, _, _ = inked
    with open(f"{root}/cast.json") as f:
        casts = json.load(f)
    from reid.core.data.synthetic.cast import CharacterDesign

    designs = [CharacterDesign(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
               for cast in casts.values() for c in cast]
    assert designs and all(grey_only(d) for d in designs)
    # tones are shared: hair and shirt tones each take at most 5 values over a whole cast
    assert len({d.hair for d in designs}) <= 5 and len({d.shirt for d in designs}) <= 5
    shapes = {(d.head_shape, d.hair_style, d.eyes, d.mouth, d.pattern, d.accessory) for d in designs}
    assert len(shapes) == len(designs)  # but no two characters share every shape


def test_unnamed_extras_have_boxes_but_no_sequence(inked):
    root, _, truth = inked
    extras = truth[truth["identity"] == ""]
    assert len(extras) >= 10
    ids = set(formats.read_instances(f"{root}/data/ssl/merged_face_body.csv")["instance_id"])
    assert set(extras["instance_id"]) <= ids
    in_sequences = set()
    for split in ("train", "validation", "test"):
        with open(f"{root}/data/comics_seq/{split}_sequences.json") as f:
            for seq in json.load(f):
                for a in seq["annotations"]:
                    in_sequences |= {i[k] for i in a["charInstances"] for k in ("face", "body") if k in i}
    assert in_sequences and not in_sequences & set(extras["instance_id"])
    named = truth[truth["identity"] != ""]
    assert set(named["instance_id"]) & in_sequences


def test_characters_come_at_every_scale_and_are_cut_by_borders(inked):
    root, _, truth = inked
    faces = truth[truth["type"] == "face"]
    side = np.maximum(faces["x1"] - faces["x_0"], faces["y_1"] - faces["y_0"])
    assert side.min() <= 40 and side.max() >= 150  # far figures and close-ups
    assert (truth["view"] == "closeup").any()
    bodies = truth[truth["type"] == "body"]
    sizes = {}
    for row in bodies.itertuples():
        key = (row.series_id, row.page_id)
        if key not in sizes:
            with Image.open(f"{root}/raw_panel_images/{row.series_id}/{row.page_id}.jpg") as im:
                sizes[key] = im.size
    cut = [row.y_1 >= sizes[(row.series_id, row.page_id)][1] - 1 or row.x_0 <= 0
           or row.x1 >= sizes[(row.series_id, row.page_id)][0] - 1 for row in bodies.itertuples()]
    assert np.mean(cut) > 0.2  # bodies cut by the panel's border
    per_panel = truth[truth["type"] == "body"].groupby("panel_id").size()
    assert per_panel.max() >= 3


def test_colour_histograms_find_no_more_than_a_random_network(inked):
    """On the inked style, colour gives away no more than an untrained network's features do."""
    root, _, _ = inked
    items = sequence_items(root, "train")
    assert len(items) >= 60
    colour, random_net = colour_precision_at_1(items), random_network_precision_at_1(items)
    assert colour <= 0.5 and colour <= random_net + 0.05, (colour, random_net)


def test_halftone_prints_only_ink_and_paper():
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    printed = halftone(grey, np.random.default_rng(0))
    assert set(np.unique(printed)) <= {0, 255}
    # darker tones print more ink, left to right
    ink = (printed == 0).mean(axis=0)
    assert ink[:8].mean() > ink[28:36].mean() > ink[-8:].mean()


@pytest.mark.parametrize("changes", [{"style": "pencil"}, {"extras_rate": 0.5},
                                     {"style": "inked", "extras_rate": -1}])
def test_bad_style_settings_are_config_errors(changes):
    with pytest.raises(ConfigError):
        preset_config("tiny", **changes)


def test_the_pipeline_and_make_demo_take_the_inked_preset():
    import subprocess

    from reid.stages.pipeline import REPO, PipelineConfig, stage_commands

    corpus = stage_commands(PipelineConfig(out="runs/x", preset="inked-demo"))["corpus"]
    assert corpus[corpus.index("--preset") + 1] == "inked-demo"
    with pytest.raises(ConfigError, match="preset"):
        PipelineConfig(preset="pencil")
    dry = subprocess.run(["make", "-n", "demo", "STYLE=inked"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "--preset inked-demo" in dry.stdout and "--out runs/demo-inked" in dry.stdout
    plain = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "--preset demo " in plain.stdout and "--out runs/demo " in plain.stdout
