"""Readers accept the shipped formats exactly and reject bad input with file/row/reason."""

import json
import re
import textwrap
import time

import pytest

from reid.core.data import filtered, formats
from reid.core.errors import DataFormatError

MERGED = textwrap.dedent("""\
    series_id,page_id,type,index,char_index,x_0,y_0,x1,y_1,extra
    1443,58_6,face,0,0,10,12,40,44,0.9
    1443,58_6,body,0,0,5,10,60,120,0.8
    1443,58_6,face,1,1,70,10,90,35,0.7
    1443,58_7,body,0,0,1.5,2,30.5,90,0.1
    1443,58_8,face,0,0,1,2,3,4,0.1
    1443,58_9,body,0,0,1,2,3,4,0.1
    """)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _seq(seq_id, annotations):
    return {"seq_id": seq_id, "annotations": annotations}


SEQ_ID = "1443_58_6+1443_58_7+1443_58_8+1443_58_9"


def test_read_instances_accepts_seed_format(tmp_path):
    frame = formats.read_instances(_write(tmp_path, "merged_face_body.csv", MERGED))
    assert len(frame) == 6
    assert list(frame["instance_id"][:3]) == ["1443_58_6_face_0", "1443_58_6_body_0", "1443_58_6_face_1"]
    assert frame["panel_id"][3] == "1443_58_7"
    assert frame["x_0"][3] == 1.5 and frame["y_1"][1] == 120
    assert "extra" not in frame.columns


@pytest.mark.parametrize("mutate,message,line", [
    (lambda t: t.replace("char_index,", "char_idx,"), "missing column.*char_index", None),
    (lambda t: t.replace("1443,58_6,face,1", "14x3,58_6,face,1"), "series_id.*must be an integer", "line 4"),
    (lambda t: t.replace("1443,58_6,face,1,1", "1443,58_6,face,1.5,1"), "index.*must be an integer", "line 4"),
    (lambda t: t.replace("58_7,body", "58-7,body"), "page_id '58-7'", "line 5"),
    (lambda t: t.replace("58_7,body", "58_7,hand"), "type must be", "line 5"),
    (lambda t: t.replace("70,10,90,35", "70,10,60,35"), r"x1 \(60.0\) < x_0 \(70.0\)", "line 4"),
    (lambda t: t.replace("70,10,90,35", "70,10,90,5"), r"y_1 \(5.0\) < y_0", "line 4"),
    (lambda t: t.replace("70,10,90,35", "70,,90,35"), "y_0.*must be a number", "line 4"),
    (lambda t: t + "1443,58_6,face,0,3,1,1,2,2,0\n", "appears twice", "line 8"),
])
def test_read_instances_rejects(tmp_path, mutate, message, line):
    path = _write(tmp_path, "merged_face_body.csv", mutate(MERGED))
    with pytest.raises(DataFormatError, match=message) as info:
        formats.read_instances(path)
    assert path in str(info.value)
    if line:
        assert info.value.where == line


def test_bad_rows_are_collected_not_raised_when_asked(tmp_path):
    """Every kind of bad row at once: each one recorded with its line and reason, the good rows kept."""
    text = MERGED.replace("1443,58_6,face,1,1,70,10,90,35", "1443,58_6,face,1,1,70,10,60,35")  # inverted, line 4
    text = text.replace("58_7,body,0,0,1.5", "../../etc_1,body,0,0,1.5")  # a path as page id, line 5
    text += "1443,58_6,face,0,3,1,1,2,2,0\n"  # duplicate instance id, line 8
    text += "1443,58_10,hand,0,0,1,1,2,2,0\n"  # unknown type, line 9
    text += "1443,58_11,face,0,0,nan,1,2,2,0\n"  # not a finite number, line 10
    text += "1443,58_12,face,0,0,1,inf,2,2,0\n"  # line 11
    text += "1443,58_13,face,x,0,1,1,2,2,0\n"  # unparsable integer, line 12
    path = _write(tmp_path, "merged_face_body.csv", text)
    bad: list[formats.BadRow] = []
    frame = formats.read_instances(path, bad=bad)
    assert [(b.where, b.reason) for b in bad] == [
        ("line 4", "x1 (60.0) < x_0 (70.0)"),
        ("line 5", "page_id '../../etc_1' is not '<page>_<panel>' with integer parts"),
        ("line 9", "type must be 'face' or 'body', got 'hand'"),
        ("line 10", "column 'x_0' must be a number, got 'nan'"),
        ("line 11", "column 'y_0' must be a number, got 'inf'"),
        ("line 12", "column 'index' must be an integer, got 'x'"),
        ("line 8", "instance '1443_58_6_face_0' appears twice"),
    ]
    assert all(b.source == path for b in bad)
    assert list(frame["instance_id"]) == ["1443_58_6_face_0", "1443_58_6_body_0", "1443_58_8_face_0",
                                          "1443_58_9_body_0"]
    assert list(frame["line"]) == [2, 3, 6, 7]
    assert bad[0].as_error("input") == {"id": "line 4", "shard": "", "stage": "input", "source": path,
                                        "reason": "x1 (60.0) < x_0 (70.0)"}


def test_ids_no_corpus_reaches_are_bad_rows(tmp_path):
    """Ids far beyond any corpus (page id 0_100000000000 would make the label plan's sliding windows loop ~1e11
    times; 5,000 digits would overflow Python's int conversion) are bad rows with the limit in the reason."""
    text = MERGED
    text += "1443,0_100000000000,face,0,0,1,1,2,2,0\n"  # line 8: panel
    text += f"1443,{'7' * 5000}_1,face,0,0,1,1,2,2,0\n"  # line 9: page, 5,000 digits
    text += "1443,100000_1,face,0,0,1,1,2,2,0\n"  # line 10: page
    text += "10000000000000,58_6,face,5,0,1,1,2,2,0\n"  # line 11: series
    text += "1443,58_6,face,1000000,0,1,1,2,2,0\n"  # line 12: index
    text += "1443,58_6,face,7,99999999,1,1,2,2,0\n"  # line 13: char_index
    text += "9999999,99999_999,face,9999,9999,1,1,2,2,0\n"  # line 14: every part at its limit: kept
    path = _write(tmp_path, "merged_face_body.csv", text)
    bad: list[formats.BadRow] = []
    started = time.perf_counter()
    frame = formats.read_instances(path, bad=bad)
    assert time.perf_counter() - started < 5
    assert [(b.where, b.reason) for b in bad] == [
        ("line 8", "page_id '0_100000000000': panel is larger than any corpus uses (at most 999)"),
        ("line 9", f"page_id '{'7' * 40}...' (5002 characters): page is larger than any corpus uses (at most 99999)"),
        ("line 10", "page_id '100000_1': page is larger than any corpus uses (at most 99999)"),
        ("line 11", "series_id '10000000000000' is larger than any corpus uses (at most 9999999)"),
        ("line 12", "index '1000000' is larger than any corpus uses (at most 9999)"),
        ("line 13", "char_index '99999999' is larger than any corpus uses (at most 9999)"),
    ]
    assert list(frame["line"]) == [2, 3, 4, 5, 6, 7, 14]
    with pytest.raises(DataFormatError, match="line 8: page_id '0_100000000000': panel is larger"):
        formats.read_instances(path)


def test_sequences_naming_ids_no_corpus_reaches_are_bad_rows(tmp_path):
    known = set(formats.read_instances(_write(tmp_path, "m.csv", MERGED))["instance_id"])
    data = _good_sequences()
    huge = json.loads(json.dumps(data[0]))
    huge["seq_id"] = "1443_58_6+1443_58_7+1443_58_8+1443_58_100000000000"
    path = _write(tmp_path, "train_sequences.json", json.dumps([*data, huge]))
    sequences, bad = formats.read_sequences_checked(path, formats.RowPolicy(max_bad_fraction=1.0), known)
    assert [s.seq_id for s in sequences] == [SEQ_ID]
    (row,) = bad
    assert row.where.startswith("entry 1") and "panel id '1443_58_100000000000': panel 100000000000 is larger " \
        "than any corpus uses (at most 999)" in row.reason


def test_row_policy_refuses_the_wrong_file_not_a_few_bad_rows():
    bad = [formats.BadRow("f.csv", f"line {i}", "why") for i in range(2, 5)]
    formats.RowPolicy(max_bad_fraction=0.01).check("f.csv", bad, 1000)  # 3 of 1000: recorded, goes on
    formats.RowPolicy().check("f.csv", [], 0)
    with pytest.raises(DataFormatError, match=r"f.csv: 3 of 100 rows are bad .*0.01.*First: line 2: why"):
        formats.RowPolicy(max_bad_fraction=0.01).check("f.csv", bad, 100)


def test_bad_sequence_entries_are_left_out_and_recorded(tmp_path):
    known = set(formats.read_instances(_write(tmp_path, "m.csv", MERGED))["instance_id"])
    data = _good_sequences()
    unknown = json.loads(json.dumps(data[0]))
    unknown["seq_id"] = "1443_58_7+1443_58_8+1443_58_9+1443_58_10"
    unknown["annotations"] = [{"charId": "z", "charInstances": [{"face": "1443_58_8_face_9"}]}]
    data += [unknown, data[0], {"seq_id": "1443_1"}]
    path = _write(tmp_path, "train_sequences.json", json.dumps(data))
    sequences, bad = formats.read_sequences_checked(path, formats.RowPolicy(max_bad_fraction=1.0), known)
    assert [s.seq_id for s in sequences] == [SEQ_ID]
    assert [b.where.split(" (")[0] for b in bad] == ["entry 1", "entry 2", "entry 3"]
    assert bad[0].reason == "charId 'z': instance '1443_58_8_face_9' is absent from the instance CSV"
    assert bad[0].where == "entry 1 (seq_id '1443_58_7+1443_58_8+1443_58_9+1443_58_10')"
    assert "appears twice" in bad[1].reason
    with pytest.raises(DataFormatError, match="3 of 4 sequences are bad"):
        formats.read_sequences_checked(path, formats.RowPolicy(), known)
    with pytest.raises(DataFormatError, match="entry 1 .*absent from the instance CSV"):
        formats.read_sequences_checked(path, formats.RowPolicy(strict=True), known)


def test_read_instances_missing_and_empty(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        formats.read_instances(str(tmp_path / "nope.csv"))
    with pytest.raises(DataFormatError, match="empty"):
        formats.read_instances(_write(tmp_path, "empty.csv", ""))
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataFormatError, match="not a text CSV file|not a valid CSV|missing column"):
        formats.read_instances(str(binary), bad=[])  # a wrong file is refused even when rows may be skipped


def test_read_filtered_parses_last_path_parts(tmp_path):
    faces = _write(tmp_path, "filtered_all_face.csv",
                   "img_path,other\n/data/comics_crops_large_faces/1443/58_6/0.jpg,x\ncrops/1443/58_6/1.jpg,y\n")
    bodies = _write(tmp_path, "filtered_all_body.csv",
                    "img_path\n/mnt/a/b/comics_crops/1443/58_6/bodies/0.jpg\n")
    f = filtered.read_filtered(faces, "face")
    assert list(f["instance_id"]) == ["1443_58_6_face_0", "1443_58_6_face_1"]
    b = filtered.read_filtered(bodies, "body")
    assert list(b["instance_id"]) == ["1443_58_6_body_0"]
    bad = _write(tmp_path, "bad_body.csv", "img_path\ncomics_crops/1443/58_6/0.jpg\n")
    with pytest.raises(DataFormatError, match="bodies") as info:
        filtered.read_filtered(bad, "body")
    assert info.value.where == "line 2"
    with pytest.raises(DataFormatError, match="missing column"):
        filtered.read_filtered(_write(tmp_path, "nocol.csv", "path\na/1/2_3/4.jpg\n"), "face")


def _good_sequences():
    return [_seq(SEQ_ID, [
        {"charId": "a1", "charInstances": [
            {"face": "1443_58_6_face_0", "body": "1443_58_6_body_0", "speechBubbles": [[1, 2, 3, 4]]},
            {"body": "1443_58_7_body_0"}]},
        {"charId": "b2", "charInstances": [{"face": "1443_58_6_face_1"}, {"face": "1443_58_8_face_0"}]},
    ])]


def test_read_sequences_accepts_optional_keys(tmp_path):
    known = set(formats.read_instances(_write(tmp_path, "m.csv", MERGED))["instance_id"])
    path = _write(tmp_path, "train_sequences.json", json.dumps(_good_sequences()))
    (seq,) = formats.read_sequences(path, known)
    assert seq.seq_id == SEQ_ID and seq.series_id == 1443
    a1, b2 = seq.characters
    assert a1.instances[1].face is None and a1.instances[1].body == "1443_58_7_body_0"
    assert a1.instances[0].speech_bubbles == ([1, 2, 3, 4],)
    assert b2.instances[0].panel_id == "1443_58_6"


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s[0].update(seq_id="1443_58_6+1443_58_7+1443_58_8"), "3 '\\+'-joined panel ids"),
    (lambda s: s[0]["annotations"][1].update(charId="a1"), "charId 'a1' appears twice"),
    (lambda s: s[0]["annotations"][0]["charInstances"][0].update(face="1443_58_6_fac_0"), "instance id"),
    (lambda s: s[0]["annotations"][0]["charInstances"][0].update(face="1443_58_6_face_7"), "absent from the instance CSV"),
    (lambda s: s[0]["annotations"][0]["charInstances"][0].update(face="1443_58_6_body_0"), "is a body"),
    (lambda s: s[0]["annotations"][0]["charInstances"][0].update(face="1443_59_6_face_0"), "not in the sequence"),
    (lambda s: s[0]["annotations"][0].pop("charId"), "no 'charId'"),
    (lambda s: s[0].pop("seq_id"), "missing key 'seq_id'"),
    (lambda s: s.append(s[0]), "appears twice"),
])
def test_read_sequences_rejects(tmp_path, mutate, message):
    known = set(formats.read_instances(_write(tmp_path, "m.csv", MERGED))["instance_id"]) | {"1443_59_6_face_0"}
    data = _good_sequences()
    mutate(data)
    path = _write(tmp_path, "train_sequences.json", json.dumps(data))
    with pytest.raises(DataFormatError, match=message) as info:
        formats.read_sequences(path, known)
    assert "train_sequences.json" in str(info.value) and "entry" in str(info.value)


def _instance(s: list) -> dict:
    return s[0]["annotations"][0]["charInstances"][0]


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s[0]["annotations"][0].update(charInstances=None), "'charInstances' must be a list, got null"),
    (lambda s: s[0]["annotations"][0].update(charInstances=5), "'charInstances' must be a list, got 5 \\(a number"),
    (lambda s: _instance(s).update(speechBubbles=3), "instance 0: 'speechBubbles' must be a list, got 3"),
    (lambda s: _instance(s).update(speechBubbles="xy"), "'speechBubbles' must be a list, got 'xy' \\(a string"),
    (lambda s: _instance(s).update(face=5), "'face' must be an instance id string, got 5"),
    (lambda s: _instance(s).update(body=["1443_58_6_body_0"]), "'body' must be an instance id string, got \\["),
    (lambda s: s[0].update(seq_id=7), "'seq_id' must be a string, got 7"),
    (lambda s: s[0].update(seq_id=None), "'seq_id' must be a string, got null"),
    (lambda s: s[0].update(annotations=None), "'annotations' must be a list"),
    (lambda s: s[0]["annotations"].append([1, 2]), "annotation 2 has no 'charId'"),
])
def test_malformed_sequence_entries_are_bad_rows_not_tracebacks(tmp_path, mutate, message):
    """A JSON value of the wrong type anywhere in an entry is that entry's bad row (file, entry, reason); with no
    list to collect into (--strict), a DataFormatError naming them: never a TypeError."""
    known = set(formats.read_instances(_write(tmp_path, "m.csv", MERGED))["instance_id"])
    data = _good_sequences()
    good = json.loads(json.dumps(data[0]))
    good["seq_id"] = "1443_58_6+1443_58_7+1443_58_8+1443_58_9"
    mutate(data)
    path = _write(tmp_path, "train_sequences.json", json.dumps([*data, good]))
    sequences, bad = formats.read_sequences_checked(path, formats.RowPolicy(max_bad_fraction=1.0), known)
    assert [s.seq_id for s in sequences] == [good["seq_id"]]
    (row,) = bad
    assert row.source == path and re.search(message, row.reason), row
    assert row.where == ("entry 0" if "seq_id" in message else f"entry 0 (seq_id {SEQ_ID!r})")
    with pytest.raises(DataFormatError, match=message) as info:
        formats.read_sequences(path, known)
    assert "train_sequences.json" in str(info.value) and "entry 0" in str(info.value)


def test_read_sequences_malformed_json(tmp_path):
    with pytest.raises(DataFormatError, match="not valid JSON.*line 1"):
        formats.read_sequences(_write(tmp_path, "x.json", "[{"))
    with pytest.raises(DataFormatError, match="must be a list"):
        formats.read_sequences(_write(tmp_path, "x.json", "{}"))


def test_char_map_and_split_aliases(tmp_path):
    root = tmp_path / "comics_seq"
    root.mkdir()
    (root / "validation_sequences.json").write_text("[]")
    (root / "val_char_faces.json").write_text(json.dumps({"a1": ["1443_58_6_face_0"]}))
    assert formats.split_file(str(root), "validation", "sequences").endswith("validation_sequences.json")
    faces = formats.split_file(str(root), "validation", "char_faces")
    assert faces.endswith("val_char_faces.json")
    assert formats.read_char_map(faces) == {"a1": ["1443_58_6_face_0"]}
    with pytest.raises(DataFormatError, match="no char_bodies file for split 'validation'"):
        formats.split_file(str(root), "validation", "char_bodies")
    with pytest.raises(DataFormatError, match="absent from the instance CSV"):
        formats.read_char_map(faces, known_instances=set())
    (root / "test_char_faces.json").write_text(json.dumps({"a1": "1443_58_6_face_0"}))
    with pytest.raises(DataFormatError, match="charId 'a1'"):
        formats.read_char_map(str(root / "test_char_faces.json"))


def test_panel_image_path():
    assert formats.panel_image_path("/c", "1014_14_0") == "/c/raw_panel_images/1014/14_0.jpg"
    assert formats.panel_image_path("s3://b/c", "1014_14_0") == "s3://b/c/raw_panel_images/1014/14_0.jpg"
