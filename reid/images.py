"""Image decoding with a pixel limit (untrusted input) and JPEG encoding."""

from __future__ import annotations

import io as _io
import warnings

from PIL import Image

from reid.errors import DataFormatError

DEFAULT_MAX_PIXELS = 50_000_000


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
