"""The chat template: the default Falcon-instruct rendering, overrides from the checkpoint, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from falconlm.errors import FalconError
from falconlm.tokenizer.chat_template import (
    DEFAULT_STOP,
    ChatTemplate,
    load_chat_template,
)


def test_default_rendering():
    t = ChatTemplate()
    assert t.render([{"role": "user", "content": "Hi"}]) == "User: Hi\nAssistant:"
    assert t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == "User: Hi\n"
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    assert t.render(convo) == "Be brief.\nUser: A\nAssistant: B\nUser: C\nAssistant:"
    assert t.stop_strings == DEFAULT_STOP == ["\nUser:"]
    assert t.render([{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]) == "User: xy\nAssistant:"


@pytest.mark.parametrize(
    "messages, needle",
    [([], "at least one"), ([{"role": "bot", "content": "x"}], "role"), ([{"role": "user", "content": 5}], "content"), ([{"role": "user", "content": [{"type": "image"}]}], "text")],
)
def test_bad_conversations(messages, needle):
    with pytest.raises(FalconError, match=needle):
        ChatTemplate().render(messages)


def test_overrides_from_the_checkpoint(tmp_path):
    assert load_chat_template(tmp_path).origin == "default"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}))
    t = load_chat_template(tmp_path)
    assert t.render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>" and t.stop_strings == []
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "hi"}]) == "<|endoftext|>HI"  # the .jinja file wins
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(FalconError, match="does not parse"):
        load_chat_template(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('only user turns') }}")
    with pytest.raises(FalconError, match="only user turns"):
        load_chat_template(tmp_path).render([{"role": "user", "content": "hi"}])
    # the sandbox refuses attribute escapes
    (tmp_path / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(FalconError, match="failed to render"):
        load_chat_template(tmp_path).render([{"role": "user", "content": "hi"}])


def test_serve_cli_help_and_errors(tiny_ckpt):
    out = subprocess.run([sys.executable, "-m", "falconlm", "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--max-batch-size" in out.stdout and "127.0.0.1" in out.stdout
    out = subprocess.run([sys.executable, "-m", "falconlm", "serve", str(tiny_ckpt), "--max-batch-size", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--max-batch-size and --max-queue must be" in out.stderr and "Traceback" not in out.stderr
    # KV pool settings that cannot work are one sentence each, before anything listens.
    for flags, words in ((["--kv-cache-memory", "0.000001"], "cannot hold one request"), (["--max-num-batched-tokens", "4"], "at least --max-batch-size"),
                         (["--block-size", "0"], "--block-size must be >= 1"), (["--kv-cache-memory", "-1"], "must be > 0 GB")):
        out = subprocess.run([sys.executable, "-m", "falconlm", "serve", str(tiny_ckpt), *flags], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and words in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2, (flags, out.stderr)
