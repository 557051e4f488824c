"""The RNN forecasters alone: `bentoml serve services.forecast_service:ForecastService`."""
from services.base import platform_service
from services.forecast import ForecastAPI


@platform_service("forecaster")
class ForecastService(ForecastAPI):
    """CO2 LSTM and GRU forecasters behind /forecast."""
