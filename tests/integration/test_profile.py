"""`python -m bench.profile` on one worker of the session's real `bentoml serve`: wrk on a route, py-spy on the
worker, a flame graph and the functions its samples fall in."""

import pytest

from bench.profile import profile, worker_pids
from bench.run import family_requests

pytestmark = pytest.mark.slow


def test_a_short_profile_of_a_route_writes_its_flame_graph_and_names_the_platforms_functions(served, tmp_path):
    process, url = served  # the session's server: one of its workers is profiled
    request = family_requests()["text"]
    profile("text", request, url, worker_pids(process.pid)[0], seconds=1, concurrency=32, out=tmp_path, top=80)
    assert (tmp_path / "text.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    report = (tmp_path / "text.txt").read_text()
    assert report.startswith("text (/classify_text), c=32, under py-spy:") and ", 0 errors" in report
    assert "EdgeMiddleware.__call__ (services/edge/middleware.py)" in report and "(services/families/text.py)" in report
