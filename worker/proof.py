"""The hashes behind a job's ProofRecord: what ran (model digest) and what came out
(token hash). Both are plain sha256 hex so any component can recompute them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path

# Files that hold weights in a local Hugging Face folder; configs and tokenizers are
# not part of the digest, so re-saving a tokenizer does not change a model's identity.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 4 * 1024 * 1024


def token_hash(token_ids: Iterable[int]) -> str:
    """sha256 over the token ids packed as little-endian uint32, hex."""
    ids = list(token_ids)
    return hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files, sorted by name (the order the digest uses)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)),
                  key=lambda p: p.name)


def model_digest(folder: Path) -> str:
    """sha256 over the contents of the weight files, concatenated in name order, hex."""
    digest = hashlib.sha256()
    for path in weight_files(folder):
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
