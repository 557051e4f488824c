"""What both peers share: the platform's registered models and its pre- and post-processing.

The benchmark resolves the models in the BentoML store (`model_files`) and writes a spec file
(`write_spec`); a peer reads it (`load_families`) without BentoML, so the peers run in their own venv.
Requests are turned into model inputs by `contracts.preprocessing`, as in the platform: only the engine
differs. The benchmark's in-process engines take their inputs from the same classes.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from contracts.preprocessing import ImagePreprocessing, SeriesScaling, TextEncoding

SPEC_ENV = "MODELROAD_PEER_SPEC"
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelFiles:
    metadata: dict[str, Any]
    onnx: str
    checkpoint: str  # best.pt of the training run: PyTorch eager needs the weights before ONNX folded them
    tokenizer: str | None = None


def model_files() -> dict[str, ModelFiles]:
    """Where the platform's default models lie, per family (needs BentoML: the benchmark's venv)."""
    import bentoml

    from services.settings import SETTINGS

    files = {}
    for family, tag in {"image": SETTINGS.image_model, "forecast": SETTINGS.gru_model, "text": SETTINGS.text_model}.items():
        stored = bentoml.models.get(tag)
        meta = stored.info.metadata
        tokenizer = meta["preprocessing"].get("tokenizer")
        checkpoint = Path(meta["train_config"]["out_dir"]) / meta["train_config"]["task"] / "best.pt"
        files[family] = ModelFiles(meta, stored.path_of("model.onnx"), str(checkpoint),
                                   stored.path_of(tokenizer) if tokenizer else None)  # fmt: skip
    return files


def write_spec(path: Path) -> None:
    """Record `model_files()` for the peers."""
    path.write_text(json.dumps({family: asdict(files) for family, files in model_files().items()}, default=str))


# The request bodies both peers take, as the platform's API defines them.
class ForecastRequest(BaseModel):
    history: list[float]
    horizon: int = 52


class TextRequest(BaseModel):
    text: str


def softmax_answer(labels: list[str], logits: np.ndarray) -> dict[str, Any]:
    row = np.exp(logits - logits.max())
    row /= row.sum()
    class_id = int(row.argmax())
    return {"label": labels[class_id], "class_id": class_id,
            "probabilities": {label: round(float(p), 6) for label, p in zip(labels, row)}}  # fmt: skip


class ImageFamily:
    def __init__(self, files: ModelFiles):
        self.files = files
        self.prep = ImagePreprocessing(**files.metadata["preprocessing"]["image"])
        self.labels: list[str] = files.metadata["labels"]

    def inputs(self, image: bytes) -> Inputs:
        return {"pixels": self.prep.normalize(self.prep.pixels_from_bytes(image)[None])}

    def stack(self, items: list[Inputs]) -> Inputs:
        return {"pixels": np.concatenate([item["pixels"] for item in items])}

    def answer(self, item: Inputs, output: np.ndarray) -> dict[str, Any]:
        return softmax_answer(self.labels, output)


class ForecastFamily:
    def __init__(self, files: ModelFiles):
        self.files = files
        prep = files.metadata["preprocessing"]
        self.scaling, self.window = SeriesScaling(**prep["series"]), prep["window"]

    def inputs(self, history: list[float]) -> Inputs:
        values = np.asarray(history, dtype=np.float64)[None, -self.window :]
        return {"history": self.scaling.encode(values), "raw": values}

    def stack(self, items: list[Inputs]) -> Inputs:
        return {"history": np.concatenate([item["history"] for item in items])}  # the bench sends one length

    def answer(self, item: Inputs, output: np.ndarray, horizon: int) -> dict[str, Any]:
        forecast = self.scaling.decode(output[None, :horizon], item["raw"])[0]
        return {"forecast": [round(float(v), 4) for v in forecast], "model": "peer"}


class TextFamily:
    def __init__(self, files: ModelFiles):
        from tokenizers import Tokenizer

        self.files = files
        self.encoding = TextEncoding(**files.metadata["preprocessing"]["text"])
        self.tokenizer = Tokenizer.from_file(files.tokenizer)
        self.labels: list[str] = files.metadata["labels"]

    def inputs(self, text: str) -> Inputs:
        (ids,) = self.encoding.token_ids(self.tokenizer, [text])
        return {"ids": np.asarray(ids, dtype=np.int64)}

    def stack(self, items: list[Inputs]) -> Inputs:
        input_ids, mask = self.encoding.pad([item["ids"].tolist() for item in items])  # to the longest member
        return {"input_ids": input_ids, "attention_mask": mask}

    def answer(self, item: Inputs, output: np.ndarray) -> dict[str, Any]:
        answer = softmax_answer(self.labels, output)
        del answer["class_id"]
        return answer


FAMILIES = {"image": ImageFamily, "forecast": ForecastFamily, "text": TextFamily}


def load_families() -> tuple[ImageFamily, ForecastFamily, TextFamily]:
    spec = json.loads(Path(os.environ[SPEC_ENV]).read_text())
    return tuple(kind(ModelFiles(**spec[family])) for family, kind in FAMILIES.items())
