"""Prompt files and tokenizers for the recorder.

A prompt file is local: ``.txt`` holds one prompt per line (blank lines are skipped), ``.jsonl``
one JSON object per line with a ``"prompt"`` or ``"text"`` string (blank lines skipped). Both must
be UTF-8.

Models without a tokenizer (tiny random configs, checkpoints saved without one) use
:class:`ByteTokenizer`: the prompt's UTF-8 bytes, each taken modulo the vocabulary size, with no
special tokens. It is lossless for vocabularies of at least 256 entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError


def load_prompts(path: str | Path) -> list[str]:
    """The prompts of a ``.txt`` or ``.jsonl`` file, in file order; ConfigError on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"prompt file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"prompt file {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc.strerror}") from None
    text = text.removeprefix("\ufeff")
    if path.suffix.lower() == ".jsonl":
        prompts = _jsonl_prompts(text, path)
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompt")
    return prompts


def _jsonl_prompts(text: str, path: Path) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ConfigError(f"{path} line {number}: not valid JSON") from None
        value = None
        if isinstance(row, dict):
            value = row.get("prompt", row.get("text"))
        if not isinstance(value, str):
            raise ConfigError(f"{path} line {number}: expected an object with a \"prompt\" or "
                              f"\"text\" string")
        if value.strip():
            prompts.append(value)
    return prompts


@dataclass(frozen=True)
class ByteTokenizer:
    """Byte-level fallback tokenizer: token id = UTF-8 byte value modulo ``vocab_size``."""

    vocab_size: int
    eos_token_id: int | None = None
    pad_token_id: int = 0
    name: str = "bytes"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return [b % self.vocab_size for b in text.encode("utf-8")]


@dataclass(frozen=True)
class HFTokenizer:
    """A Hugging Face tokenizer behind the same small interface as :class:`ByteTokenizer`."""

    tokenizer: Any
    name: str

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-sequence id, or None."""
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        """The id used for left padding (masked out, so any valid id works)."""
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with the tokenizer's usual special tokens (e.g. BOS)."""
        return list(self.tokenizer(text)["input_ids"])


def load_tokenizer(model_path: str | Path | None, vocab_size: int) -> ByteTokenizer | HFTokenizer:
    """The model's own tokenizer when ``model_path`` has one, else :class:`ByteTokenizer`."""
    if model_path is not None:
        path = Path(model_path)
        markers = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if path.is_dir() and any((path / m).exists() for m in markers):
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(path))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the tokenizer of {path.name}: "
                                  f"{str(exc).splitlines()[0]}") from None
            return HFTokenizer(tok, type(tok).__name__)
    return ByteTokenizer(vocab_size)
