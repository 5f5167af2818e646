"""The package's import layers (pyproject.toml's import-linter contracts: the package's, and one inside each package
with rooms of its own) hold; each contract catches a real import that runs back up, or joins two siblings, and a
module placed in none of its layers; and the README's layout section lists the layers of every contract in order."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]

#: Per contract: a real import that breaks it (the module it goes into, the module it names) — the schema reaching up
#: to the methods, one method importing another, the teacher term reaching up to MrKD's objective, the checkpoint
#: format to the run folder, the step to the loop, and the Ray runner to the ablation driver (once an import cycle).
VIOLATIONS = {
    "layers": ("audio_mrkd.config_schema", "audio_mrkd.methods"),
    "methods": ("audio_mrkd.methods.mrkd", "audio_mrkd.methods.kd"),
    "distill": ("audio_mrkd.distill.teacher_term", "audio_mrkd.distill.mrkd_objective"),
    "runs": ("audio_mrkd.runs.checkpoint", "audio_mrkd.runs.run"),
    "train": ("audio_mrkd.train.step", "audio_mrkd.train.engine"),
    "studies": ("audio_mrkd.studies.cluster", "audio_mrkd.studies.ablation"),
}


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def container(contract: dict) -> str:
    return contract["containers"][0]


def test_the_layer_contracts_are_kept():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in done.stdout


def test_every_contract_is_exhaustive_and_has_a_violation_shown_here():
    assert {c["name"] for c in CONTRACTS} == set(VIOLATIONS)
    assert all(c["type"] == "layers" and c.get("exhaustive") for c in CONTRACTS)


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> str:
    """The lint report of a copy of the package with every violation of :data:`VIOLATIONS` and, in every contract's
    container, a new module placed in no layer."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(ROOT / "audio_mrkd", root / "audio_mrkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for importer, imported in VIOLATIONS.values():
        with (root / (importer.replace(".", "/") + ".py")).open("a") as handle:
            handle.write(f"\nimport {imported}  # noqa: E402 (a violation: the layers must catch it)\n")
    for contract in CONTRACTS:
        (root / container(contract).replace(".", "/") / "unplaced.py").write_text('"""A new module."""\n')
    done = lint(root)
    assert done.returncode != 0
    return done.stdout


def _report(stdout: str, name: str) -> str:
    """The part of a lint report about the broken contract ``name``."""
    names = "|".join(re.escape(c["name"]) for c in CONTRACTS)
    found = re.search(rf"^{re.escape(name)}\n-+\n(.*?)(?=^(?:{names})\n-+\n|\Z)", stdout.split("Broken contracts")[-1],
                      re.S | re.M)
    assert found, f"contract {name} not reported broken:\n{stdout[-3000:]}"
    return found.group(1)


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_each_contract_catches_a_real_violation_and_an_unplaced_module(broken, name):
    assert f"{name} BROKEN" in broken
    report = _report(broken, name)
    importer, imported = VIOLATIONS[name]
    assert f"{importer} -> {imported}" in report
    contract = next(c for c in CONTRACTS if c["name"] == name)
    assert f"- {container(contract)}.unplaced" in report and "not listed as layers" in report


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c["name"])
def test_the_readme_lists_the_layers_of_each_contract_in_order(contract):
    text = (ROOT / "README.md").read_text()
    marker = "layers" if contract["name"] == "layers" else f"layers {contract['name']}"
    block = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /layers -->", text, re.S)
    assert block, f"README.md: no <!-- {marker} --> block in the layout section"
    listed = [line.split()[0] for line in block.group(1).strip().splitlines()]
    assert listed == [layer.replace(" ", "") for layer in contract["layers"]]
