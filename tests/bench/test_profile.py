"""`python -m bench.profile`: py-spy's collapsed stacks read into shares by function (a short run on the served
platform: tests/integration/test_profile.py)."""

from bench.profile import Frames

STACKS = """process 7:"py";run (asyncio/runners.py:118);handle (services/edge.py:142);classify (services/text.py:50) 6
process 7:"py";run (asyncio/runners.py:118);handle (services/edge.py:150);send (uvicorn/h.py:522) 3
thread (0x7f):"prepare";work (services/text.py:60) 1
"""


def test_collapsed_stacks_give_each_functions_share_whatever_its_line():
    frames = Frames.from_collapsed(STACKS)
    assert frames.samples == 10
    assert frames.own == {
        "classify (services/text.py)": 6,
        "send (uvicorn/h.py)": 3,
        "work (services/text.py)": 1,
    }
    assert frames.total["handle (services/edge.py)"] == 9 and frames.total["run (asyncio/runners.py)"] == 9
    report = frames.report(top=2)
    assert "10 samples" in report and " 60.0%  classify (services/text.py)" in report
    assert " 90.0%  handle (services/edge.py)" in report
