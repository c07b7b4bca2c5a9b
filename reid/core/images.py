"""Image decoding with a pixel limit (untrusted input) and JPEG encoding."""

from __future__ import annotations

import io as _io
import os
import stat
import warnings
from collections.abc import Sequence

import pyarrow.fs as pafs
from PIL import Image

from reid.core import io
from reid.core.errors import DataFormatError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20  # a COMICS panel JPEG is well under 1 MiB


def read_image_file(path: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, inside: Sequence[str] = (),
                    what: str = "image") -> bytes:
    """The bytes of an image file of an untrusted corpus, checked before they are read: a regular file (not a
    directory, device or pipe) of at most ``max_bytes`` (a stat, then a bounded read) whose real path (symlinks
    resolved) lies in one of the ``inside`` folders (local paths). Raises DataFormatError naming ``path`` and the
    reason, ``what`` leading it (``"panel image not found"``)."""
    fs, inner = io.resolve(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        info = fs.get_file_info(inner)
        kind, size = info.type, info.size
        if kind == pafs.FileType.NotFound:
            raise DataFormatError(path, f"{what} not found")
        regular = kind == pafs.FileType.File
    else:
        real = os.path.realpath(inner)
        roots = [os.path.realpath(io.absolute(r)) for r in inside]
        if roots and not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            raise DataFormatError(path, f"{what} is a symlink leading outside the corpus (to {real})")
        try:
            st = os.stat(inner)
        except FileNotFoundError:
            raise DataFormatError(path, f"{what} not found") from None
        except OSError as exc:
            raise DataFormatError(path, f"{what} cannot be read ({exc.strerror or exc})") from None
        kind = pafs.FileType.Directory if stat.S_ISDIR(st.st_mode) else None
        regular, size = stat.S_ISREG(st.st_mode), st.st_size
    if kind == pafs.FileType.Directory:
        raise DataFormatError(path, f"{what} is a directory, not a file")
    if not regular:
        raise DataFormatError(path, f"{what} is not a regular file")
    if size is not None and size > max_bytes:
        raise DataFormatError(path, f"{what} is {size} bytes, more than the limit of {max_bytes} "
                              "(--max-image-bytes)")
    try:
        with fs.open_input_stream(inner) as stream:
            data = stream.read(max_bytes + 1)  # the file may have grown since the stat
    except FileNotFoundError:
        raise DataFormatError(path, f"{what} not found") from None
    except OSError as exc:
        raise DataFormatError(path, f"{what} cannot be read ({exc})") from None
    if len(data) > max_bytes:
        raise DataFormatError(path, f"{what} is more than the limit of {max_bytes} bytes (--max-image-bytes)")
    return data


def decode_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB PIL image; refuse images over ``max_pixels`` (decompression bombs).

    Raises DataFormatError naming ``source`` for truncated, corrupt or oversized images.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(_io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DataFormatError(source, f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
            image.load()
    except DataFormatError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataFormatError(source, f"cannot decode image: {exc}") from None
    return image.convert("RGB") if image.mode != "RGB" else image


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    out = _io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
