"""The training engine behaves bit for bit as recorded in ``tests/data/equivalence_cpu.json``.

Each case of :data:`tests.equivalence.CASES` (CE and MrKD, with and without mixup, same-batch and cached
teachers, step and epoch backups) is trained for 30 steps on the CPU, and its per-step losses, the other
deterministic TensorBoard scalars and the metrics summary are compared with the recording: exactly, floats by
their bits. Both the recording and this run are made in a child process with the CPU kernels pinned
(:data:`tests.equivalence.PINNED_KERNELS`), so any x86-64 CPU with AVX2 gives the same bits. A difference means the change under test altered training; if that was intended (or torch was
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


def hint(rec: dict, now: dict) -> str:
    recorded, current = rec["environment"]["cpu_capability"], now["environment"]["cpu_capability"]
    if recorded != current:
        return (f" Note: recorded with {recorded} kernels, this CPU ran {current} ones (a CPU without AVX2 cannot "
                f"run the pinned kernels): if nothing else changed, {RERECORD}.")
    return ""


@pytest.fixture(scope="module")
def now(recording, tmp_path_factory) -> dict:
    """A fresh recording of the code as it is, made like the stored one (child process, pinned kernels)."""
    check_environment(recording)
    out = tmp_path_factory.mktemp("equivalence") / "now.json"
    child = eq.record_in_child(out)
    assert child.returncode == 0, f"recording the code as it is failed:\n{child.stdout}{child.stderr}"
    return json.loads(out.read_text())


def test_same_environment_as_recorded(recording, now):
    diffs = eq.differences(recording["environment"], now["environment"], "environment")
    assert not diffs, "\n  ".join(["recorded in another environment:", *diffs]) + f"\n{RERECORD}"


def test_prepared_data_as_recorded(recording, now):
    diffs = eq.differences(recording["data"], now["data"], "data")
    assert not diffs, ("the prepared features differ from the recording (audio decoding, log-mel frontend or "
                       "`prepare` changed): every case below is compared on different inputs.\n  "
                       + "\n  ".join(diffs) + hint(recording, now))


@pytest.mark.parametrize("case", list(eq.CASES))
def test_training_is_bit_identical(recording, now, case):
    if now["data"] != recording["data"]:
        pytest.fail("the prepared features differ from the recording (see test_prepared_data_as_recorded)"
                    + hint(recording, now), pytrace=False)
    if case not in recording["cases"]:
        pytest.fail(f"case {case!r} is not in {eq.RECORDING}: {RERECORD}", pytrace=False)
    expected = recording["cases"][case]
    if expected["overrides"] != eq.CASES[case]:
        pytest.fail(f"case {case!r}: recorded with {expected['overrides']}, defined now as {eq.CASES[case]}: "
                    f"{RERECORD}", pytrace=False)
    actual = now["cases"][case]
    failures = []
    for section, what in (("losses", "per-step losses"), ("scalars", "per-step TensorBoard scalars"),
                          ("metrics", "metrics summary")):
        diffs = eq.differences(expected[section], actual[section], section)
        if diffs:
            failures.append(f"{what} differ from the recording (first {len(diffs)}):\n  " + "\n  ".join(diffs))
    assert not failures, f"case {case!r}: " + "\n".join(failures) + hint(recording, now)


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
