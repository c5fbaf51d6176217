"""Run by test_finetune_ddp.py under `torchrun --nproc-per-node 2` (CPU, gloo): `falconlm finetune` full and LoRA, in one launch.

Usage: dist_finetune.py BASE DATA OUT; writes OUT/full and OUT/lora (rank 0 writes the files).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ft_helpers as H  # noqa: E402
from falconlm.cli import main as cli_main  # noqa: E402


def main() -> None:
    base, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")  # held across both runs (the loop only closes a group it created)
    for name, extra in H.DDP_RUNS.items():
        rc = cli_main(["finetune", base, "--data", data, "--out", str(out / name), *H.RUN_FLAGS, *H.DDP_FLAGS, *extra])
        if rc != 0:
            raise SystemExit(rc)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
