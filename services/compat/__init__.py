"""Where the platform reaches past a framework's public API, one module per framework, each naming the version it
was written against; tests/services/test_compat.py (and for the DirectRoute, test_http.py) fails when an upgrade
breaks one:

- fastapi_routes.py: FastAPI 0.165.0 — a route answered without FastAPI's request handling (`DirectRoute`).
- bentoml_asgi.py: BentoML 1.4.39 — requests handed to the mounted app before BentoML's router (`AppFirst`).
- prometheus_values.py: prometheus_client 0.26.0 — multiprocess values that keep the pid in memory.
- multipart_upload.py: python-multipart 0.0.34 — one uploaded file read without Starlette's form objects.

What each saves is measured in docs/benchmarks.md.
"""
