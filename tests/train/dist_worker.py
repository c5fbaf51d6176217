"""Run by tests/train/test_train_distributed.py under `torchrun --nproc-per-node 2` (CPU, gloo).

Usage: dist_worker.py DATA OUT SCENARIO[,SCENARIO...]; each scenario writes OUT/<name>/result.json on rank 0.
Scenarios: ddp / fsdp (straight runs), ddp-resume / fsdp-resume (killed after a checkpoint, then --resume).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from falconlm.train import loop
from falconlm.train.config import TrainConfig
from falconlm.train.data import BatchSource

STEPS = 6


def base(data: str, out: Path, **kw) -> TrainConfig:
    """The small run every distributed test compares against one process."""
    values = dict(
        model="tiny-7b", data=data, out=str(out), max_steps=STEPS, seq_len=32, global_batch_size=8, micro_batch_size=2,
        batch_rampup_tokens=0, warmup_tokens=512, lr=3e-3, min_lr=3e-4, log_interval=1, eval_interval=0, save_interval=3,
        progress_bar=False, tensorboard=False, peak_flops=1e11,
    )
    values.update(kw)
    return TrainConfig(**values)


def main() -> None:
    data, out, scenarios = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in scenarios:
        run_out = out / name
        if name == "ddp":
            res = loop.pretrain(base(data, run_out, strategy="ddp"))
            losses = res.losses
        elif name == "fsdp":
            res = loop.pretrain(base(data, run_out, strategy="fsdp"))
            losses = res.losses
        elif name in ("ddp-resume", "fsdp-resume"):
            strategy = name.split("-")[0]
            original = BatchSource.rank_micro_batches

            def dying(self, step, samples_before, batch):
                if step == 5:
                    raise KeyboardInterrupt  # the process is "killed" during step 5, after the step-3 checkpoint
                return original(self, step, samples_before, batch)

            BatchSource.rank_micro_batches = dying
            try:
                loop.pretrain(base(data, run_out, strategy=strategy))
            except KeyboardInterrupt:
                pass
            BatchSource.rank_micro_batches = original
            res = loop.pretrain(base(data, run_out, strategy=strategy, resume=True))
            losses = res.losses
        else:
            raise SystemExit(f"unknown scenario {name}")
        if rank == 0:
            (run_out / "result.json").write_text(json.dumps({"losses": {str(k): v for k, v in losses.items()}, "checkpoint": str(res.checkpoint)}))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
