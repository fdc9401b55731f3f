"""A model file's identity: its SHA-256 (read in chunks, with progress for big files) and the quantisation
its name states."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

from ..core.errors import BadRequestError

CHUNK = 4 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# GGUF names state their quantisation: model-Q4_K_M.gguf, smollm2-135m-instruct-q4_1.gguf, model.f16.gguf
_QUANT = re.compile(r"(?:^|[._-])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=[._-]|$)", re.IGNORECASE)


def sha256_file(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's SHA-256 as hex; `progress(n)` after each chunk of n bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                if progress is not None:
                    progress(len(chunk))
    except OSError as e:
        raise BadRequestError(f"cannot read the model file {path}: {e.strerror or e}") from e
    return h.hexdigest()


def checked_sha256(text: str) -> str:
    """A SHA-256 given by hand (64 hex digits, any case), lower-cased; `BadRequestError` otherwise."""
    value = text.strip().lower()
    if not _SHA256.match(value):
        raise BadRequestError(f"--sha256 must be 64 hexadecimal digits (as sha256sum prints), got {text[:80]!r}")
    return value


def quantisation_of(filename: str) -> str:
    """The quantisation a GGUF file name states (Q4_K_M, Q8_0, F16, ...), upper-cased; "" when none."""
    m = _QUANT.search(Path(filename).name)
    return m.group(1).upper() if m else ""
