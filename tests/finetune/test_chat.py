"""`falconlm chat`: streaming replies, history within the context window, /reset and /quit, driven through a pseudo-terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import ft_helpers as H
from falconlm.errors import FalconError
from falconlm.decoding.chat import ChatSession


def session(ckpt, **kw):
    from falconlm.tokenizer.chat_template import load_chat_template
    from falconlm.decoding.settings import GenerationConfig
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    model = FalconForCausalLM.from_pretrained(ckpt)
    template = load_chat_template(ckpt)
    gen = GenerationConfig(max_new_tokens=kw.pop("max_new_tokens", 20), stop_strings=list(template.stop_strings), eos_token_id=model.config.eos_token_id)
    return ChatSession(model, FalconTokenizer.load(ckpt), template, gen, **kw)


def test_history_is_kept_within_the_context_window(full_run):
    s = session(full_run / "model", system=H.SYSTEM)
    chunks = []
    (q1, a1), (q2, a2) = H.TWO_TURNS
    assert s.reply(q1, chunks.append) == (a1, False)
    assert "".join(chunks) == a1  # streamed in pieces that add up to the answer kept: no template space, turn end or eos
    ids, dropped = s.prompt_ids(q2)
    assert dropped == 0
    s.generation.max_new_tokens = s.model.config.max_position_embeddings - len(ids)  # now the prompt just fits
    assert s.prompt_ids(q2) == (ids, 0)
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    s.history += short
    ids, dropped = s.prompt_ids(q2)
    assert dropped == 1 and s.history == short and len(ids) <= s.budget  # the oldest turn went first
    assert s.tokenizer.decode(ids) == f"{H.SYSTEM}\nUser: Hi\nAssistant: Hello.\nUser: {q2}\nAssistant:"  # the system message stays
    with pytest.raises(FalconError, match=f"leaves {s.budget} next to --max-new-tokens {s.generation.max_new_tokens}"):
        s.prompt_ids("word " * 100)


def test_reusing_the_cache_between_turns_gives_the_same_replies_with_less_prefill(full_run):
    turns = [H.TWO_TURNS[0][0], H.TWO_TURNS[1][0], H.FACTS[2][0]]
    fresh = session(full_run / "model", system=H.SYSTEM, reuse_cache=False)
    reused = session(full_run / "model", system=H.SYSTEM)
    for k, q in enumerate(turns):
        ids, _ = reused.prompt_ids(q)
        assert reused.reply(q, lambda _: None) == fresh.reply(q, lambda _: None)
        assert fresh.prefilled == len(ids)
        if k:  # the earlier turns' keys and values came from the cache: only the new turn was computed
            assert reused.prefilled < len(ids) // 2, (reused.prefilled, len(ids))
    reused.reset()
    fresh.reset()
    ids, _ = reused.prompt_ids(turns[1])
    assert reused.reply(turns[1], lambda _: None) == fresh.reply(turns[1], lambda _: None)
    assert reused.prefilled < len(ids)  # after /reset the system message's keys and values still serve


def test_ctrl_c_stops_a_reply_and_keeps_what_was_shown(full_run):
    s = session(full_run / "model")
    shown = []

    def write(text):
        shown.append(text)
        raise KeyboardInterrupt  # Ctrl-C after the first streamed piece

    answer, interrupted = s.reply(H.FACTS[4][0], write)
    assert interrupted and answer == "".join(shown).strip() and len(answer) < len(H.FACTS[4][1])
    assert s.history[-1] == {"role": "assistant", "content": answer}


def chat_env():
    return {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_chat_in_a_pseudo_terminal_answers_two_turns_resets_and_quits(full_run):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "falconlm", "chat", str(full_run / "model"), "--temperature", "0", "--max-new-tokens", "24"],
                          env=chat_env(), encoding="utf-8", timeout=60)
    try:
        child.expect("/reset clears the history")
        (q1, a1), (q2, a2) = H.TWO_TURNS
        for question, answer in [(q1, a1), (q2, a2)]:  # the second answer depends on the first turn being in the history
            child.expect_exact("User: ")
            child.sendline(question)
            child.expect(re.escape(f"Assistant: {answer}") + r"\r?\n")
        child.expect_exact("User: ")
        child.sendline("/reset")
        child.expect_exact("(history cleared)")
        q3, a3 = H.FACTS[2]
        child.expect_exact("User: ")
        child.sendline(q3)
        child.expect(re.escape(f"Assistant: {a3}") + r"\r?\n")
        child.expect_exact("User: ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


@pytest.mark.slow
def test_chat_reads_piped_input_and_exits_cleanly_at_end_of_input(full_run):
    q, a = H.FACTS[3]
    out = subprocess.run([sys.executable, "-m", "falconlm", "chat", str(full_run / "model"), "--temperature", "0", "--max-new-tokens", "24"],
                         input=f"{q}\n/nonsense\n", capture_output=True, text=True, timeout=120, env=chat_env())
    assert out.returncode == 0, out.stderr
    assert f"Assistant: {a}\n" in out.stdout and "(unknown command /nonsense" in out.stdout and "Traceback" not in out.stderr
