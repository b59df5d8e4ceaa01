"""Token counting with a real BPE tokenizer (tiktoken ``cl100k_base``), fully offline.

litellm ships the tiktoken encoding files; we point tiktoken's cache at them without importing
litellm, so counting is fast to start and never reaches the network.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# OpenAI chat format overhead: ~3 tokens per message plus 3 to prime the reply.
_PER_MESSAGE = 3
_REPLY_PRIMER = 3


def _bundled_cache_dir() -> str | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return str(path) if path.is_dir() else None


@functools.cache
def _encoding() -> Any:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        cache = _bundled_cache_dir()
        if cache:
            os.environ["TIKTOKEN_CACHE_DIR"] = cache
    import tiktoken

    return tiktoken.get_encoding("cl100k_base")


@functools.lru_cache(maxsize=256)  # a prompt's system message is the same for every record of a batch
def count_text(text: str) -> int:
    # encode_ordinary is encode(disallowed_special=()) — special tokens counted as the text they are —
    # without the special-token scan: 90 instead of 137 µs for 2 KB
    return len(_encoding().encode_ordinary(text))


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut text to at most max_tokens tokens; returns (text, truncated)."""
    enc = _encoding()
    ids = enc.encode_ordinary(text)
    if len(ids) <= max_tokens:
        return text, False
    return enc.decode(ids[:max_tokens]), True


def count_messages(messages: Iterable[Mapping[str, Any]]) -> int:
    total = _REPLY_PRIMER
    for msg in messages:
        total += _PER_MESSAGE + count_text(str(msg.get("content") or ""))
    return total
