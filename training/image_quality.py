"""How good generated images are, judged by this project's own image classifier (Fashion-MNIST's CNN).

Inception's weights cannot be fetched here, so the Fréchet distance is taken on the served CNN's penultimate
features ("Fréchet CNN distance", never "FID": the numbers are not comparable with published FIDs), and the
CNN's agreement is the share of class-conditional samples it classifies as the class that was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import bentoml
import numpy as np
import onnx
import onnxruntime as ort
from scipy import linalg

from contracts.card import ModelCard
from contracts.preprocessing import ImagePreprocessing

JUDGE = "fashion-cnn"


@dataclass
class CnnJudge:
    """The newest stored CNN, answering with its penultimate features beside its labels."""

    tag: str
    session: ort.InferenceSession
    prep: ImagePreprocessing
    features_name: str
    labels: tuple[str, ...]

    @classmethod
    def newest(cls, name: str = JUDGE) -> CnnJudge:
        try:
            stored = bentoml.models.get(f"{name}:latest")
        except bentoml.exceptions.NotFound:
            raise RuntimeError(
                f"no {name} in the model store: generated images are judged by its features; train it first "
                f"(python -m training train {name})"
            ) from None
        card = ModelCard.from_metadata(stored.info.metadata)
        graph = onnx.load(stored.path_of("model.onnx"))
        # The classifier's last layer reads the penultimate features: expose them as an output.
        (last,) = [node for node in graph.graph.node if card.output in node.output]
        features = last.input[0]
        graph.graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        assert isinstance(card.preprocessing, ImagePreprocessing)
        return cls(str(stored.tag), session, card.preprocessing, features, card.labels)

    def judge(self, pixels: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) or (N, 1, H, W) pixels in [0, 1] -> (N, D) features, (N,) predicted class ids."""
        features, classes = [], []
        for start in range(0, len(pixels), batch):
            x = self.prep.normalize(pixels[start : start + batch] * 255.0)
            logits, feats = self.session.run(["logits", self.features_name], {"pixels": x})
            features.append(feats)
            classes.append(logits.argmax(1))
        return np.concatenate(features), np.concatenate(classes)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of feature vectors (N, D)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))
