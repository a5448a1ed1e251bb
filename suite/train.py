"""Training loop: AdamW, EMA weights, grad-norm clipping, autocast, validation, atomic checkpoints, resume.

The same code runs on one CPU, one GPU, or under `torchrun` with DistributedDataParallel (NCCL on
GPUs, gloo on CPUs). The optimised quantity is the per-example loss averaged over the batch and
divided by D (nats/dim), so that gradient clipping means what it means in the BFN reference code.
"""

from __future__ import annotations

import copy
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from suite import checkpoint
from suite.config import RunConfig
from suite.data import get_dataset
from suite.methods import Method, build_method


class TrainingDiverged(RuntimeError):
    """A NaN or infinite loss; the last good checkpoint is kept."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for CUDA, but torch sees no GPU; use device=cpu or device=auto")
    return dev


def autocast_for(amp: str, device: torch.device):
    """bf16 autocast on CUDA by default; methods compute their losses in float32 regardless."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return nullcontext(), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


def build(cfg: RunConfig) -> tuple[Method, object]:
    data = get_dataset(cfg.dataset, cfg.data_dir, **cfg.data_kwargs)
    method = build_method(cfg.method, data.spec, backbone=cfg.backbone, backbone_kwargs=dict(cfg.backbone_kwargs),
                          **cfg.method_kwargs)
    method.registered_name = cfg.method
    return method, data


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


@torch.no_grad()
def validate(method: Method, data, cfg: RunConfig, device: torch.device) -> float:
    """Mean validation loss (nats per example) of `method` on the first cfg.val_examples of the val split."""
    was = method.training
    method.eval()
    total, count = 0.0, 0
    rng = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 12345)  # the same t and noise draws at every validation
    for x in data.batches("val", cfg.eval_batch_size, seed=cfg.seed, device=device):
        x = x[: cfg.val_examples - count]
        total += float(method.loss(x, cfg.train_n_steps).double().sum())
        count += x.shape[0]
        if count >= cfg.val_examples:
            break
    torch.set_rng_state(rng)
    method.train(was)
    return total / max(count, 1)


def train(cfg: RunConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train `cfg.method` on `cfg.dataset`; return the run folder (checkpoints, history.json, config)."""
    cfg.validate()
    on_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if on_gpu else "cpu")
    device = resolve_device(cfg.device, info.local_rank)
    run_dir = Path(cfg.out_dir) / cfg.name
    torch.manual_seed(cfg.seed + info.rank)

    method, data = build(cfg)
    method.to(device)
    ema = copy.deepcopy(method).requires_grad_(False)
    decay_params = [p for n, p in method.named_parameters() if p.ndim >= 2]
    other_params = [p for n, p in method.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": cfg.weight_decay},
                             {"params": other_params, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
    step, epoch, batch_in_epoch, history = 0, 0, 0, []
    if resume:
        found = checkpoint.latest(run_dir) if run_dir.exists() else None
        if found is None:
            raise checkpoint.CheckpointError(f"--resume: no checkpoint in {run_dir}; start without --resume")
        checkpoint.load_weights(found, method, use_ema=False)
        checkpoint.load_weights(found, ema, use_ema=True)
        state = checkpoint.load_state(found)
        opt.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch, history = state["step"], state["epoch"], state["batch_in_epoch"], state["history"]
        torch.set_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
    elif run_dir.exists() and checkpoint.latest(run_dir) is not None:
        raise checkpoint.CheckpointError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                                         "or choose another name=...")

    model = method
    if info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None)
    autocast, scaler = autocast_for(cfg.amp, device)
    D = data.spec.ndim

    saved = {"step": -1}

    def save_ckpt():
        # every rank takes part in gathering the RNG states; only rank 0 writes
        rngs = [torch.get_rng_state()]
        if info.world_size > 1:
            gathered = [None] * info.world_size
            dist.all_gather_object(gathered, torch.get_rng_state())
            rngs = gathered
        saved["step"] = step
        if not info.main:
            return
        checkpoint.save(run_dir, step, method, ema, opt,
                        {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": history,
                         "rng": rngs, "config": cfg.to_dict()})
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (progress and info.main), desc=cfg.name,
               dynamic_ncols=True)
    method.train()
    t0, seen = time.perf_counter(), 0
    while step < cfg.max_steps:
        batches = data.batches("train", cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=info.rank,
                               world_size=info.world_size, device=device)
        any_batch = False
        for b, x in enumerate(batches):
            if b < batch_in_epoch:
                continue
            any_batch = True
            with autocast:
                loss = model(x, cfg.train_n_steps).float().mean() / D
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(f"{cfg.name}: loss is {loss.item()} at step {step + 1}; the last good "
                                       f"checkpoint in {run_dir} is kept. Lower lr, raise grad_clip protection "
                                       "or check the data.")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            ema_update(ema, method, cfg.ema_decay)
            step += 1
            batch_in_epoch = b + 1
            seen += x.shape[0] * info.world_size
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                history.append({"step": step, "train_loss": loss.item() * D})
                bar.set_postfix(loss=f"{loss.item() * D:.4g}", ex_s=f"{rate:.0f}")
            if step % cfg.val_every == 0 or step == cfg.max_steps:
                v = validate(ema, data, cfg, device)
                history.append({"step": step, "val_loss_ema": v})
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
                save_ckpt()
            if step >= cfg.max_steps:
                break
        if not any_batch and batch_in_epoch == 0:
            raise RuntimeError(f"{cfg.dataset}: the train split yields no batch of {cfg.batch_size}; lower batch_size")
        if step < cfg.max_steps:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    if saved["step"] != step:
        save_ckpt()
    if info.world_size > 1:
        dist.barrier()
    return run_dir

