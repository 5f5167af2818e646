"""An ablation's records know the recipe each run was made with: an edited spec is refused on resume rather than
mixed into the table, and a run another study already made with the same recipe is taken from it (``--reuse``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audio_mrkd.errors import InputError
from audio_mrkd.studies import recipes
from audio_mrkd.studies.ablation import run_ablation
from audio_mrkd.studies.local import gpu_slots
from audio_mrkd.studies.recipes import load_recipe
from audio_mrkd.train.engine import train_run

SILENT = lambda *_: None  # noqa: E731
RECIPE = "data: {kind: synthetic, synthetic_items: 32}\nmodel: {name: dcase_cnn}\ntrain: {epochs: 1, batch_size: 16}\n"


def study(root: Path, name: str, variants: dict[str, str], recipe: str = RECIPE) -> Path:
    (root / f"{name}_recipe.yaml").write_text(recipe)
    spec = root / f"{name}.yaml"
    spec.write_text(f"config: {name}_recipe.yaml\nfolds: 0\nseeds: [0]\nreference: ce\nvariants:\n"
                    + "".join(f"  {v}: [{o}]\n" for v, o in variants.items()))
    return spec


def records(out: Path) -> dict[str, dict]:
    return {r["variant"]: r for r in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}


def counting(trained: list):
    def train(cfg):
        trained.append(cfg.method)
        return train_run(cfg)
    return train


def test_resume_refuses_a_run_whose_recipe_changed_and_ignores_what_does_not_count(tmp_path):
    spec = study(tmp_path, "a", {"ce": "method=ce"})
    run_ablation(spec, tmp_path / "abl", log=SILENT)
    layout, digits = records(tmp_path / "abl")["ce"]["recipe"].split(":")
    assert layout == recipes.RECIPE_LAYOUT and len(digits) == 16
    trained = []
    (tmp_path / "a_recipe.yaml").write_text(RECIPE.replace("batch_size: 16}", "batch_size: 16, log_every: 3}"))
    run_ablation(spec, tmp_path / "abl", log=SILENT, train_fn=counting(trained), run_overrides=["train.progress=true"])
    assert trained == []  # how often the run logs is not part of its recipe: the record stands
    (tmp_path / "a_recipe.yaml").write_text(RECIPE.replace("batch_size: 16", "batch_size: 8"))
    with pytest.raises(InputError, match=r"runs.jsonl: line 1 \(ce, fold 0, seed 0\) was run with another recipe"):
        run_ablation(spec, tmp_path / "abl", log=SILENT)


def test_a_study_in_todays_layout_never_converts_a_config_to_the_first_layout(tmp_path, monkeypatch):
    """New records carry the digest of the config a run folder holds: a study that holds only those never takes the
    first layout's (that conversion is there only to match the records of studies made before)."""
    def refused(*_):
        raise AssertionError("a config converted back to the first layout")
    monkeypatch.setattr(recipes, "first_layout_digest", refused)
    spec = study(tmp_path, "a", {"ce": "method=ce", "pskd": "method=pskd"})
    run_ablation(spec, tmp_path / "abl", log=SILENT)
    trained = []
    run_ablation(spec, tmp_path / "abl", log=SILENT, train_fn=counting(trained))
    assert trained == []
    other = study(tmp_path, "b", {"ce": "method=ce"})
    logged = []
    run_ablation(other, tmp_path / "b_abl", log=logged.append, reuse=[tmp_path / "abl"], train_fn=counting(trained))
    assert trained == [] and "1 runs taken from" in logged[0]


def test_a_record_of_the_first_layout_matches_the_same_recipe_today(tmp_path):
    """A record made before carries the first layout's digest of its config: it still matches the spec's run (and
    stops matching when the recipe changes)."""
    spec = study(tmp_path, "a", {"ce": "method=ce"})
    out = tmp_path / "abl"
    run_ablation(spec, out, log=SILENT)
    recipe = load_recipe(tmp_path / "a_recipe.yaml", ["method=ce", "seed=0"])
    old = records(out)["ce"] | {"recipe": recipes.first_layout_digest(recipe.cfg)}
    assert recipe.matches(old["recipe"]) and not recipe.matches(recipes.first_layout_digest(recipe.cfg) + "0")
    stands_until_the_recipe_changes(spec, out, old)


def stands_until_the_recipe_changes(spec: Path, out: Path, record: dict) -> None:
    """``record``, the study's one line, stands (nothing is trained again) until the spec's recipe file changes."""
    (out / "runs.jsonl").write_text(json.dumps(record) + "\n")
    trained = []
    run_ablation(spec, out, log=SILENT, train_fn=counting(trained))
    assert trained == []
    (spec.parent / "a_recipe.yaml").write_text(RECIPE.replace("epochs: 1", "epochs: 2"))
    with pytest.raises(InputError, match="another recipe"):
        run_ablation(spec, out, log=SILENT)


def test_records_without_a_recipe_are_checked_against_their_run_folder(tmp_path):
    """Records written before ``recipe`` existed: the run folder's config.yaml tells it; without it, accepted."""
    spec = study(tmp_path, "a", {"ce": "method=ce"})
    out = tmp_path / "abl"
    run_ablation(spec, out, log=SILENT)
    old = records(out)["ce"]
    del old["recipe"]
    stands_until_the_recipe_changes(spec, out, old)
    (out / "runs.jsonl").write_text(json.dumps(old | {"run_dir": "ce/gone"}) + "\n")
    trained = []
    run_ablation(spec, out, log=SILENT, train_fn=counting(trained))  # nothing left to tell: the record stands
    assert trained == []


def test_reuse_takes_the_runs_another_study_made_with_the_same_recipe(tmp_path, monkeypatch):
    first = study(tmp_path, "a", {"ce": "method=ce", "mrkd": "method=mrkd, mrkd.k=1"})
    run_ablation(first, tmp_path / "a", log=SILENT)
    # the same recipe under another file and another variant name is the same run; label smoothing is not
    second = study(tmp_path, "b", {"ce": "method=ce", "ls": "method=ce, train.label_smoothing=0.1",
                                   "self": "method=mrkd, mrkd.k=1"})
    trained, logged = [], []
    run_ablation(second, tmp_path / "b", log=logged.append, train_fn=counting(trained), reuse=[tmp_path / "a"])
    assert trained == ["ce"]  # only "ls" was trained (its method is ce)
    assert logged[0] == f"ablation: 2 runs taken from {tmp_path / 'a'} (same recipe, fold and seed)"
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    for mine, theirs in (("ce", "ce"), ("self", "mrkd")):
        assert b[mine]["last_macro_accuracy"] == a[theirs]["last_macro_accuracy"]
        assert b[mine]["reused_from"] == "../a"  # relative to the study's folder, like run_dir: no machine's path
        assert (tmp_path / "b" / b[mine]["run_dir"]).resolve() == (tmp_path / "a" / a[theirs]["run_dir"]).resolve()
    assert "reused_from" not in b["ls"]
    summary = json.loads((tmp_path / "b" / "ablation.json").read_text())
    assert set(summary) == {"ce", "ls", "self", "study"}  # the variants, and what the study resolves
    # what reuse stands on: the same recipe trained again gives the same numbers
    run_ablation(second, tmp_path / "c", log=SILENT)
    c = records(tmp_path / "c")
    assert [c[v]["last_log_loss"] for v in ("ce", "self")] == [b[v]["last_log_loss"] for v in ("ce", "self")]
    # resumed afterwards: the reused records carry their recipe and stand
    run_ablation(second, tmp_path / "b", log=SILENT, train_fn=counting(trained))
    assert trained == ["ce"]
    # both studies moved elsewhere (another clone), reused from there with relative paths: still found, nothing trained
    moved = tmp_path / "elsewhere" / "runs"
    for name in ("a", "b"):
        shutil.copytree(tmp_path / name, moved / name)
    logged.clear()
    monkeypatch.chdir(moved.parent)
    run_ablation(second, "runs/d", log=logged.append, train_fn=counting(trained), reuse=["runs/b"])
    assert trained == ["ce"] and logged[0] == "ablation: 3 runs taken from runs/b (same recipe, fold and seed)"
    d = records(moved / "d")
    assert {v: d[v]["reused_from"] for v in d} == {"ce": "../b", "ls": "../b", "self": "../b"}
    assert (moved / "d" / d["self"]["run_dir"]).resolve() == (moved / "a" / a["mrkd"]["run_dir"]).resolve()


def test_teacher_runs_do_not_count_by_their_paths():
    """A variant taught by ``@teachers``: its recipe is the same whichever folders the fold's teachers are in."""
    base = ["data.kind=synthetic", "method=kd"]
    placeholder = load_recipe(None, [*base, "teacher.runs=@teachers"])
    assert placeholder == load_recipe(None, [*base, "teacher.runs=@teachers", "train.out_dir=/elsewhere"])
    assert placeholder != load_recipe(None, [*base, "teacher.runs=@teachers", "teacher.alpha=0.9"])
    assert placeholder != load_recipe(None, ["data.kind=synthetic", "method=kd", "teacher.runs=[/some/run]"])


def test_variants_runs_only_the_chosen_ones_and_the_reference(tmp_path, capsys):
    """The chosen variants once on the reported split: ``--variants`` with a ``--run`` override of the split."""
    from audio_mrkd.cli import main
    spec = study(tmp_path, "a", {"ce": "method=ce", "ls": "method=ce, train.label_smoothing=0.1",
                                 "mrkd": "method=mrkd, mrkd.k=1"})
    out = tmp_path / "chosen"
    assert main(["ablate", str(spec), "--out", str(out), "--variants", "mrkd", "--run", "data.synthetic_items=48"]) == 0
    assert set(records(out)) == {"ce", "mrkd"}
    assert all(r["n_eval"] == 24 for r in records(out).values())  # the --run override reached every run (the recipe's 32 items evaluate 16)
    assert main(["ablate", str(spec), "--out", str(out), "--variants", "best"]) == 2
    assert "--variants: 'best' is not a variant of" in capsys.readouterr().err


def test_summary_tables_a_study_under_way_without_training(tmp_path, capsys):
    from audio_mrkd.cli import main
    spec = study(tmp_path, "a", {"ce": "method=ce", "ls": "method=ce, train.label_smoothing=0.1"})
    out = tmp_path / "abl"
    spec.write_text(spec.read_text().replace("seeds: [0]", "seeds: [0, 1]"))
    assert main(["ablate", str(spec), "--out", str(out), "seeds=[0]"]) == 0  # seed 0 only: a study half done
    capsys.readouterr()
    before = (out / "runs.jsonl").read_text()
    assert main(["ablate", str(spec), "--out", str(out), "--summary"]) == 0
    printed = capsys.readouterr().out
    assert f"2 of 4 runs recorded in {out / 'runs.jsonl'}; nothing trained" in printed
    assert (out / "runs.jsonl").read_text() == before and "| ls |" in printed
    assert "| — (1 seed) | — |" in printed  # one pair so far: nothing to test yet, and it says so
    summary = json.loads((out / "ablation.json").read_text())
    a = records(out)
    assert summary["ls"]["delta_last_macro_accuracy"]["mean"] == pytest.approx(
        a["ls"]["last_macro_accuracy"] - a["ce"]["last_macro_accuracy"])
    assert main(["ablate", str(spec), "--out", str(out), "--summary", "--target", "0"]) == 2
    assert "--target: a difference greater than 0" in capsys.readouterr().err


def test_summary_of_the_seeds_given_leaves_the_other_recorded_runs_out(tmp_path, capsys):
    """A study stopped part-way through a seed is judged on its complete seeds: ``--summary seeds=[...]``."""
    from audio_mrkd.cli import main
    spec = study(tmp_path, "a", {"ce": "method=ce", "ls": "method=ce, train.label_smoothing=0.1"})
    out = tmp_path / "abl"
    spec.write_text(spec.read_text().replace("seeds: [0]", "seeds: [0, 1]"))
    assert main(["ablate", str(spec), "--out", str(out)]) == 0
    full = json.loads((out / "ablation.json").read_text())["ls"]["delta_last_macro_accuracy"]
    assert full["n"] == 2
    capsys.readouterr()
    assert main(["ablate", str(spec), "--out", str(out), "--summary", "seeds=[1]"]) == 0
    printed = capsys.readouterr().out
    assert "2 recorded runs are outside this grid" in printed
    one = json.loads((out / "ablation.json").read_text())["ls"]["delta_last_macro_accuracy"]
    seed1 = {r["variant"]: r["last_macro_accuracy"] for r in map(json.loads, (out / "runs.jsonl").open())
             if r["seed"] == 1}
    assert one["n"] == 1 and one["mean"] == pytest.approx(seed1["ls"] - seed1["ce"])


def _slow_first(cfg):
    """A run that takes long for seed 0 and no time for seed 1 (numbers made up: only the order is tested)."""
    import time
    time.sleep(4 if cfg.seed == 0 else 0)
    last = {"accuracy": 0.5, "macro_accuracy": 0.5, "log_loss": 1.0, "n_items": 8, "epoch": 1}
    return None, {"last": last, "best": last}


def test_parallel_runs_are_recorded_as_each_finishes(tmp_path):
    """With --jobs 2, a short run that ends beside a long one is in runs.jsonl before the long one ends (an
    interruption then loses only the runs still going)."""
    spec = study(tmp_path, "a", {"ce": "method=ce"})
    spec.write_text(spec.read_text().replace("seeds: [0]", "seeds: [0, 1]"))
    run_ablation(spec, tmp_path / "abl", log=SILENT, jobs=2, train_fn=_slow_first)
    seeds = [json.loads(line)["seed"] for line in (tmp_path / "abl" / "runs.jsonl").read_text().splitlines()]
    assert seeds == [1, 0]


def _seen_gpu(cfg):
    """Says which GPUs its process sees (numbers made up: only the placement is tested)."""
    import os
    import time
    time.sleep(2 if cfg.seed == 0 else 0)  # both workers get a run
    Path(cfg.out_dir, f"gpu-seed{cfg.seed}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    last = {"accuracy": 0.5, "macro_accuracy": 0.5, "log_loss": 1.0, "n_items": 8, "epoch": 1}
    return None, {"last": last, "best": last}


def test_local_workers_each_see_one_gpu_of_their_own(tmp_path, monkeypatch):
    """--jobs N on a CUDA machine: each spawned worker sees one GPU (in turn when there are more workers than GPUs);
    tested on the CPU through CUDA_VISIBLE_DEVICES, which the workers' CUDA would honour."""
    import multiprocessing as mp
    contexts, get_context = [], mp.get_context
    monkeypatch.setattr(mp, "get_context", lambda method=None: contexts.append(method) or get_context(method))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")
    assert gpu_slots(3) == ["7", "9", "7"]
    spec = study(tmp_path, "a", {"ce": "method=ce"})
    spec.write_text(spec.read_text().replace("seeds: [0]", "seeds: [0, 1]"))
    (tmp_path / "abl" / "ce").mkdir(parents=True)
    run_ablation(spec, tmp_path / "abl", log=SILENT, jobs=2, train_fn=_seen_gpu)
    assert sorted(p.read_text() for p in (tmp_path / "abl" / "ce").glob("gpu-seed*")) == ["7", "9"]
    assert contexts == ["spawn"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots(2) == []


def test_a_cut_off_run_of_another_recipe_is_moved_aside_not_continued(tmp_path):
    """The folder of an unfinished run is continued only when its recipe is the one the spec gives now; otherwise it
    is moved aside untouched and the run starts over (its checkpoint is never loaded into the new recipe)."""
    spec = study(tmp_path, "a", {"ce": "method=ce"})
    run_ablation(spec, tmp_path / "first", log=SILENT)
    assert records(tmp_path / "first")["ce"]["run_dir"] == "ce/ce-fold0-seed0"  # named by its key
    assert not (tmp_path / "first" / "ce" / "ce-fold0-seed0" / "checkpoints").exists()  # not kept once finished
    cut_off = tmp_path / "abl" / "ce" / "ce-fold0-seed0"
    shutil.copytree(tmp_path / "first" / "ce" / "ce-fold0-seed0", cut_off)
    (cut_off / "checkpoints").mkdir()
    (cut_off / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint of this recipe")
    (tmp_path / "a_recipe.yaml").write_text(RECIPE.replace("epochs: 1", "epochs: 2"))
    said = []
    run_ablation(spec, tmp_path / "abl", log=said.append)
    assert any("moved to ce-fold0-seed0.unfinished, the run starts over" in line for line in said), said
    aside = tmp_path / "abl" / "ce" / "ce-fold0-seed0.unfinished" / "checkpoints" / "last.pt"
    assert aside.read_bytes() == b"not a checkpoint of this recipe"
    assert json.loads((cut_off / "metrics.json").read_text())["epochs_done"] == 2


def test_an_option_added_later_counts_in_the_recipe_only_away_from_what_the_code_did_before(tmp_path, monkeypatch):
    """pskd.store did not exist when the first PS-KD studies were recorded (they stored the dominant clip's view):
    at "dominant" a run keeps their recipe, at any other store — the default included, should it change — it has
    another one."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    dominant = load_recipe(recipe, ["method=pskd", "pskd.store=dominant"])
    assert load_recipe(recipe, ["method=pskd"]) == dominant  # the default is dominant today
    assert load_recipe(recipe, ["method=pskd", "pskd.store=clean"]) != dominant
    from audio_mrkd.methods.pskd import ProgressiveSelfKD
    monkeypatch.setattr(ProgressiveSelfKD.Options, "store", "clean")  # a changed default changes the numbers …
    monkeypatch.setattr(ProgressiveSelfKD.Options, "__init__",
                        lambda self, alpha_T=0.8, store="clean": (setattr(self, "alpha_T", alpha_T),
                                                                  setattr(self, "store", store))[0])
    assert load_recipe(recipe, ["method=pskd"]) != dominant  # … and the recipe with them
    assert load_recipe(recipe, ["method=pskd", "pskd.store=dominant"]) == dominant
