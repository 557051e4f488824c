"""Inputs the models never saw, from offline sources only: what the OOD scores are evaluated against.

Images: scikit-learn's bundled digits (upscaled to 28x28), crops of its two bundled photos, noise, flat images.
Texts: Debian's `fortunes-min` sayings, lines of Python's own source, chat messages written here.
Series: other statsmodels series rescaled to the training series' level and spread, a random walk, noise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FORTUNES = Path("/usr/share/games/fortunes/fortunes")  # Debian package fortunes-min
CHAT = [
    "hey are you coming tonight?",
    "lol that was so funny",
    "can you send me the file when you get a chance",
    "what time is the meeting tomorrow",
    "I'll be there in 10 minutes",
    "thanks so much!!",
    "did you see the game last night",
    "ok sounds good",
    "my phone is dying, call you later",
    "where did you park the car",
    "happy birthday!! hope you have a great day",
    "let's get pizza after work",
    "I can't find my keys again",
    "is it raining where you are?",
    "see you at 5",
    "omg did you hear the news",
    "no worries, take your time",
    "what are you up to this weekend",
    "I think I left my charger at your place",
    "running late, start without me",
    "can we move our call to Friday?",
    "just landed, will text when I'm home",
    "who's bringing the drinks",
    "that movie was way better than I expected",
    "do you still need help moving on Saturday",
    "sorry, missed your call",
    "the wifi is down again",
    "send me a pic of the menu",
    "good luck with the interview today!",
    "are we still on for lunch",
]


def resized(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.BILINEAR))


def image_sets(size: tuple[int, int], rng: np.random.Generator, n: int = 500) -> dict[str, np.ndarray]:
    """Name -> (N, H, W) uint8 grey images at the model's size."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = (load_digits().images[:n] * (255 / 16)).astype(np.uint8)
    crops = []
    for photo in load_sample_images().images:
        grey = np.asarray(Image.fromarray(photo).convert("L"))
        for _ in range(n // 2):
            side = int(rng.integers(size[0], min(grey.shape) // 2))
            top, left = rng.integers(0, grey.shape[0] - side), rng.integers(0, grey.shape[1] - side)
            crops.append(resized(grey[top : top + side, left : left + side], size))
    return {
        "digits": np.stack([resized(d, size) for d in digits]),
        "photo crops": np.stack(crops),
        "noise": rng.integers(0, 256, (n, *size), dtype=np.uint8),
        "flat": np.broadcast_to(rng.integers(0, 256, (n, 1, 1), dtype=np.uint8), (n, *size)).copy(),
    }


def text_sets(rng: np.random.Generator, n: int = 500) -> dict[str, list[str]]:
    """Name -> texts."""
    sets = {}
    if FORTUNES.exists():
        sayings = [" ".join(f.split()) for f in FORTUNES.read_text(errors="replace").split("\n%\n")]
        sets["fortunes"] = [s for s in sayings if 10 < len(s) < 400][:n]
    else:
        log.warning("%s not found (apt-get install fortunes-min): no fortunes in the OOD evaluation", FORTUNES)
    source = Path(json.__file__).parent  # Python's own json package: always there
    lines = [line.strip() for path in sorted(source.glob("*.py")) for line in path.read_text().splitlines()]
    code = [line for line in lines if len(line) > 15]
    sets["code lines"] = [code[i] for i in rng.permutation(len(code))[:n]]
    sets["chat"] = list(CHAT)
    return sets


def series_sets(reference: np.ndarray, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Name -> (N, length) raw windows of other series, rescaled to `reference`'s mean and std."""
    import statsmodels.api as sm

    def rescaled(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return reference.mean() + (values - values.mean()) / values.std() * reference.std()

    def windows(values: np.ndarray, stride: int = 4) -> np.ndarray:
        return np.stack([values[e - length : e] for e in range(length, len(values) + 1, stride)])

    elnino = sm.datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()  # monthly
    walk = np.cumsum(rng.normal(size=(64, length)), axis=1)
    return {
        "sunspots (yearly)": windows(rescaled(sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"])),
        "Nile flow (yearly)": windows(rescaled(sm.datasets.nile.load_pandas().data["volume"]), stride=2),
        "El Niño temperature (monthly)": windows(rescaled(elnino)),
        "US real GDP (quarterly)": windows(rescaled(sm.datasets.macrodata.load_pandas().data["realgdp"])),
        "random walk": np.stack([rescaled(w) for w in walk]),
        "noise": np.stack([rescaled(w) for w in rng.normal(size=(64, length))]),
    }
