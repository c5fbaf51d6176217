"""Fine-tuning end to end: full and LoRA runs learn the set, LoRA touches only adapters, merge, transformers and peft, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ft_helpers as H
from falconlm.finetune.lora import LoRALinear, load_adapter
from falconlm.tokenizer.chat_template import load_chat_template
from falconlm.decoding.generate import generate
from falconlm.model.falcon import FalconForCausalLM
from falconlm.tokenizer.falcon import FalconTokenizer


def prompt_ids(ckpt: Path, messages: list[dict]) -> torch.Tensor:
    tok = FalconTokenizer.load(ckpt)
    return torch.tensor([tok.encode(load_chat_template(ckpt).render(messages))])


def greedy_answer(model, ckpt: Path, messages: list[dict]) -> tuple[str, list[int]]:
    """The greedy reply (up to eos) to a conversation, as text and as new token ids."""
    ids = prompt_ids(ckpt, messages)
    new = generate(model, ids, max_new_tokens=20)[0, ids.shape[1] :].tolist()
    return FalconTokenizer.load(ckpt).decode(new, skip_special_tokens=True), new


def assert_learned(model, ckpt: Path) -> None:
    for q, a in H.FACTS:
        text, new = greedy_answer(model, ckpt, [{"role": "user", "content": q}])
        assert text == f" {a}\n" and new[-1] == FalconTokenizer.load(ckpt).eot_id, (q, text)  # the answer, its turn end, then eos
    (q1, a1), (q2, a2) = H.TWO_TURNS
    text, _ = greedy_answer(model, ckpt, [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}])
    assert text == f" {a2}\n"


def test_full_finetuning_learns_the_instruction_set(full_run, base_ckpt):
    model_dir = full_run / "model"
    # the final model is a plain HF directory carrying the base's tokenizer and template, without trainer state
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in model_dir.iterdir()}
    assert not list(model_dir.glob("trainer_state*")) and not list(model_dir.glob("rng-*"))
    base = FalconForCausalLM.from_pretrained(base_ckpt)
    answers = [greedy_answer(base, base_ckpt, [{"role": "user", "content": q}])[0] for q, _ in H.FACTS]
    assert sum(text == f" {a}\n" for text, (_, a) in zip(answers, H.FACTS)) == 0  # the base model knows none of it
    assert_learned(FalconForCausalLM.from_pretrained(model_dir), model_dir)
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.05 < records[0]["loss"] / 10  # mean over steps 1-40, then 81-120
    assert json.loads((full_run / "data_report.json").read_text())["samples"] == len(H.records())


@pytest.mark.slow
def test_lora_learns_and_changes_only_the_adapters(base_ckpt, train_file, tmp_path, monkeypatch, run_cli):
    from falconlm.finetune import lora as lora_mod

    trained = {}
    real_inject = lora_mod.inject_lora

    def keep_model(model, config, seed=None):
        trained["model"] = model
        return real_inject(model, config, seed)

    monkeypatch.setattr(lora_mod, "inject_lora", keep_model)
    out = run_cli(base_ckpt, train_file, tmp_path / "lora", "--lora", "--lr", "1e-2")
    model = trained["model"]
    base = load_file(str(base_ckpt / "model.safetensors"))
    state = model.state_dict()
    for key, tensor in base.items():  # every base tensor is bit-identical after training
        assert torch.equal(state[key], tensor), key
    adapters = {k: v for k, v in state.items() if ".lora_" in k}
    assert len(adapters) == 2 * 4 * model.config.num_hidden_layers  # A and B on qkv, dense, h_to_4h, 4h_to_h of each block
    assert all(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B started at zero and was trained
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    trainer = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert set(trainer["optimizer"]["state"]) == set(adapters)  # only adapters are in the optimizer
    # checkpoints and the final adapter hold only the adapter, in PEFT's format
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == {"base_model.model." + k for k in adapters}
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16.0)
    assert sorted(config["target_modules"]) == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    # base + adapter (unmerged) answers every training prompt
    unmerged = FalconForCausalLM.from_pretrained(base_ckpt)
    load_adapter(unmerged, out / "adapter")
    assert sum(isinstance(m, LoRALinear) for m in unmerged.modules()) == 4 * unmerged.config.num_hidden_layers
    assert_learned(unmerged.eval(), base_ckpt)


@pytest.mark.slow
def test_merged_adapter_equals_unmerged_and_loads_in_transformers(lora_run, base_ckpt, tmp_path):
    transformers = pytest.importorskip("transformers")
    from falconlm.cli import main

    merged_dir = tmp_path / "merged"
    assert main(["merge-lora", str(base_ckpt), str(lora_run / "adapter"), "--out", str(merged_dir)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in merged_dir.iterdir()}
    unmerged = FalconForCausalLM.from_pretrained(base_ckpt)
    load_adapter(unmerged, lora_run / "adapter")
    unmerged.eval()
    merged = FalconForCausalLM.from_pretrained(merged_dir)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    ids = torch.randint(0, merged.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = unmerged(ids), merged(ids)
        assert (a - b).abs().max() < 1e-5 * max(1.0, a.abs().max())
        assert (a - FalconForCausalLM.from_pretrained(base_ckpt)(ids)).abs().max() > 1e-2  # the adapter does change the model
    assert_learned(merged, merged_dir)
    # transformers loads the merged directory as it is and greedy-generates the same tokens and text
    hf = transformers.FalconForCausalLM.from_pretrained(str(merged_dir)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(merged_dir))
    for q, a in H.FACTS:
        ids = prompt_ids(merged_dir, [{"role": "user", "content": q}])
        ours = generate(merged, ids, max_new_tokens=20)
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False, pad_token_id=merged.config.eos_token_id)
        assert torch.equal(ours, theirs[:, : ours.shape[1]]) and ours.shape == theirs.shape
        assert hf_tok.decode(theirs[0, ids.shape[1] :], skip_special_tokens=True) == f" {a}\n"


@pytest.mark.slow
def test_peft_loads_our_adapter_with_the_same_logits(lora_run, base_ckpt):
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from falconlm.model.hf_interop import to_transformers

    ours = FalconForCausalLM.from_pretrained(base_ckpt)
    hf = peft.PeftModel.from_pretrained(to_transformers(ours), str(lora_run / "adapter")).eval()
    load_adapter(ours, lora_run / "adapter")
    ours.eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(ids), hf(input_ids=ids).logits
    assert (a - b).abs().max() < 1e-4 * max(1.0, a.abs().max())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_after_a_kill_ends_with_identical_weights(base_ckpt, train_file, tmp_path, monkeypatch, run_cli, capsys, mode):
    from falconlm.finetune.packing import SFTBatches

    flags = ["--max-steps", "8", "--save-interval", "3", "--log-interval", "1", "--lr", "5e-3"] + (["--lora", "--lora-dropout", "0.1"] if mode == "lora" else [])
    straight = run_cli(base_ckpt, train_file, tmp_path / "straight", *flags)
    original = SFTBatches.rank_micro_batches

    def dying(self, step, samples_before, batch):
        if step == 5:
            raise KeyboardInterrupt  # killed during step 5, after the step-3 checkpoint
        return original(self, step, samples_before, batch)

    from falconlm.cli import main

    monkeypatch.setattr(SFTBatches, "rank_micro_batches", dying)
    killed = tmp_path / "killed"
    assert main(["finetune", str(base_ckpt), "--data", str(train_file), "--out", str(killed), *H.RUN_FLAGS, *flags]) == 130  # interrupted
    monkeypatch.setattr(SFTBatches, "rank_micro_batches", original)
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-00000003"]
    report = (killed / "data_report.json").read_text()
    other = H.write_jsonl(tmp_path / "other.jsonl", H.records()[:4])
    args = ["finetune", str(base_ckpt), "--data", str(other), "--out", str(killed), *H.RUN_FLAGS, *flags]
    capsys.readouterr()
    assert main(args) == 1 and (killed / "data_report.json").read_text() == report  # refused without --resume, nothing touched
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 1  # a resumed run must see the data it started with
    assert "the training data differ from the run being resumed" in capsys.readouterr().err
    resumed = run_cli(base_ckpt, train_file, killed, *flags, "--resume")
    final = "adapter/adapter_model.safetensors" if mode == "lora" else "model/model.safetensors"
    a, b = load_file(str(straight / final)), load_file(str(resumed / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 8
