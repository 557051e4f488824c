"""Every family on one port: `bentoml serve services.platform:Platform`."""

from __future__ import annotations

from typing import TypeVar

import bentoml

from contracts.card import ModelCard
from services import oip
from services.app import build_app
from services.family import FamilyKind, pipeline_name
from services.forecast import ForecastFamily
from services.image import ImageFamily
from services.oip import InferenceModel, ModelRepository, OnnxModel
from services.runner import OnnxRunner, verified_model
from services.settings import SETTINGS, service_config
from services.startup import quiet_garbage_collector
from services.text import TextFamily

F = TypeVar("F")

# The served families, each with the store tags of its models (from settings): one registry, no forks.
FAMILIES: dict[FamilyKind, tuple[str, ...]] = {
    ImageFamily: (SETTINGS.image_model,),
    ForecastFamily: (SETTINGS.lstm_model, SETTINGS.gru_model),
    TextFamily: (SETTINGS.text_model,),
}
# Checked against their sha256 at import, so `bentoml serve` refuses a changed file instead of restarting workers.
SERVED = [*(tag for tags in FAMILIES.values() for tag in tags), *SETTINGS.extra_models]
REFERENCES = {tag: verified_model(tag) for tag in SERVED}
STORED = {tag: bentoml.models.get(tag) for tag in REFERENCES}  # `latest` resolved once, at start
APP = build_app(
    "modelroad",
    "CNN, RNN and Transformer models served with ONNX Runtime: family routes, and the Open Inference Protocol v2 "
    "(with Triton's binary tensor extension) for every model and each family's pipeline.",
    [
        *(
            kind.routes([ModelCard.from_metadata(STORED[t].info.metadata) for t in tags])
            for kind, tags in FAMILIES.items()
        ),
        oip.routes(
            names=[n for m in STORED.values() for n in (m.tag.name, pipeline_name(m.tag.name))],
            versions=[m.tag.version for m in STORED.values()],
        ),
    ],
)


class Platform:
    """All model families in one process: one port, one /metrics, no inter-service hop; more models by OIP alone."""

    def __init__(self) -> None:
        self.families = {kind: kind(*(STORED[t] for t in tags)) for kind, tags in FAMILIES.items()}
        extra = [OnnxRunner(STORED[tag], SETTINGS) for tag in SETTINGS.extra_models]
        self.runners = [*(runner for family in self.families.values() for runner in family.runners), *extra]
        for runner in self.runners:
            runner.warm_up()
        models: list[InferenceModel] = [OnnxModel(runner) for runner in self.runners]
        models += [pipeline for family in self.families.values() for pipeline in family.pipelines()]
        created = {m.tag.version: m.info.creation_time for m in STORED.values()}
        self.repository = ModelRepository(sorted(models, key=lambda m: created[m.version]))

    def family(self, kind: type[F]) -> F:
        return self.families[kind]

    @bentoml.on_startup
    def quiet_garbage_collector(self) -> None:
        quiet_garbage_collector()

    def __is_ready__(self) -> bool:
        return all(runner.warmed for runner in self.runners)


# Store references at class scope, so that `bentoml build` packs every served model into the bento.
for number, reference in enumerate(REFERENCES.values()):
    setattr(Platform, f"model_{number}", reference)
Platform = bentoml.service(**service_config("modelroad"))(bentoml.asgi_app(APP, path="/")(Platform))
