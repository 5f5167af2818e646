"""The package's import layers (pyproject.toml's import-linter contract) hold, an import that runs back up a layer
fails the check, and the README's layout section lists the same layers in the same order."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def contract_layers() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["type"] == "layers")["layers"]


def test_the_layer_contract_is_kept():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "audio_mrkd", tmp_path / "audio_mrkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "audio_mrkd" / "config_schema.py").open("a") as handle:
        handle.write("\nfrom audio_mrkd.methods import METHODS  # noqa: E402 (the schema reaching up to the methods)\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "audio_mrkd.config_schema -> audio_mrkd.methods" in done.stdout


def test_the_readme_lists_the_layers_of_the_contract_in_order():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- layers -->\n(.*?)<!-- /layers -->", text, re.S)
    assert block, "README.md: no <!-- layers --> block in the layout section"
    listed = [line.split()[0] for line in block.group(1).strip().splitlines()]
    assert listed == [layer.replace(" ", "") for layer in contract_layers()]
