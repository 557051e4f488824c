"""Every family on one port: `bentoml serve services.platform:Platform`."""
from services.base import platform_service
from services.forecast import ForecastAPI
from services.image import ImageAPI
from services.text import TextAPI


@platform_service("modelroad")
class Platform(ImageAPI, ForecastAPI, TextAPI):
    """All model families in one process: one port, one /metrics, no inter-service hop."""
