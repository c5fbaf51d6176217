"""Tensor parallelism on CPU with gloo, 2 and 4 ranks: every block style gives one process's logits and tokens from 1/N of the weights.

One torchrun launch per rank count runs all scenarios on all three checkpoints (tp_worker.py);
the same scenarios run here on the whole model, and each test compares one aspect.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tp_scenarios import CONFIGS, PROMPTS, QUANTIZED, build_all, scenarios  # noqa: E402

from falconlm.testing import run_torchrun  # noqa: E402

WORKER = Path(__file__).resolve().parent / "tp_worker.py"
NAMES = list(CONFIGS)

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The three TP checkpoints and a held-out file for `evaluate`."""
    root = tmp_path_factory.mktemp("tp")
    paths = build_all(root)
    (root / "heldout.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PROMPTS * 3))
    return paths


@pytest.fixture(scope="module")
def single(checkpoints) -> dict[str, dict]:
    """The scenarios on each whole model, in this process."""
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.parallel import resident_weight_bytes
    from falconlm.tokenizer.falcon import FalconTokenizer

    out = {}
    for name, path in checkpoints.items():
        model = FalconForCausalLM.from_pretrained(path).eval()
        out[name] = scenarios(model, FalconTokenizer.load(path))
        out[name]["weight_bytes"] = resident_weight_bytes(model)
        out[name]["kv_heads"] = model.new_cache(1, 4).keys.shape[2]
    return out


def _launch(checkpoints: dict[str, Path], tmp_path_factory, nproc: int, cli: bool) -> dict[str, dict]:
    if nproc > 2:  # the GPTQ copies run at 2 ranks only (RW's 96-input slices at 4 ranks would split a group of 32)
        checkpoints = {n: p for n, p in checkpoints.items() if n not in QUANTIZED}
    out = tmp_path_factory.mktemp(f"tp{nproc}")
    if cli:
        (out / "heldout.jsonl").write_text((next(iter(checkpoints.values())).parent / "heldout.jsonl").read_text())
    args = [out, *(f"{n}={p}" for n, p in checkpoints.items())] + (["--cli"] if cli else [])
    rc, output = run_torchrun(WORKER, args, nproc=nproc, timeout=240)
    assert rc == 0, output[-4000:]
    results = {name: torch.load(out / f"{name}.pt") for name in checkpoints}
    results["_dir"] = out
    return results


@pytest.fixture(scope="module")
def tp2(checkpoints, tmp_path_factory) -> dict[str, dict]:
    """2 ranks: the scenarios, plus `falconlm generate` and `falconlm evaluate` with --tp 2."""
    return _launch(checkpoints, tmp_path_factory, 2, cli=True)


@pytest.fixture(scope="module")
def tp4(checkpoints, tmp_path_factory) -> dict[str, dict]:
    """4 ranks (on 2 cores: a correctness check)."""
    return _launch(checkpoints, tmp_path_factory, 4, cli=False)


@pytest.fixture(params=[2, 4], ids=["tp2", "tp4"])
def tp(request) -> tuple[int, dict[str, dict]]:
    return request.param, request.getfixturevalue(f"tp{request.param}")


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_one_process(tp, single, name):
    """Within 1e-5 of the logits' scale: the all-reduce adds the same products in another order (fp32 rounding).

    The checkpoints' wide init (for varied greedy tokens) gives logits of magnitude ~30, so that is ~3e-4 absolute;
    a wrong head, slope or slice would be off by the logits' own size.
    """
    _, got = tp
    for key in ("logits", "logits_unpadded"):  # a left-padded batch, and one row alone
        want = single[name][key]
        assert got[name][key].shape == want.shape
        assert (got[name][key] - want).abs().max() <= 1e-5 * want.abs().max(), key


@pytest.mark.parametrize("name", NAMES)
def test_greedy_sampled_and_engine_tokens_identical(tp, single, name):
    _, got = tp
    want = single[name]
    for key in ("greedy_one", "greedy_padded", "greedy_static", "greedy_no_screen", "sampled", "engine", "engine_stats"):
        assert got[name][key] == want[key], key
    assert want["greedy_padded"] == want["greedy_static"]  # the static step gives the eager tokens, so both paths are compared
    assert len(set(map(tuple, want["greedy_padded"]))) == len(PROMPTS)  # real, distinct sequences
    assert got[name]["engine_logprobs"] == pytest.approx(want["engine_logprobs"], abs=1e-4)
    assert len(want["engine_logprobs"]) == 4


@pytest.mark.parametrize("name", NAMES)
def test_each_rank_holds_a_1_over_n_share(tp, single, name):
    """Measured: the bytes of the storages behind each rank's tensors; and each rank's KV cache holds only its KV heads."""
    n, got = tp
    whole = single[name]["weight_bytes"]
    for held in got[name]["weight_bytes"]:
        assert held <= whole / n * 1.05, (held, whole)
    kv = single[name]["kv_heads"]
    assert got[name]["kv_heads"] == [kv if kv == 1 else kv // n] * n  # multi-query: its one head on every rank


def test_generate_and_evaluate_commands_with_tp(tp2, checkpoints, capsys, tmp_path):
    from falconlm.cli import main

    sys.path.insert(0, str(WORKER.parent))
    from tp_worker import cli_args

    generate, evaluate = cli_args(str(checkpoints[NAMES[0]]), tmp_path, 2)
    (tmp_path / "heldout.jsonl").write_text((tp2["_dir"] / "heldout.jsonl").read_text())
    assert main(generate[: generate.index("--tp")]) == 0
    rc, text = (tp2["_dir"] / "generate.txt").read_text().split("\n", 1)
    assert rc == "0" and text == capsys.readouterr().out
    assert main(evaluate[: evaluate.index("--tp")]) == 0
    one = json.loads((tmp_path / "eval.json").read_text())["perplexity"]
    many = json.loads((tp2["_dir"] / "eval.json").read_text())["perplexity"]
    assert many["tokens"] == one["tokens"] > 0
    assert many["nll"] == pytest.approx(one["nll"], rel=1e-5)


@pytest.mark.parametrize("name", list(QUANTIZED))
def test_gptq_checkpoints_split_along_groups(tp2, single, name):
    """int4 in groups of 32 (40B style) and int8 per channel (RW, biases, two reduces): sliced along whole groups, one process's tokens."""
    got, want = tp2[name], single[name]
    assert (got["logits"] - want["logits"]).abs().max() <= 2e-5 * want["logits"].abs().max()  # the integer kernels sum each slice on its own
    for key in ("greedy_padded", "sampled", "engine"):
        assert got[key] == want[key], key
    for held in got["weight_bytes"]:
        assert held <= want["weight_bytes"] / 2 * 1.05, (held, want["weight_bytes"])  # measured 0.505-0.509: per-channel scales of row-parallel layers are whole on each rank
