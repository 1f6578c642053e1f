"""Checkpoint reading (file, shards, folder, hub id, pickles) and atomic writing."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ggcompress.errors import GGError
from ggcompress.io.checkpoint import CheckpointWriter, atomic_write_bytes, open_checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 4, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g),
        "model.norm.weight": torch.ones(4, dtype=torch.float16),
        "fp8": torch.randn(3, 3, generator=g).to(torch.float8_e4m3fn),
        "position_ids": torch.arange(5),
        "scalar": torch.tensor(3.0),
    }


def test_read_single_file_lazily(tmp_path: Path) -> None:
    ts = _tensors()
    save_file(ts, tmp_path / "m.safetensors", metadata={"format": "pt"})
    ck = open_checkpoint(tmp_path / "m.safetensors")
    assert {t.name for t in ck.tensors} == set(ts)
    assert ck.metadata == {"format": "pt"}
    for info, t in ck.iter_tensors():
        assert t.dtype == ts[info.name].dtype
        assert torch.equal(t.reshape(-1).view(torch.uint8), ts[info.name].reshape(-1).view(torch.uint8))
    assert ck.info("position_ids").dtype == "I64" and not ck.info("position_ids").is_float
    assert ck.info("scalar").shape == ()


def test_sharded_index_and_folder(tmp_path: Path) -> None:
    ts = _tensors()
    names = sorted(ts)
    save_file({k: ts[k] for k in names[:3]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: ts[k] for k in names[3:]}, tmp_path / "model-00002-of-00002.safetensors")
    wm = {k: "model-00001-of-00002.safetensors" for k in names[:3]}
    wm |= {k: "model-00002-of-00002.safetensors" for k in names[3:]}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    for spec in (tmp_path, tmp_path / "model.safetensors.index.json"):
        ck = open_checkpoint(spec)
        assert {t.name for t in ck.tensors} == set(ts)
        assert ck.config == {"model_type": "llama"}
        assert torch.equal(ck.get("model.norm.weight"), ts["model.norm.weight"])


def test_pickle_is_read_weights_only_and_code_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "pytorch_model.bin")
    ck = open_checkpoint(tmp_path / "pytorch_model.bin")
    assert torch.equal(ck.get("w"), torch.ones(2, 2))

    class Evil:
        def __reduce__(self):  # would run code on a plain torch.load
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(GGError, match="weights_only"):
        open_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "holds no weights"),
        (lambda p: p.write_bytes(b""), "empty or truncated"),
        (lambda p: p.write_text("hello world, not weights"), "not a checkpoint|not a valid|truncated"),
    ],
)
def test_bad_inputs_give_clear_errors(tmp_path: Path, make, match: str) -> None:
    p = tmp_path / "x.safetensors" if "empty" in match else tmp_path / "x"
    make(p)
    with pytest.raises(GGError, match=match):
        open_checkpoint(p)


def test_truncated_file_is_detected_from_header(tmp_path: Path) -> None:
    save_file({"w": torch.randn(64, 64)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(GGError, match="truncated"):
        open_checkpoint(tmp_path / "t.safetensors")


def test_hub_id_offline_not_cached_is_a_clear_error() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(GGError, match="local cache"):
        open_checkpoint("nobody-here/not-a-model")


def test_writer_is_atomic_loads_back_exactly_and_carries_support_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ts = _tensors()
    save_file(ts, src / "model.safetensors")
    (src / "config.json").write_text("{}")
    (src / "tokenizer.json").write_text("{}")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text("{}")
    out = tmp_path / "out"
    with CheckpointWriter(out, inputs=[src]) as w:
        for name, t in ts.items():
            w.add_tensor(name, t)
        w.metadata = {"k": "v"}
        w.copy_support_files(src)
        assert not out.exists()  # nothing visible until commit
    back = load_file(out / "model.safetensors")
    assert set(back) == set(ts)
    for k in ts:
        assert torch.equal(back[k].reshape(-1).view(torch.uint8), ts[k].reshape(-1).view(torch.uint8))
    assert (out / "tokenizer.json").exists() and (out / "1_Pooling" / "config.json").exists()
    assert open_checkpoint(out).metadata == {"k": "v"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folders cleaned


def test_writer_refuses_existing_and_inputs_and_cleans_up_on_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    save_file({"w": torch.ones(2)}, src / "model.safetensors")
    before = (src / "model.safetensors").read_bytes()
    with pytest.raises(GGError, match="input"):
        CheckpointWriter(src, inputs=[src], force=True)
    with pytest.raises(GGError, match="input"):
        CheckpointWriter(src / "sub", inputs=[src])
    (tmp_path / "exists").mkdir()
    with pytest.raises(GGError, match="--force"):
        CheckpointWriter(tmp_path / "exists", inputs=[src])
    with pytest.raises(RuntimeError):
        with CheckpointWriter(tmp_path / "new", inputs=[src]) as w:
            w.add_tensor("w", torch.ones(3))
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (src / "model.safetensors").read_bytes() == before
    with CheckpointWriter(tmp_path / "exists", inputs=[src], force=True) as w:
        w.add_tensor("w", torch.zeros(1))
    assert torch.equal(load_file(tmp_path / "exists" / "model.safetensors")["w"], torch.zeros(1))


def test_writer_shards_and_index_load_back(tmp_path: Path) -> None:
    ts = {f"l{i}.weight": torch.full((256,), float(i)) for i in range(5)}
    with CheckpointWriter(tmp_path / "out", max_shard_bytes=2000) as w:
        for k, v in ts.items():
            w.add_tensor(k, v)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    ck = open_checkpoint(tmp_path / "out")
    assert [t.name for t in ck.tensors] == list(ts)
    for info, t in ck.iter_tensors():
        assert torch.equal(t, ts[info.name])


def test_atomic_write_bytes(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.json", b"1")
    with pytest.raises(GGError, match="--force"):
        atomic_write_bytes(tmp_path / "a.json", b"2")
    atomic_write_bytes(tmp_path / "a.json", b"2", force=True)
    assert (tmp_path / "a.json").read_bytes() == b"2"


def test_outputs_get_umask_permissions_not_private_temp_ones(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with CheckpointWriter(tmp_path / "out") as w:
            w.add_tensor("w", torch.ones(1))
        atomic_write_bytes(tmp_path / "r.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
