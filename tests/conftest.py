"""Shared fixtures. The model store and Prometheus folder are private to the test session,
so tests never touch ~/bentoml and never see another run's metrics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports bentoml: it reads these once.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="modelroad-tests-"))
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_SESSION_DIR / "prometheus")
(_SESSION_DIR / "prometheus").mkdir()
# No gRPC server by default (the in-process app's, and every server a test starts): a test that wants one gives a
# free port, so servers running side by side never meet on 8001.
os.environ["MODELROAD_GRPC_PORT"] = "0"

import pytest  # noqa: E402 - after the environment above, which bentoml reads at import


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


def train_briefly(task: str, session_dir: Path) -> dict:
    """A model trained for a moment on a subset (--dry-run), exported, checked and registered."""
    from training.config import TrainConfig
    from training.pipeline import run

    return run(TrainConfig(task=task, dry_run=True, out_dir=str(session_dir / "artifacts")))


@pytest.fixture(scope="session")
def cnn_card(session_dir: Path) -> dict:
    return train_briefly("fashion-cnn", session_dir)


@pytest.fixture(scope="session")
def lstm_card(session_dir: Path) -> dict:
    return train_briefly("co2-lstm", session_dir)


@pytest.fixture(scope="session")
def gru_card(session_dir: Path) -> dict:
    return train_briefly("co2-gru", session_dir)


@pytest.fixture(scope="session")
def text_cards(session_dir: Path) -> dict[str, dict]:
    """The Transformer and its int8 variant (registered by the same run)."""
    import bentoml

    card = train_briefly("wordnet-transformer", session_dir)
    int8 = bentoml.models.get("wordnet-transformer-int8:latest")
    return {"wordnet-transformer": card, "wordnet-transformer-int8": {**int8.info.metadata, "tag": str(int8.tag)}}


@pytest.fixture(scope="session")
def diffusion_card(session_dir: Path, cnn_card: dict) -> dict:
    """The generator, its VAE trained first (one pretraining epoch), judged by the CNN above."""
    from training.config import TrainConfig
    from training.pipeline import run

    return run(
        TrainConfig(
            task="fashion-diffusion",
            dry_run=True,
            pretrain_epochs=1,
            batch_size=256,
            lr=2e-3,
            out_dir=str(session_dir / "artifacts"),
        )
    )


@pytest.fixture(scope="session")
def gan_card(session_dir: Path, cnn_card: dict) -> dict:
    """The one-step generator with its task's training settings (Adam's GAN beta), judged by the CNN above."""
    from training.config import TrainConfig
    from training.pipeline import run
    from training.tasks import TASKS

    defaults = TASKS["fashion-gan"].train_defaults
    return run(TrainConfig(task="fashion-gan", dry_run=True, out_dir=str(session_dir / "artifacts"), **defaults))


@pytest.fixture(scope="session")
def registered(
    cnn_card: dict, lstm_card: dict, gru_card: dict, text_cards: dict, diffusion_card: dict, gan_card: dict
) -> dict[str, dict]:
    """Every family's model in the store, by store name (what the platform service needs)."""
    return {
        "fashion-cnn": cnn_card,
        "co2-lstm": lstm_card,
        "co2-gru": gru_card,
        **text_cards,
        "fashion-diffusion": diffusion_card,
        "fashion-gan": gan_card,
    }


@pytest.fixture(scope="session")
def client(registered):
    """The platform service in-process: its ASGI app, BentoML's whole request path, no network."""
    from starlette.testclient import TestClient

    from services.platform import Platform

    with TestClient(Platform.to_asgi(), raise_server_exceptions=False) as c:
        yield c
