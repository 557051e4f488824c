"""Inputs and offline predictions shared by the service tests."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import bentoml
import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from contracts.answers import softmax
from contracts.card import ModelCard
from contracts.forecast import ForecastContract
from contracts.image import ImageContract
from contracts.text import TextContract
from training.tasks.images import FASHION_MNIST_DIR, read_idx


def fashion_test_images(n: int) -> tuple[list[bytes], np.ndarray]:
    """The first n Fashion-MNIST test images as PNG files, and their raw pixels."""
    pixels = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:n]
    files = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files, pixels


def offline_image_probabilities(tag: str, png_files: list[bytes]) -> np.ndarray:
    """What the registered ONNX file says about these files, computed without the service."""
    stored = bentoml.models.get(tag)
    contract = ImageContract.from_card(ModelCard.from_metadata(stored.info.metadata))
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    return softmax(session.run(None, contract.feeds_from_files(png_files))[0])


def co2_history(weeks: int = 156, end: int = -52) -> list[float]:
    """Real weekly CO2 values (statsmodels' copy), `weeks` of them ending `end` weeks before the last."""
    from training.tasks.series import load_co2

    series = load_co2().interpolate(method="time").to_numpy(np.float64)
    return series[len(series) + end - weeks : len(series) + end].tolist()


def offline_forecast(tag: str, history: list[float], horizon: int) -> np.ndarray:
    """What the registered ONNX forecaster says, computed without the service."""
    stored = bentoml.models.get(tag)
    contract = ForecastContract.from_card(ModelCard.from_metadata(stored.info.metadata))
    histories = np.asarray([history])
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    (output, *_) = session.run(None, contract.feeds(histories))
    return contract.forecasts({contract.output: output}, histories, horizon)[0]


def offline_text_probabilities(tag: str, texts: list[str]) -> np.ndarray:
    """What the registered ONNX text classifier says, each text alone, computed without the service."""
    stored = bentoml.models.get(tag)
    contract = TextContract.from_card(ModelCard.from_metadata(stored.info.metadata), stored.path)
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    ids = contract.token_ids(texts)
    return np.concatenate([softmax(session.run(None, contract.feeds_from_ids([row]))[0]) for row in ids])


def prometheus_query(url: str, query: str) -> list[dict]:
    """The result of an instant query at Prometheus' /api/v1/query, or [] while it cannot answer yet."""
    try:
        response = httpx.get(url, params={"query": query}, timeout=2)
    except httpx.TransportError:
        return []
    # Prometheus answers a plain-text 503 until its storage is open.
    return response.json()["data"]["result"] if response.status_code == 200 else []


def localhost_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with openssl: (cert, key) PEM files in `folder`."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        ["openssl", *request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key
