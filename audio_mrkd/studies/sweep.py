"""Several seeds (and folds) of one experiment, and their mean ± std summary."""
from __future__ import annotations

import dataclasses

from audio_mrkd import fileio
from audio_mrkd.config_schema import ExperimentConfig
from audio_mrkd.train.metrics import mean_std

REPORTED = ("accuracy", "macro_accuracy", "log_loss")


def with_seed(cfg: ExperimentConfig, seed: int, fold: int | None = None) -> ExperimentConfig:
    data = dataclasses.replace(cfg.data, cv_fold=fold) if fold is not None else cfg.data
    train = cfg.train
    if train.run_name and len(cfg.seeds) > 1:  # a fixed run name: one directory per seed
        train = dataclasses.replace(train, run_name=f"{train.run_name}-seed{seed}")
    return dataclasses.replace(cfg, seed=seed, seeds=[], data=data, train=train)


def summarize(runs: list[dict]) -> dict:
    """mean ± std over runs of the last- and best-epoch metrics."""
    out = {"n_runs": len(runs), "runs": [r["run_id"] for r in runs]}
    for which in ("last", "best"):
        out[which] = {m: mean_std([r[which][m] for r in runs]) for m in REPORTED}
        out[which]["epoch"] = mean_std([r[which]["epoch"] for r in runs])
    return out


def run_seeds(cfg: ExperimentConfig, train_fn=None, log=print) -> dict | None:
    """Train one run per seed in ``cfg.seeds`` (else ``cfg.seed``); write ``<out_dir>/summary.json``.

    Returns the summary (None on the non-zero ranks of a data-parallel run, which write nothing)."""
    is_main = True
    from audio_mrkd.train.engine import launched_fabric, train_run
    if train_fn is None:
        fabric = launched_fabric(cfg.train)  # one launch for all seeds (several processes when devices > 1)
        train_fn = lambda c: train_run(c, fabric=fabric)  # noqa: E731
        is_main = fabric.is_global_zero
        log = log if is_main else (lambda *_: None)
    runs = []
    for seed in cfg.seeds or [cfg.seed]:
        run_dir, metrics = train_fn(with_seed(cfg, seed))
        log(f"{cfg.name}: seed {seed}: last macro acc {metrics['last']['macro_accuracy']:.4f}, "
            f"best {metrics['best']['macro_accuracy']:.4f} (epoch {metrics['best']['epoch']}) → {run_dir}")
        runs.append(metrics)
    summary = {"experiment": cfg.name, "method": cfg.method, "seeds": cfg.seeds or [cfg.seed], **summarize(runs)}
    if not is_main:
        return None
    fileio.write_json(cfg.out_dir / "summary.json", summary)
    return summary


def fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def table(summaries: dict[str, dict]) -> str:
    """Markdown table: one row per labelled summary; last and best epoch, mean ± std."""
    head = ("| run | n | last acc | last macro acc | last log loss | best acc | best macro acc | best log loss "
            "| best epoch |")
    lines = [head, "|" + "---|" * 9]
    for label, s in summaries.items():
        cells = [fmt(s[w][m]) for w in ("last", "best") for m in REPORTED]
        lines.append(f"| {label} | {s['n_runs']} | " + " | ".join(cells) + f" | {s['best']['epoch']['mean']:.1f} |")
    return "\n".join(lines)
