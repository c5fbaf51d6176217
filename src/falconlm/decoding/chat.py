"""`falconlm chat CHECKPOINT_DIR [--system "..."]`: an interactive terminal chat, streamed token by token.

The conversation is rendered with the checkpoint's chat template (the one `serve` and `finetune`
use) on every turn. When the history no longer fits the context window next to --max-new-tokens,
the oldest user/assistant turns are dropped (the system message stays) and the chat says so.
Commands: /reset clears the history, /quit (or Ctrl-D) leaves; Ctrl-C during a reply stops that reply.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from falconlm.decoding.settings import GenerationConfig

HELP = "/reset clears the history, /quit or Ctrl-D leaves, Ctrl-C stops a reply"


@dataclass
class ChatSession:
    """A conversation with a model: the history, the context budget, and streamed replies."""

    model: Any
    tokenizer: Any
    template: Any
    generation: Any  # GenerationConfig
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    reuse_cache: bool = True  # keep the conversation's keys and values between turns
    prefilled: int = 0  # prompt tokens the last reply computed (the rest came from the cache)
    _cache: Any = None
    _cached_ids: list[int] = field(default_factory=list)  # the tokens whose keys and values the cache holds

    @property
    def budget(self) -> int:
        """Prompt tokens that fit next to max_new_tokens in the model's context."""
        return self.model.config.max_position_embeddings - self.generation.max_new_tokens

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        self.history.clear()  # the cache stays: its prefix (the system message) still matches

    def _reusable_cache(self, ids: list[int]) -> Any:
        """The session's cache, trimmed to the longest prefix it shares with `ids` (None: no reuse)."""
        if not self.reuse_cache:
            return None
        if self._cache is None:
            self._cache = self.model.new_cache(1, self.model.config.max_position_embeddings)
        common = 0
        for a, b in zip(ids, self._cached_ids):
            if a != b:
                break
            common += 1
        self._cache.length = common
        return self._cache

    def prompt_ids(self, user: str) -> tuple[list[int], int]:
        """Token ids of the prompt for a new user message, and how many old turns were dropped to fit it."""
        from falconlm.errors import FalconError

        system = [{"role": "system", "content": self.system}] if self.system else []
        dropped = 0
        while True:
            messages = system + self.history + [{"role": "user", "content": user}]
            ids = self.tokenizer.encode(self.template.render(messages, add_generation_prompt=True))
            if len(ids) <= self.budget:
                return ids, dropped
            if not self.history:
                raise FalconError(
                    f"this message needs {len(ids)} prompt tokens, but the context of {self.model.config.max_position_embeddings} "
                    f"leaves {self.budget} next to --max-new-tokens {self.generation.max_new_tokens}"
                )
            # Drop the oldest turn: a user message and the answer after it.
            del self.history[: 2 if len(self.history) > 1 and self.history[1]["role"] == "assistant" else 1]
            dropped += 1

    def reply(self, user: str, write: Callable[[str], None], ids: list[int] | None = None) -> tuple[str, bool]:
        """Stream the answer to `user` through write() and add the turn to the history; returns (answer, interrupted).

        `ids` is the prompt from prompt_ids(user) when the caller already made it. Ctrl-C stops the reply.
        """
        from falconlm.decoding.generate import TextStream
        from falconlm.tokenizer.chat_template import ReplyStream, reply_text

        if ids is None:
            ids, _ = self.prompt_ids(user)
        cache = self._reusable_cache(ids)
        self._cached_ids = []  # until this reply ends cleanly, the cache's content is unknown
        self.prefilled = len(ids) - min(cache.length, len(ids) - 1) if cache is not None else len(ids)
        stream = TextStream(self.model, self.tokenizer, [ids], self.generation, cache=cache)
        interrupted = False
        shown = ReplyStream()  # what is written adds up to reply_text(answer)
        try:
            for deltas in stream:
                piece = shown.push(deltas[0])
                if piece:
                    write(piece)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stream.close()
        result = stream.completions[0]
        if cache is not None and not interrupted and cache.length == len(ids) + len(result.tokens) - 1:
            self._cached_ids = ids + result.tokens[:-1]  # every generated token but the last was fed back
        answer = reply_text(result.text)
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer, interrupted


@dataclass
class ChatCommand:
    """What `falconlm chat` loads and how it answers."""

    checkpoint: str  # checkpoint directory (config.json, safetensors, tokenizer.json, optional chat template)
    system: str | None = None  # system message kept at the top of the conversation
    dtype: str | None = None  # float32 | bfloat16 | float16; None: as saved
    quantize: str | None = None  # int8 | int4: quantize a full-precision checkpoint as it loads (round to nearest, LM head included)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the chat options: one per ChatCommand field, plus --config."""
    from falconlm.configure import Derived, add_config_arguments
    from falconlm.decoding.generate_cli import GENERATION_ALIASES, NOT_FLAGS

    defaults = {
        "generation.do_sample": True,
        "generation.temperature": 0.7,
        "generation.top_p": 0.9,
        "generation.max_new_tokens": Derived("256, at most half the context"),
    }
    # The template's stop strings end a reply; the chat has no others.
    add_config_arguments(parser, ChatCommand, aliases=GENERATION_ALIASES, skip=NOT_FLAGS + ("generation.stop_strings",),
                         positional=("checkpoint",), defaults=defaults)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and talk until /quit or end of input."""
    from falconlm.configure import config_from_args
    from falconlm.errors import FalconError
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.chat_template import load_chat_template
    from falconlm.tokenizer.falcon import FalconTokenizer

    try:
        import readline  # noqa: F401  line editing and history for input()
    except ImportError:
        pass
    cmd = config_from_args(ChatCommand, args)
    model = FalconForCausalLM.from_pretrained(cmd.checkpoint, dtype=cmd.dtype, quantize=cmd.quantize)
    tokenizer = FalconTokenizer.load(cmd.checkpoint)
    template = load_chat_template(cmd.checkpoint)
    context = model.config.max_position_embeddings
    generation = cmd.generation
    if generation.max_new_tokens is None:
        generation.max_new_tokens = min(256, context // 2)
    max_new = generation.max_new_tokens
    generation.stop_strings = list(template.stop_strings)
    generation.eos_token_id = model.config.eos_token_id
    generation.validate()
    session = ChatSession(model, tokenizer, template, generation, system=cmd.system)
    if session.budget < 1:
        raise FalconError(f"--max-new-tokens {max_new} leaves no room for a prompt in the context of {context} tokens")
    print(f"falconlm chat: {cmd.checkpoint} ({model.num_parameters() / 1e6:.1f} M parameters, context {context} tokens, "
          f"template {template.origin}). {HELP}.", flush=True)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    while True:
        try:
            line = input("\nUser: ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print(f"\n({HELP})")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/quit", "/exit"):
                return 0
            if command == "/reset":
                session.reset()
                print("(history cleared" + (", system message kept)" if cmd.system else ")"))
            else:
                print(f"(unknown command {command}; {HELP})")
            continue
        try:
            ids, dropped = session.prompt_ids(text)
        except FalconError as exc:
            print(f"(error: {exc})")
            continue
        if dropped:
            print(f"(dropped the {dropped} oldest turn(s) to fit the context window of {context} tokens)")
        write("Assistant: ")  # the reply itself carries no leading space (one rule with the server)
        _answer, interrupted = session.reply(text, write, ids)
        print(" [stopped]" if interrupted else "")
