"""The cost of ``ablate --cluster``: one study on a two-node localhost Ray cluster (one CPU per node) against
``--jobs 2`` on the same machine, and Ray's fixed costs (starting the cluster, joining it, the storage check, a
task's round trip).

    PYTHONPATH=. python benchmarks/bench_cluster.py [--seeds 2] [--epochs 2]

The study is the suite's: 2 variants (ce, mrkd) × ``--seeds`` seeds × ``--epochs`` epochs of a small cp_mobile on
the tiny prepared DCASE tree (48 clips), one thread per run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from audio_mrkd.data.prepare import prepare
from audio_mrkd.studies import cluster
from audio_mrkd.studies.ablation import run_ablation
from tests.conftest import make_dcase_tree
from tests.test_ablation_cluster import LocalCluster, study


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ray_costs(address: str, out: Path, round_trips: int = 20) -> dict[str, float]:
    """Seconds to join the cluster, to check the storage on every node, and per no-op task (one CPU, after a first
    task has started a worker on the node)."""
    join, ray = timed(lambda: cluster.connect(address, lambda *_: None))
    out.mkdir(parents=True, exist_ok=True)
    check, _ = timed(lambda: cluster.check_storage(ray, out))
    noop = ray.remote(num_cpus=1)(lambda: None)
    ray.get(noop.remote())
    loop, _ = timed(lambda: [ray.get(noop.remote()) for _ in range(round_trips)])
    imports = ray.remote(num_cpus=1, max_calls=1)(lambda: __import__("audio_mrkd.train.engine"))  # a fresh worker
    first, _ = timed(lambda: ray.get(imports.remote()))
    ray.shutdown()
    return {"join": join, "storage check": check, "task round trip": loop / round_trips,
            "a fresh worker importing torch and audio_mrkd (once per worker)": first}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_cluster"))
    tree = make_dcase_tree(root / "dev", n=48)
    prepare(tree, "tiny", cache_dir=root / "cache", manifest_dir=root / "manifests", workers=1,
            overrides=["n_mels=32"], log=lambda *_: None)
    spec = study(root, root)
    overrides = [f"seeds={list(range(args.seeds))}"]
    run_overrides = [f"train.epochs={args.epochs}"]
    local, _ = timed(lambda: run_ablation(spec, root / "jobs2", overrides, jobs=2, run_overrides=run_overrides,
                                          log=lambda *_: None))
    start, cluster = timed(LocalCluster)
    try:
        remote, _ = timed(lambda: run_ablation(spec, root / "cluster", overrides, cluster=cluster.address,
                                               run_overrides=run_overrides, log=lambda *_: None))
        costs = ray_costs(cluster.address, root / "probe")
    finally:
        cluster.close()
    runs = 2 * args.seeds
    print(f"| what | seconds |\n|---|---|\n| study, --jobs 2 ({runs} runs) | {local:.1f} |\n"
          f"| study, --cluster on 2 localhost nodes ({runs} runs) | {remote:.1f} |\n"
          f"| difference | {remote - local:+.1f} |\n| starting the cluster (2 × ray start) | {start:.1f} |")
    for name, seconds in costs.items():
        print(f"| Ray: {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
