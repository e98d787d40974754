"""A tiny training run through the real Trainer, for the kill/resume and multi-process tests.

The data stream is a pure function of (seed, iteration, rank), and ``step_fn`` draws from torch's
global RNG, so only a trainer that restores its RNG states resumes bit for bit. Run it directly
(one process) or under ``python -m torch.distributed.run --nproc_per_node=2``.
"""

import argparse
import hashlib
import os
import time
from itertools import count

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from resnet_det.cli import main_guard
from resnet_det.config.defaults import SolverConfig
from resnet_det.engine import Trainer, build_lr_scheduler, build_optimizer, init_distributed, set_deterministic
from resnet_det.engine.distributed import cleanup
from resnet_det.engine.run_lock import hold_run_lock

BATCH = 8
SEED = 7
CHECKPOINT_PERIOD = 5


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--output", required=True)
    p.add_argument("--max-iter", type=int, default=30)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force-unlock", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per iteration, to be killed mid-run")
    p.add_argument("--timeout", type=float, default=600, help="collective timeout, seconds")
    p.add_argument("--die-at", type=int, help="rank 1 exits abruptly when fetching this iteration")
    p.add_argument("--hang-at", type=int, help="rank 1 stops responding when fetching this iteration")
    p.add_argument("--accumulate", type=int, default=1, help="solver.accumulate_steps")
    return p.parse_args()


@main_guard
def main():
    args = parse_args()
    torch.set_num_threads(1)  # the same float summation order in every run
    dist = init_distributed("cpu", timeout_s=args.timeout)
    set_deterministic(SEED + dist.rank)  # DDP copies rank 0's initial weights to the others
    model = make_model()
    solver = SolverConfig(
        base_lr=0.05,
        reference_batch_size=BATCH,
        batch_size=BATCH,
        max_iter=args.max_iter,
        steps=[args.max_iter // 2],
        warmup_iters=4,
        warmup_factor=0.1,
        accumulate_steps=args.accumulate,
    )
    optimizer = build_optimizer(model, solver)

    def make_loader(start_iter):
        for it in count(start_iter):
            if dist.rank == 1 and it == args.die_at:
                os._exit(1)
            if dist.rank == 1 and it == args.hang_at:
                time.sleep(3600)
            g = torch.Generator().manual_seed(SEED * 1_000_003 + it * 101 + dist.rank)
            x = torch.randn(BATCH, 3, 12, 12, generator=g)
            yield x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()

    def step_fn(model, batch):
        x, y = batch
        time.sleep(args.sleep)
        keep = torch.randperm(BATCH)[: BATCH - 2]  # global RNG: resuming must restore it
        logits = model(x[keep])
        # Logged as the mean over ranks: 0.5 with two workers.
        return {"loss_cls": nn.functional.cross_entropy(logits, y[keep])}, {"rank": float(dist.rank)}

    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=build_lr_scheduler(optimizer, solver),
        make_loader=make_loader,
        step_fn=step_fn,
        max_iter=args.max_iter,
        output_dir=args.output,
        checkpoint_period=CHECKPOINT_PERIOD,
        log_period=1,
        dist=dist,
        progress=False,
        meta={"kind": "classification", "arch": "toy"},
        accumulate_steps=args.accumulate,
    )
    syncs = []
    if dist.world_size > 1:

        def counting_allreduce(state, bucket):  # DDP's default all-reduce, counted
            syncs.append(bucket.index())
            return default_hooks.allreduce_hook(state, bucket)

        trainer.model.register_comm_hook(None, counting_allreduce)
    try:
        with hold_run_lock(args.output, dist.is_main, force=args.force_unlock):  # as the tools do
            trainer.resume_or_start(resume=args.resume)
            trainer.train()
    finally:
        cleanup()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(f"rank {dist.rank} weights {digest}", flush=True)
    print(f"rank {dist.rank} gradient all-reduces {len(syncs)}", flush=True)


if __name__ == "__main__":
    main()
