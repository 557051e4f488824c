"""Preprocessing that must be identical at training and at serving time.

Training calls these functions on its data; the service calls them on requests,
with parameters read back from the model's metadata. numpy + Pillow only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


IMAGE_FORMATS = ("PNG", "JPEG")
# Default limits of an uploaded image (the service's come from its settings): declared pixels, and bytes decoded.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 48 * 2**20


class Preprocessing(Protocol):
    """A task kind's preprocessing as the card records it."""

    def to_metadata(self) -> dict[str, Any]: ...

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Preprocessing: ...


# Each task kind's preprocessing class, registered where it is defined (`preprocessing_for`); a kind with none (an
# imported model: tensors in and out) is not here.
PREPROCESSING: dict[str, type[Preprocessing]] = {}
P = TypeVar("P", bound=type)


def preprocessing_for(*kinds: str) -> Callable[[P], P]:
    """Class decorator: the card records and reads this class as the preprocessing of these task kinds."""

    def register(cls: P) -> P:
        for kind in kinds:
            if kind in PREPROCESSING:
                raise ValueError(f"task kind {kind!r} already has a preprocessing")
            PREPROCESSING[kind] = cls
        return cls

    return register


class InvalidInput(ValueError):
    """A client sent something that cannot be turned into model input; the message says what."""


class ImageTooLarge(InvalidInput):
    """An image declares more pixels than are allowed (a decompression bomb, say); refused before decoding."""


# The size of the images a generator draws too (mean 0, std 1: pixels / 255).
@preprocessing_for("image-classification", "image-generation")
@dataclass(frozen=True)
class ImagePreprocessing:
    """uint8 pixels -> normalized float32 (B, C, H, W)."""

    height: int = 28
    width: int = 28
    channels: int = 1
    mean: float = 0.2860  # Fashion-MNIST training-set statistics of pixels / 255
    std: float = 0.3530

    def to_metadata(self) -> dict[str, Any]:
        return {"image": asdict(self)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ImagePreprocessing:
        return cls(**metadata["image"])

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W) or (B, C, H, W) uint8/float pixel values in 0..255 -> (B, C, H, W) float32."""
        x = np.asarray(pixels, dtype=np.float32)
        if x.ndim == 3 and self.channels == 1:
            x = x[:, None]
        return ((x / 255.0 - self.mean) / self.std).astype(np.float32, copy=False)

    def pixels_from_image(self, image: Image.Image) -> np.ndarray:
        """Any PIL image (any size or colour) -> (C, H, W) uint8, converted as the training data was."""
        size = (self.width, self.height)
        if image.mode in ("RGBA", "LA", "P"):
            # Flatten transparency onto black, the background of Fashion-MNIST, once made small: compositing
            # is linear, so it commutes with the (alpha-premultiplied) resize, and at full size it held the GIL.
            image = image.convert("RGBA").resize(size, Image.Resampling.BILINEAR)
            image = Image.alpha_composite(Image.new("RGBA", size, (0, 0, 0, 255)), image)
        image = image.convert(self.mode).resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def pixels_from_bytes(
        self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES
    ) -> np.ndarray:
        return self.decode(self.open(data, max_pixels, max_bytes))

    def open(self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
        """The file's header, read and checked (format, declared pixels, decoded bytes); no pixel decoded yet."""
        if not data:
            raise InvalidInput("the image file is empty")
        try:
            # PNG and JPEG only: the formats documented, and the fewer image parsers exposed to uploads the better.
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:  # Pillow's own limit, met before ours when it is lower
            raise ImageTooLarge(f"the image is too large to decode ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InvalidInput(f"the file is not a readable PNG/JPEG image ({type(exc).__name__})") from None
        # Check the declared size before decoding, so a decompression bomb costs nothing.
        if image.width * image.height > max_pixels:
            raise ImageTooLarge(
                f"the image is {image.width}x{image.height} pixels; at most {max_pixels} pixels are allowed"
            )
        decoded = image.width * image.height * len(image.getbands())  # bytes, at 8 bits a band
        if decoded > max_bytes:
            raise ImageTooLarge(
                f"the image is {image.width}x{image.height} {image.mode}: {decoded / 2**20:.0f} MiB decoded; "
                f"at most {max_bytes / 2**20:.0f} MiB are allowed"
            )
        return image

    def decode(self, image: Image.Image) -> np.ndarray:
        """An opened image's pixels, as `pixels_from_image` makes them."""
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidInput(f"the image data is truncated or corrupt ({type(exc).__name__})") from None
        return self.pixels_from_image(image)


@dataclass(frozen=True)
class SeriesScaling:
    """A window is seen relative to its last value, in units of `scale`.

    Removing the level makes the net indifferent to where the series stands (CO2 rises for
    decades: test values lie above every training value); `scale` is fitted on training data.
    """

    scale: float

    def encode(self, history: np.ndarray) -> np.ndarray:
        """(B, T) raw values -> (B, T) float32 relative to each row's last value."""
        history = np.asarray(history, dtype=np.float64)
        return ((history - history[:, -1:]) / self.scale).astype(np.float32)

    def decode(self, output: np.ndarray, history: np.ndarray) -> np.ndarray:
        """(B, H) net outputs -> (B, H) raw forecasts, from the same histories that were encoded."""
        return np.asarray(history, dtype=np.float64)[:, -1:] + np.asarray(output, dtype=np.float64) * self.scale


@dataclass(frozen=True)
class TextEncoding:
    """Texts -> token ids and attention mask with the tokenizer trained beside the model.

    Batches are padded to their longest member, never to max_tokens: attention costs T².
    """

    max_tokens: int
    pad_id: int = 0

    def token_ids(self, tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
        """Each text's ids, truncated to max_tokens (the tokenizer adds no special tokens)."""
        return [encoding.ids[: self.max_tokens] or [self.pad_id] for encoding in tokenizer.encode_batch(texts)]

    def pad(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(B, longest) int64 input_ids and attention_mask (1 = token, 0 = padding)."""
        if len(ids) == 1:  # a request's one text: nothing to pad
            input_ids = np.array(ids, dtype=np.int64)
            return input_ids, np.ones_like(input_ids)
        longest = max(len(row) for row in ids)
        input_ids = np.full((len(ids), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return input_ids, mask


@preprocessing_for("forecasting")
@dataclass(frozen=True)
class ForecastPreprocessing:
    """How a forecaster reads a history: the last `window` values, scaled; at least `min_history`; `horizon` out."""

    series: SeriesScaling
    window: int
    min_history: int
    horizon: int

    def to_metadata(self) -> dict[str, Any]:
        return {**asdict(self), "series": asdict(self.series)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ForecastPreprocessing:
        return cls(
            SeriesScaling(**metadata["series"]), metadata["window"], metadata["min_history"], metadata["horizon"]
        )


@preprocessing_for("text-classification")
@dataclass(frozen=True)
class TextPreprocessing:
    """The text encoding, and the tokenizer file stored beside the model."""

    text: TextEncoding
    tokenizer: str = "tokenizer.json"

    def to_metadata(self) -> dict[str, Any]:
        return {"text": asdict(self.text), "tokenizer": self.tokenizer}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TextPreprocessing:
        return cls(TextEncoding(**metadata["text"]), metadata["tokenizer"])
