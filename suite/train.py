"""Training loop: AdamW, EMA weights, grad-norm clipping, autocast, validation, atomic checkpoints, resume.

Models, devices and the process group come from suite/runtime.py (re-exported here for older imports).

The same code runs on one CPU, one GPU, or under `torchrun` with DistributedDataParallel (NCCL on
GPUs, gloo on CPUs). The optimised quantity is the per-example loss averaged over the batch and
divided by D (nats/dim), so that gradient clipping means what it means in the BFN reference code.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from suite import checkpoint
from suite.config import ConfigError, RunConfig, check_writable
from suite.methods import Method

# construction and device set-up live in suite/runtime.py; re-exported for `from suite.train import build, ...`
from suite.runtime import (  # noqa: F401
    DistInfo,
    autocast_for,
    build,
    init_distributed,
    load_run,
    method_options,
    resolve_device,
    runtime_for,
)


class TrainingDiverged(RuntimeError):
    """A NaN or infinite loss (or weights); the message says which checkpoint, if any, is kept."""


def _finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


@torch.no_grad()
def validate(method: Method, data, cfg: RunConfig, device: torch.device, bound: bool = False) -> float:
    """Mean validation loss (nats per example) of `method` on the first cfg.val_examples of the val split;
    with `bound`, the mean NLL bound (`method.nll` at its own grid or continuous time) instead: the training
    loss of some methods is not a bound (DDPM's L_hybrid, the auxiliary terms of the discrete baselines), and
    learning rates are chosen and convergence judged on the bound."""
    was = method.training
    method.eval()
    total, count = 0.0, 0
    rng = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 12345)  # the same t and noise draws at every validation
    for x in data.batches("val", cfg.eval_batch_size, seed=cfg.seed, device=device):
        x = x[: cfg.val_examples - count]
        v = method.nll(x, None) if bound else method.loss(x, cfg.train_n_steps)
        total += float(v.double().sum())
        count += x.shape[0]
        if count >= cfg.val_examples:
            break
    torch.set_rng_state(rng)
    method.train(was)
    return total / max(count, 1)


def train(cfg: RunConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train `cfg.method` on `cfg.dataset`; return the run folder (checkpoints, history.json, config)."""
    cfg.validate()
    info, device = runtime_for(cfg.device)  # a missing GPU refused before anything
    run_dir = Path(cfg.out_dir) / cfg.name
    torch.manual_seed(cfg.seed + info.rank)

    method, data = build(cfg)
    n_train = data.num_examples("train") // info.world_size
    if n_train < cfg.batch_size:
        per = f" per rank ({info.world_size} ranks)" if info.world_size > 1 else ""
        raise ConfigError(f"config batch_size={cfg.batch_size}: larger than the train split of {cfg.dataset} "
                          f"({n_train} examples{per}), so no batch can be drawn; use batch_size={max(n_train, 1)} "
                          "or less")
    if info.main:  # before any work: the folder can be written, and what a killed save left is repaired
        check_writable(run_dir, f"config out_dir={cfg.out_dir!r}: the run folder",
                       "choose another out_dir=... (or name=...) that is a folder you can write")
        try:
            for what in checkpoint.recover(run_dir, keep=1):
                print(f"{cfg.name}: {what}", file=sys.stderr)
        except OSError as e:
            raise checkpoint.CheckpointError(f"{run_dir}: cannot repair the run folder ({e.strerror or e}); "
                                             "fix its permissions or choose another out_dir=...") from None
    if info.world_size > 1:
        dist.barrier()  # the other ranks look for the checkpoint only after rank 0 has repaired the folder
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
        state = checkpoint.load_state(found)
        missing = [k for k in ("optimizer", "step", "epoch", "batch_in_epoch", "history", "rng") if k not in state]
        if missing:
            raise checkpoint.CheckpointError(f"{found / 'state.pt'} lacks {', '.join(missing)}; it was not written by "
                                             "`bfnbench train` and cannot be resumed: retrain without --resume")
        if state["step"] >= cfg.max_steps:
            if info.main:
                print(f"{cfg.name}: already finished ({found.name}, step {state['step']} >= max_steps={cfg.max_steps});"
                      " nothing to do: raise max_steps=... to train further", file=sys.stderr)
            return run_dir  # a finished run resumed is a no-op: its checkpoint is not rewritten
        if state["optimizer"] is None:
            raise checkpoint.CheckpointError(f"{found / 'state.pt'} holds no optimizer state (an evaluation-only "
                                             "checkpoint); it can be evaluated but not resumed: retrain without "
                                             "--resume")
        checkpoint.load_weights(found, method, use_ema=False)
        checkpoint.load_weights(found, ema, use_ema=True)
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
        if not (_finite(method) and _finite(ema)):  # on every rank: DDP keeps their weights equal
            bar.close()
            raise TrainingDiverged(diverged(f"the weights hold NaN or infinite values after step {step}"))
        saved["step"] = step
        if not info.main:
            return
        checkpoint.save(run_dir, step, method, ema, opt,
                        {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": history,
                         "rng": rngs, "config": cfg.to_dict()})
        try:  # a copy of the config for people (state.pt holds the one that counts), replaced atomically
            tmp = run_dir / ".config.json.tmp"
            tmp.write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
            os.replace(tmp, run_dir / "config.json")
        except OSError as e:
            raise checkpoint.CheckpointError(f"{run_dir / 'config.json'} cannot be written ({e.strerror or e}); the "
                                             f"checkpoint of step {step} is complete: free disk space, then continue "
                                             "with --resume") from None

    def diverged(what: str) -> str:
        try:
            kept = checkpoint.latest(run_dir)
        except checkpoint.CheckpointError:
            kept = None
        if kept is not None:
            where = f"the last good checkpoint {kept} is kept"
        else:
            where = (f"no checkpoint was written before it (the first was due at step "
                     f"{min(cfg.ckpt_every, cfg.max_steps)}), so nothing is kept")
        return f"{cfg.name}: {what}; {where}. Lower lr or grad_clip, or check the data, and train again"

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
                raise TrainingDiverged(diverged(f"the loss is {loss.item()} at step {step + 1}"))
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
                history.append({"step": step, "val_loss_ema": validate(ema, data, cfg, device),
                                "val_bound_ema": validate(ema, data, cfg, device, bound=True)})
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
                save_ckpt()
            if step >= cfg.max_steps:
                break
        if not any_batch and batch_in_epoch == 0:
            raise ConfigError(f"config batch_size={cfg.batch_size}: the train split of {cfg.dataset} yields no batch "
                              "of that size; lower batch_size")
        if step < cfg.max_steps:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    if saved["step"] != step:
        save_ckpt()
    if info.world_size > 1:
        dist.barrier()
    return run_dir

