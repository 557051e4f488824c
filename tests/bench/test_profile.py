"""`python -m bench.profile`: py-spy's collapsed stacks read into shares by function, and one short run on the
served platform."""

import pytest

from bench.profile import Frames, main

STACKS = """process 7:"py";run (asyncio/runners.py:118);handle (services/edge.py:142);classify (services/text.py:50) 6
process 7:"py";run (asyncio/runners.py:118);handle (services/edge.py:150);send (uvicorn/h.py:522) 3
thread (0x7f):"prepare";work (services/text.py:60) 1
"""


def test_collapsed_stacks_give_each_functions_share_whatever_its_line():
    frames = Frames.from_collapsed(STACKS)
    assert frames.samples == 10
    assert frames.own == {"classify (services/text.py)": 6, "send (uvicorn/h.py)": 3, "work (services/text.py)": 1}
    assert frames.total["handle (services/edge.py)"] == 9 and frames.total["run (asyncio/runners.py)"] == 9
    report = frames.report(top=2)
    assert "10 samples" in report and " 60.0%  classify (services/text.py)" in report
    assert " 90.0%  handle (services/edge.py)" in report


@pytest.mark.slow
def test_a_short_profile_of_a_route_writes_its_flame_graph_and_names_the_platforms_functions(registered, tmp_path):
    assert main(["text", "--seconds", "1", "--top", "80", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "text.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    report = (tmp_path / "text.txt").read_text()
    assert report.startswith("text (/classify_text), c=32, under py-spy:") and ", 0 errors" in report
    assert "EdgeMiddleware.__call__ (services/edge.py)" in report and "(services/text.py)" in report
