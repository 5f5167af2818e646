"""``ablate --cluster``: a study's runs as tasks of an existing Ray cluster, one per GPU (or a share of one), in run
folders on storage every node sees; the driver alone writes ``runs.jsonl`` (see :mod:`~audio_mrkd.studies.ablation`).

A task cut off by a lost node (its worker or raylet killed) is a system failure that Ray runs again on another node,
where the run continues from its last epoch checkpoint; an exception raised by the run itself (bad input) is never
retried and stops the study in one line.
"""
from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from audio_mrkd.errors import InputError
from audio_mrkd.studies.grid import run_one

#: attempts after the first for a run whose node was lost
MAX_RETRIES = 3
#: seconds to wait for anything to answer at a ``--cluster`` address
CONNECT_TIMEOUT_S = 5
#: seconds every node has to answer the storage check (its tasks need no CPU, so no run delays them)
STORAGE_TIMEOUT_S = 120


@dataclass
class Placement:
    """What one run asks of the cluster: ``gpus`` None = one where the cluster has GPUs (fractions share one)."""

    cpus: float = 1
    gpus: float | None = None


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError('--cluster needs Ray: pip install -c constraints.txt -e ".[cluster]"') from None
    return ray


def check_answers(address: str) -> None:
    """Refuse in one line, within seconds, an address where nothing answers (``auto`` is resolved by Ray)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--cluster: '{address}' is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"--cluster: nothing answers at {address} ({exc.strerror or exc})") from None


def connect(address: str, log):
    """Join the cluster as its driver (printing the dashboard's address once where it has one); returns ``ray``."""
    ray = _ray()
    check_answers(address)
    try:
        context = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"--cluster: cannot join a Ray cluster at {address}: {_first_line(exc)}") from None
    url = getattr(context, "dashboard_url", None)
    if url:
        log(f"ablation: Ray dashboard at http://{url}")
    return ray


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _node_name() -> str:
    """The node a task runs on, as progress lines and messages name it."""
    import ray
    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _probe(out_dir: str, token: str) -> tuple[str, str | None]:
    """On one node: its name and None when it reads the driver's token in ``out_dir`` and can write there, else
    why not."""
    try:
        if Path(out_dir, ".cluster-token").read_text() != token:
            return _node_name(), "it holds another token there (not the driver's storage)"
        probe = Path(out_dir, f".probe-{uuid.uuid4().hex}")
        probe.write_text(token)
        probe.unlink()
    except OSError as exc:
        return _node_name(), exc.strerror or str(exc)
    return _node_name(), None


def check_storage(ray, out_dir: Path) -> None:
    """Every live node must see and write ``out_dir`` (shared storage) before any run starts; else one line naming
    the first node that cannot, and the path."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    token, marker = uuid.uuid4().hex, out_dir / ".cluster-token"
    marker.write_text(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(str(out_dir.resolve()), token) for node in ray.nodes() if node["Alive"]]
    try:
        for node, why in ray.get(refs, timeout=STORAGE_TIMEOUT_S):
            if why:
                raise InputError(f"--out: node {node} cannot write to {out_dir.resolve()} ({why}); the run folders "
                                 f"must be on storage every node sees")
    finally:
        marker.unlink(missing_ok=True)


def _run_task(task: tuple) -> tuple[dict, str]:
    """One run on a node → (its record, the node's name)."""
    return run_one(task), _node_name()


@dataclass
class ClusterRunner:
    """Runs a list of :func:`~audio_mrkd.studies.grid.run_one` tasks on the cluster, recording each as it finishes."""

    ray: object
    placement: Placement

    def __call__(self, tasks: list[tuple], record) -> None:
        ray = self.ray
        gpus = self.placement.gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_run_task) \
            .options(num_cpus=self.placement.cpus, num_gpus=gpus)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                rec, node = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                for ref in pending:
                    ray.cancel(ref, force=True)
                variant, fold, seed = task[2:5]
                cause = getattr(exc, "cause", None) or exc
                raise InputError(f"ablation: run variant={variant}, fold={fold}, seed={seed} failed: "
                                 f"{type(cause).__name__}: {_first_line(cause)}") from None
            record(rec, node)

    def close(self) -> None:
        self.ray.shutdown()


def threads(placement: Placement) -> int:
    """Torch threads per run: its CPUs, at least one."""
    return max(1, int(placement.cpus))
