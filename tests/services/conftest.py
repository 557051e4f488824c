import pytest
from starlette.testclient import TestClient


@pytest.fixture(scope="session")
def client(registered):
    """The platform service in-process: its ASGI app, BentoML's whole request path, no network."""
    from services.platform import Platform

    with TestClient(Platform.to_asgi(), raise_server_exceptions=False) as c:
        yield c
