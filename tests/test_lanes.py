"""The suite's two lanes (tests/conftest.py): the timed fault tests form one unit of work."""

from pathlib import Path

from tests.conftest import SERIAL_PATHS, SERIAL_UNIT, lane_unit

REPO = Path(__file__).parents[1]


def test_every_serial_path_exists_and_holds_tests() -> None:
    # A renamed folder or file would quietly send its fault tests into the parallel lane.
    for path in SERIAL_PATHS:
        found = REPO / path
        tests = list(found.glob("test_*.py")) if path.endswith("/") else [found]
        assert tests, path
        assert all(t.is_file() for t in tests), path


def test_the_serial_tests_are_one_unit_and_the_others_each_their_own() -> None:
    assert lane_unit("tests/sentinel/test_failover.py::test_a") == SERIAL_UNIT
    assert lane_unit("tests/kubelet/test_kubelet.py::test_b[x/y]") == SERIAL_UNIT
    assert lane_unit("tests/test_beat.py::test_two_beats") == SERIAL_UNIT
    for alone in (
        "tests/fast/test_submit.py::test_unknown_job_is_404_not_pending[unknown]",
        "tests/test_reliability_words.py::test_c",
        "tests/test_beat_words.py::test_d",
    ):
        assert lane_unit(alone) == alone
