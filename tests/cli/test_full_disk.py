"""A full disk, for real: each command writes into a small tmpfs and must end with one sentence, no traceback, no temp files left.

Mounting needs root (CAP_SYS_ADMIN); where it is not permitted the tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import falconlm, no_temps

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where`, unmounted afterwards; skips the test when mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill ({exc})")
    if p.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({p.stderr.strip() or p.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def adapter(work) -> Path:
    """A LoRA adapter for the tiny checkpoint, saved as fine-tuning saves one."""
    from falconlm.finetune.lora import LoRAConfig, inject_lora, save_adapter
    from falconlm.model.falcon import FalconForCausalLM

    model = FalconForCausalLM.from_pretrained(work / "ckpt")
    lora = LoRAConfig()
    inject_lora(model, lora, seed=0)
    return save_adapter(work / "adapter", model.state_dict(), lora, base_model=str(work / "ckpt"))


def _full(run, disk: Path) -> None:
    run.refused("the disk is full")
    assert not no_temps(disk), no_temps(disk)


def test_init_model_on_a_full_disk(work, tmp_path):
    with small_disk(tmp_path / "disk", "128k") as disk:
        r = falconlm("init-model", "tiny-7b", "--out", str(disk / "m"), cwd=work)
        _full(r, disk)
        assert not (disk / "m").exists()  # the directory this run made is gone again


def test_tokenize_on_a_full_disk(work, tmp_path):
    with small_disk(tmp_path / "disk", "12k") as disk:
        r = falconlm("tokenize", "good.jsonl", "--tokenizer", "tok", "--out", str(disk / "t"), "--workers", "1", cwd=work)
        _full(r, disk)
        assert not (disk / "t").exists()


def test_pretrain_on_a_full_disk(work, tmp_path):
    with small_disk(tmp_path / "disk", "256k") as disk:
        r = falconlm("pretrain", "--model", "tiny-7b", "--data", "tokd", "--seq-len", "32", "--global-batch-size", "2", "--no-progress",
                     "--no-tensorboard", "--max-steps", "2", "--warmup-tokens", "0", "--batch-rampup-tokens", "0", "--out", str(disk / "p"), cwd=work)
        _full(r, disk)
        assert "step-00000002" in r.err  # the checkpoint it could not write
        assert not list((disk / "p" / "checkpoints").glob("step-*"))


def test_merge_lora_on_a_full_disk(work, adapter, tmp_path):
    with small_disk(tmp_path / "disk", "128k") as disk:
        r = falconlm("merge-lora", "ckpt", str(adapter), "--out", str(disk / "merged"), cwd=work)
        _full(r, disk)
