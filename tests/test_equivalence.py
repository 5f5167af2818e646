"""The training engine behaves as recorded in ``tests/data/equivalence_cpu.json``, on any x86-64 machine.

Each case of :data:`tests.equivalence.CASES` (every method — CE, MrKD with same-batch and cached teachers and
step and epoch backups, kd from a logits file and from runs, PS-KD, DLB, EMA — with and without mixup; each in
float32 and as a float64 twin) is trained for 30 steps on the CPU, in a child process with the CPU kernels pinned,
and its per-step losses, the other deterministic TensorBoard scalars, the metrics summary and the final weights
are compared with the recording. On a machine the recording has an entry for (same CPU and kernels,
:func:`tests.equivalence.machine`): bit for bit, every case the entry holds. Elsewhere float32 training cannot be
compared (another CPU's rounding is amplified by training itself, see :mod:`tests.equivalence`): the float64 twins
are compared within :data:`tests.equivalence.RELATIVE_TOLERANCE`, and the tests at the end show that a real change
breaks that tolerance while a rounding-sized one does not. A difference means the change under test altered
training; if that was intended (or torch was upgraded), re-record with ``python scripts/record_equivalence.py`` at
code whose behaviour is trusted.
"""
import json

import pytest

from tests import equivalence as eq

RERECORD = "re-record with `python scripts/record_equivalence.py` (at code whose behaviour is trusted)"
TOLERANCE = f"relative tolerance {eq.RELATIVE_TOLERANCE:g} (values below {eq.TOLERANCE_FLOOR:g} count as it)"


@pytest.fixture(scope="module")
def recording() -> dict:
    if not eq.RECORDING.is_file():
        pytest.fail(f"{eq.RECORDING} is missing: {RERECORD}")
    rec = eq.read_recording()
    if rec.get("format") != eq.FORMAT:
        pytest.fail(f"{eq.RECORDING}: format {rec.get('format')!r}, this test reads format {eq.FORMAT}: {RERECORD}")
    return rec


@pytest.fixture(scope="module")
def reference(recording, now) -> tuple[dict, bool]:
    """(the entry to compare with, whether it was made on this machine: then bit for bit)."""
    own = eq.entry_for(recording, now["machine"])
    return (own, True) if own is not None else (recording["machines"][0], False)


def expected_for(recording: dict, reference: tuple[dict, bool], case: str) -> tuple[dict, bool]:
    """(the recorded case, bit for bit?): this machine's entry when it holds the case; else the first entry that
    holds it, within the tolerance (an entry may hold only its float32 cases: its float64 twins were recorded
    again elsewhere after a change that left float32 training as it was)."""
    entry, same_machine = reference
    if same_machine and case in entry["cases"]:
        return entry, True
    holder = next((e for e in recording["machines"] if case in e["cases"]), None)
    if holder is None:
        pytest.fail(f"case {case!r} is not in {eq.RECORDING}: {RERECORD}", pytrace=False)
    return holder, False


def check_environment(entry: dict) -> None:
    """Recorded numbers only hold for the torch build and thread count they were recorded with: a different one is
    a failure that says to re-record, never a silent skip."""
    recorded, now = entry["environment"], eq.environment()
    if recorded["torch"] != now["torch"]:
        pytest.fail(f"{eq.RECORDING} was recorded with torch {recorded['torch']}, this is torch {now['torch']}: "
                    f"the numbers differ between torch builds, so the comparison is meaningless. "
                    f"Check out the last trusted commit and {RERECORD}.", pytrace=False)
    if recorded["threads"] != now["threads"]:
        pytest.fail(f"{eq.RECORDING} was recorded with {recorded['threads']} torch thread(s), "
                    f"tests/equivalence.py now uses {now['threads']}: {RERECORD}", pytrace=False)


def in_child(tmp_path_factory, *args: str) -> dict:
    out = tmp_path_factory.mktemp("equivalence") / "now.json"
    child = eq.record_in_child(out, "--plain", *args)
    assert child.returncode == 0, f"recording the code as it is failed:\n{child.stdout}{child.stderr}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def now(recording, tmp_path_factory) -> dict:
    """A fresh recording of the code as it is, made like the stored one (child process, pinned kernels)."""
    check_environment(recording["machines"][0])
    return in_child(tmp_path_factory)


def test_same_environment_as_recorded(reference, now):
    diffs = eq.differences(reference[0]["environment"], now["environment"], "environment")
    assert not diffs, "\n  ".join(["recorded in another environment:", *diffs]) + f"\n{RERECORD}"


def test_prepared_data_as_recorded(reference, now):
    diffs = eq.differences(reference[0]["data"], now["data"], "data")
    assert not diffs, ("the prepared features differ from the recording (audio decoding, log-mel frontend or "
                       "`prepare` changed): every case below is compared on different inputs.\n  " + "\n  ".join(diffs))


@pytest.mark.parametrize("case", list(eq.CASES))
def test_training_is_as_recorded(recording, reference, now, case):
    entry, same_machine = expected_for(recording, reference, case)
    if now["data"] != entry["data"]:
        pytest.fail("the prepared features differ from the recording (see test_prepared_data_as_recorded)",
                    pytrace=False)
    expected = entry["cases"][case]
    if expected["overrides"] != eq.CASES[case]:
        pytest.fail(f"case {case!r}: recorded with {expected['overrides']}, defined now as {eq.CASES[case]}: "
                    f"{RERECORD}", pytrace=False)
    if not same_machine and not case.endswith(eq.FP64):
        pytest.skip(f"float32 bits are compared only on a machine whose entry holds the case (here "
                    f"{eq.describe(entry['machine'])}); this is {eq.describe(now['machine'])}: {case}{eq.FP64} is "
                    f"compared within the tolerance instead")
    compare = eq.differences if same_machine else eq.beyond_tolerance
    how = "bit for bit" if same_machine else f"within the {TOLERANCE}, recorded on {eq.describe(entry['machine'])}"
    actual = now["cases"][case]
    failures = []
    for section in ("losses", "scalars", "metrics", "weights"):
        diffs = compare(expected[section], actual[section], section)
        if diffs:
            failures.append(f"{section} differ (first {len(diffs)}):\n  " + "\n  ".join(diffs))
    assert not failures, f"case {case!r}, compared {how}: " + "\n".join(failures)


@pytest.mark.parametrize("case", list(eq.CASES))
def test_recording_covers_what_it_should(recording, reference, case):
    """The recording itself: 30 logged steps per loss tag; in the MrKD cases the distillation is off before the
    bank is full and on (KD > 0) for the rest, at least 10 of the 30 steps; in the other methods' cases their own
    loss tags, the distillation term on (> 0) from its first possible step."""
    losses = expected_for(recording, reference, case)[0]["cases"][case]["losses"]
    assert losses and all(sorted(map(int, v)) == list(range(1, eq.STEPS + 1)) for v in losses.values()), case
    if case in eq.FIRST_ACTIVE:
        assert set(losses) == {"loss/ce", "loss/kd", "loss/fcn"}
        first = eq.FIRST_ACTIVE[case]
        kd = {int(step): eq.unhex(v) for step, v in losses["loss/kd"].items()}
        assert all(v == 0.0 for step, v in kd.items() if step < first), case
        assert all(v > 0.0 for step, v in kd.items() if step >= first), case
        assert eq.STEPS - first + 1 >= 10
    elif case.split("_")[0] in eq.METHOD_TERMS:
        tags, term, first = eq.METHOD_TERMS[case.split("_")[0]]
        assert set(losses) == tags, case
        if term is not None:
            values = {int(step): eq.unhex(v) for step, v in losses[term].items()}
            assert all(v > 0.0 for step, v in values.items() if step >= first), case
            assert eq.STEPS - first + 1 >= 10
    else:
        assert set(losses) == {"loss/ce"}


# ---- the tolerance: broken by a real change, kept by a rounding-sized one --------------------------------------
TOLERANCE_CASES = ["ce_plain_fp64", "mrkd_cached_mixup_fp64", "kd_file_mixup_fp64", "pskd_mixup_fp64",
                   "dlb_mixup_fp64", "ema_mixup_fp64"]


@pytest.fixture(scope="module")
def unperturbed(now) -> dict:
    return now


@pytest.mark.parametrize("change", ["lr", "draw"])
def test_a_real_change_breaks_the_tolerance(unperturbed, tmp_path_factory, change):
    """The learning rate 0.01 → 0.01001, or the augmentations' random stream moved by one draw: every case moves
    far past the tolerance (at least 10×)."""
    changed = in_child(tmp_path_factory, "--cases", *TOLERANCE_CASES, "--perturb", change)
    for case in TOLERANCE_CASES:
        worst = eq.largest_relative_difference(unperturbed["cases"][case], changed["cases"][case])
        assert worst > 10 * eq.RELATIVE_TOLERANCE, (case, worst)
        assert eq.beyond_tolerance(unperturbed["cases"][case]["losses"], changed["cases"][case]["losses"]), case


def test_a_rounding_sized_change_stays_inside_the_tolerance(unperturbed, tmp_path_factory):
    """Every initial weight moved by one float64 ulp (what another CPU's rounding does to a float64 run): the
    trajectory changes (the final weights differ) and every recorded value stays within the tolerance."""
    changed = in_child(tmp_path_factory, "--cases", *TOLERANCE_CASES, "--perturb", "ulp")
    for case in TOLERANCE_CASES:
        before, after = unperturbed["cases"][case], changed["cases"][case]
        assert before["weights"] != after["weights"], f"{case}: the change did not reach the trajectory"
        assert not eq.beyond_tolerance(before, after, case), case
