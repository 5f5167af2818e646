"""The training engine behaves bit for bit as recorded in ``tests/data/equivalence_cpu.json``.

Each case of :data:`tests.equivalence.CASES` (CE and MrKD, with and without mixup, same-batch and cached
teachers, step and epoch backups) is trained for 30 steps on the CPU, and its per-step losses, the other
deterministic TensorBoard scalars and the metrics summary are compared with the recording: exactly, floats by
their bits. A difference means the change under test altered training; if that was intended (or torch was
upgraded), re-record with ``python scripts/record_equivalence.py`` at code whose behaviour is trusted.
"""
import json

import pytest

from tests import equivalence as eq

RERECORD = "re-record with `python scripts/record_equivalence.py` (at code whose behaviour is trusted)"


@pytest.fixture(scope="module")
def recording() -> dict:
    if not eq.RECORDING.is_file():
        pytest.fail(f"{eq.RECORDING} is missing: {RERECORD}")
    rec = json.loads(eq.RECORDING.read_text())
    if rec.get("format") != eq.FORMAT:
        pytest.fail(f"{eq.RECORDING}: format {rec.get('format')!r}, this test reads format {eq.FORMAT}: {RERECORD}")
    return rec


def check_environment(rec: dict) -> None:
    """Bit-exact numbers only hold for the torch build they were recorded with: a different one is a failure
    that says to re-record, never a silent skip."""
    recorded, now = rec["environment"], eq.environment()
    if recorded["torch"] != now["torch"]:
        pytest.fail(f"{eq.RECORDING} was recorded with torch {recorded['torch']}, this is torch {now['torch']}: "
                    f"bit-exact losses differ between torch builds, so the comparison is meaningless. "
                    f"Check out the last trusted commit and {RERECORD}.", pytrace=False)
    if recorded["threads"] != now["threads"]:
        pytest.fail(f"{eq.RECORDING} was recorded with {recorded['threads']} torch thread(s), "
                    f"tests/equivalence.py now uses {now['threads']}: {RERECORD}", pytrace=False)


def hint(rec: dict) -> str:
    recorded, now = rec["environment"]["cpu_capability"], eq.environment()["cpu_capability"]
    if recorded != now:
        return (f" Note: recorded on a CPU with {recorded} kernels, this one uses {now} (AVX2 and AVX512 gave the "
                f"same numbers when this test was written; DEFAULT did not): if nothing else changed, {RERECORD}.")
    return ""


@pytest.fixture(scope="module")
def prepared(recording, tmp_path_factory):
    """The tiny dataset (made by this test session, in its own temporary folder) and its digest."""
    check_environment(recording)
    root = tmp_path_factory.mktemp("equivalence")
    return root, eq.prepare_data(root)


def test_prepared_data_as_recorded(recording, prepared):
    _, data = prepared
    diffs = eq.differences(recording["data"], data, "data")
    assert not diffs, ("the prepared features differ from the recording (audio decoding, log-mel frontend or "
                       "`prepare` changed): every case below is compared on different inputs.\n  "
                       + "\n  ".join(diffs) + hint(recording))


@pytest.mark.parametrize("case", list(eq.CASES))
def test_training_is_bit_identical(recording, prepared, case):
    check_environment(recording)
    root, data = prepared
    if data != recording["data"]:
        pytest.fail("the prepared features differ from the recording (see test_prepared_data_as_recorded)"
                    + hint(recording), pytrace=False)
    if case not in recording["cases"]:
        pytest.fail(f"case {case!r} is not in {eq.RECORDING}: {RERECORD}", pytrace=False)
    expected = recording["cases"][case]
    if expected["overrides"] != eq.CASES[case]:
        pytest.fail(f"case {case!r}: recorded with {expected['overrides']}, defined now as {eq.CASES[case]}: "
                    f"{RERECORD}", pytrace=False)
    actual = eq.run_case(case, root)
    failures = []
    for section, what in (("losses", "per-step losses"), ("scalars", "per-step TensorBoard scalars"),
                          ("metrics", "metrics summary")):
        diffs = eq.differences(expected[section], actual[section], section)
        if diffs:
            failures.append(f"{what} differ from the recording (first {len(diffs)}):\n  " + "\n  ".join(diffs))
    assert not failures, f"case {case!r}: " + "\n".join(failures) + hint(recording)


@pytest.mark.parametrize("case", list(eq.CASES))
def test_recording_covers_what_it_should(recording, case):
    """The recording itself: 30 logged steps per loss tag; in the MrKD cases the distillation is off before the
    bank is full and on (KD > 0) for the rest, at least 10 of the 30 steps."""
    losses = recording["cases"][case]["losses"]
    assert losses and all(sorted(map(int, v)) == list(range(1, eq.STEPS + 1)) for v in losses.values()), case
    if case in eq.FIRST_ACTIVE:
        assert set(losses) == {"loss/ce", "loss/kd", "loss/fcn"}
        first = eq.FIRST_ACTIVE[case]
        kd = {int(step): eq.unhex(v) for step, v in losses["loss/kd"].items()}
        assert all(v == 0.0 for step, v in kd.items() if step < first), case
        assert all(v > 0.0 for step, v in kd.items() if step >= first), case
        assert eq.STEPS - first + 1 >= 10
    else:
        assert set(losses) == {"loss/ce"}
