"""Inputs and offline predictions shared by the service tests."""
from __future__ import annotations

import io

import bentoml
import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

from contracts.preprocessing import ImagePreprocessing, SeriesScaling, TextEncoding
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
    prep = ImagePreprocessing(**stored.info.metadata["preprocessing"]["image"])
    batch = prep.normalize(np.stack([prep.pixels_from_bytes(f) for f in png_files]))
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixels": batch})[0].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def co2_history(weeks: int = 156, end: int = -52) -> list[float]:
    """Real weekly CO2 values (statsmodels' copy), `weeks` of them ending `end` weeks before the last."""
    from training.tasks.series import load_co2

    series = load_co2().interpolate(method="time").to_numpy(np.float64)
    return series[len(series) + end - weeks : len(series) + end].tolist()


def offline_forecast(tag: str, history: list[float], horizon: int) -> np.ndarray:
    """What the registered ONNX forecaster says, computed without the service."""
    stored = bentoml.models.get(tag)
    prep = stored.info.metadata["preprocessing"]
    scaling = SeriesScaling(**prep["series"])
    values = np.asarray(history, dtype=np.float64)[None, -prep["window"] :]
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    output = session.run(None, {"history": scaling.encode(values)})[0]
    return scaling.decode(output[:, :horizon], values)[0]


def offline_text_probabilities(tag: str, texts: list[str]) -> np.ndarray:
    """What the registered ONNX text classifier says, each text alone, computed without the service."""
    stored = bentoml.models.get(tag)
    prep = stored.info.metadata["preprocessing"]
    tokenizer = Tokenizer.from_file(stored.path_of(prep["tokenizer"]))
    encoding = TextEncoding(**prep["text"])
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for ids in encoding.token_ids(tokenizer, texts):
        input_ids, mask = encoding.pad([ids])
        logits = session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0].astype(np.float64)
        rows.append(np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum())
    return np.stack(rows)


def prometheus_query(url: str, query: str) -> list[dict]:
    """The result of an instant query at Prometheus' /api/v1/query, or [] while it cannot answer yet."""
    try:
        response = httpx.get(url, params={"query": query}, timeout=2)
    except httpx.TransportError:
        return []
    # Prometheus answers a plain-text 503 until its storage is open.
    return response.json()["data"]["result"] if response.status_code == 200 else []
