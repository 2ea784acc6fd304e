"""Byte-level BPE tokenizer (HF ``tokenizers``) trained on our own corpus, and document encoding.

Design:
- GPT-2 style byte-level BPE: ByteLevel pre-tokenizer (GPT-2 split regex, no prefix space) and ByteLevel decoder,
  no normalizer, all 256 byte symbols in the initial alphabet. Hence any text encodes and
  ``decode(encode(text)) == text`` exactly.
- One special token, ``<|endoftext|>``, always id 0 (``EOT_ID``): it is the first special token given to the
  trainer, which places special tokens before the byte alphabet and the merges.
- Training has no randomness (the merge with the highest count wins, ties broken deterministically inside
  ``tokenizers``), so there is no seed: the same texts give the same tokenizer, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 0
MIN_VOCAB_SIZE = 257  # 256 byte symbols + the end-of-document token
_ENCODE_CHUNK_DOCS = 256  # documents per encode_batch call: bounds peak memory of the Encoding objects


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds ids ``0 .. vocab_size-1``: uint16 up to 65,536 types, else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` types in total (EOT + 256 bytes + merges).

    ``min_frequency``: a pair must occur at least this often to be merged; with a small corpus the vocabulary can
    therefore end up smaller than ``vocab_size`` (check ``get_vocab_size()``).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + {EOT_TOKEN}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _check_eot(tokenizer)
    return tokenizer


def _check_eot(tokenizer: Tokenizer) -> None:
    eot = tokenizer.token_to_id(EOT_TOKEN)
    if eot != EOT_ID:
        raise ValueError(f"tokenizer maps {EOT_TOKEN} to id {eot}, expected {EOT_ID}")


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write ``tokenizer.json`` (HF format, readable by any ``tokenizers`` release that can load it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path), pretty=True)
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by ``save_tokenizer`` and check its end-of-document id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    tokenizer = Tokenizer.from_file(str(path))
    _check_eot(tokenizer)
    return tokenizer


def _texts(docs: Iterable[str | tuple[str, str]]) -> Iterator[str]:
    """Accept plain texts or ``(doc_id, text)`` documents from ``specscale.tokens.corpus``."""
    for doc in docs:
        yield doc if isinstance(doc, str) else doc[1]


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_documents(tokenizer: Tokenizer, docs: Iterable[str | tuple[str, str]]) -> np.ndarray:
    """Encode documents into one flat token stream, each document preceded by ``EOT_ID``.

    Layout (as the modded-nanoGPT FineWeb shards): ``[EOT, doc0..., EOT, doc1..., ...]``; every document starts
    after an end-of-document token, so the model always sees a boundary marker. Returns shape ``(n_tokens,)``,
    dtype ``token_dtype(vocab size)``. A literal ``"<|endoftext|>"`` inside a document is encoded as ordinary text,
    never as the special token, so the EOT count always equals the document count.
    """
    _check_eot(tokenizer)
    dtype = token_dtype(tokenizer.get_vocab_size())
    eot = np.array([EOT_ID], dtype=dtype)
    parts: list[np.ndarray] = []
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we never use: ≈ 1.6× faster.
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    previous = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True  # treat special-token text inside documents as plain text
    try:
        for chunk in _chunks(_texts(docs), _ENCODE_CHUNK_DOCS):
            # add_special_tokens=False: no post-processor tokens; we add EOT ourselves.
            for encoding in encode_batch(chunk, add_special_tokens=False):
                parts.append(eot)
                parts.append(np.asarray(encoding.ids, dtype=dtype))
    finally:
        tokenizer.encode_special_tokens = previous
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts)
