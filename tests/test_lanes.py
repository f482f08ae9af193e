"""The suite's two lanes (tests/conftest.py): the timed fault tests form one unit of work."""

from pathlib import Path

from tests.conftest import SERIAL_FOLDERS, SERIAL_UNIT, lane_unit

TESTS = Path(__file__).parent


def test_every_serial_folder_exists_and_holds_tests() -> None:
    # A renamed folder would quietly send its fault tests into the parallel lane.
    for folder in SERIAL_FOLDERS:
        assert list((TESTS / folder).glob("test_*.py")), folder


def test_the_serial_folders_tests_are_one_unit_and_the_others_each_their_own() -> None:
    assert lane_unit("tests/sentinel/test_failover.py::test_a") == SERIAL_UNIT
    assert lane_unit("tests/kubelet/test_kubelet.py::test_b[x/y]") == SERIAL_UNIT
    alone = "tests/fast/test_submit.py::test_unknown_job_is_404_not_pending[unknown]"
    assert lane_unit(alone) == alone
    assert (
        lane_unit("tests/test_reliability_words.py::test_c")
        == "tests/test_reliability_words.py::test_c"
    )
