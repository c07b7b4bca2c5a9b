"""The image reader of an untrusted corpus: what a panel path may be, checked before any byte is read."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from reid.core.errors import DataFormatError
from reid.core.images import decode_image, encode_jpeg, read_image_file


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "raw_panel_images" / "1").mkdir(parents=True)
    (root / "raw_panel_images" / "1" / "0_0.jpg").write_bytes(encode_jpeg(Image.new("RGB", (8, 6), "red")))
    return root


def _reason(path, **kwargs) -> str:
    with pytest.raises(DataFormatError) as info:
        read_image_file(str(path), what="panel image", **kwargs)
    assert info.value.source == str(path)
    return info.value.reason


def test_a_plain_image_file_is_read(corpus):
    path = corpus / "raw_panel_images" / "1" / "0_0.jpg"
    (corpus / "raw_panel_images" / "1" / "0_1.jpg").symlink_to(path)  # a link inside the corpus is fine
    for name in ("0_0.jpg", "0_1.jpg"):
        data = read_image_file(str(corpus / "raw_panel_images" / "1" / name), inside=[str(corpus)])
        assert decode_image(data, name).size == (8, 6)


def test_paths_that_are_no_panel_image_are_refused_before_reading(corpus, tmp_path):
    """A directory, a symlink out of the corpus (to /dev/zero: read whole, it never ends), a link loop, a FIFO
    (a read would block), a file over the byte limit: each a DataFormatError naming the file and why."""
    folder = corpus / "raw_panel_images" / "1"
    (folder / "1_0.jpg").mkdir()
    (folder / "1_1.jpg").symlink_to("/dev/zero")
    (folder / "1_2.jpg").symlink_to(folder / "1_2.jpg")
    os.mkfifo(folder / "1_3.jpg")
    (tmp_path / "outside.jpg").write_bytes((folder / "0_0.jpg").read_bytes())
    (folder / "1_4.jpg").symlink_to(tmp_path / "outside.jpg")
    inside = [str(corpus)]
    assert _reason(folder / "1_0.jpg", inside=inside) == "panel image is a directory, not a file"
    assert _reason(folder / "1_1.jpg", inside=inside) == ("panel image is a symlink leading outside the corpus "
                                                          "(to /dev/zero)")
    assert _reason(folder / "1_1.jpg") == "panel image is not a regular file"  # no root given: still no device
    assert _reason(folder / "1_2.jpg", inside=inside).startswith("panel image cannot be read (")
    assert _reason(folder / "1_3.jpg", inside=inside) == "panel image is not a regular file"
    assert "outside the corpus" in _reason(folder / "1_4.jpg", inside=inside)
    assert _reason(folder / "9_9.jpg", inside=inside) == "panel image not found"
    size = (folder / "0_0.jpg").stat().st_size
    assert _reason(folder / "0_0.jpg", inside=inside, max_bytes=size - 1) == (
        f"panel image is {size} bytes, more than the limit of {size - 1} (--max-image-bytes)")


def test_a_file_is_never_read_past_the_byte_limit(corpus, monkeypatch):
    """The stat is checked first, and the read is bounded too: a file that grows after the stat is refused."""
    path = corpus / "raw_panel_images" / "1" / "0_0.jpg"
    size = path.stat().st_size
    real_stat = os.stat

    def stat_before_growth(p, *args, **kwargs):  # the file was 10 bytes when stat-ed
        result = real_stat(p, *args, **kwargs)
        return os.stat_result((*result[:6], 10, *result[7:])) if str(p) == str(path) else result

    monkeypatch.setattr(os, "stat", stat_before_growth)
    assert _reason(path, max_bytes=100) == "panel image is more than the limit of 100 bytes (--max-image-bytes)"
    assert len(read_image_file(str(path), max_bytes=size)) == size
