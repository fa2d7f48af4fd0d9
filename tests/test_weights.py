import hashlib
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tga_hf import weights
from tga_hf.weights import GGUFPart, LLMSpec, join_parts, verify_checkpoint
from tga_hf.wheels import WheelSource


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TGA_HF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _parts(*chunks: bytes):
    return [lambda c=c: io.BytesIO(c) for c in chunks]


def test_join_parts_concatenates_in_order_and_verifies(tmp_path):
    chunks = [b"GGUF" + bytes(range(200)), b"middle" * 50, b"end"]
    data = b"".join(chunks)
    dest = join_parts(_parts(*chunks), tmp_path / "model.gguf", len(data), hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


@pytest.mark.parametrize("bad", ["size", "sha256"])
def test_join_parts_rejects_wrong_data_and_leaves_nothing(tmp_path, bad):
    chunks = [b"part one", b"part two"]
    data = b"".join(chunks)
    size = len(data) + (1 if bad == "size" else 0)
    digest = hashlib.sha256(data if bad == "size" else b"other").hexdigest()
    with pytest.raises(ValueError, match=bad if bad == "sha256" else "bytes"):
        join_parts(_parts(*chunks), tmp_path / "model.gguf", size, digest)
    assert list(tmp_path.iterdir()) == []


def _fake_split_model(tmp_path, monkeypatch, data: bytes) -> Path:
    """Register a fake LLM whose GGUF is split in three: two installed modules and one pinned wheel, which is built
    in `tmp_path` (not yet in the cache) and returned."""
    pieces = [data[:10], data[10:25], data[25:]]
    site = tmp_path / "site"
    parts = []
    for i, piece in enumerate(pieces[:2], start=1):
        package = site / f"fake_gguf_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "data" / "part.bin").write_bytes(piece)
        (package / "__init__.py").write_text(
            "import os\ndef get_part_path():\n    return os.path.join(os.path.dirname(__file__), 'data', 'part.bin')\n"
        )
        # An installed part is read in place: its wheel's pin is not what checks it
        wheel = WheelSource(f"fake-gguf-part{i}", "1.0", "0" * 64)
        parts.append(GGUFPart(wheel, f"fake_gguf_part{i}", f"fake_gguf_part{i}/data/part.bin"))
    monkeypatch.syspath_prepend(str(site))
    last = tmp_path / "fake_gguf_part3-1.0-py3-none-any.whl"
    with zipfile.ZipFile(last, "w") as wheel:
        wheel.writestr("fake_gguf_part3/data/part.bin", pieces[2])
    wheel = WheelSource("fake-gguf-part3", "1.0", hashlib.sha256(last.read_bytes()).hexdigest())
    parts.append(GGUFPart(wheel, "fake_gguf_part3", "fake_gguf_part3/data/part.bin"))
    spec = LLMSpec("Fake", "fake.gguf", len(data), hashlib.sha256(data).hexdigest(), parts=tuple(parts))
    monkeypatch.setitem(weights.LLMS, "fake", spec)
    return last


def test_gguf_path_joins_installed_parts_and_wheel_members(tmp_path, monkeypatch, cache):
    data = bytes(range(256)) * 3
    last = _fake_split_model(tmp_path, monkeypatch, data)
    with pytest.raises(FileNotFoundError, match="fake-gguf-part3==1.0"):
        weights.gguf_path("fake", allow_download=False)
    assert not (cache / "gguf" / "fake.gguf").exists()

    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    shutil.copy(last, cache / "wheels" / last.name)
    path = weights.gguf_path("fake", allow_download=False)
    assert path == cache / "gguf" / "fake.gguf" and path.read_bytes() == data

    # A truncated join in the cache is detected by its size and joined again.
    path.write_bytes(data[:-7])
    assert weights.gguf_path("fake", allow_download=False).read_bytes() == data


def test_qwen_spec_matches_the_published_join():
    spec = weights.LLMS["qwen2.5-coder-0.5b"]
    assert spec.size == 491_400_064
    assert spec.sha256.startswith("1d9614638d18") and spec.sha256.endswith("ff32")
    assert [p.member.rsplit("/", 1)[1] for p in spec.parts] == [f"part0{i}.bin" for i in range(1, 7)]


def test_unknown_llm_is_named():
    with pytest.raises(ValueError, match="gpt-17"):
        weights.converted_checkpoint("gpt-17")


def _fake_conversion(monkeypatch):
    calls = []

    def convert(gguf_file, out_dir, dtype):
        calls.append(out_dir)
        source = {"gguf": "fake.gguf"}
        with weights.atomic_directory(out_dir, overwrite=True, checksums=True, source=source) as tmp:
            (tmp / "model.safetensors").write_bytes(b"weights" * 100)
            (tmp / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(weights, "gguf_path", lambda name, allow_download=True: "fake.gguf")
    monkeypatch.setattr(weights, "convert_gguf", convert)
    return calls


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete", "manifest"])
def test_conversion_cache_is_reused_and_rebuilt_when_damaged(cache, monkeypatch, damage):
    calls = _fake_conversion(monkeypatch)
    first = weights.converted_checkpoint("smollm2-135m")
    assert weights.converted_checkpoint("smollm2-135m") == first
    assert len(calls) == 1  # reused, not converted again

    target = first / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "corrupt":
        target.write_bytes(b"X" * target.stat().st_size)
    elif damage == "delete":
        target.unlink()
    else:
        (first / weights.MANIFEST).write_text("not json")
    with pytest.raises(ValueError, match="model.safetensors|unreadable"):
        verify_checkpoint(first)
    assert weights.converted_checkpoint("smollm2-135m") == first
    assert len(calls) == 2  # rebuilt
    verify_checkpoint(first)


def test_verify_checkpoint_requires_a_manifest(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no tga_hf_manifest.json"):
        verify_checkpoint(tmp_path)


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TGA_HF_CACHE", str(tmp_path / "a"))
    assert weights.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TGA_HF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "tga_hf"


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "not_installed_pkg", None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps not-installed-pkg"):
        weights._package_dir("not_installed_pkg")


@pytest.mark.slow
def test_text_encoder_loads_offline():
    encoder = weights.load_text_encoder()
    embeddings = encoder.encode(["a red bicycle", "a blue car"], normalize_embeddings=True)
    assert embeddings.shape == (2, 384)
    assert encoder[0].auto_model.dtype == torch.float32


@pytest.mark.slow
def test_smollm2_converts_once_and_loads_as_a_plain_model(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TGA_HF_CACHE", str(tmp_path_factory.mktemp("cache")))
    model, tokenizer = weights.load_llm("smollm2-135m")
    folder = weights.converted_checkpoint("smollm2-135m")
    manifest = json.loads((folder / weights.MANIFEST).read_text())
    assert manifest["source"]["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    stamp = (folder / weights.MANIFEST).stat().st_mtime_ns

    assert not getattr(model, "is_quantized", False) and getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 30
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the GGUF
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = torch.tensor([prompt if isinstance(prompt, list) else prompt["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()

    # Second use: the cached checkpoint verifies and is reused, not converted again.
    assert weights.converted_checkpoint("smollm2-135m") == folder
    assert (folder / weights.MANIFEST).stat().st_mtime_ns == stamp
