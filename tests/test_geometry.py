"""Crop geometry pinned on hand-computed boxes."""

import pytest

from reid.core.geometry import EmptyBoxError, body_crop_box, face_crop_box


def test_face_centre():
    # 20x10 box centred at (50, 40): longer side 20 * 1.2 = 24 -> half 12 -> (38, 28, 62, 52)
    assert face_crop_box(40, 35, 60, 45, 200, 100) == (38, 28, 62, 52)


def test_face_truncates_to_int():
    # 10x10 at (10.5..20.5): centre 15.5, half 6 -> (9.5, 9.5, 21.5, 21.5) -> ints (9, 9, 21, 21)
    assert face_crop_box(10.5, 10.5, 20.5, 20.5, 100, 100) == (9, 9, 21, 21)


def test_face_at_edge_and_corner_is_clipped():
    # centre (5, 50), side 12 -> x from -1 to 11: clipped at the left edge
    assert face_crop_box(0, 45, 10, 55, 100, 100) == (0, 44, 11, 56)
    # bottom-right corner: centre (95, 95), side 24 -> (83, 83, 107, 107) -> clipped to (83, 83, 100, 100)
    assert face_crop_box(85, 85, 105, 105, 100, 100) == (83, 83, 100, 100)


def test_body_as_given_and_clipped():
    assert body_crop_box(5, 10, 60, 120, 100, 200) == (5, 10, 60, 120)
    assert body_crop_box(-10, -5, 30.9, 250, 100, 200) == (0, 0, 30, 200)


@pytest.mark.parametrize("fn", [face_crop_box, body_crop_box])
def test_off_page_and_empty_are_errors(fn):
    with pytest.raises(EmptyBoxError, match="no pixels inside the 100x100 page"):
        fn(150, 150, 170, 170, 100, 100)
    with pytest.raises(EmptyBoxError):
        fn(-50, 10, -20, 30, 100, 100)
    with pytest.raises(EmptyBoxError):
        fn(10, 10, 10, 10, 100, 100)


def test_face_box_off_page_is_an_error_even_if_its_enlargement_touches_the_page():
    # y 247..279 on a 245-high page: wholly off; scaled x1.2 it would reach y 243.8
    with pytest.raises(EmptyBoxError, match="no pixels inside the 241x245 page"):
        face_crop_box(163, 247, 195, 279, 241, 245)
