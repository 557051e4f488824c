import io

import numpy as np
import pytest
from PIL import Image

from contracts.preprocessing import ImagePreprocessing, ImageTooLarge, InvalidInput, SeriesScaling

PREP = ImagePreprocessing(mean=0.5, std=0.25)
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image,fmt",
    [
        (Image.new("L", (28, 28), 255), "PNG"),
        (Image.new("RGB", (640, 480), (10, 200, 30)), "JPEG"),
        (Image.new("RGBA", (5, 300), (255, 255, 255, 128)), "PNG"),
        (Image.new("P", (64, 64)), "PNG"),
        (Image.new("I;16", (30, 20)), "PNG"),
    ],
)
def test_any_size_and_colour_becomes_one_grey_28x28_image(image, fmt):
    pixels = PREP.pixels_from_bytes(encode(image, fmt))
    assert pixels.shape == (1, 28, 28) and pixels.dtype == np.uint8


def test_transparency_is_flattened_onto_black_like_the_training_background():
    transparent = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    assert PREP.pixels_from_bytes(encode(transparent, "PNG")).max() == 0


def test_normalize_scales_pixels_with_the_stored_statistics():
    x = PREP.normalize(np.array([[[0, 255]]], dtype=np.uint8))
    assert x.shape == (1, 1, 1, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25])


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"not an image at all", "not a readable PNG/JPEG"),
        (encode(NOISE, "PNG")[:400], "truncated or corrupt"),
    ],
)
def test_bad_files_raise_invalid_input_that_says_why(data, message):
    with pytest.raises(InvalidInput, match=message):
        PREP.pixels_from_bytes(data)


def test_a_huge_declared_size_is_refused_before_decoding():
    with pytest.raises(InvalidInput, match="at most 100 pixels"):
        PREP.pixels_from_bytes(encode(Image.new("L", (20, 20)), "PNG"), max_pixels=100)


def test_series_scaling_is_relative_to_the_last_value_and_round_trips():
    scaling = SeriesScaling(scale=2.0)
    history = np.array([[300.0, 302.0, 304.0], [10.0, 11.0, 12.0]])
    encoded = scaling.encode(history)
    assert encoded.dtype == np.float32
    np.testing.assert_allclose(encoded, [[-2, -1, 0], [-1, -0.5, 0]])
    # an output of +1 means one scale above the last observed value
    np.testing.assert_allclose(scaling.decode(np.array([[1.0, -0.5], [0.0, 2.0]]), history), [[306, 303], [12, 16]])


def test_an_image_too_big_once_decoded_is_refused_from_its_header():
    with pytest.raises(ImageTooLarge, match="MiB decoded"):
        PREP.pixels_from_bytes(encode(Image.new("RGBA", (600, 600)), "PNG"), max_bytes=600 * 600 * 3)
    assert PREP.pixels_from_bytes(encode(Image.new("L", (600, 600)), "PNG"), max_bytes=600 * 600 * 3).shape == (
        1,
        28,
        28,
    )


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_only_png_and_jpeg_are_decoded(fmt):
    with pytest.raises(InvalidInput, match="not a readable PNG/JPEG"):
        PREP.pixels_from_bytes(encode(Image.new("RGB", (28, 28)), fmt))
