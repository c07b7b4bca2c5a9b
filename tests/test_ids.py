import pandas as pd
import pytest

from reid.core.data.ids import (
    IdError,
    PanelId,
    instance_id,
    instance_id_column,
    page_panel,
    panel_id,
    panel_id_column,
    panel_image_relpath,
    parse_instance_id,
    parse_page_panel,
    parse_panel_id,
    parse_seq_id,
    seq_id,
    seq_panel_ids,
)


def test_parse_instance_id_round_trip():
    iid = parse_instance_id("1443_58_6_face_0")
    assert (iid.series, iid.page, iid.panel, iid.type, iid.index) == (1443, 58, 6, "face", 0)
    assert str(iid) == "1443_58_6_face_0"
    assert iid.panel_id == PanelId(1443, 58, 6)
    assert str(parse_instance_id("1014_14_0_body_12")) == "1014_14_0_body_12"


@pytest.mark.parametrize("bad", ["1443_58_6_hand_0", "1443_58_face_0", "1443_58_6_face_x", "a_1_2_face_0",
                                 "1443_58_6_face_0_1", "", "1443_058_6_face_0"])
def test_parse_instance_id_rejects(bad):
    with pytest.raises(IdError, match="instance id"):
        parse_instance_id(bad)


def test_parse_panel_id():
    assert parse_panel_id("1014_14_0") == PanelId(1014, 14, 0)
    assert parse_panel_id("1014_14_0").page_panel == "14_0"
    for bad in ("1014_14", "1014_14_0_1", "x_1_2", "1014_-1_0"):
        with pytest.raises(IdError):
            parse_panel_id(bad)


def test_parse_seq_id():
    panels = parse_seq_id("1014_14_0+1014_14_1+1014_14_2+1014_14_3")
    assert [p.panel for p in panels] == [0, 1, 2, 3]
    with pytest.raises(IdError, match="3 '\\+'-joined"):
        parse_seq_id("1014_14_0+1014_14_1+1014_14_2")
    with pytest.raises(IdError, match="different series"):
        parse_seq_id("1014_14_0+1014_14_1+1014_14_2+1015_14_3")
    with pytest.raises(IdError, match="appears twice"):
        parse_seq_id("1014_14_0+1014_14_1+1014_14_1+1014_14_3")
    with pytest.raises(IdError, match="panel id"):
        parse_seq_id("1014_14_0+1014_14_1+1014_14+1014_14_3")


def test_ids_no_corpus_reaches_are_refused():
    """Bounded work per id: the plan's loops are linear in page and panel numbers."""
    assert parse_panel_id("9999999_99999_999") == PanelId(9999999, 99999, 999)
    with pytest.raises(IdError, match="panel id '0_0_100000000000': panel 100000000000 is larger than any corpus"):
        parse_panel_id("0_0_100000000000")
    with pytest.raises(IdError, match=r"panel id '1_9{38}\.\.\.\(5004 characters\)': page of 5000 digits is larger"):
        parse_panel_id(f"1_{'9' * 5000}_0")  # never converted: Python refuses ints of over 4,300 digits
    with pytest.raises(IdError, match="instance id '1_2_3_face_10000': index 10000 is larger"):
        parse_instance_id("1_2_3_face_10000")
    with pytest.raises(IdError, match="series 10000000 is larger"):
        parse_seq_id("10000000_1_0+10000000_1_1+10000000_1_2+10000000_1_3")


def test_builders_and_parsers_agree():
    assert panel_id(1443, 58, 6) == str(PanelId(1443, 58, 6)) == "1443_58_6"
    assert instance_id(1443, 58, 6, "face", 0) == str(parse_instance_id("1443_58_6_face_0"))
    assert page_panel(58, 6) == PanelId(1443, 58, 6).page_panel == "58_6"
    assert parse_page_panel("58_6") == parse_page_panel("058_06") == (58, 6)  # the corpus files may pad
    for bad in ("58", "58_6_1", "a_6", "58_-6", ""):
        with pytest.raises(IdError, match="page id"):
            parse_page_panel(bad)
    panels = [PanelId(1014, 14, k) for k in range(4)]
    assert seq_id(panels) == seq_id(map(str, panels)) == "1014_14_0+1014_14_1+1014_14_2+1014_14_3"
    assert seq_panel_ids(seq_id(panels)) == [str(p) for p in panels]
    assert parse_seq_id(seq_id(panels)) == tuple(panels)
    assert panel_image_relpath(PanelId(1014, 14, 3)) == "raw_panel_images/1014/14_3.jpg"


def test_id_columns_equal_the_scalar_builders():
    frame = pd.DataFrame({"series": [0, 1443, 9999999], "page": [0, 58, 99999], "panel": [0, 6, 999],
                          "type": ["face", "body", "face"], "index": [0, 12, 9999]})
    panels = panel_id_column(frame["series"], frame["page"], frame["panel"])
    assert list(panels) == [panel_id(*row) for row in frame[["series", "page", "panel"]].itertuples(index=False)]
    instances = instance_id_column(panels, frame["type"], frame["index"])
    assert list(instances) == [instance_id(*row) for row in frame.itertuples(index=False)]
