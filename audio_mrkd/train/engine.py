"""The one training loop, for every dataset and every training method (:mod:`audio_mrkd.methods`).

The loop knows no method: a :class:`~audio_mrkd.methods.base.Method` supplies the loss of a batch and reacts to
the hooks after each optimiser step and each epoch. Device and precision choices come from one
:class:`~audio_mrkd.runtime.Runtime`; Lightning Fabric does device placement, precision and torch.distributed.
Everything a run produces goes into its run directory (:class:`audio_mrkd.runs.run.Run`).
"""
from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.tensorboard import SummaryWriter

from audio_mrkd import faults, fileio
from audio_mrkd.config_schema import ExperimentConfig, TrainConfig
from audio_mrkd.data.augment import Mixing, augment_batch
from audio_mrkd.data.info import DataInfo
from audio_mrkd.data.selection import DataBundle, load_data
from audio_mrkd.data.splits import BatchLoader
from audio_mrkd.methods import TrainContext, build_method
from audio_mrkd.models import build_model
from audio_mrkd.progress import progress
from audio_mrkd.runs import checkpoint as ckpt
from audio_mrkd.runs.run import CHECKPOINTS, Run, init_weights
from audio_mrkd.runtime import Runtime
from audio_mrkd.train.metrics import classification_metrics
from audio_mrkd.train.optim import make_lr_scheduler, make_optimizer, use_device_lr
from audio_mrkd.train.step import TrainingStep
from audio_mrkd.train.step_graph import CaptureFailed, StaticStep
from audio_mrkd.train.tb import log_eval, log_scalars, write_hparams


def make_fabric(tcfg: TrainConfig) -> Fabric:
    """The runtime's accelerator and precision; DDP (NCCL on GPUs, gloo on CPUs) when
    ``train.devices × train.num_nodes > 1``."""
    runtime = Runtime.from_config(tcfg)
    parallel = tcfg.devices * tcfg.num_nodes > 1
    with warnings.catch_warnings():
        # on a machine with SLURM's srun, Lightning warns on stderr in every process it did not start, which here is
        # every run (one process, or Fabric's or torchrun's processes; an `ablate --slurm` array task is one run)
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
        return Fabric(accelerator=runtime.accelerator, devices=tcfg.devices, num_nodes=tcfg.num_nodes,
                      strategy="ddp" if parallel else "auto", precision=runtime.precision)


def launched_fabric(tcfg: TrainConfig) -> Fabric:
    """A Fabric whose processes are running: with several devices this starts the other ranks (or joins the
    ones torchrun started), each re-running the same command."""
    fabric = make_fabric(tcfg)
    if fabric.world_size > 1 or tcfg.devices * tcfg.num_nodes > 1:
        join_elastic_group("nccl" if Runtime.from_config(tcfg).cuda else "gloo")
        fabric.launch()
    return fabric


def join_elastic_group(backend: str) -> None:
    """Under torchrun, join the process group through the agent's store with a prefix per restart attempt (Fabric
    then uses that group). Without it a restarted worker can read the previous attempt's peer addresses from the
    store and connect to a dead worker (measured: gloo's "connectFullMesh failed … Connection refused")."""
    env = os.environ
    if "TORCHELASTIC_RESTART_COUNT" not in env or torch.distributed.is_initialized() \
            or int(env.get("WORLD_SIZE", "1")) < 2:
        return
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts the store: all are clients
    store = torch.distributed.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world,
                                       is_master=not agent_store and rank == 0, timeout=timedelta(minutes=30))
    prefixed = torch.distributed.PrefixStore(f"audio_mrkd/attempt_{env['TORCHELASTIC_RESTART_COUNT']}", store)
    torch.distributed.init_process_group(backend, store=prefixed, rank=rank, world_size=world)


class Trainer:
    """Trains one run (one seed, one fold) of an :class:`ExperimentConfig`; ``resume_from`` continues a run dir."""

    def __init__(self, cfg: ExperimentConfig, data: DataBundle | None = None, resume_from: str | Path | None = None,
                 fabric: Fabric | None = None):
        self.cfg = cfg
        self.runtime = Runtime.from_config(cfg.train)
        self.fabric = fabric or make_fabric(cfg.train)
        self.runtime.apply()
        self.fabric.seed_everything(cfg.seed, verbose=False)
        self.data = data or load_data(cfg.data)
        self.n_classes = len(self.data.class_names)
        self.model = self._build_model()  # the one network; self.forward is its training-time (wrapped) form
        self.forward, self.optimizer = self.fabric.setup(
            self.model, make_optimizer(self.model.parameters(), cfg.train, self.runtime.fused_optimizer))
        if self.runtime.compile:
            self.forward = torch.compile(self.forward, mode=self.runtime.compile_mode)
        self._make_loaders()
        if self.runtime.capture:  # a captured step reads its learning rate from the device
            use_device_lr(self.optimizer, self.fabric.device)
        self.scheduler = make_lr_scheduler(self.optimizer, cfg.train, self.steps_per_epoch)
        self.augment_rng = torch.Generator(device=self.fabric.device).manual_seed(cfg.seed)
        self.method = build_method(cfg, TrainContext(
            model=self.model, n_classes=self.n_classes, torch_device=self.fabric.device, runtime=self.runtime,
            infer_train=self._infer_train, sync_buffers=self._sync_buffers,
            run_epochs=cfg.train.epochs, steps_per_epoch=self.steps_per_epoch,
            data_info=DataInfo.of(cfg.data, self.data),
            train_filenames=self.data.train.items["filename"].astype(str).tolist(),
            open_run=Run,
            average_grads=self._average_grads if self.fabric.world_size > 1 else None))
        self.epoch, self.global_step, self.best, self.history = 0, 0, None, []
        self.training_step = TrainingStep(self.augment, self.forward, self.method, self.optimizer, self.fabric)
        full_batch = cfg.train.batch_size // self.fabric.world_size  # this process's rows of a full batch
        self.static_step = StaticStep(self.training_step, self.runtime.capture, full_batch, self.augment_rng) \
            if self.runtime.step_graph else None
        self._epoch_losses: list[float] = []
        named = Run.named_dir(cfg)
        if resume_from is None and named is not None and Run(named).checkpoint("last").is_file():
            resume_from = named  # train.run_name: a restarted command (e.g. a torchrun restart) continues its run
        if resume_from:
            self.run_dir = Path(resume_from)
            for which in CHECKPOINTS:  # a write killed half-way left its temporary file
                fileio.remove_stale(Run(self.run_dir).checkpoint(which))
            path = Run(self.run_dir).checkpoint("last")
            self._load(ckpt.check_training_state(ckpt.load_checkpoint(path, map_location=self.fabric.device), path),
                       path)
            if named is not None and self.is_main:
                print(f"train.run_name: resuming {self.run_dir} from its last checkpoint (step {self.global_step}, "
                      f"{self.epoch} epochs done)", file=sys.stderr)
        else:
            self.run_dir = Path(self.fabric.broadcast(str(Run.new_dir(cfg)), src=0))  # one run dir for all ranks
        self.run = Run(self.run_dir)
        self.writer = None
        self.last_metrics: dict | None = None  # the latest evaluation's metrics (the summary's "last")

    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        model = build_model(cfg.model.name, n_classes=self.n_classes, in_channels=self.data.train.item_shape[0],
                            **cfg.model.options)
        if cfg.train.init_from:  # fine-tuning: the weights of an earlier run (names and shapes checked)
            path = init_weights(cfg.train.init_from)
            ckpt.load_model_weights(model, ckpt.model_state(path), path, cfg.model.name)
        return model.to(memory_format=torch.channels_last) if self.runtime.channels_last else model

    def _make_loaders(self) -> None:
        cfg, device = self.cfg, self.fabric.device
        rank, world = self.fabric.global_rank, self.fabric.world_size
        self.train_loader = BatchLoader(self.data.train, cfg.train.batch_size, device, shuffle=True,
                                        drop_last=len(self.data.train) > cfg.train.batch_size, seed=cfg.seed,
                                        resident=cfg.data.resident, normalize=cfg.data.normalize,
                                        rank=rank, world_size=world, dtype=self.runtime.input_dtype)
        self.eval_shards = np.array_split(np.arange(len(self.data.eval)), world)
        self.eval_loader = BatchLoader(self.data.eval.subset(self.eval_shards[rank]), cfg.train.batch_size, device,
                                       resident=cfg.data.resident, normalize=cfg.data.normalize,
                                       dtype=self.runtime.input_dtype)
        self.steps_per_epoch = len(self.train_loader)
        self._infer_loader = None

    # ---- run directory ---------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.fabric.is_global_zero

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "global_step": self.global_step,
            "rng": {"torch": torch.get_rng_state(), "augment": self.augment_rng.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.runtime.cuda else []},
            "loader": self.train_loader.state_dict(),
            "method": self.method.state_dict(),
            "best": self.best or {}, "history": self.history, "epoch_losses": list(self._epoch_losses),
        }

    def _load(self, state: dict, path: Path) -> None:
        ckpt.load_model_weights(self.model, state["model"], path, self.cfg.model.name)
        if "lr_lambdas" in state["scheduler"]:  # written with the closed-form LambdaLR: replay the steps
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(int(state["global_step"])):
                    self.scheduler.step()
        else:
            self.scheduler.load_state_dict(state["scheduler"])
        self.optimizer.load_state_dict(state["optimizer"])  # after the replay: the saved learning rates stand
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "augment" in state["rng"]:  # checkpoints before the run's own augmentation generator: it starts anew
            self.augment_rng.set_state(state["rng"]["augment"].cpu())
        if self.runtime.cuda and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.train_loader.load_state_dict(state["loader"])
        # checkpoints written before the Method interface kept MrKD's state under "mrkd"
        self.method.load_state_dict(state["method"] if "method" in state else state.get("mrkd", {}))
        self.best, self.history = (state["best"] or None), list(state["history"])
        self._epoch_losses = [float(v) for v in state.get("epoch_losses", [])]

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

    # ---- inference --------------------------------------------------------------------------------------------
    def _logits(self, model: torch.nn.Module, loader: BatchLoader) -> torch.Tensor:
        """N×C float32 logits of ``model`` over a loader's items, in loader order, without augmentation."""
        outs = []
        was_training = model.training
        model.eval()
        with torch.inference_mode(), self.fabric.autocast():
            for batch in loader:
                x = batch.x.contiguous(memory_format=torch.channels_last) if self.runtime.channels_last else batch.x
                outs.append(model(x).float())
        model.train(was_training)
        return torch.cat(outs)

    def _infer_train(self, snapshot: torch.nn.Module) -> torch.Tensor:
        """A snapshot's logits on every un-augmented training item (MrKD cached-teacher mode)."""
        if self._infer_loader is None:  # built once; shares the training loader's resident copy
            self._infer_loader = BatchLoader(self.data.train, max(self.cfg.train.batch_size, 512), self.fabric.device,
                                             resident=False, normalize=self.cfg.data.normalize,
                                             dtype=self.runtime.input_dtype)
            if self.train_loader.resident:
                self._infer_loader.features, self._infer_loader.resident = self.train_loader.features, True
        return self._logits(snapshot, self._infer_loader)

    def evaluate(self) -> tuple[dict, np.ndarray]:
        """Metrics of the student on the evaluated split (each rank scores its shard; the rows are gathered)."""
        logits = self._gather_rows(self._logits(self.model, self.eval_loader))
        faults.point("eval")
        return self._metrics(logits, self.data.eval)

    def _metrics(self, logits: torch.Tensor, split) -> tuple[dict, np.ndarray]:
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        metrics = classification_metrics(probs, split.labels, split.class_names, split.recording_devices,
                                         split.device_names, self.data.device_groups or None)
        return metrics, probs

    def score_test(self) -> dict:
        """``data.final_test``: the last and the best model (its checkpoint; the best epoch was chosen on the
        evaluated split) scored once on the official test split → ``{"last": …, "best": …}``, reported beside the
        evaluated split's numbers and never used to choose. The last model's predictions → ``predictions_test.csv``."""
        split = self.data.test
        loader = BatchLoader(split, self.cfg.train.batch_size, self.fabric.device, resident=self.cfg.data.resident,
                             normalize=self.cfg.data.normalize, dtype=self.runtime.input_dtype)
        metrics, probs = self._metrics(self._logits(self.model, loader), split)
        self.run.write_predictions("test", probs, split)
        scores = {"last": {**metrics, "epoch": self.epoch}}
        best_path = self.run.checkpoint("best")
        if self.best and self.best["epoch"] == self.epoch:
            scores["best"] = scores["last"]
        elif self.best and best_path.is_file():
            model = copy.deepcopy(self.model)
            ckpt.load_model_weights(model, ckpt.load_checkpoint(best_path, self.fabric.device)["model"], best_path,
                                    self.cfg.model.name)
            scores["best"] = {**self._metrics(self._logits(model, loader), split)[0], "epoch": self.best["epoch"]}
        return scores

    # ---- training ----------------------------------------------------------------------------------------------
    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Mixing | None]:
        """The configured augmentations, drawing from the run's own generator, in the runtime's memory format;
        with mixup, how the rows were mixed (for the method's per-item teachers)."""
        x, y, mixing = augment_batch(x, y, self.cfg.augment, self.n_classes, self.augment_rng,
                                     self.method.mixup_groups())
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, mixing

    # ---- the public step / record API (fit() is built on it; benchmarks and ablate-plan drive it directly) --------
    def start(self) -> None:
        """Open the run for training: the files it starts with and its TensorBoard writer (rank 0). :meth:`fit` calls
        it; a caller that drives :meth:`step` and :meth:`record` itself calls it first to log and record as fit does."""
        self.last_metrics = None
        if self.is_main:
            self.run.write_start(self.cfg, self.data)
            # resumed: drop the events logged after the checkpoint (its own step, with its evaluation, stays)
            purge = self.global_step + 1 if self.global_step else None
            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge)

    def step(self, batch) -> dict[str, float]:
        """One optimiser step on ``batch`` (a :class:`~audio_mrkd.data.splits.Batch` from the train loader): the
        method's batch hook, the step (on static buffers when ``train.step_graph`` allows), the LR schedule and the
        method's step hook. Returns the step's logs on a logging step (every ``train.log_every``), else {}."""
        batch = self.method.before_batch(batch)
        started = time.perf_counter()
        with_logs = (self.global_step + 1) % self.cfg.train.log_every == 0
        logs = {} if self._static_step(batch, with_logs) else self._eager_step(batch, with_logs)
        self.scheduler.step()
        self.global_step += 1
        self.method.after_step(self.global_step)
        if not with_logs:
            return {}
        if self.runtime.cuda:
            torch.cuda.synchronize()
        step_time = time.perf_counter() - started
        for key in [k for k in logs if k.endswith("_time")]:  # seconds a method spent inside the step
            logs[f"{key}_share"] = logs.pop(key) / max(step_time, 1e-9)
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["time/step_ms"] = 1000 * step_time
        return logs

    def _eager_step(self, batch, with_logs: bool) -> dict[str, float]:
        """The training step as it comes (any batch, any method); returns the method's logs."""
        return self.training_step(batch.x, batch.y, batch.index, self.epoch, with_logs)[1]

    def _static_step(self, batch, with_logs: bool) -> bool:
        """The step on static buffers (train.step_graph), when the method is capture-safe now; False: do it eagerly."""
        if self.static_step is None or with_logs:
            return False
        key = self.method.graph_key(self.epoch)
        if not self.static_step.accepts(batch, key):
            return False
        try:
            self.static_step.run(batch, key, self.epoch)
        except CaptureFailed:
            return False
        return True

    def _train_epoch(self) -> float:
        self.model.train()
        losses = self._epoch_losses  # resumed inside an epoch: the losses logged before the checkpoint
        every, steps = self.cfg.train.checkpoint_every, len(self.train_loader)
        bar = progress(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}", leave=False,
                       enabled=self.cfg.train.progress and self.is_main, lines=False, unit="step",
                       initial=self.train_loader.position)
        for batch in bar:
            logs = self.step(batch)
            if logs:
                losses.append(logs.get("loss/ce", float("nan")))
                if self.writer:
                    log_scalars(self.writer, logs, self.global_step)
                bar.set_postfix(ce=f"{logs['loss/ce']:.3f}")
            faults.point("step")
            if every and self.global_step % every == 0 and self.train_loader.position < steps:
                self._save_last()  # inside the epoch: a kill loses at most `checkpoint_every` steps
        self._epoch_losses = []
        self.epoch += 1
        self.method.after_epoch(self.epoch)
        return float(np.nanmean(losses)) if losses else float("nan")

    def record(self, metrics: dict, probs: np.ndarray) -> None:
        """Record an evaluation (:meth:`evaluate`'s metrics and probabilities) after ``self.epoch`` epochs: the history,
        the best epoch, TensorBoard, the predictions, the checkpoints and metrics.json."""
        self.last_metrics = metrics
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
        self.run.write_predictions("last", probs, self.data.eval)
        if improved:
            self.run.write_predictions("best", probs, self.data.eval)
        if self.cfg.train.save_checkpoints:
            state = self._state()
            ckpt.save_checkpoint(state, self.run.checkpoint("last"))
            if improved:
                ckpt.save_checkpoint(state, self.run.checkpoint("best"))
        self.run.write_metrics(self.metrics_summary(final=False))

    def _save_last(self) -> None:
        """The ``last`` checkpoint after an epoch without evaluation (so --resume loses nothing)."""
        if self.is_main and self.cfg.train.save_checkpoints:
            ckpt.save_checkpoint(self._state(), self.run.checkpoint("last"))

    def metrics_summary(self, final: bool = True) -> dict:
        last = {**self.last_metrics, "epoch": self.epoch} if self.last_metrics else {}
        return {"run_id": self.run_dir.name, "method": self.cfg.method, "seed": self.cfg.seed,
                "fold": self.cfg.data.cv_fold if self.cfg.data.cv_folds else None,
                "epochs_done": self.epoch, "complete": final and self.epoch >= self.cfg.train.epochs,
                "last": last, "best": self.best or {}, "history": self.history}

    def fit(self, stop_after: int | None = None) -> dict:
        """Train up to ``train.epochs`` (or stop after epoch ``stop_after``, for tests of resume)."""
        self.start()
        epochs = self.cfg.train.epochs if stop_after is None else min(stop_after, self.cfg.train.epochs)
        bar = progress(total=self.cfg.train.epochs, initial=self.epoch, unit="epoch",
                       desc=f"train {self.cfg.name} {self.cfg.run_label} seed {self.cfg.seed}",
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
            self.record(metrics, probs)
            bar.set_postfix(acc=f"{metrics['accuracy']:.3f}", macro=f"{metrics['macro_accuracy']:.3f}")
            bar.update(1)
        bar.close()
        if self.last_metrics is None and self.history:  # resumed after the last epoch: re-evaluate
            self.last_metrics, _ = self.evaluate()
        summary = self.metrics_summary(final=stop_after is None)
        if self.fabric.world_size > 1:
            digests = self.fabric.all_gather(torch.tensor([int(self.method.digest() or "0", 16)], dtype=torch.int64))
            summary["distributed"] = {"world_size": self.fabric.world_size,
                                      "method_digests": [f"{int(d):016x}" for d in digests.flatten().tolist()]}
        if self.is_main:
            if summary["complete"] and self.data.test is not None:
                summary["test"] = self.score_test()
            self.run.write_metrics(summary)
            if self.writer:
                if summary["complete"]:
                    self._log_hparams(summary)
                self.writer.close()
        return summary

    def _log_hparams(self, summary: dict) -> None:
        flat = {"method": self.cfg.method, "seed": self.cfg.seed, "model": self.cfg.model.name,
                "epochs": self.cfg.train.epochs, "lr": self.cfg.train.lr, "batch_size": self.cfg.train.batch_size}
        flat.update(self.method.hparams())
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
    cfg = Run(run_dir).config
    trainer = Trainer(cfg, resume_from=run_dir, fabric=launched_fabric(cfg.train))
    return trainer.run_dir, trainer.fit()
