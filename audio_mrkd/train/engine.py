"""The one training loop, for every dataset and both methods (``ce`` and ``mrkd``).

Lightning Fabric handles device placement, precision (bf16 autocast on CUDA) and torch.distributed; the loop
itself is plain PyTorch so that the MrKD objective can sit inside a step. Everything a run produces goes into
its run directory (see :func:`new_run_dir`).
"""
from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from lightning_fabric import Fabric
from torch.utils.tensorboard import SummaryWriter

from audio_mrkd import config as config_io
from audio_mrkd import fileio
from audio_mrkd.data.augment import augment_batch
from audio_mrkd.data.dataset import BatchLoader
from audio_mrkd.distill.mrkd import MrKD
from audio_mrkd.errors import InputError
from audio_mrkd.experiment import ExperimentConfig, TrainConfig
from audio_mrkd.models import build_model
from audio_mrkd.progress import progress
from audio_mrkd.train import checkpoint as ckpt
from audio_mrkd.train.data import DataBundle, load_data
from audio_mrkd.train.metrics import classification_metrics
from audio_mrkd.train.tb import log_eval, write_hparams
from audio_mrkd.versions import versions


def make_fabric(tcfg: TrainConfig) -> Fabric:
    """CUDA when present (or asked for), else CPU; bf16 autocast on CUDA unless the config says otherwise;
    DDP (NCCL on GPUs, gloo on CPUs) when ``train.devices × train.num_nodes > 1``."""
    cuda = torch.cuda.is_available() if tcfg.device == "auto" else tcfg.device == "cuda"
    if tcfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device: 'cuda' requested but no CUDA device is available")
    precision = tcfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if cuda else "32"
    precision = {"32": "32-true"}.get(precision, precision)
    parallel = tcfg.devices * tcfg.num_nodes > 1
    return Fabric(accelerator="cuda" if cuda else "cpu", devices=tcfg.devices, num_nodes=tcfg.num_nodes,
                  strategy="ddp" if parallel else "auto", precision=precision)


def launched_fabric(tcfg: TrainConfig) -> Fabric:
    """A Fabric whose processes are running: with several devices this starts the other ranks (or joins the
    ones torchrun started), each re-running the same command."""
    fabric = make_fabric(tcfg)
    if fabric.world_size > 1 or tcfg.devices * tcfg.num_nodes > 1:
        fabric.launch()
    return fabric


def make_optimizer(params, tcfg: TrainConfig, cuda: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW; on CUDA the fused kernels (same update, one launch instead of one per tensor)."""
    fused = True if cuda else None
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tcfg.lr, momentum=tcfg.momentum, nesterov=tcfg.nesterov,
                               weight_decay=tcfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=fused)


def lr_factor(step: int, tcfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps: linear warm-up, then cosine / multistep / constant."""
    total = tcfg.epochs * steps_per_epoch
    warmup = int(tcfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if tcfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if tcfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return tcfg.gamma ** sum(epoch >= m for m in tcfg.milestones)
    return 1.0


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """``<out_dir>/<timestamp>-<method>-seed<seed>[-fold<k>]``, unique."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{cfg.method}-seed{cfg.seed}" + (f"-fold{cfg.data.cv_fold}" if cfg.data.cv_folds else "")
    base = cfg.out_dir / name
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    return run_dir


def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y if y.dim() == 1 else y.float())


class Trainer:
    """Trains one run (one seed, one fold) of an :class:`ExperimentConfig`; ``resume_from`` continues a run dir."""

    def __init__(self, cfg: ExperimentConfig, data: DataBundle | None = None, resume_from: str | Path | None = None,
                 fabric: Fabric | None = None):
        self.cfg = cfg
        self.fabric = fabric or make_fabric(cfg.train)
        if cfg.train.threads and self.fabric.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        self.fabric.seed_everything(cfg.seed, verbose=False)
        self.data = data or load_data(cfg.data)
        self.n_classes = len(self.data.class_names)
        device = self.fabric.device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        model = build_model(cfg.model.name, n_classes=self.n_classes, in_channels=self.data.train.item_shape[0],
                            **cfg.model.options)
        if self.cuda and cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: snapshots and checkpoints use it
        optimizer = make_optimizer(model.parameters(), cfg.train, self.cuda)
        self.student, self.optimizer = self.fabric.setup(model, optimizer)
        self.forward = (torch.compile(self.student, mode=cfg.train.compile_mode) if (cfg.train.compile and self.cuda)
                        else self.student)
        n_train = len(self.data.train)
        rank, world = self.fabric.global_rank, self.fabric.world_size
        self.train_loader = BatchLoader(self.data.train, cfg.train.batch_size, device, shuffle=True,
                                        drop_last=n_train > cfg.train.batch_size, seed=cfg.seed,
                                        resident=cfg.data.resident, normalize=cfg.data.normalize,
                                        rank=rank, world_size=world)
        self.eval_shards = np.array_split(np.arange(len(self.data.eval)), world)
        self.eval_loader = BatchLoader(self.data.eval.subset(self.eval_shards[rank]), cfg.train.batch_size, device,
                                       resident=cfg.data.resident, normalize=cfg.data.normalize)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, cfg.train, self.steps_per_epoch))
        self._infer_loader = None
        bf16 = self.cuda and str(self.fabric.strategy.precision.precision).startswith("bf16")
        self.mrkd = (MrKD(cfg.mrkd, self.n_classes, device, infer_all=self._infer_train,
                          grad_sync=self._average_grads if world > 1 else None,
                          teacher_dtype=torch.bfloat16 if bf16 else None, channels_last=self._channels_last,
                          compile=cfg.train.compile and self.cuda)
                     if cfg.method == "mrkd" else None)
        self.epoch, self.global_step, self.best, self.history = 0, 0, None, []
        if resume_from:
            self.run_dir = Path(resume_from)
            self._load(ckpt.load_checkpoint(ckpt.checkpoint_path(self.run_dir, "last"), map_location=device))
        else:
            self.run_dir = Path(self.fabric.broadcast(str(new_run_dir(cfg)), src=0))  # one run dir for all ranks
        self.writer = None

    # ---- run directory ---------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.fabric.is_global_zero

    def _data_info(self) -> dict:
        split = self.data.train
        return {
            "kind": self.data.kind, "name": self.cfg.data.name, "root": self.cfg.data.root,
            "manifest_dir": self.cfg.data.manifest_dir, "train_split": self.cfg.data.train_split,
            "eval_split": self.cfg.data.eval_split, "class_names": split.class_names,
            "device_names": split.device_names, "input_shape": list(split.item_shape),
            "norm_mean": None if not self.cfg.data.normalize or split.norm_mean is None
            else np.asarray(split.norm_mean).tolist(),
            "norm_std": None if not self.cfg.data.normalize or split.norm_std is None
            else np.asarray(split.norm_std).tolist(),
            "features": self.data.frontend, "n_train": len(split), "n_eval": len(self.data.eval),
        }

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fileio.write_text(self.run_dir / "config.yaml", yaml.safe_dump(config_io.to_dict(self.cfg), sort_keys=False))
        fileio.write_json(self.run_dir / "versions.json", versions())
        fileio.write_text(self.run_dir / "seed", f"{self.cfg.seed}\n")
        fileio.write_json(self.run_dir / "data.json", self._data_info())

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "global_step": self.global_step,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.cuda else []},
            "loader": self.train_loader.state_dict(),
            "mrkd": self.mrkd.state_dict() if self.mrkd else {},
            "best": self.best or {}, "history": self.history,
        }

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if self.cuda and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.train_loader.load_state_dict(state["loader"])
        if self.mrkd:
            self.mrkd.load_state_dict(state["mrkd"], template=self.model)
        self.best, self.history = (state["best"] or None), list(state["history"])

    # ---- data parallel ----------------------------------------------------------------------------------------
    def _average_grads(self, grads: list[torch.Tensor]) -> None:
        for grad in grads:
            grad.copy_(self.fabric.all_reduce(grad, reduce_op="mean"))

    def _sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics to every rank (weights are already identical under DDP), so that a
        snapshot taken now is the same model on every rank."""
        if self.fabric.world_size > 1:
            for buffer in self.model.buffers():
                buffer.copy_(self.fabric.broadcast(buffer, src=0))

    def _gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows (contiguous shards, rank order) on every rank."""
        if self.fabric.world_size == 1:
            return local
        longest = max(len(s) for s in self.eval_shards)
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[:len(local)] = local
        gathered = self.fabric.all_gather(padded)
        return torch.cat([gathered[r, :len(shard)] for r, shard in enumerate(self.eval_shards)])

    def bank_digest(self) -> str:
        """Hash of the snapshot bank's tensors (equal on every rank when data-parallel training is right)."""
        import hashlib
        digest = hashlib.sha256()
        for teacher in (self.mrkd.bank.teachers() if self.mrkd else []):
            for tensor in teacher.state_dict().values():
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:15]  # fits an int64 for the all_gather

    # ---- inference --------------------------------------------------------------------------------------------
    def _logits(self, model: torch.nn.Module, loader: BatchLoader) -> torch.Tensor:
        """N×C float32 logits of ``model`` over a loader's items, in loader order, without augmentation."""
        outs = []
        was_training = model.training
        model.eval()
        with torch.inference_mode(), self.fabric.autocast():
            for batch in loader:
                x = batch.x.contiguous(memory_format=torch.channels_last) if self._channels_last else batch.x
                outs.append(model(x).float())
        model.train(was_training)
        return torch.cat(outs)

    @property
    def _channels_last(self) -> bool:
        return self.cuda and self.cfg.train.channels_last

    def _infer_train(self, snapshot: torch.nn.Module) -> torch.Tensor:
        """A snapshot's logits on every un-augmented training item (MrKD cached-teacher mode)."""
        if self._infer_loader is None:  # built once; shares the training loader's resident copy
            self._infer_loader = BatchLoader(self.data.train, max(self.cfg.train.batch_size, 512), self.fabric.device,
                                             resident=False, normalize=self.cfg.data.normalize)
            if self.train_loader.resident:
                self._infer_loader.features, self._infer_loader.resident = self.train_loader.features, True
        return self._logits(snapshot, self._infer_loader)

    def evaluate(self) -> tuple[dict, np.ndarray]:
        """Metrics of the student on the evaluated split (each rank scores its shard; the rows are gathered)."""
        logits = self._gather_rows(self._logits(self.student, self.eval_loader))
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        split = self.data.eval
        metrics = classification_metrics(probs, split.labels, split.class_names, split.devices, split.device_names,
                                         self.data.device_groups or None)
        return metrics, probs

    def _write_predictions(self, probs: np.ndarray, path: Path) -> None:
        split = self.data.eval
        frame = pd.DataFrame({"filename": split.items["filename"].astype(str).str.replace("audio/", "", regex=False),
                              "scene_label": [split.class_names[i] for i in probs.argmax(axis=1)]})
        for i, name in enumerate(split.class_names):
            frame[name] = probs[:, i].round(6)
        frame["true_label"] = [split.class_names[i] for i in split.labels]
        fileio.write_csv(path, frame, sep="\t")

    # ---- training ----------------------------------------------------------------------------------------------
    def _step(self, batch) -> dict[str, float]:
        x, y = augment_batch(batch.x, batch.y, self.cfg.augment, self.n_classes)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        with_logs = (self.global_step + 1) % self.cfg.train.log_every == 0
        with self.fabric.autocast():
            logits = self.forward(x)
        if self.mrkd:
            loss, logs = self.mrkd.loss(logits.float(), x, y, index=batch.index, epoch=self.epoch,
                                        with_logs=with_logs)
        else:
            loss = soft_cross_entropy(logits, y)
            logs = None
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        if self.mrkd:
            if self.mrkd.schedule.due_after_step(self.global_step):
                self._sync_buffers()
            self.mrkd.after_step(self.model, self.global_step)
        if not with_logs:
            return {}
        logs = logs if logs is not None else {"loss/ce": loss.item()}
        if self.cuda:
            torch.cuda.synchronize()
        step_time = time.perf_counter() - started
        if "mrkd/teacher_time" in logs:
            logs["mrkd/teacher_time_share"] = logs.pop("mrkd/teacher_time") / max(step_time, 1e-9)
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["time/step_ms"] = 1000 * step_time
        return logs

    def _train_epoch(self) -> float:
        self.student.train()
        losses = []
        bar = progress(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}", leave=False,
                       enabled=self.cfg.train.progress and self.is_main, lines=False, unit="step")
        for batch in bar:
            logs = self._step(batch)
            if logs:
                losses.append(logs.get("loss/ce", float("nan")))
                if self.writer:
                    for key, value in logs.items():
                        self.writer.add_scalar(key, value, self.global_step)
                bar.set_postfix(ce=f"{logs['loss/ce']:.3f}")
        self.epoch += 1
        if self.mrkd:
            if self.mrkd.schedule.due_after_epoch(self.epoch):
                self._sync_buffers()
            self.mrkd.after_epoch(self.model, self.epoch)
        return float(np.nanmean(losses)) if losses else float("nan")

    def _record(self, metrics: dict, probs: np.ndarray) -> None:
        key = self.cfg.train.best_metric
        summary = {k: metrics[k] for k in ("accuracy", "macro_accuracy", "log_loss", "top5", "ece")}
        self.history.append({"epoch": self.epoch, **summary})
        improved = self.best is None or metrics[key] > self.best[key]
        if improved:
            self.best = {**metrics, "epoch": self.epoch}
        if not self.is_main:
            return
        if self.writer:
            log_eval(self.writer, metrics, self.data.class_names, self.global_step, epoch=self.epoch)
            self.writer.add_scalar("eval/epoch", self.epoch, self.global_step)
            self.writer.flush()  # eval results visible in a running TensorBoard right away
        self._write_predictions(probs, self.run_dir / "predictions.csv")
        if improved:
            self._write_predictions(probs, self.run_dir / "predictions_best.csv")
        if self.cfg.train.save_checkpoints:
            state = self._state()
            ckpt.save_checkpoint(state, ckpt.checkpoint_path(self.run_dir, "last"))
            if improved:
                ckpt.save_checkpoint(state, ckpt.checkpoint_path(self.run_dir, "best"))
        fileio.write_json(self.run_dir / "metrics.json", self.metrics_summary(final=False))

    def _save_last(self) -> None:
        """The ``last`` checkpoint after an epoch without evaluation (so --resume loses nothing)."""
        if self.is_main and self.cfg.train.save_checkpoints:
            ckpt.save_checkpoint(self._state(), ckpt.checkpoint_path(self.run_dir, "last"))

    def metrics_summary(self, final: bool = True) -> dict:
        last = {**self._last_metrics, "epoch": self.epoch} if self._last_metrics else {}
        return {"run_id": self.run_dir.name, "method": self.cfg.method, "seed": self.cfg.seed,
                "fold": self.cfg.data.cv_fold if self.cfg.data.cv_folds else None,
                "epochs_done": self.epoch, "complete": final and self.epoch >= self.cfg.train.epochs,
                "last": last, "best": self.best or {}, "history": self.history}

    def fit(self, stop_after: int | None = None) -> dict:
        """Train up to ``train.epochs`` (or stop after epoch ``stop_after``, for tests of resume)."""
        self._last_metrics = None
        if self.is_main:
            self._write_run_files()
            # resumed: drop the events logged after the checkpoint (its own step, with its evaluation, stays)
            purge = self.global_step + 1 if self.global_step else None
            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge)
        epochs = self.cfg.train.epochs if stop_after is None else min(stop_after, self.cfg.train.epochs)
        bar = progress(total=self.cfg.train.epochs, initial=self.epoch, unit="epoch",
                       desc=f"train {self.cfg.name} {self.cfg.method} seed {self.cfg.seed}",
                       enabled=self.cfg.train.progress and self.is_main)
        while self.epoch < epochs:
            train_ce = self._train_epoch()
            if self.writer:
                self.writer.add_scalar("train/ce_epoch", train_ce, self.global_step)
            if self.epoch % self.cfg.train.eval_every and self.epoch < self.cfg.train.epochs:
                self._save_last()
                bar.update(1)
                continue
            metrics, probs = self.evaluate()
            self._last_metrics = metrics
            self._record(metrics, probs)
            bar.set_postfix(acc=f"{metrics['accuracy']:.3f}", macro=f"{metrics['macro_accuracy']:.3f}")
            bar.update(1)
        bar.close()
        if self._last_metrics is None and self.history:  # resumed after the last epoch: re-evaluate
            self._last_metrics, _ = self.evaluate()
        summary = self.metrics_summary(final=stop_after is None)
        if self.fabric.world_size > 1:
            digests = self.fabric.all_gather(torch.tensor([int(self.bank_digest() or "0", 16)], dtype=torch.int64))
            summary["distributed"] = {"world_size": self.fabric.world_size,
                                      "bank_digests": [f"{int(d):016x}" for d in digests.flatten().tolist()]}
        if self.is_main:
            fileio.write_json(self.run_dir / "metrics.json", summary)
            if self.writer:
                if summary["complete"]:
                    self._log_hparams(summary)
                self.writer.close()
        return summary

    def _log_hparams(self, summary: dict) -> None:
        flat = {"method": self.cfg.method, "seed": self.cfg.seed, "model": self.cfg.model.name,
                "epochs": self.cfg.train.epochs, "lr": self.cfg.train.lr, "batch_size": self.cfg.train.batch_size}
        if self.mrkd:
            flat.update({f"mrkd.{k}": v for k, v in config_io.to_dict(self.cfg.mrkd).items()})
        final = {f"hparam/last_{k}": summary["last"][k] for k in ("accuracy", "macro_accuracy", "log_loss")}
        final.update({f"hparam/best_{k}": summary["best"][k] for k in ("accuracy", "macro_accuracy", "log_loss")})
        write_hparams(self.writer, flat, final, self.global_step)  # into this run: no `hparams` twin run


def train_run(cfg: ExperimentConfig, data: DataBundle | None = None,
              fabric: Fabric | None = None) -> tuple[Path, dict]:
    """Train one run; returns its run directory and metrics summary."""
    trainer = Trainer(cfg, data, fabric=fabric)
    return trainer.run_dir, trainer.fit()


def resume_run(run_dir: str | Path) -> tuple[Path, dict]:
    """Continue a run from its ``last`` checkpoint with its saved configuration."""
    cfg = ckpt.read_run_config(run_dir)
    trainer = Trainer(cfg, resume_from=run_dir, fabric=launched_fabric(cfg.train))
    return trainer.run_dir, trainer.fit()
