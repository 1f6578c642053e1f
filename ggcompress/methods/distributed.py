"""Sharded training on PyTorch's own stack: FSDP2 wrapping, shard-local statistics, DCP checkpoints,
streamed full-weight export, and per-rank memory accounting.

Why a module of its own: the training loop (`methods/train.py`) only asks three questions — wrap the
model how, save/load the training state where, write the final weights how — and BackSlash/DeepShape
only need "sum this over every weight, wherever it lives". Answering them here keeps train.py's loop
the same for one process, DDP and FSDP.

- `shard="ddp"` (default): DistributedDataParallel, a full replica per rank (as before).
- `shard="fsdp"`: `torch.distributed.fsdp.fully_shard` on every transformer block, then on the root
  (the embeddings, final norm and a tied head sit in the root group). Parameters become DTensors
  sharded on dim 0; each rank holds 1/world of the weights, gradients and AdamW moments.
  `bf16=True` becomes FSDP's MixedPrecisionPolicy (bf16 parameters for compute, fp32 gradient
  reduction, fp32 master weights), `cpu_offload=True` keeps the shards and optimizer state in host
  memory (CPUOffloadPolicy; pinned only when CUDA is there).
- Statistics over weights (`local`, `sum_over_ranks`, `gather_histograms`): on sharded parameters
  every rank reduces its local shard and a few numbers are all-reduced; full weights are never
  gathered. On replicated (DDP / single-process) parameters nothing is reduced.
- Checkpoints (`save_state` / `load_state`): `torch.distributed.checkpoint` of the model and optimizer
  state dicts (`get_state_dict`, FQN keys), so a checkpoint written by N ranks loads on M ranks,
  sharded or not: DCP reads for each rank exactly the slices it owns.
- Export (`full_tensors`, `export_hf`): one full tensor at a time is all-gathered and rank 0 streams it
  into a `CheckpointWriter`; peak extra memory is the largest single tensor.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ggcompress.errors import GGError
from ggcompress.names import SHARDS

# ---------------------------------------------------------------------------------------------- tensors


def is_sharded(t: Any) -> bool:
    """True for a DTensor (an FSDP2 parameter or gradient)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `t`: the local shard of a DTensor (differentiable), else `t` itself."""
    return t.to_local() if is_sharded(t) else t


def _dist_on() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(values: torch.Tensor, sharded: bool) -> torch.Tensor:
    """All-reduce (sum) `values` in place when the statistics came from shards; else unchanged."""
    import torch.distributed as dist

    if sharded and _dist_on():
        if dist.get_backend() == "nccl" and values.device.type != "cuda":  # NCCL reduces GPU tensors only
            t = values.to(torch.cuda.current_device())
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            values.copy_(t)
        else:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_histograms(hists: list[Any], sharded: bool) -> list[Any]:
    """Merge per-rank SymbolHistograms (one list entry per tensor) into the global ones, in place.

    The histograms are sparse (distinct symbols + counts, a few thousand entries), so exchanging them
    costs kilobytes where gathering the weights would cost the model.
    """
    import torch.distributed as dist

    if not (sharded and _dist_on()):
        return hists
    mine = [(h.symbols, h.counts, h.n, h.source_bits) for h in hists]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    rank = dist.get_rank()
    for r, theirs in enumerate(every):
        if r == rank:
            continue
        for h, (sym, cnt, n, bits) in zip(hists, theirs, strict=True):
            h._add(sym, cnt)
            h.n += n
            h.source_bits += bits
    return hists


# ---------------------------------------------------------------------------------------------- wrapping


@dataclass(frozen=True)
class ShardInfo:
    """How train() wrapped the model (reported in the training result)."""

    kind: str  # "none" (one process), "ddp" or "fsdp"
    blocks: int = 0  # FSDP units below the root
    cpu_offload: bool = False
    mixed_precision: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformer: the largest nn.ModuleList whose children share one class
    (model.layers of Llama/Mistral/Qwen, transformer.h of GPT-2, gpt_neox.layers, decoder.layers...)."""
    best: list[torch.nn.Module] = []
    best_n = -1
    for mod in model.modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(c) for c in mod}) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        if n > best_n:
            best, best_n = list(mod), n
    return best


def fsdp_wrap(model: torch.nn.Module, device: str, *, cpu_offload: bool = False, bf16: bool = False
              ) -> ShardInfo:
    """Shard `model` in place with FSDP2: each transformer block is one unit, the root holds the rest."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if not _dist_on():
        raise GGError("--shard fsdp needs several processes: launch with torchrun --nproc-per-node N")
    blocks = transformer_blocks(model)
    if not blocks:
        raise GGError(f"{type(model).__name__}: no repeated transformer blocks found to shard with FSDP")
    mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
    kw: dict[str, Any] = {"mesh": mesh}
    if bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for block in blocks:
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    model._ggc_compute_device = device  # with CPU offload the parameters say "cpu"; compute is here
    return ShardInfo("fsdp", len(blocks), cpu_offload, bf16)


def load_sharded(spec: str, device: str, *, cpu_offload: bool = False, bf16: bool = False
                 ) -> tuple[Any, Any, str]:
    """(FSDP-sharded fp32 model, tokenizer, source) with one full copy of the weights per job: rank 0
    reads the checkpoint into host memory, the other ranks build the architecture on the meta device
    (no memory), everyone shards, and rank 0's tensors are broadcast one at a time, each rank keeping
    its slice (`set_model_state_dict(broadcast_from_rank0=True)`); buffers (rotary tables...) are
    broadcast too. Folders other than plain HF ones (GGUF, .ggz, quantized) and CPU-offloaded runs load
    fully on every rank."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from ggcompress.io.loading import _load_tokenizer, detect_kind
    from ggcompress.methods.train import load_causal_lm

    rank = dist.get_rank()
    model = tokenizer = full = None
    msg: list[Any] = [None, None]  # [source, error]
    if rank == 0:
        try:
            model, tokenizer, source = load_causal_lm(spec, "cpu")
            msg = [source, None]
        except GGError as e:
            msg = [None, str(e)]
    dist.broadcast_object_list(msg, src=0)
    if msg[1] is not None:
        raise GGError(msg[1])
    source = msg[0]
    # CPU offload keeps parameters in host memory but buffers on the device: the meta route would need
    # two devices in to_empty(), so offloaded runs load fully on every rank (host memory only).
    meta = rank != 0 and not cpu_offload and detect_kind(Path(source)) == "hf"
    if rank != 0:
        if meta:
            from transformers import AutoConfig, AutoModelForCausalLM

            tokenizer = _load_tokenizer(Path(source))
            with torch.device("meta"):
                config = AutoConfig.from_pretrained(source)
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            model, tokenizer, source = load_causal_lm(spec, "cpu")
    if rank == 0:
        full = dict(model.state_dict())  # the full tensors, kept until broadcast (sharding copies slices)
    fsdp_wrap(model, device, cpu_offload=cpu_offload, bf16=bf16)
    if meta:
        model.to_empty(device=device)
    set_model_state_dict(model, full if rank == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    with torch.no_grad():
        for _, b in model.named_buffers():
            dist.broadcast(b, src=0)
    model.eval()
    return model, tokenizer, source


def compute_device(model: torch.nn.Module) -> str:
    """Where the model's forward runs: the FSDP mesh's device, else its parameters' device."""
    return getattr(model, "_ggc_compute_device", None) or str(next(model.parameters()).device)


def is_fsdp(model: torch.nn.Module) -> bool:
    """True once fully_shard() was applied to `model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights an eval forward left behind (FSDP keeps the root unsharded after
    forward, expecting a backward): the module's parameters are then the shards again."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """FSDP's no_sync: skip the gradient reduce-scatter on all but the last micro-batch."""
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------- memory


def rank_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (local shards only).

    What DDP replicates and FSDP divides; activations and the transient all-gathered block are not
    counted (they depend on batch and sequence length, not on the model size).
    """
    seen: set[int] = set()
    params = grads = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        lp = local(p.detach())
        params += lp.numel() * lp.element_size()
        if p.grad is not None:
            lg = local(p.grad)
            grads += lg.numel() * lg.element_size()
    opt = 0
    if optimizer is not None:
        for st in optimizer.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    lv = local(v)
                    opt += lv.numel() * lv.element_size()
    return {"params": params, "grads": grads, "optimizer": opt, "total": params + grads + opt}


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-rank bytes of one training setup (fp32 master weights + AdamW), from the model's shapes."""

    params: int  # parameter count
    world: int
    shard: str
    weights: float
    grads: float
    optimizer: float
    gathered: float  # FSDP: one block unsharded in the compute dtype (two with prefetch)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.gathered

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def llama_param_count(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                      tied: bool = False) -> tuple[int, int]:
    """(total parameters, parameters of the largest block) of a Llama-style decoder (no biases)."""
    head_dim = hidden // heads
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate
    block = attn + mlp + 2 * hidden
    emb = vocab * hidden
    return emb * (1 if tied else 2) + layers * block + hidden, block


def memory_per_rank(params: int, block_params: int, world: int, shard: str, *, bf16_compute: bool = False
                    ) -> MemoryEstimate:
    """Steady-state bytes per rank: fp32 weights (4 B), fp32 gradients (4 B), AdamW moments (8 B) per
    parameter, replicated (ddp) or divided by `world` (fsdp; plus two gathered blocks in the compute
    dtype: the running one and the prefetched next). Activations excluded."""
    div = world if shard == "fsdp" else 1
    gathered = 2 * block_params * (2 if bf16_compute else 4) if shard == "fsdp" and world > 1 else 0
    return MemoryEstimate(params, world, shard, 4 * params / div, 4 * params / div, 8 * params / div,
                          gathered)


#: Public Llama configurations used for the docs' memory table (config.json of each model).
REFERENCE_MODELS = {
    "Llama-3.2-1B": dict(vocab=128256, hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8,
                         tied=True),
    "Llama-2-7B": dict(vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32),
    "Llama-2-70B": dict(vocab=32000, hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8),
}


def memory_table(worlds: tuple[int, ...] = (1, 8, 64)) -> list[dict[str, Any]]:
    """Per-rank GiB for REFERENCE_MODELS under DDP and FSDP at several world sizes."""
    rows = []
    for name, cfg in REFERENCE_MODELS.items():
        n, block = llama_param_count(**cfg)
        for world in worlds:
            for shard in SHARDS:
                if shard == "fsdp" and world == 1:
                    continue
                est = memory_per_rank(n, block, world, shard, bf16_compute=True)
                rows.append({"model": name, "params": n, "world": world, "shard": shard,
                             "gib_per_rank": est.total / 2**30, **est.to_dict()})
    return rows


# ---------------------------------------------------------------------------------------------- checkpoints


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns when used without a process group; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and optimizer state to `folder` (DCP format)."""
    import torch.distributed.checkpoint as dcp

    msd, osd = _state_dicts(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(folder))


def load_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a DCP training state written by any number of ranks into this rank's model/optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    msd, osd = _state_dicts(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


# ---------------------------------------------------------------------------------------------- export


def _export_entries(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters (a tied one under its first name only, as save_pretrained) and persistent buffers."""
    seen: set[int] = set()
    out: list[tuple[str, torch.Tensor]] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    non_persistent = {f"{m}.{b}" if m else b for m, mod in model.named_modules()
                      for b in getattr(mod, "_non_persistent_buffers_set", ())}
    out += [(n, b) for n, b in model.named_buffers() if n not in non_persistent]
    return out


def export_names(model: torch.nn.Module) -> list[str]:
    """The tensor names `full_tensors` yields (what a complete export holds)."""
    return [n for n, _ in _export_entries(model)]


def full_tensors(model: torch.nn.Module, dtype: torch.dtype | None = None
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full CPU tensor) of every exported tensor, one at a time (a DTensor all-gathered just
    then). Collective under FSDP: every rank must iterate it to the end, in the same order."""
    for name, t in _export_entries(model):
        t = t.detach()
        if is_sharded(t) and t.device.type != t.device_mesh.device_type:  # CPU-offloaded shard, GPU mesh
            t = t.to(t.device_mesh.device_type)
        full = t.full_tensor() if is_sharded(t) else t
        full = full.to("cpu")
        yield name, full.to(dtype) if (dtype is not None and full.is_floating_point()) else full


def stream_weights(model: torch.nn.Module, writer: Any, dtype: torch.dtype | None = None) -> None:
    """Collective: every rank gathers one full tensor at a time; rank 0 (the one holding a
    CheckpointWriter, the others pass None) appends it to the writer, so no rank ever holds the model."""
    for name, t in full_tensors(model, dtype):
        if writer is not None:
            writer.add_tensor(name, t)


def export_hf(model: torch.nn.Module, tokenizer: Any, out: Path, dtype: torch.dtype, *, is_main: bool,
              force: bool = True, inputs: tuple = ()) -> Path | None:
    """Write an ordinary HF folder (config, tokenizer, safetensors shards) to `out` (collective): rank 0
    streams the gathered tensors into a CheckpointWriter, the other ranks only take part in the gathers."""
    from ggcompress.io.checkpoint import CheckpointWriter

    if not is_main:
        stream_weights(model, None)
        return None
    with CheckpointWriter(out, force=force, inputs=inputs) as writer:
        writer.metadata = {"format": "pt"}
        stream_weights(model, writer, dtype)
        write_hf_support(model, tokenizer, writer.tmp, dtype)
    return out


def write_hf_support(model: torch.nn.Module, tokenizer: Any, folder: Path, dtype: torch.dtype) -> None:
    """config.json (dtype set, cache on), generation_config.json and the tokenizer files."""
    cfg = copy.deepcopy(model.config)
    cfg.use_cache = True
    cfg.dtype = str(dtype).removeprefix("torch.")
    cfg.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def check_launch(shard: str, grad_bits: float, world: int) -> None:
    """Refuse, before any work, settings that need several processes in a single-process launch."""
    if shard == "fsdp" and world < 2:
        raise GGError("--shard fsdp needs several processes: launch with torchrun --nproc-per-node N")
    if grad_bits and world < 2:
        raise GGError("--grad-bits compresses the gradient exchange between processes: launch with "
                      "torchrun --nproc-per-node N")


def check_shard_options(shard: str, cpu_offload: bool) -> None:
    """Refuse combinations that would silently do nothing."""
    if shard not in SHARDS:
        raise GGError(f"training config: shard must be one of {', '.join(SHARDS)}, got {shard!r}")
    if cpu_offload and shard != "fsdp":
        raise GGError("training config: --cpu-offload needs --shard fsdp")
