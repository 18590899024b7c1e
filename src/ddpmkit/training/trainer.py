"""The training loop: a thin composition of the pieces built elsewhere.

Every random choice of step s (batch indices, flips, label dropout, t, noise, dropout masks) comes
from generators seeded by (seed, s), and the whole *global* batch is drawn on every process before
each process takes its slice.  Hence:

* resuming from a checkpoint at step k continues bit for bit as if training had not stopped;
* N processes under torchrun compute the same global batch as one process (DDP averages the
  gradients), so the weights agree up to float summation order.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import Checkpoint, clean_checkpoints, list_checkpoints, load_checkpoint, read_state, save_checkpoint
from ..config import Config, apply_overrides, config_from_dict, dump_toml, load_config
from ..diffusion.losses import LossWeighting, training_losses
from ..diffusion.timesteps import make_timestep_sampler
from ..errors import TrainingDiverged, UserError
from ..networks.factory import config_from_dict as network_from_dict
from ..networks.factory import config_to_dict
from ..networks.precision import autocast_dtype, channels_last_for, with_autocast
from ..runs import balanced_labels, build_model, build_process, derive_seed, pick_device, resolve_network_config
from ..validate import check_config, create_output_dir, resume_changes
from . import distributed as D
from .ema import EMA
from .lr import lr_at
from .prefetch import Prefetcher

QUARTERS = 4
logger = logging.getLogger(__name__)


def train_config(config: str | Path | None, overrides: list[str], resume: bool | str = False) -> Config:
    """The config of a ``train`` invocation: ``config`` plus ``overrides``; ``resume`` given as a run
    directory sets ``run.out_dir`` to it, and without ``config`` the run's stored config is the base."""
    if isinstance(resume, (str, Path)):
        overrides = [*overrides, f"run.out_dir={json.dumps(str(resume))}"]
    if config is not None:
        return load_config(config, overrides)
    if not isinstance(resume, (str, Path)):
        raise UserError("train needs --config FILE (or --resume RUN_DIR to continue a run with its stored config)")
    try:
        stored = read_state(resume)["config"]
    except UserError as e:
        raise UserError(f"--resume: {e}") from None
    return config_from_dict(apply_overrides(stored, overrides))


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (seed, step, stream): ``derive_seed`` at an offset for (step, stream)."""
    return derive_seed(seed, step * 9_176 + stream * 7_919 + 12_345)


def passed_data_config(cfg: Config, data) -> Config:
    """``cfg`` with its [data] section describing ``data`` (a ``data.Dataset`` from ``data.passed.from_python``):
    ``name`` "tensor" / "dataset", ``n`` items, ``image_size`` / ``channels`` of images (0 for points), stored
    in memory.  A value the user set that the data contradicts is an error (the data is used as it is)."""
    d = cfg.data
    have = {"n": len(data), "image_size": data.image_size or 0, "channels": data.channels or 0}
    for key, value in have.items():
        if getattr(d, key) not in (0, value):
            raise UserError(f"data.{key} = {getattr(d, key)} but the data passed has {value} (data passed in Python "
                            "is used as it is: leave data.n, data.image_size and data.channels at 0)")
    if d.data_dir or d.storage == "prepared":
        raise UserError("data.data_dir / data.storage = 'prepared' do not apply to data passed in Python")
    return replace(cfg, data=replace(d, name=data.name, storage="memory", **have))


def load_training_data(cfg: Config, dist: D.DistInfo | None = None, *, progress: bool = False,
                       log: Callable[[str], None] | None = None, data=None):
    """The training set of ``cfg``: ``data`` passed in Python (converted by ``data.passed.from_python``), in
    memory, or a memory map of its prepared copy (built first when missing or stale; under DDP by rank 0
    while the other ranks wait)."""
    from ..data import load_dataset
    from ..data import prepared as P
    from ..data.passed import PASSED_NAMES, from_python

    d = cfg.data
    if data is not None:
        return from_python(data)
    if d.name in PASSED_NAMES:
        raise UserError(f"data.name = {d.name!r}: this run trained on data passed in Python; continue it with "
                        "ddpmkit.training.train(cfg, data=<the same data>, resume=True), or name a data set")
    try:
        if P.resolve_storage(d.name, d.storage) == "memory":
            return load_dataset(d.name, data_dir=d.data_dir or None, split="train", image_size=d.image_size or None,
                                channels=d.channels or None, n=d.n or None, seed=cfg.run.seed)
        src = P.folder_source(d.data_dir, d.image_size, d.channels)
        log = log or logger.info
        if dist is None or dist.is_main:
            report = P.prepare(src, cache_root=d.prepared_dir or None, workers=P.default_workers(d.workers),
                               progress=progress, log=log)
            log(P.report_line(report, src))
        if dist is not None:
            D.barrier(dist)
        root = Path(d.prepared_dir) if d.prepared_dir else P.default_cache_root()
        return P.open_prepared(root / src.key(), n=d.n or None, seed=cfg.run.seed)
    except ValueError as e:
        raise UserError(str(e)) from None


@dataclass
class TrainResult:
    step: int
    stopped_early: bool
    run_dir: Path
    last_loss: float
    main_process: bool = True       # False on the other ranks of a torchrun launch


class Trainer:
    """``data``: a tensor or ``torch.utils.data.Dataset`` to train on instead of ``cfg.data.name`` (see
    ``data.passed``); the stored config then says ``data.name = "tensor"`` / ``"dataset"``, and resuming
    needs the same data passed again (checked by its sha256)."""

    def __init__(self, cfg: Config, *, data=None, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self._data_sha256 = None
        if data is not None:
            from ..data.passed import fingerprint, from_python

            data = from_python(data)
            cfg = passed_data_config(cfg, data)
            self._data_sha256 = fingerprint(data)
        self.cfg = cfg
        self.log_fn = log or logger.info  # messages go to logging (the CLI shows them above the progress bar)
        self.progress = progress
        self.run_dir = Path(cfg.run.out_dir)
        check_config(cfg)
        try:
            self.dist = D.init_distributed("cuda" if pick_device(cfg.run.device).type == "cuda" else "cpu")
            self.device = pick_device(cfg.run.device, self.dist)
        except UserError as e:
            raise UserError(f"run.{e}") from None
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        t = cfg.train
        self._check_train_section()
        self.data = load_training_data(cfg, self.dist, progress=progress and self.dist.is_main,
                                       log=self.log_fn if self.dist.is_main else (lambda _msg: None), data=data)
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) of the last epoch drawn
        self._prefetcher: Prefetcher | None = None
        if cfg.data.class_conditional and not self.data.num_classes:
            raise UserError(f"data.class_conditional = true but {cfg.data.name!r} has no labels")
        self.process = build_process(cfg.diffusion, self.device)
        self.network_config = resolve_network_config(cfg, tuple(self.data.shape), self.data.num_classes)
        self.model = build_model(self.network_config, seed=cfg.run.seed).to(self.device)
        # The network's forward runs under autocast (bf16 on CUDA or a CPU with native bf16, fp16 on
        # CUDA); weights, AdamW state and the loss stay fp32.  fp16 needs loss scaling against gradient
        # underflow; bf16 and fp32 do not.  The layout that precision runs fastest in is set before the
        # EMA copy and the optimizer are made from the weights (networks/precision.py).
        self.amp_dtype, fallback = autocast_dtype(t.precision, self.device)
        ckpt = self._load_resume_checkpoint() if resume else None
        self._use_layout(self._stored_layout(ckpt))
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup, kind=t.ema, sigma_rel=t.ema_std)
        # fused AdamW: one kernel for all parameters (about 2x faster optimizer steps on CPU here)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=tuple(t.adam_betas),
                                           weight_decay=t.weight_decay, fused=True)
        ts = cfg.diffusion.timestep_sampler
        if ts == "auto":
            ts = "loss-second-moment" if cfg.diffusion.loss == "vlb" else "uniform"
        d = cfg.diffusion
        options = ({"alphas_cumprod": self.process.alphas_cumprod, "mean": d.lognormal_mean, "std": d.lognormal_std}
                   if ts == "lognormal" else {})
        try:
            self.t_sampler = make_timestep_sampler(ts, self.process.num_timesteps, **options)
        except ValueError as e:
            raise UserError(f"[diffusion] {e}") from None
        self.loss_weighting = LossWeighting(d.loss_weighting, d.min_snr_gamma, d.p2_gamma, d.p2_k)
        self.step = 0
        self.window = self._empty_window()
        if ckpt is not None:
            self._resume(ckpt)
        elif (self.run_dir / "checkpoints").is_dir() and list_checkpoints(self.run_dir / "checkpoints"):
            raise UserError(f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                            "or set run.out_dir to a new directory (nothing was overwritten)")
        if self.dist.is_main:  # what a killed save left behind
            clean_checkpoints(self.run_dir / "checkpoints")
        self.ddp = None
        if self.dist.enabled:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # train.compile: the network (inside DDP, if any) traced by torch.compile; the optimizer, EMA and
        # checkpoints keep working on self.model itself.  Compilation happens at the first step.
        self.net = torch.compile(self.ddp or self.model) if t.compile else (self.ddp or self.model)
        self._compiled_once = not t.compile
        if fallback is not None and self.dist.is_main:
            self.log_fn(f"train.{fallback}")
        self.scaler = None
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")
        self.writer = None
        self._stop_requested = False

    # --- set-up helpers --------------------------------------------------------------------
    def _use_layout(self, known: bool | None = None) -> None:
        """The layout for this precision (networks/precision.py), chosen by rank 0 for every rank: a
        measured near-tie could come out differently on two ranks, whose weights would then round apart.
        ``known``: the layout a resumed run trained in, kept instead of measuring again (a near-tie
        measured anew could flip it, and the other layout rounds differently: no bit-exact resume)."""
        code, err = -1, None  # -1: keep its own layout, 0 / 1: NCHW / channels_last, 2: rank 0 failed
        if self.dist.is_main:
            try:
                want = channels_last_for(self.device, self.amp_dtype, self.model, known=known)
                code = -1 if want is None else int(want)
            except UserError as e:
                code, err = 2, e
        code = D.from_main(code, self.dist, self.device)
        if err is not None:
            raise err
        if code == 2:
            raise UserError("rank 0 could not choose the network's layout (its error is above)")
        if code >= 0 and bool(code) != self.model.channels_last:
            self.model.set_channels_last(bool(code))

    def _check_train_section(self) -> None:
        check_config(self.cfg, self.dist.world_size)  # again: the batch split depends on the process count

    def _empty_window(self) -> dict:
        return {"loss_sum": 0.0, "count": 0, "q_sum": [0.0] * QUARTERS, "q_count": [0] * QUARTERS,
                "grad_norm_sum": 0.0, "steps": 0}

    def _load_resume_checkpoint(self) -> Checkpoint:
        try:
            return load_checkpoint(self.run_dir, map_location=self.device)
        except UserError as e:
            raise UserError(f"--resume: {e}") from None

    def _stored_layout(self, ckpt: Checkpoint | None) -> bool | None:
        """The layout (channels_last or not) ``ckpt`` was trained in, if it was trained at this precision
        on this kind of device; None otherwise (then it is chosen as for a new run)."""
        if ckpt is None or not isinstance(ckpt.extra.get("channels_last"), bool):
            return None
        stored = ckpt.config.get("train", {}).get("precision")
        same_device = ckpt.extra.get("device_type", self.device.type) == self.device.type
        return ckpt.extra["channels_last"] if stored == self.cfg.train.precision and same_device else None

    def _resume(self, ckpt: Checkpoint) -> None:
        try:
            stored = config_from_dict(ckpt.config).to_dict()
        except UserError as e:
            raise UserError(f"--resume: the config stored in {ckpt.path}: {e}") from None
        changes = resume_changes(stored, self.cfg.to_dict())
        if ckpt.extra.get("data_sha256") != self._data_sha256:
            raise UserError(f"--resume: checkpoint {ckpt.path} was trained on other data than the data passed now "
                            "(resuming needs the same tensor or dataset passed again); nothing was overwritten")
        if changes and self.dist.is_main:
            self.log_fn(f"resuming with changed settings: {', '.join(changes)}")
        try:  # the stored dict with the defaults of fields added since it was written
            stored_net = config_to_dict(network_from_dict(ckpt.network))
        except (ValueError, TypeError):
            stored_net = ckpt.network
        if stored_net != self.network_config:
            diff = sorted(k for k in set(stored_net) | set(self.network_config)
                          if stored_net.get(k) != self.network_config.get(k))
            raise UserError(f"checkpoint {ckpt.path} is from another architecture (differs in: "
                            f"{', '.join(diff)}); nothing was overwritten")
        try:
            self.model.load_state_dict(ckpt.model)
            if ckpt.ema is not None:
                self.ema.load_state_dict(ckpt.ema, ckpt.extra.get("ema_updates", ckpt.step))
            if ckpt.optimizer is not None:
                self.optimizer.load_state_dict(ckpt.optimizer)
                self._match_state_layout()
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint {ckpt.path} does not fit this model: {e}") from None
        if "loss_history" in ckpt.extra_tensors:
            self.t_sampler.load_state_dict({k: ckpt.extra_tensors[k].numpy()
                                            for k in ("loss_history", "loss_counts")})
        self.step = ckpt.step
        self.window = ckpt.extra.get("window", self._empty_window())
        if self.dist.is_main:
            self._truncate_metrics(self.step)
            self.log_fn(f"resumed from {ckpt.path} at step {self.step}")

    def _match_state_layout(self) -> None:
        """Give each optimizer state tensor its parameter's strides: checkpoints store contiguous tensors,
        the U-Net keeps conv weights channels_last, and the fused AdamW kernel needs matching layouts."""
        for p, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)

    def _truncate_metrics(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))

    # --- one step --------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        t = self.cfg.train
        return lr_at(step, lr=t.lr, warmup=t.warmup, steps=t.steps, schedule=t.lr_schedule, lr_min=t.lr_min,
                     decay_start=t.lr_decay_start)

    def batch_indices(self, step: int) -> torch.Tensor:
        """Data indices of the global batch of ``step``: a pure function of (seed, step) -- each epoch is
        one seeded permutation -- so they can be read ahead and resumed exactly."""
        B, N = self.cfg.train.batch_size, len(self.data)
        per_epoch = 1 if N < B else N // B
        epoch = step // per_epoch
        cached = self._perm
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(step_seed(self.cfg.run.seed, epoch, 1))
            cached = self._perm = (epoch, torch.randperm(N, generator=g))
        perm = cached[1]
        if N < B:
            return perm[torch.arange(B) % N]
        pos = (step % per_epoch) * B
        return perm[pos:pos + B]

    def fetch(self, step: int):
        """This process's rows of the batch of ``step`` (uint8 images as stored, labels): its slice only."""
        return self.data.rows(self._local(self.batch_indices(step)))

    def _global_batch(self, step: int):
        """t, weights, noise, flips and label drops for the whole global batch of ``step``."""
        cfg, B = self.cfg, self.cfg.train.batch_size
        g = torch.Generator().manual_seed(step_seed(cfg.run.seed, step, 2))
        t, w = self.t_sampler.sample(B, generator=g)
        noise = torch.randn((B, *self.data.shape), generator=g)
        flip = torch.rand(B, generator=g) < 0.5
        drop = torch.rand(B, generator=g) < cfg.train.cond_drop_prob
        return t, w, noise, flip, drop

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.dist.world_size
        return x[self.dist.rank * n:(self.dist.rank + 1) * n]

    def _forward_backward(self, model_fn, x0, y, t, w, noise) -> torch.Tensor:
        """The loss of this process's batch, backpropagated in ``train.grad_accum`` micro-batches (DDP
        syncs gradients on the last); returns the per-sample losses."""
        cfg = self.cfg
        local = x0.shape[0]
        micro = local // cfg.train.grad_accum
        losses = torch.empty(local, device=self.device)
        for k in range(cfg.train.grad_accum):
            sl = slice(k * micro, (k + 1) * micro)
            sync = self.ddp is None or k == cfg.train.grad_accum - 1
            with nullcontext() if sync else self.ddp.no_sync():
                terms = training_losses(self.process, model_fn, x0[sl], t[sl], loss_type=cfg.diffusion.loss,
                                        noise=noise[sl], model_kwargs={"y": y[sl]} if y is not None else None,
                                        weighting=self.loss_weighting)
                loss = (terms["loss"].float() * w[sl]).sum() / local
            losses[sl] = terms["loss"].detach().float()
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return losses

    @contextmanager
    def _compile_errors(self):
        """With train.compile, the first step compiles: a compiler that fails here (no C++ compiler, an
        unsupported platform) is a one-line error naming the way out, not a traceback."""
        if self._compiled_once:
            yield
            return
        from torch._dynamo.exc import TorchDynamoException

        try:
            yield
        except TorchDynamoException as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"train.compile = true: torch.compile failed on this machine ({type(e).__name__}: "
                            f"{first}); set train.compile = false to train without it") from None
        self._compiled_once = True

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        t, w, noise, flip, drop = (self._local(v) for v in self._global_batch(step))
        x0, y = self._prefetcher.get(step) if self._prefetcher is not None else self.fetch(step)
        x0 = self.data.to_model(x0)
        if cfg.data.flip and x0.ndim == 4:
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        if cfg.data.class_conditional:
            y = torch.where(drop, torch.full_like(y, self.data.num_classes), y)
        else:
            y = None
        x0, t, w, noise = (v.to(self.device) for v in (x0, t, w, noise))
        y = y.to(self.device) if y is not None else None
        torch.manual_seed(step_seed(cfg.run.seed, step, 3 + self.dist.rank))  # dropout masks
        model_fn = with_autocast(self.net, self.device, self.amp_dtype)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        with self._compile_errors():
            losses = self._forward_backward(model_fn, x0, y, t, w, noise)
        all_t = D.all_gather_cat(t, self.dist)
        all_losses = D.all_gather_cat(losses, self.dist)
        total = all_losses.mean().item()
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"loss became {total} at step {step}; stopped without saving. The last good "
                                   f"checkpoint in {self.run_dir / 'checkpoints'} is kept (lower train.lr or "
                                   "enable train.grad_clip)")
        clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        if self.scaler is not None:  # skips the step when fp16 gradients overflowed
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.t_sampler.update(all_t, all_losses)
        self.step += 1
        return {"loss": total, "t": all_t.cpu(), "losses": all_losses.cpu(), "grad_norm": grad_norm}

    # --- logging, checkpoints, samples -----------------------------------------------------
    def _accumulate(self, out: dict) -> None:
        w = self.window
        w["loss_sum"] += float(out["losses"].double().sum())
        w["count"] += out["losses"].numel()
        q = (out["t"] * QUARTERS // self.process.num_timesteps).tolist()
        for qi, li in zip(q, out["losses"].tolist(), strict=True):
            w["q_sum"][qi] += li
            w["q_count"][qi] += 1
        w["grad_norm_sum"] += out["grad_norm"]
        w["steps"] += 1

    def _write_metrics(self, img_per_s: float) -> dict:
        w = self.window
        row = {"step": self.step, "loss": w["loss_sum"] / max(w["count"], 1),
               "lr": self.lr_at(self.step - 1), "grad_norm": w["grad_norm_sum"] / max(w["steps"], 1),
               "img_per_s": img_per_s}
        if self._prefetcher is not None:  # seconds the steps of this window waited for their data
            row["data_wait_s"] = self._prefetcher.wait_seconds - self._wait_logged
            self._wait_logged = self._prefetcher.wait_seconds
        for qi in range(QUARTERS):
            if w["q_count"][qi]:
                row[f"loss_q{qi}"] = w["q_sum"][qi] / w["q_count"][qi]
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.writer is not None:
                for k, v in row.items():
                    if k != "step":
                        self.writer.add_scalar(f"train/{k}", v, self.step)
        self.window = self._empty_window()
        return row

    def make_checkpoint(self) -> Checkpoint:
        """The whole training state of this step as a ``Checkpoint`` (nothing written)."""
        extra_tensors = {}
        sampler_state = self.t_sampler.state_dict()
        layout = getattr(self.model, "channels_last", None)  # kept on resume (_stored_layout)
        for k, v in sampler_state.items():
            extra_tensors[k] = torch.as_tensor(v)
        ckpt = Checkpoint(step=self.step, config=self.cfg.to_dict(), network=self.network_config,
                          model=self.model.state_dict(), ema=self.ema.state_dict(),
                          optimizer=self.optimizer.state_dict(),
                          extra={"ema_updates": self.ema.num_updates, "window": self.window,
                                 "world_size": self.dist.world_size, "device_type": self.device.type,
                                 **({"channels_last": layout} if isinstance(layout, bool) else {}),
                                 **({"data_sha256": self._data_sha256} if self._data_sha256 else {})},
                          extra_tensors=extra_tensors)
        return ckpt

    def checkpoint(self) -> Path | None:
        """Save this step (refused, ``TrainingDiverged``, when any weight is not finite)."""
        if not self.dist.is_main:
            return None
        try:
            return save_checkpoint(self.run_dir, self.make_checkpoint(), keep=self.cfg.train.keep_checkpoints)
        except OSError as e:
            raise UserError(f"cannot save a checkpoint in {self.run_dir / 'checkpoints'}: {e.strerror or e} "
                            "(the previous checkpoint is kept)") from None

    def sample_picture(self, path: Path | None = None) -> Path | None:
        """A grid (images) or scatter plot (points) from the EMA weights with a fast sampler."""
        if not self.dist.is_main:
            return None
        from ..runs import generate

        t = self.cfg.train
        steps = min(t.sample_steps, self.process.num_timesteps)
        x = generate(self.ema.module, self.process, t.sample_n, tuple(self.data.shape), sampler=t.sample_sampler,
                     steps=steps, seed=self.cfg.run.seed, device=self.device, batch_size=t.sample_n,
                     clip_x0=self.data.kind == "image",
                     y=balanced_labels(t.sample_n, self.data.num_classes) if self.cfg.data.class_conditional
                     else None)
        path = path or self.run_dir / "samples" / f"step_{self.step:08d}.png"
        from .. import viz

        if self.data.kind == "image":
            viz.save_grid(x, path)
        else:
            viz.plot_points(x.numpy(), path, reference=self.data.x[:2000].numpy())
        return path

    # --- the loop ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the step in progress, save a checkpoint and return from ``train`` (as on SIGINT; safe
        to call from another thread, e.g. a wall-clock timer)."""
        self._stop_requested = True

    def _on_signal(self, signum, frame):
        self._stop_requested = True
        if self.dist.is_main:
            self.log_fn(f"received {signal.Signals(signum).name}: finishing this step, saving, then exiting")

    def _open_writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is an optional extra
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def train(self, max_steps: int | None = None, *, final_picture: bool = True) -> TrainResult:
        """Train until ``train.steps`` (or ``max_steps`` more steps); returns where it stopped.  A stretch
        that ends without a stop request writes ``samples.png`` unless ``final_picture`` is False."""
        cfg = self.cfg
        end = cfg.train.steps if max_steps is None else min(cfg.train.steps, self.step + max_steps)
        if self.dist.is_main:
            create_output_dir("run.out_dir", self.run_dir)
            try:
                (self.run_dir / "config.toml").write_text(dump_toml(cfg))
            except OSError as e:
                raise UserError(f"cannot write {self.run_dir / 'config.toml'}: {e.strerror or e}") from None
            self.writer = self._open_writer()
        handlers = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread
            handlers = {}
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True)
        last_loss, stopped = float("nan"), False
        tick, imgs = time.perf_counter(), 0
        self._prefetcher, self._wait_logged = Prefetcher(self.fetch, self.step, end), 0.0
        try:
            while self.step < end:
                out = self.train_step()
                last_loss = out["loss"]
                self._accumulate(out)
                imgs += cfg.train.batch_size
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    now = time.perf_counter()
                    self._write_metrics(imgs / max(now - tick, 1e-9))
                    tick, imgs = now, 0
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0 and self.step < end:
                    self.checkpoint()
                if cfg.train.sample_every and self.step % cfg.train.sample_every == 0 and self.step < end:
                    self.sample_picture()
                if D.broadcast_flag(self._stop_requested, self.dist, self.device):
                    stopped = True
                    break
            path = self.checkpoint()
            if self.dist.is_main and path is not None:
                self.log_fn(f"saved checkpoint {path} (step {self.step})")
            if final_picture and not stopped and self.dist.is_main and self.step > 0:
                pic = self.sample_picture(self.run_dir / "samples.png")
                self.log_fn(f"wrote {pic}")
            # Every rank leaves together: a gloo rank that tears its process group down while rank 0 is
            # still writing the picture can abort in gloo's threads (seen once as SIGABRT in the DDP test).
            D.barrier(self.dist)
        finally:
            self._prefetcher.close()
            self._prefetcher = None
            if bar is not None:
                bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if self.writer is not None:
                self.writer.close()
        return TrainResult(step=self.step, stopped_early=stopped, run_dir=self.run_dir, last_loss=last_loss,
                           main_process=self.dist.is_main)


def train(cfg: Config, *, data=None, resume: bool = False, progress: bool = True,
          max_steps: int | None = None) -> TrainResult:
    """Train ``cfg`` (see :class:`Trainer`); ``data`` a tensor (N, C, H, W) uint8 or float in [-1, 1], (N, D)
    points, or a ``torch.utils.data.Dataset`` of such items or (item, label) pairs, instead of ``cfg.data.name``.
    ``resume=True`` continues ``cfg.run.out_dir`` bit for bit (with data passed: the same data again)."""
    trainer = Trainer(cfg, data=data, resume=resume, progress=progress)
    try:
        return trainer.train(max_steps=max_steps)
    finally:
        D.shutdown()
