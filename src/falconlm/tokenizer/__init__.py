"""Falcon's byte-level BPE tokenizer: training with HF `tokenizers`, load/save, encode/decode."""

from falconlm.tokenizer.falcon import (
    EOT_TOKEN,
    SPECIAL_TOKENS,
    FalconTokenizer,
    falcon_pre_tokenizer,
    train_tokenizer,
)

__all__ = ["EOT_TOKEN", "SPECIAL_TOKENS", "FalconTokenizer", "falcon_pre_tokenizer", "train_tokenizer"]
