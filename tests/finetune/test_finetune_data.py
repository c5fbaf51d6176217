"""Instruction data: the loss mask on every data shape, packing and labels, bad lines, the plain-text mix-in."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import ft_helpers as H
from falconlm.errors import FalconError
from falconlm.finetune.data import DataOptions, read_samples
from falconlm.finetune.packing import SFTBatches
from falconlm.tokenizer.chat_template import ChatTemplate, load_chat_template
from falconlm.tokenizer.falcon import FalconTokenizer
from falconlm.train.loss import IGNORE_INDEX

EOT = "<|endoftext|>"


def runs(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """The maximal runs of consecutive masked (trained-on) tokens."""
    out, cur = [], []
    for token, m in zip(ids.tolist(), mask.tolist()):
        if m:
            cur.append(token)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def load(base, template=None):
    tok = FalconTokenizer.load(base)
    return tok, template or load_chat_template(base)


SHAPES = [
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Who wrote Hamlet?"}, {"role": "assistant", "content": "Shakespeare."}, {"role": "user", "content": "ok"}]},
     "Be brief.\nUser: Hi there\nAssistant: Hello.\nUser: Who wrote Hamlet?\nAssistant: Shakespeare.\n", [" Hello.\n", " Shakespeare.\n" + EOT]),
    ({"instruction": "Name the planet.", "input": "It is red.", "output": "Mars."},
     "User: Name the planet.\n\nIt is red.\nAssistant: Mars.\n", [" Mars.\n" + EOT]),
    ({"instruction": "What do bees make?", "output": "Honey.", "system": "Be brief."},
     "Be brief.\nUser: What do bees make?\nAssistant: Honey.\n", [" Honey.\n" + EOT]),
    ({"prompt": "What color is the sky?", "response": "Blue, mostly."},
     "User: What color is the sky?\nAssistant: Blue, mostly.\n", [" Blue, mostly.\n" + EOT]),
]


@pytest.mark.parametrize("record, rendered, answers", SHAPES, ids=["messages", "instruction-input", "instruction-system", "prompt-response"])
def test_the_loss_mask_covers_exactly_the_assistant_tokens(base_ckpt, tmp_path, record, rendered, answers):
    tok, template = load(base_ckpt)
    path = H.write_jsonl(tmp_path / "one.jsonl", [record])
    samples, report = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=256))
    assert report.samples == 1 and not report.issues
    s = samples[0]
    # the tokens are the rendered conversation (trailing user turn dropped) + eos, encoded as generation sees the prompt
    assert tok.decode(s.ids.tolist()) == rendered + EOT
    assert s.ids.tolist() == tok.encode(rendered) + [tok.eot_id]
    # the trained-on tokens are exactly each answer with its turn end, the last one with eos
    assert [tok.decode(r) for r in runs(s.ids, s.mask)] == answers
    assert report.trained_tokens == int(s.mask.sum())


def test_a_checkpoint_template_wins_and_the_turn_end_is_trained(base_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tok, template = load(base_ckpt, load_chat_template(ckpt))
    path = H.write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "response": "Hello"}])
    samples, _ = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=256))
    assert tok.decode(samples[0].ids.tolist()) == f"<|user|>Hi<|end|>\n<|assistant|>Hello<|end|>\n{EOT}"
    assert [tok.decode(r) for r in runs(samples[0].ids, samples[0].mask)] == [f"Hello<|end|>\n{EOT}"]


def test_rows_pack_samples_with_shifted_labels_and_split_across_ranks(base_ckpt, tmp_path):
    tok, template = load(base_ckpt)
    path = H.write_jsonl(tmp_path / "d.jsonl", H.records())
    samples, _ = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=129))
    packed = SFTBatches(samples, 128, tok.eot_id, packing=True, seed=1)
    padded = SFTBatches(samples, 128, tok.eot_id, packing=False, seed=1)
    assert len(padded.layout(0)[0]) == len(samples) and len(packed.layout(0)[0]) < len(samples)
    assert all(sum(len(samples[i].ids) for i in row) <= 129 for row in packed.layout(0)[0])
    assert packed.layout(0)[0] != packed.layout(1)[0]  # repacked every epoch: other neighbours
    answers = sorted(tok.decode(r) for s in samples for r in runs(s.ids, s.mask))
    for batches in (packed, padded):
        got = []
        for k in range(len(batches.layout(0)[0])):
            inputs, labels = batches.item(k)
            assert inputs.shape == labels.shape == (128,)
            # label t is token t + 1: wherever a label is set, it is the next input token
            set_ = labels[:-1] != IGNORE_INDEX
            assert np.array_equal(labels[:-1][set_], inputs[1:][set_])
            got += [tok.decode(r) for r in runs(labels, labels != IGNORE_INDEX)]
        assert sorted(got) == answers  # every answer (with its turn end) is trained once per epoch, nothing else
    # rank r takes micro-batch m from sequences (m*world + r)*micro, each cut after its last labelled column
    def same(micro_batch, row, k):
        inputs, labels = packed.item(k)
        width = micro_batch[0].shape[1]
        assert np.array_equal(micro_batch[0][row], inputs[:width]) and np.array_equal(micro_batch[1][row], labels[:width])
        assert (labels[width:] == IGNORE_INDEX).all()

    one = packed.split(0, 1, 2).rank_micro_batches(3, 10, 4)
    for m in range(2):
        for row in range(2):
            same(one[m], row, 10 + 2 * m + row)
    for r in range(2):
        mine = packed.split(r, 2, 1).rank_micro_batches(3, 10, 4)
        for m in range(2):
            same(mine[m], 0, 10 + 2 * m + r)


def test_bad_lines_are_reported_with_line_numbers_and_skipped_or_truncated(base_ckpt, tmp_path):
    tok, template = load(base_ckpt)
    long_answer = " ".join(["falcon"] * 80)
    lines = [
        {"prompt": "What do bees make?", "response": "Honey."},  # 1 ok
        '{"prompt": "broken", ',  # 2 not JSON
        "[1, 2]",  # 3 not an object
        {"question": "x", "answer": "y"},  # 4 unknown shape
        {"messages": [{"role": "user", "content": "anyone?"}]},  # 5 no assistant turn
        {"messages": [{"role": "robot", "content": "beep"}]},  # 6 bad role
        {"prompt": "Tell me a story.", "response": long_answer},  # 7 too long
        {"instruction": 5, "output": "x"},  # 8 bad field
        "",  # blank: not a record
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},  # 10 ok
    ]
    path = H.write_jsonl(tmp_path / "bad.jsonl", lines)
    seen = []
    samples, report = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=40), on_issue=seen.append)
    where = {i.where.rsplit(":", 1)[1]: (i.reason, i.action) for i in report.issues}
    assert seen == report.issues and report.lines == 9
    assert where["2"][0].startswith("not JSON") and where["2"][1] == "skipped"
    assert where["3"][0].startswith("not a JSON object")
    assert where["4"][0].startswith("unknown shape: keys answer, question")
    assert where["5"][0].startswith("no assistant turn")
    assert where["6"][0].startswith("bad messages: messages[0] needs a role")
    assert where["7"] == (f"too long: {len(tok.encode('User: Tell me a story.' + chr(10) + 'Assistant: ' + long_answer + chr(10))) + 1} tokens, a sequence holds 40", "truncated")
    assert where["8"][0].startswith("bad field: instruction must be a string")
    assert sorted(where) == ["2", "3", "4", "5", "6", "7", "8"]
    assert [s.where.rsplit(":", 1)[1] for s in samples] == ["1", "7", "10"]
    assert len(samples[1].ids) == 40 and samples[1].mask.any()
    assert report.samples == 3 and report.skipped == 6 and report.truncated == 1
    assert where["2"][0] == "not JSON: Expecting property name enclosed in double quotes at column 22"
    assert report.summary() == (
        "9 lines in 1 file(s) -> 3 samples; 1 skipped (bad field), 1 skipped (bad messages), 1 skipped (no assistant turn), "
        "1 skipped (not JSON), 1 skipped (not a JSON object), 1 truncated (too long), 1 skipped (unknown shape); "
        f"{report.tokens} tokens, {report.trained_tokens} trained on ({report.trained_tokens / report.tokens:.0%})"
    )
    assert report.tokens == sum(len(s.ids) for s in samples) and report.trained_tokens == sum(int(s.mask[1:].sum()) for s in samples)
    # --on-overlong skip drops it instead; --on-bad error stops at the first bad line, naming it
    samples, report = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=40, on_overlong="skip"))
    assert [s.where.rsplit(":", 1)[1] for s in samples] == ["1", "10"] and report.skipped == 7
    with pytest.raises(FalconError, match=r"bad\.jsonl:2: not JSON"):
        read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=40, on_bad="error"))


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_compressed_input_reads_the_same(base_ckpt, tmp_path, suffix):
    tok, template = load(base_ckpt)
    raw = "".join(json.dumps(r) + "\n" for r in H.records()[:3]) + "oops\n"
    path = tmp_path / f"d.jsonl{suffix}"
    if suffix == ".gz":
        path.write_bytes(gzip.compress(raw.encode()))
    else:
        path.write_bytes(pytest.importorskip("zstandard").ZstdCompressor().compress(raw.encode()))
    samples, report = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=256))
    assert len(samples) == 3 and [str(i) for i in report.issues] == [f"{path}:4: not JSON: Expecting value at column 1 (skipped)"]


def test_the_cli_reports_bad_lines_and_writes_the_report(base_ckpt, tmp_path, run_cli, capsys):
    path = H.write_jsonl(tmp_path / "mixed.jsonl", [*H.records(), "not json at all", {"messages": [{"role": "user", "content": "hello?"}]}])
    out = run_cli(base_ckpt, path, tmp_path / "run", "--max-steps", "2", "--save-interval", "0")
    err = capsys.readouterr().err
    n = len(H.records())
    assert f"mixed.jsonl:{n + 1}: not JSON" in err and f"mixed.jsonl:{n + 2}: no assistant turn: nothing to train on (skipped)" in err
    report = json.loads((out / "data_report.json").read_text())
    assert report["samples"] == n and report["skipped"] == 2 and [i["where"].rsplit(":", 1)[1] for i in report["issues"]] == [str(n + 1), str(n + 2)]
    with pytest.raises(SystemExit):
        run_cli(base_ckpt, path, tmp_path / "run2", "--on-bad", "nonsense")
    from falconlm.cli import main

    assert main(["finetune", str(base_ckpt), "--data", str(path), "--out", str(tmp_path / "run3"), *H.RUN_FLAGS, "--on-bad", "error"]) == 1
    assert f"mixed.jsonl:{n + 1}: not JSON" in capsys.readouterr().err


def test_plain_text_mix_in(base_ckpt, tmp_path):
    from falconlm.finetune.config import FinetuneConfig
    from falconlm.finetune.run import _mix_windows
    from falconlm.train.config import TrainConfig
    from falconlm.train.shards import write_token_shards

    corpus = H.write_jsonl(tmp_path / "corpus.jsonl", [{"text": " ".join(H.FILLER[i:] + H.FILLER[:i]) * 3} for i in range(20)])
    write_token_shards([str(corpus)], base_ckpt, tmp_path / "shards", val_fraction=0.0, progress=False)
    tok, template = load(base_ckpt)
    cfg = FinetuneConfig(checkpoint=str(base_ckpt), data=["x"], out=str(tmp_path), mix_pretrain=str(tmp_path / "shards"), mix_fraction=0.25,
                         train=TrainConfig(seq_len=32))
    windows = _mix_windows(cfg, tok)
    path = H.write_jsonl(tmp_path / "d.jsonl", H.records())
    samples, _ = read_samples([str(path)], template, tok.encode, tok.eot_id, DataOptions(max_tokens=33, on_overlong="skip"))
    b = SFTBatches(samples, 32, tok.eot_id, packing=False, seed=0, mix=windows, mix_fraction=0.25)
    rows = len(b.layout(0)[0])
    assert b.epoch_size(0) == rows + round(rows / 3)  # windows are a quarter of all sequences
    items = [b.item(k) for k in range(b.epoch_size(0))]
    plain = [(x, y) for x, y in items if (y != IGNORE_INDEX).all()]
    assert len(plain) == round(rows / 3)
    for x, y in plain:  # every next token is a target
        assert np.array_equal(x[1:], y[:-1])
    # shards made with another tokenizer are refused
    from falconlm.tokenizer.falcon import train_tokenizer

    other = train_tokenizer(["completely different words here"] * 50, vocab_size=280, show_progress=False)
    other.save(tmp_path / "other")
    write_token_shards([str(corpus)], tmp_path / "other", tmp_path / "other-shards", val_fraction=0.0, progress=False)
    cfg.mix_pretrain = str(tmp_path / "other-shards")
    with pytest.raises(FalconError, match="another tokenizer"):
        _mix_windows(cfg, tok)


def test_template_refuses_what_it_cannot_render():
    from falconlm.finetune.data import BadSample, segments

    t = ChatTemplate(source="{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>{% endif %}")
    with pytest.raises(BadSample, match="template mismatch"):  # the generation prompt ">>" never appears in the rendered turn
        segments([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], t)
