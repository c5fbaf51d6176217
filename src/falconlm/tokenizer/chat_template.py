"""The chat template: messages -> one prompt string, Falcon-instruct style, overridable per checkpoint.

Default rendering (what Falcon-instruct was tuned on, with our role names):

    {system text}\n            (only when a system message is present)
    User: {text}\n
    Assistant: {text}\n
    ...
    Assistant:                  (the generation prompt)

A checkpoint may override it with `chat_template.jinja` in its directory, or a `chat_template`
string in `tokenizer_config.json` (transformers' convention); both are Jinja templates rendered
with `messages`, `add_generation_prompt`, `bos_token` and `eos_token`, in a sandbox as
transformers does. Serving and fine-tuning both render through `ChatTemplate.render`,
so a model is trained on exactly the text it is later prompted with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.errors import FalconError

ROLES = ("system", "user", "assistant")

DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' + message['content'] + '\\n' }}"
    "{%- else -%}{{ 'Assistant: ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
# With the default template the model's next turn starts on a new "User:" line; stop there.
DEFAULT_STOP = ["\nUser:"]
TEMPLATE_FILE = "chat_template.jinja"


def reply_text(text: str) -> str:
    """An assistant reply as shown and kept in the history: without the space the template puts after
    "Assistant:" and the newline that ends the turn (the chat CLI and the server show the same text)."""
    return text.strip()


class ReplyStream:
    """reply_text for a reply that arrives in pieces: leading white space dropped, trailing white space held until more text follows."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, piece: str) -> str:
        """The part of `piece` (with what was held) that can be shown now."""
        text = self.held + piece
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        shown = text.rstrip()
        self.held = text[len(shown):]
        return shown


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FalconError("message content parts must be {\"type\": \"text\", \"text\": \"...\"} (only text is supported)")
            parts.append(part["text"])
        return "".join(parts)
    raise FalconError("message content must be a string or a list of text parts")


@dataclass
class ChatTemplate:
    """A Jinja chat template plus the stop strings that end an assistant turn."""

    source: str = DEFAULT_TEMPLATE
    stop_strings: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))
    origin: str = "default"
    bos_token: str = "<|endoftext|>"
    eos_token: str = "<|endoftext|>"

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation; raises FalconError on an empty or malformed one."""
        if not messages:
            raise FalconError("messages must hold at least one message")
        clean = []
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ROLES:
                raise FalconError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            clean.append({"role": role, "content": message_text(m.get("content", ""))})
        try:
            return _compile(self.source).render(
                messages=clean, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except FalconError:
            raise
        except Exception as exc:  # a broken user template: report it, do not crash the caller
            raise FalconError(f"the chat template ({self.origin}) failed to render: {exc}") from None


_COMPILED: dict[str, Any] = {}


def _compile(source: str) -> Any:
    """A compiled sandboxed Jinja template (cached: rendering happens per request)."""
    template = _COMPILED.get(source)
    if template is None:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise FalconError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            template = env.from_string(source)
        except TemplateError as exc:
            raise FalconError(f"the chat template does not parse: {exc}") from None
        _COMPILED[source] = template
    return template


def load_chat_template(directory: str | os.PathLike | None) -> ChatTemplate:
    """The checkpoint's template (chat_template.jinja, else tokenizer_config.json's), else the default."""
    if directory is None:
        return ChatTemplate()
    d = Path(directory)
    file = d / TEMPLATE_FILE
    if file.is_file():
        source = file.read_text(encoding="utf-8")
        _compile(source)
        return ChatTemplate(source=source, stop_strings=[], origin=str(file))
    config = d / "tokenizer_config.json"
    if config.is_file():
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FalconError(f"{config} is not valid JSON ({exc})") from None
        source = raw.get("chat_template") if isinstance(raw, dict) else None
        if isinstance(source, str) and source.strip():
            _compile(source)
            return ChatTemplate(source=source, stop_strings=[], origin=f"{config} chat_template")
    return ChatTemplate()
