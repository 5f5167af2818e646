"""TensorBoard as a user sees it: a real MrKD run, a real ``tensorboard`` server read over its HTTP data API, and
headless-Chromium screenshots of the Scalars tab and of the confusion-matrix image.

Set ``AUDIO_MRKD_WRITE_DOC_IMAGES=1`` to also refresh ``docs/img/tensorboard_{scalars,confusion}.png`` from the
screenshots. The tests that train and serve are marked slow (about 10 s on an idle 2-core machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.train.engine import Trainer, resume_run, train_run
from audio_mrkd.train.tb import confusion_image

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, K = 8, 2
SCALARS_FILTER = "eval_by_epoch/(macro_accuracy|log_loss)|mrkd/(ensemble_acc|ka_rate|teacher_acc)"
TENSORBOARD = Path(sys.executable).with_name("tensorboard")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short MrKD run (the DCASE recipe on synthetic data, small cp_mobile) through the real engine."""
    logdir = tmp_path_factory.mktemp("tb") / "runs"
    cfg = load_experiment(str(ROOT / "configs/experiments/dcase_mrkd.yaml"), [
        "data.kind=synthetic", "data.synthetic_items=256", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}",
        f"train.epochs={EPOCHS}", f"mrkd.k={K}", "train.batch_size=16", "train.log_every=1",
        "train.warmup_epochs=1", "train.progress=false", "train.save_checkpoints=false", "augment.freq_mask=4",
        f"train.out_dir={logdir}"])
    run_dir, summary = train_run(cfg)
    return logdir, run_dir, summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """``tensorboard --logdir <run parent>`` on a free port; yields its base URL once the run is loaded."""
    logdir, run_dir, _ = run
    port = free_port()
    tmp = tmp_path_factory.mktemp("tb_server")
    log = (tmp / "tensorboard.log").open("w")
    proc = subprocess.Popen([str(TENSORBOARD) if TENSORBOARD.exists() else "tensorboard", "--logdir", str(logdir),
                             "--port", str(port), "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # answered, and the run loaded up to its last event (the hparams metrics)
            try:
                tags = get(f"{base}/data/plugin/scalars/tags")
                if "hparam/best_log_loss" in tags.get(run_dir.name, {}):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"tensorboard did not serve {logdir}: {(tmp / 'tensorboard.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its data-server child
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def scalar_values(base: str, run: str, tag: str) -> list[tuple[int, float]]:
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return [(step, value) for _, step, value in get(f"{base}/data/plugin/scalars/scalars?{query}")]


@pytest.mark.slow
def test_one_run_with_hparams_inside(run):
    logdir, run_dir, _ = run
    events = list(logdir.rglob("events.out.tfevents.*"))
    assert [e.parent for e in events] == [run_dir], events  # one event file, in the run itself
    assert not [p for p in logdir.rglob("*") if p.is_dir() and p != run_dir], "no sub-folder runs (no hparams twin)"


@pytest.mark.slow
def test_tensorboard_serves_the_run(run, server):
    logdir, run_dir, summary = run
    name = run_dir.name
    assert get(f"{server}/data/runs") == [name]  # exactly one run, no "<run>/hparams" twin

    tags = set(get(f"{server}/data/plugin/scalars/tags")[name])
    expected = {"loss/ce", "loss/kd", "loss/fcn", "lr", "mrkd/active", "mrkd/ensemble_acc", "mrkd/mean_acc",
                "mrkd/ka_rate", "mrkd/teacher_time_share", "eval/accuracy", "eval/macro_accuracy",
                "eval/log_loss", "eval/epoch", "eval_by_epoch/macro_accuracy", "eval_by_epoch/accuracy",
                "eval_by_epoch/log_loss", "hparam/last_macro_accuracy", "hparam/best_macro_accuracy",
                *(f"mrkd/teacher_acc/{i}" for i in range(K))}
    assert expected <= tags, expected - tags

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    by_step = scalar_values(server, name, "eval/macro_accuracy")
    assert len(by_step) == len(history) == EPOCHS
    assert by_step[-1][1] == pytest.approx(metrics["last"]["macro_accuracy"], rel=1e-6, abs=1e-7)
    assert by_step[-1][0] == max(step for step, _ in scalar_values(server, name, "loss/ce"))
    by_epoch = scalar_values(server, name, "eval_by_epoch/macro_accuracy")
    assert [step for step, _ in by_epoch] == [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert [v for _, v in by_epoch] == pytest.approx([v for _, v in by_step], rel=1e-6)
    assert [v for _, v in by_epoch] == pytest.approx([h["macro_accuracy"] for h in history], rel=1e-6, abs=1e-7)
    active = scalar_values(server, name, "mrkd/active")
    assert active[0][1] == 0.0 and active[-1][1] == 1.0  # plain CE until the bank of K snapshots is full

    images = get(f"{server}/data/plugin/images/tags")[name]
    assert "eval/confusion" in images

    experiment = get(f"{server}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"method", "seed", "lr", "mrkd.k", "mrkd.ka"} <= {h["name"] for h in experiment["hparamInfos"]}
    groups = get(f"{server}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
    assert [g["name"] for g in groups["sessionGroups"]] == [name]  # the hparams session is the run itself
    group = groups["sessionGroups"][0]
    assert group["hparams"]["method"] == "mrkd" and group["hparams"]["mrkd.k"] == K
    assert group["hparams"]["mrkd.ka"] == "true"
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert values["hparam/last_macro_accuracy"] == pytest.approx(metrics["last"]["macro_accuracy"], rel=1e-6)
    assert values["hparam/best_log_loss"] == pytest.approx(metrics["best"]["log_loss"], rel=1e-6)


def screenshot(url: str, out: Path, tmp: Path, height: int = 900) -> Image.Image:
    chromium = shutil.which("chromium")
    profile = tmp / f"chromium-{out.stem}"
    profile.mkdir()
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size=1400,{height}", "--virtual-time-budget=15000",
           f"--screenshot={out}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(profile)})
    assert out.is_file(), f"chromium wrote no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    assert out.stat().st_size > 20_000, f"{out.name}: {out.stat().st_size} bytes, a blank page?"
    image = Image.open(out).convert("RGB")
    pixels = np.asarray(image)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, f"{out.name} is blank"
    return image


def write_doc_image(image: Image.Image, name: str, box: tuple[int, int, int, int] | None = None) -> None:
    if os.environ.get("AUDIO_MRKD_WRITE_DOC_IMAGES") == "1":
        target = ROOT / "docs" / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (image.crop(box) if box else image).save(target, optimize=True)


@pytest.mark.slow
def test_tensorboard_screenshots(run, server, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    _, run_dir, _ = run
    query = urllib.parse.quote(SCALARS_FILTER, safe="")
    scalars = screenshot(f"{server}/#scalars&_smoothingWeight=0.5&tagFilter={query}", tmp_path / "scalars.png",
                         tmp_path, height=1100)
    pixels = np.asarray(scalars).astype(int)
    body = pixels[120:]  # below TensorBoard's orange header bar
    line = (body[..., 0] > 220) & (np.abs(body[..., 1] - 112) < 60) & (body[..., 2] < 140)  # the run's orange
    assert line.sum() > 2000, f"no curves drawn in the Scalars tab ({line.sum()} line pixels)"
    write_doc_image(scalars, "tensorboard_scalars.png", (0, 0, 1080, 1045))

    images = get(f"{server}/data/plugin/images/images?"
                 + urllib.parse.urlencode({"run": run_dir.name, "tag": "eval/confusion"}))
    assert [i["step"] for i in images][-1] == max(i["step"] for i in images)
    confusion = screenshot(f"{server}/#images&tagFilter=confusion", tmp_path / "confusion.png", tmp_path)
    body = np.asarray(confusion).astype(int)[120:]
    cells = (body[..., 2] - body[..., 0] > 60) & (body[..., 2] > 150)  # the matrix's blue cells
    assert cells.sum() > 5000, f"no confusion matrix in the Images tab ({cells.sum()} cell pixels)"
    write_doc_image(confusion, "tensorboard_confusion.png", (0, 0, 1080, 690))


def test_confusion_image_is_labelled():
    names = ["airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
             "street_pedestrian", "street_traffic", "tram"]
    matrix = np.full((10, 10), 7) + np.diag(np.arange(10) * 40)
    image = confusion_image(matrix.tolist(), names)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    height, width, _ = image.shape
    assert 300 < width < 800 and 300 < height < 800
    frame = (image == 90).all(axis=2)  # the matrix frame: long runs of its grey (text antialiasing has a few)
    rows, cols = np.flatnonzero(frame.sum(axis=1) > 100), np.flatnonzero(frame.sum(axis=0) > 100)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    cell = (right - left - 1) / len(names)
    ink = image.sum(axis=2) < 300
    assert ink[top + 5:bottom - 5, : left - 5].any(axis=1).sum() > 50  # row names and "true class"
    labels = ink[: top - 2, left:right]
    assert labels.any()
    for i in range(1, len(names)):  # column names stay inside their own column: nothing crosses a cell edge
        edge = round(i * cell)
        assert not labels[20:, edge - 1:edge + 1].any(), f"column label {i} overlaps its neighbour"
    big = confusion_image(np.ones((100, 100), int).tolist(), [f"class_{i}" for i in range(100)])
    assert big.shape[0] < 2500 and big.shape[1] < 2500


def test_resume_keeps_one_point_per_epoch(tmp_path):
    """The resumed writer purges only what came after the checkpoint: each evaluated epoch keeps one point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = load_experiment(None, ["data.kind=synthetic", "data.synthetic_items=64", "model.name=dcase_cnn",
                                 "method=ce", "train.epochs=4", "train.batch_size=16", "train.progress=false",
                                 f"train.out_dir={tmp_path}"])
    trainer = Trainer(cfg)
    trainer.fit(stop_after=2)
    run_dir, summary = resume_run(trainer.run_dir)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("eval_by_epoch/accuracy")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [4, 8, 12, 16]  # 4 steps per epoch
    assert [e.value for e in events.Scalars("eval/accuracy")] == pytest.approx(
        [h["accuracy"] for h in summary["history"]])
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["checkpoints"]
