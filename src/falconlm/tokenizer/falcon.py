"""The Falcon tokenizer: byte-level BPE with Falcon's pre-tokenisation and its twelve special tokens.

Everything heavy is done by HF `tokenizers` (Rust); this module only sets it up the way the
released Falcon tokenizer is set up (its pre-tokenizer splits, byte-level alphabet and special tokens, see docs/falcon.md) and saves files
that `transformers.PreTrainedTokenizerFast` loads unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from falconlm.atomic import atomic_write_text
from falconlm.errors import FalconError

# Ids 0..11 in this order; <|endoftext|> (id 11) is both bos and eos in Falcon configs.
SPECIAL_TOKENS: tuple[str, ...] = (
    ">>TITLE<<",
    ">>ABSTRACT<<",
    ">>INTRODUCTION<<",
    ">>SUMMARY<<",
    ">>COMMENT<<",
    ">>ANSWER<<",
    ">>QUESTION<<",
    ">>DOMAIN<<",
    ">>PREFIX<<",
    ">>SUFFIX<<",
    ">>MIDDLE<<",
    "<|endoftext|>",
)
EOT_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 65024
MODEL_MAX_LENGTH = 2048


def falcon_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Falcon's pre-tokeniser: punctuation runs isolated, GPT-2 byte-level regex, digits in threes."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Punctuation(behavior="contiguous"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False),
        ]
    )


def _empty_falcon_tokenizer() -> Tokenizer:
    """An untrained BPE tokenizer with Falcon's pipeline (no normaliser, byte-level decoder)."""
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = falcon_pre_tokenizer()
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    # Falcon adds no bos/eos on encode; the template only keeps pairs' type ids apart.
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    return tok


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    show_progress: bool = True,
    length: int | None = None,
) -> "FalconTokenizer":
    """Train a Falcon-style byte-level BPE tokenizer on an iterator of documents."""
    base = len(SPECIAL_TOKENS) + 256
    if vocab_size < base:
        raise FalconError(f"--vocab-size must be at least {base} (12 special tokens + 256 bytes), got {vocab_size}")
    tok = _empty_falcon_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return FalconTokenizer(tok)


class FalconTokenizer:
    """A thin typed wrapper over `tokenizers.Tokenizer` that knows Falcon's special tokens and files."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        eot = tokenizer.token_to_id(EOT_TOKEN)
        if eot is None:
            raise FalconError(f"the tokenizer has no {EOT_TOKEN} token, so documents cannot be separated")
        self.eot_id: int = eot

    # -- files -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "FalconTokenizer":
        """Load from a directory holding tokenizer.json, or from the tokenizer.json file itself."""
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FalconError(f"no tokenizer.json found at {path}")
        try:
            return cls(Tokenizer.from_file(str(file)))
        except Exception as exc:  # tokenizers raises bare Exceptions on bad JSON
            raise FalconError(f"{file} is not a valid tokenizer.json ({exc})") from exc

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        specials = [t for t in SPECIAL_TOKENS if self.tokenizer.token_to_id(t) is not None]
        extra = [t for t in specials if t != EOT_TOKEN]
        config = {
            "add_prefix_space": False,
            "bos_token": EOT_TOKEN,
            "eos_token": EOT_TOKEN,
            "additional_special_tokens": extra,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": MODEL_MAX_LENGTH,
            "clean_up_tokenization_spaces": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        special_map = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "additional_special_tokens": extra}
        atomic_write_text(out / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        atomic_write_text(out / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")
        return out / "tokenizer.json"

    def fingerprint(self) -> str:
        """A short content hash of vocabulary + merges + pipeline, recorded in token-shard indexes."""
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()[:16]

    # -- encoding ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text; special-token strings in the text become their single ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts (parallel inside the Rust library)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of a list of ids."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def pre_tokenize(self, text: str) -> list[str]:
        """The pre-token pieces (byte-level alphabet) the BPE model sees for a text."""
        return [piece for piece, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(text)]

    def iter_encode(self, texts: Iterable[str], batch_size: int = 256) -> Iterator[list[int]]:
        """Encode a stream of texts in batches, yielding one id list per text."""
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) >= batch_size:
                yield from self.encode_batch(batch)
                batch = []
        if batch:
            yield from self.encode_batch(batch)

