"""The synthetic corpus: exact formats, determinism, consistency, no split leakage, content, faults, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reid.core.data import filtered, formats
from reid.core.data.ids import instance_id, parse_instance_id, parse_page_panel, parse_panel_id, parse_seq_id
from reid.core.data.synthetic import (
    PRESETS,
    SHAPE_ATTRIBUTES,
    SPLITS,
    SyntheticConfig,
    generate_corpus,
    main,
    parse_args,
    preset_config,
)
from reid.core.errors import ConfigError

FAULTS = {"corrupt_images": 2, "missing_images": 1, "offpage_partial": 3, "offpage_whole": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    return out, generate_corpus(out, preset_config("tiny"))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("faulty"))
    return out, generate_corpus(out, preset_config("tiny", **FAULTS))


@pytest.fixture(scope="module")
def by_series(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("by_series"))
    return out, generate_corpus(out, preset_config("tiny", series=3, pages=2, cast=3, split_by="series"))


def _hashes(root: str) -> dict[str, str]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _instances(root: str) -> pd.DataFrame:
    return pd.read_csv(f"{root}/data/ssl/merged_face_body.csv", dtype={"page_id": str})


def _instance_ids(instances: pd.DataFrame) -> list[str]:
    """The instance id of every row of the instance CSV as written (its page_id column unparsed)."""
    columns = (instances[c] for c in ("series_id", "page_id", "type", "index"))
    return [instance_id(s, *parse_page_panel(p), t, i) for s, p, t, i in zip(*columns, strict=True)]


def _truth(root: str) -> pd.DataFrame:
    return pd.read_csv(f"{root}/ground_truth.csv", dtype={"page_id": str}, keep_default_na=False)


def _sequences(root: str, split: str) -> list[dict]:
    with open(f"{root}/data/comics_seq/{split}_sequences.json") as f:
        return json.load(f)


def _panel_sizes(root: str) -> dict[tuple[int, str], tuple[int, int]]:
    sizes = {}
    for series in os.listdir(f"{root}/raw_panel_images"):
        for name in os.listdir(f"{root}/raw_panel_images/{series}"):
            with Image.open(f"{root}/raw_panel_images/{series}/{name}") as im:
                sizes[(int(series), name[:-4])] = im.size
    return sizes


# --------------------------------------------------------------------------------------- determinism


def test_same_config_gives_same_bytes_whatever_the_worker_count(tiny, tmp_path):
    root, _ = tiny
    generate_corpus(str(tmp_path), preset_config("tiny"), workers=2)
    first, second = _hashes(root), _hashes(str(tmp_path))
    assert len(first) > 30
    assert first == second


def test_another_seed_gives_another_corpus(tiny, tmp_path):
    root, summary = tiny
    other = generate_corpus(str(tmp_path), preset_config("tiny", seed=1))
    assert set(other.series_ids).isdisjoint(summary.series_ids) or _hashes(root) != _hashes(str(tmp_path))
    assert not _instances(root).equals(_instances(str(tmp_path)))


# --------------------------------------------------------------------------------------- formats


def test_files_have_the_seed_names_columns_and_keys(tiny):
    root, summary = tiny
    assert sorted(os.listdir(f"{root}/data/ssl")) == [
        "filtered_all_body.csv", "filtered_all_face.csv", "merged_face_body.csv"]
    assert sorted(os.listdir(f"{root}/data/comics_seq")) == sorted(
        [f"{s}_sequences.json" for s in ("train", "validation", "test")]
        + [f"{s}_char_{k}.json" for s in ("train", "val", "test") for k in ("faces", "bodies")])
    with open(f"{root}/data/ssl/merged_face_body.csv") as f:
        assert f.readline().strip() == "series_id,page_id,type,index,char_index,x_0,y_0,x1,y_1,score"
    for type_, pattern in (("face", r"^.*/comics_crops_large_faces/\d{4}/\d+_\d+/\d+\.jpg$"),
                           ("body", r"^.*/comics_crops/\d{4}/\d+_\d+/bodies/\d+\.jpg$")):
        filtered = pd.read_csv(f"{root}/data/ssl/filtered_all_{type_}.csv", dtype={"page_id": str})
        assert list(filtered.columns) == ["img_path", "series_id", "page_id", "index", "char_index"]
        assert len(filtered) > 0 and filtered["img_path"].str.match(pattern).all()
        ends = filtered["series_id"].astype(str) + "/" + filtered["page_id"] + (
            "/bodies/" if type_ == "body" else "/") + filtered["index"].astype(str) + ".jpg"
        assert all(p.endswith(e) for p, e in zip(filtered["img_path"], ends, strict=True))
    instances = _instances(root)
    assert instances["page_id"].str.fullmatch(r"\d+_\d+").all()
    assert set(instances["type"]) == {"face", "body"}
    assert all(1000 <= s <= 9999 for s in summary.series_ids)
    kinds = defaultdict(int)
    for split in SPLITS:
        for seq in _sequences(root, split):
            assert set(seq) == {"seq_id", "annotations"}
            for annotation in seq["annotations"]:
                assert set(annotation) == {"charId", "charInstances"}
                assert re.fullmatch(r"[0-9a-f]{10}", annotation["charId"])
                for inst in annotation["charInstances"]:
                    assert set(inst) <= {"face", "body", "speechBubbles"} and inst
                    if set(inst) == {"speechBubbles"}:
                        kinds["speech only"] += 1  # an off-panel speaker
                    kinds["no face" if "face" not in inst else "face"] += 1
                    kinds["no body" if "body" not in inst else "body"] += 1
                    kinds["bubbles" if "speechBubbles" in inst else "no bubbles"] += 1
    assert all(kinds[k] > 0 for k in ("no face", "no body", "bubbles", "no bubbles", "speech only")), kinds


def test_panel_images_are_jpegs_of_varied_size_at_the_comics_paths(tiny):
    root, summary = tiny
    names = []
    for folder, _, files in os.walk(f"{root}/raw_panel_images"):
        names += [os.path.relpath(os.path.join(folder, f), f"{root}/raw_panel_images") for f in files]
    assert len(names) == summary.panels and all(re.fullmatch(r"\d{4}/\d+_\d+\.jpg", n) for n in names)
    sizes = set()
    for name in names:
        with Image.open(f"{root}/raw_panel_images/{name}") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 200 <= im.width <= 400 and 200 <= im.height <= 400
            sizes.add(im.size)
    assert len(sizes) > summary.panels // 2


def test_the_project_readers_accept_the_generated_files(tiny):
    root, summary = tiny
    instances = formats.read_instances(f"{root}/data/ssl/merged_face_body.csv")
    assert len(instances) == summary.instances == summary.faces + summary.bodies
    known = set(instances["instance_id"])
    seq_root = f"{root}/data/comics_seq"
    for split in SPLITS:
        sequences = formats.read_split(seq_root, split, known)
        assert len(sequences) == summary.sequences[split] > 0
        for kind in ("char_faces", "char_bodies"):
            char_map = formats.read_char_map(formats.split_file(seq_root, split, kind), known)
            assert set(char_map) <= {c.char_id for s in sequences for c in s.characters}
    for type_ in ("face", "body"):
        listed = filtered.read_filtered(f"{root}/data/ssl/filtered_all_{type_}.csv", type_)
        assert set(listed["instance_id"]) <= known


# --------------------------------------------------------------------------------------- consistency


def test_sequences_agree_with_instances_images_and_ground_truth(tiny):
    root, _ = tiny
    instances = _instances(root)
    instances["instance_id"] = _instance_ids(instances)
    char_index = dict(zip(instances["instance_id"], instances["char_index"], strict=True))
    identity = dict(zip(*(_truth(root)[c] for c in ("instance_id", "identity")), strict=True))
    charid_identity = {}
    identity_windows = defaultdict(set)
    for split in SPLITS:
        for seq in _sequences(root, split):
            panels = parse_seq_id(seq["seq_id"])
            assert len({(p.series, p.page) for p in panels}) == 1
            assert [p.panel for p in panels] == list(range(panels[0].panel, panels[0].panel + 4))
            assert all(os.path.exists(formats.panel_image_path(root, p)) for p in panels)
            char_ids = [a["charId"] for a in seq["annotations"]]
            assert len(char_ids) == len(set(char_ids))
            seq_identities = []
            for a in seq["annotations"]:
                ids = [inst[k] for inst in a["charInstances"] for k in ("face", "body") if k in inst]
                assert ids and all(i in char_index for i in ids)
                assert len({identity[i] for i in ids}) == 1  # one charId = one character
                seq_identities.append(identity[ids[0]])
                charid_identity[a["charId"]] = identity[ids[0]]
                identity_windows[identity[ids[0]]].add(seq["seq_id"])
                for inst in a["charInstances"]:
                    if "face" in inst and "body" in inst:
                        face, body = parse_instance_id(inst["face"]), parse_instance_id(inst["body"])
                        assert face.panel_id == body.panel_id
                        assert char_index[inst["face"]] == char_index[inst["body"]]
                    in_panels = {parse_instance_id(inst[k]).panel_id for k in ("face", "body") if k in inst}
                    assert in_panels <= set(panels)
            assert len(seq_identities) == len(set(seq_identities))  # two charIds = two characters
    # labels are relative to a sequence: a character seen in two windows has two charIds
    assert any(len(w) > 1 for w in identity_windows.values())
    charids = pd.read_csv(f"{root}/ground_truth_charids.csv")
    assert charids["charId"].is_unique  # every (sequence, character) has its own charId
    assert dict(zip(charids["charId"], charids["identity"], strict=True)) == charid_identity


def test_char_maps_list_each_characters_faces_and_bodies(tiny):
    root, _ = tiny
    for split, short in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = {"face": defaultdict(list), "body": defaultdict(list)}
        for seq in _sequences(root, split):
            for a in seq["annotations"]:
                for inst in a["charInstances"]:
                    for kind in ("face", "body"):
                        if kind in inst:
                            expected[kind][a["charId"]].append(inst[kind])
        for kind, name in (("face", "faces"), ("body", "bodies")):
            with open(f"{root}/data/comics_seq/{short}_char_{name}.json") as f:
                assert json.load(f) == dict(expected[kind])


def test_boxes_are_ints_on_the_page_and_faces_lie_in_their_bodies(tiny):
    root, _ = tiny
    instances = _instances(root)
    sizes = _panel_sizes(root)
    for c in ("x_0", "y_0", "x1", "y_1"):
        assert instances[c].dtype == np.int64
    for row in instances.itertuples():
        w, h = sizes[(row.series_id, row.page_id)]
        assert 0 <= row.x_0 < row.x1 <= w and 0 <= row.y_0 < row.y_1 <= h
    pairs = instances.pivot_table(index=["series_id", "page_id", "char_index"], columns="type",
                                  values=["x_0", "y_0", "x1", "y_1"]).dropna()
    assert len(pairs) > 10
    assert (pairs[("x_0", "face")] >= pairs[("x_0", "body")]).all()
    assert (pairs[("y_0", "face")] >= pairs[("y_0", "body")]).all()
    assert (pairs[("x1", "face")] <= pairs[("x1", "body")]).all()
    assert (pairs[("y_1", "face")] <= pairs[("y_1", "body")]).all()
    assert (instances.groupby(["series_id", "page_id", "type"])["index"]
            .apply(lambda s: sorted(s) == list(range(len(s))))).all()


def test_ground_truth_has_one_row_per_instance(tiny):
    root, _ = tiny
    truth, instances = _truth(root), _instances(root)
    assert len(truth) == len(instances) and truth["instance_id"].is_unique
    merged = truth.merge(instances, on=["series_id", "page_id", "type", "index"], suffixes=("", "_csv"))
    assert len(merged) == len(truth)
    for c in ("char_index", "x_0", "y_0", "x1", "y_1"):
        assert (merged[c] == merged[f"{c}_csv"]).all()
    assert (truth["identity"].str.split("/").str[0].astype(int) == truth["series_id"]).all()
    assert set(truth["split"]) == set(SPLITS) and set(truth["fault"]) == {""}


# --------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("corpus, unit", [("tiny", "page"), ("by_series", "series")])
def test_no_page_or_series_is_in_two_splits(corpus, unit, request):
    root, summary = request.getfixturevalue(corpus)
    assert summary.split_by == unit
    truth = _truth(root)
    truth["page"] = [parse_page_panel(p)[0] for p in truth["page_id"]]
    unit_columns = ["series_id"] if unit == "series" else ["series_id", "page"]
    assert (truth.groupby(unit_columns)["split"].nunique() == 1).all()
    split_of = dict(zip(truth["instance_id"], truth["split"], strict=True))
    for split in SPLITS:
        sequences = _sequences(root, split)
        assert sequences, f"split {split} is empty"
        for seq in sequences:
            for a in seq["annotations"]:
                ids = [inst[k] for inst in a["charInstances"] for k in ("face", "body") if k in inst]
                assert ids and {split_of[i] for i in ids} == {split}


# --------------------------------------------------------------------------------------- content


def test_casts_recur_with_look_alikes_and_partial_instances(tiny):
    root, summary = tiny
    with open(f"{root}/cast.json") as f:
        casts = json.load(f)
    assert sorted(casts) == sorted(str(s) for s in summary.series_ids)
    look_alikes = 0
    for cast in casts.values():
        by_identity = {c["identity"]: c for c in cast}
        for c in cast:
            if c["lookalike_of"]:
                look_alikes += 1
                base = by_identity[c["lookalike_of"]]
                differing = [a for a in SHAPE_ATTRIBUTES if c[a] != base[a]]
                assert differing == [c["differs_in"]]
                assert all(c[a] == base[a] for a in ("skin", "hair", "shirt", "pants", "accent"))
    assert look_alikes >= len(casts)
    truth = _truth(root)
    panels_per_identity = truth.groupby("identity")["panel_id"].nunique()
    assert (panels_per_identity >= 2).mean() > 0.8
    chars_per_panel = truth.groupby("panel_id")["char_index"].nunique()
    assert chars_per_panel.max() <= 4 and (chars_per_panel >= 2).any()
    has = truth.groupby(["panel_id", "char_index"])["type"].agg(frozenset)
    assert (has == frozenset({"face"})).any() and (has == frozenset({"body"})).any()
    assert (has == frozenset({"face", "body"})).mean() > 0.6


def test_reidentification_is_learnable_but_not_trivial(tiny):
    """A colour-histogram nearest neighbour beats the majority guess but is far from perfect."""
    root, _ = tiny
    truth = _truth(root)
    for type_ in ("face", "body"):
        hits, majority = [], []
        for (series, _), rows in truth[truth["type"] == type_].groupby(["series_id", "type"]):
            features = []
            for row in rows.itertuples():
                with Image.open(f"{root}/raw_panel_images/{series}/{row.page_id}.jpg") as im:
                    crop = np.asarray(im.convert("RGB").crop((row.x_0, row.y_0, row.x1, row.y_1))) // 64
                codes = (crop[..., 0] * 16 + crop[..., 1] * 4 + crop[..., 2]).ravel()
                features.append(np.bincount(codes, minlength=64) / codes.size)
            features = np.asarray(features)
            distance = np.abs(features[:, None] - features[None]).sum(-1)
            np.fill_diagonal(distance, np.inf)
            identities = rows["identity"].to_numpy()
            hits += list(identities[distance.argmin(1)] == identities)
            majority += [rows["identity"].value_counts().iloc[0] / len(rows)] * len(rows)
        accuracy = float(np.mean(hits))
        assert np.mean(majority) + 0.1 < accuracy < 0.95, (type_, accuracy, np.mean(majority))


# --------------------------------------------------------------------------------------- faults


def test_faults_do_what_faults_json_says(faulty, tiny):
    root, summary = faulty
    clean_root, _ = tiny
    with open(f"{root}/faults.json") as f:
        faults = json.load(f)
    assert faults == summary.faults and {k: len(v) for k, v in faults.items()} == FAULTS
    referenced = set(zip(*(_instances(root)[c] for c in ("series_id", "page_id")), strict=True))
    for record in faults["corrupt_images"]:
        panel = parse_panel_id(record["panel_id"])
        assert (panel.series, panel.page_panel) in referenced
        with pytest.raises(OSError):
            with Image.open(f"{root}/{record['path']}") as im:
                im.load()
    assert {r["mode"] for r in faults["corrupt_images"]} == {"truncate", "garble"}
    for record in faults["missing_images"]:
        panel = parse_panel_id(record["panel_id"])
        assert not os.path.exists(f"{root}/{record['path']}")
        assert (panel.series, panel.page_panel) in referenced
    broken = {r["path"] for k in ("corrupt_images", "missing_images") for r in faults[k]}
    clean_hashes, faulty_hashes = _hashes(clean_root), _hashes(root)
    for path, digest in clean_hashes.items():
        if path.startswith("raw_panel_images") and path not in broken:
            assert faulty_hashes[path] == digest
    # off-page boxes: only the listed rows differ from the clean corpus
    sizes = _panel_sizes(clean_root)
    clean, bad = _instances(clean_root), _instances(root)
    bad["instance_id"] = _instance_ids(bad)
    changed = set(bad.loc[(clean != bad.drop(columns="instance_id")).any(axis=1), "instance_id"])
    assert changed == {r["instance_id"] for k in ("offpage_partial", "offpage_whole") for r in faults[k]}
    box = bad.set_index("instance_id")[["x_0", "y_0", "x1", "y_1"]]
    for kind in ("offpage_partial", "offpage_whole"):
        for record in faults[kind]:
            x0, y0, x1, y1 = box.loc[record["instance_id"]]
            assert [x0, y0, x1, y1] == record["written"] and x1 > x0 and y1 > y0
            iid = parse_instance_id(record["instance_id"])
            w, h = sizes[(iid.series, iid.panel_id.page_panel)]
            overlap = (min(x1, w) - max(x0, 0)) > 0 and (min(y1, h) - max(y0, 0)) > 0
            inside = x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
            assert (overlap and not inside) if kind == "offpage_partial" else not overlap
    truth = _truth(root)
    assert set(truth.loc[truth["fault"] != "", "fault"]) == {
        "corrupt_image", "missing_image", "offpage_partial", "offpage_whole"}
    # the readers still parse the faulty CSV: catching off-page boxes is the crop stage's job
    assert len(formats.read_instances(f"{root}/data/ssl/merged_face_body.csv")) == summary.instances


# --------------------------------------------------------------------------------------- config / CLI


def test_cli_applies_preset_then_yaml_then_flags(tmp_path, capsys):
    yaml_path = tmp_path / "synthetic.yaml"
    yaml_path.write_text("pages: 5\ncast: 3\n")
    out, cfg, workers = parse_args(["--out", "x", "--preset", "bench", "--config", str(yaml_path),
                                    "--pages", "7", "--workers", "3", "--offpage-whole", "2"])
    assert (out, workers) == ("x", 3)
    assert cfg == SyntheticConfig(**{**PRESETS["bench"], "pages": 7, "cast": 3, "offpage_whole": 2})
    summary = main(["--out", str(tmp_path / "corpus"), "--preset", "tiny", "--series", "1", "--pages", "1",
                    "--seed", "7"])
    assert len(summary.series_ids) == 1 and summary.split_by == "page"
    assert "instances/s" in capsys.readouterr().out
    with open(tmp_path / "corpus" / "summary.json") as f:
        record = json.load(f)
    assert record["config"]["seed"] == 7 and record["instances"] == summary.instances


@pytest.mark.parametrize("changes", [{"panels_per_page": 3}, {"series": 2, "split_by": "series"},
                                     {"split_fractions": (0.5, 0.5, 0.5)}, {"split_by": "seq"},
                                     {"missing_images": -1}])
def test_bad_config_is_rejected_before_any_work(changes):
    with pytest.raises(ConfigError):
        preset_config("tiny", **changes)


def test_more_faults_than_panels_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="corrupt_images"):
        generate_corpus(str(tmp_path), preset_config("tiny", series=1, pages=1, corrupt_images=50))
