"""Transforms: output contract, the resize-and-pad geometry, determinism of eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reid.core.data.augment import ResizePadSquare, eval_transform, ssl_strong, weak_body, weak_face

PIPELINES = {
    "ssl_strong_face": lambda s: ssl_strong(s, "face"),
    "ssl_strong_body": lambda s: ssl_strong(s, "body"),
    "weak_face": weak_face,
    "weak_body": weak_body,
    "eval_face": lambda s: eval_transform(s, "face"),
    "eval_body": lambda s: eval_transform(s, "body"),
}


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("source", ["tensor", "pil_rgb", "pil_gray"])
def test_output_is_normalised_float_square(name: str, source: str) -> None:
    image = _image(50, 30)
    if source == "pil_rgb":
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    elif source == "pil_gray":
        image = Image.fromarray(image[0].numpy(), mode="L")
    out = PIPELINES[name](32)(image)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    assert out.min() >= -1.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    "height, width, top, content_h, left, content_w",
    [
        (20, 40, 8, 16, 0, 32),  # wide: 40 -> 32, height 20 -> 16, padded 8 above and below
        (50, 30, 0, 32, 6, 19),  # tall: 30 * 32/50 = 19.2 -> 19, padded 6 left, 7 right
        (32, 32, 0, 32, 0, 32),  # square: no padding
    ],
)
def test_resize_pad_square_geometry(height, width, top, content_h, left, content_w) -> None:
    image = torch.full((3, height, width), 200, dtype=torch.uint8)
    out = ResizePadSquare(32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[top : top + content_h, left : left + content_w] = True
    assert (out[:, inside] == 200).all()
    assert (out[:, ~inside] == 0).all()


def test_resize_pad_square_keeps_content_of_pil_and_tensor_alike() -> None:
    image = _image(40, 20, seed=3)
    from_tensor = ResizePadSquare(24)(image)
    from_pil = torch.from_numpy(
        np.array(ResizePadSquare(24)(Image.fromarray(image.permute(1, 2, 0).numpy())))
    )
    assert from_tensor.shape == (3, 24, 24) and from_pil.shape == (24, 24, 3)
    assert (from_tensor.permute(1, 2, 0).int() - from_pil.int()).abs().max() <= 2  # PIL vs tensor resampling


def test_eval_transform_is_deterministic_and_normalises_half_half() -> None:
    image = torch.full((3, 10, 20), 255, dtype=torch.uint8)
    out = eval_transform(16, "body")(image)
    assert torch.equal(out, eval_transform(16, "body")(image))
    # 255 -> 1.0 -> (1 - 0.5) / 0.5 = 1 inside; padding 0 -> -1 (rows 0-3 and 12-15).
    assert torch.equal(out[:, 4:12], torch.ones(3, 8, 16))
    assert torch.equal(out[:, :4], -torch.ones(3, 4, 16)) and torch.equal(out[:, 12:], -torch.ones(3, 4, 16))
    face = eval_transform(16, "face")(image)
    assert torch.equal(face, torch.ones(3, 16, 16))  # faces are resized square, not padded


def test_random_views_differ_and_are_reproducible_under_a_seed() -> None:
    image = _image(48, 48, seed=5)
    transform = ssl_strong(32)
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    torch.manual_seed(0)
    again = transform(image)
    assert not torch.equal(first, second)
    assert torch.equal(first, again)


def test_bad_kind_and_size() -> None:
    with pytest.raises(ValueError, match="kind"):
        eval_transform(32, "hand")
    with pytest.raises(ValueError, match="size"):
        ResizePadSquare(0)


def test_the_corpus_saturation_chooses_the_colour_augmentations():
    from reid.core.data.augment import COLOUR_SATURATION, colour_augmentation, mean_saturation

    grey = [Image.new("L", (8, 8), 128), Image.new("RGB", (8, 8), (90, 90, 90))]
    red, sepia = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (250, 245, 235))
    assert mean_saturation(grey) == 0.0 and mean_saturation([red]) == pytest.approx(1.0)
    assert mean_saturation([red, Image.new("RGB", (8, 8), (0, 0, 0))]) == pytest.approx(0.5)
    assert mean_saturation([sepia]) < COLOUR_SATURATION  # a scan's faint paper tint is still black-and-white
    ink = colour_augmentation(mean_saturation(grey + [sepia]))
    assert ink["corpus_colour"] == "black-and-white" and (ink["hue"], ink["grayscale"]) == (0.1, 0.2)
    colour = colour_augmentation(mean_saturation([red]))
    assert colour["corpus_colour"] == "colour" and (colour["hue"], colour["grayscale"]) == (0.0, 0.0)
