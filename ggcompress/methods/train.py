"""Shared training engine: text data, the AdamW loop, DDP, checkpoints and exact resume.

Why one engine: BackSlash, DeepShape's recovery fine-tune and GG-init experiments all train a causal LM
on text with the same loop; they differ only by a loss term added to the objective and a transform
applied after each optimizer step. Those enter through `Hook` objects, so the loop, the data order,
the checkpoint format and the distributed plumbing live here once.

Data (`load_data`): .txt files (one document each), .jsonl files (one document per record, its "text"
field), folders of them (recursively, sorted), or a Hugging Face dataset name (through ``datasets``;
refused with a clear error when offline). Documents are tokenized, joined with the EOS token, packed
into fixed-length blocks and split: a given validation file, else the last `validation_fraction` of
the blocks (a contiguous tail, so no validation block overlaps a training block).

Order: the training stream is an endless concatenation of seeded permutations of the blocks (epoch e
uses seed·1_000_003 + e), and optimizer step t consumes stream positions [t·G, (t+1)·G) with the
global batch G = batch_size · grad_accum · world_size. Micro-batch a of rank r takes positions
t·G + (a·world + r)·batch_size ..., so the samples of a step do not depend on how they are split over
processes and accumulation, and the data position is one integer (the step).

Loss: HF's mean token loss of each micro-batch, divided by grad_accum; DDP averages over ranks, so
every step's gradient is the mean over the G blocks (all blocks have the same token count), whatever
the world size. A hook's loss term is added once per step (to the last micro-batch, not divided).

Distributed: `distributed()` initializes torch.distributed from torchrun's environment (gloo on CPU,
nccl on GPU). `config.shard` picks how the model is spread (`ggcompress.methods.distributed`):
"ddp" wraps it in DistributedDataParallel (a replica per rank; accumulation uses no_sync), "fsdp"
shards it with FSDP2 per transformer block (parameters, gradients and AdamW state divided over the
ranks; the model stays sharded after train() returns). Validation is split over ranks and all-reduced.

Checkpoints (`work_dir/checkpoints/step-NNNNNN/`): model and optimizer state as a
torch.distributed.checkpoint folder (`dcp/`, every rank writes its shards), torch RNG states,
scheduler, step, hooks' state and history (`state.json`, written last), built in a temporary folder
and renamed, keeping the last `keep_checkpoints`. `resume=True` restores all of it, on any world size
and either sharding as long as the global batch is the same, so a resumed run computes the same
numbers as an uninterrupted one (bit for bit on CPU with the same thread count and world size). A
finished run leaves `work_dir/final/` (weights streamed by rank 0 + result), so resuming a finished
phase returns at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ggcompress.errors import GGError

#: Files the data loader reads inside folders.
TEXT_SUFFIXES = (".txt", ".jsonl")
#: Seed multiplier separating the per-epoch permutations.
_EPOCH_SEED = 1_000_003
#: Config fields a resumed run may change without changing the computation.
_RESUME_FREE = {"log_every", "save_every", "keep_checkpoints", "eval_every", "eval_blocks",
                # how the global batch is split and where the state lives may change (the key holds
                # the global batch): a run saved by 2 ranks resumes on 1 or 4.
                "batch_size", "grad_accum", "shard", "cpu_offload"}


# ---------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that shapes a training run (the model and data are passed separately).

    `batch_size` is sequences per micro-batch per process; the global batch of one optimizer step is
    batch_size · grad_accum · world_size. `warmup_steps=None` means 5% of `steps`.
    """

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 4
    grad_accum: int = 1
    block_size: int = 256
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: validation perplexity only when the caller asks (before/after)
    eval_blocks: int = 64  # validation blocks used by each perplexity (0: all)
    save_every: int = 100  # 0: no intermediate checkpoints
    keep_checkpoints: int = 1
    device: str = "auto"
    shard: str = "ddp"  # "ddp" (replicas) or "fsdp" (FSDP2, needs torchrun); see methods/distributed.py
    cpu_offload: bool = False  # FSDP: keep shards + optimizer state in host memory
    grad_bits: float = 0.0  # DDP: > 0 sends gradients GG-grid quantized + entropy coded (gradcodec.py)
    grad_error_feedback: bool = True  # with grad_bits: carry each rank's quantization error to the next step

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        checks = [
            (self.steps >= 0, "steps must be >= 0"),
            (self.lr >= 0 and math.isfinite(self.lr), "lr must be a finite number >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.block_size >= 2, "block_size must be >= 2"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise GGError(f"training config: {msg}")
        from ggcompress.methods.distributed import check_shard_options

        check_shard_options(self.shard, self.cpu_offload)
        if not (0 <= self.grad_bits <= 16):
            raise GGError(f"training config: grad bits must be in [0, 16], got {self.grad_bits}")
        if self.grad_bits and self.shard != "ddp":
            raise GGError("training config: --grad-bits compresses DDP's gradient all-reduce: "
                          "use --shard ddp")

    @property
    def warmup(self) -> int:
        return int(0.05 * self.steps) if self.warmup_steps is None else self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps (step 0 already trains), then cosine down to min_ratio."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TextData:
    """Packed token blocks: train (n_train, T) and validation (n_val, T), int64."""

    train: torch.Tensor
    validation: torch.Tensor
    source: str
    tokens: int  # tokens in the corpus before packing (train + validation sources)

    @property
    def block_size(self) -> int:
        return int(self.train.shape[1])

    def summary(self) -> dict[str, Any]:
        """The `data` section of the backslash / deepshape reports."""
        return {"source": self.source, "tokens": self.tokens, "block_size": self.block_size,
                "train_blocks": len(self.train), "validation_blocks": len(self.validation)}


def read_documents(spec: str | os.PathLike[str]) -> list[str]:
    """Documents of a .txt / .jsonl file, a folder of them, or an HF dataset name ("text" column)."""
    s = str(spec)
    path = Path(s).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise GGError(f"{s}: folder holds no .txt or .jsonl files")
        return [doc for f in files for doc in _read_file(f)]
    if path.is_file():
        return _read_file(path)
    if _looks_like_dataset(s):
        return _read_hf_dataset(s)
    raise GGError(f"{s}: no such file or folder")


def _read_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise GGError(f"{path}: unsupported data file (expected .txt, .jsonl or a folder of them)")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GGError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise GGError(f"{path}: cannot read ({e.strerror})") from None
    if suffix == ".txt":
        return [raw] if raw.strip() else []
    docs = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GGError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise GGError(f"{path}:{i}: each JSONL record needs a string \"text\" field")
        if rec["text"].strip():
            docs.append(rec["text"])
    return docs


_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def _looks_like_dataset(spec: str) -> bool:
    """A name like `wikitext:wikitext-2-raw-v1` or `owner/name` (not a path with a data suffix)."""
    return bool(_DATASET.match(spec)) and not spec.lower().endswith(TEXT_SUFFIXES + (".json",))


def _read_hf_dataset(spec: str) -> list[str]:
    name, _, subset = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise GGError(f"{spec}: no such file or folder (and the datasets package is not installed)") from None
    try:
        ds = datasets.load_dataset(name, subset or None, split="train")
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        raise GGError(f"{spec}: no such file or folder, and not a loadable Hugging Face dataset "
                      f"({_first_line(e)})") from None
    if "text" not in ds.column_names:
        raise GGError(f"{spec}: the dataset has no \"text\" column (columns: {', '.join(ds.column_names)})")
    return [t for t in ds["text"] if isinstance(t, str) and t.strip()]


def tokenize(documents: Sequence[str], tokenizer: Any) -> torch.Tensor:
    """One int64 token stream: documents joined by the EOS token (when the tokenizer has one).

    Each document is cut at blank lines (the separator stays with the piece before it) so no single
    tokenizer call sees a huge string; BPE merges never span a blank line in practice.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    pieces: list[str] = []
    ends: list[int] = []
    for doc in documents:
        parts = re.split(r"(?<=\n\n)", doc)
        pieces.extend(p for p in parts if p)
        ends.append(len(pieces))
    if not pieces:
        return torch.empty(0, dtype=torch.int64)
    ids = tokenizer(pieces, add_special_tokens=False, verbose=False)["input_ids"]
    stream: list[int] = []
    start = 0
    for end in ends:
        for p in ids[start:end]:
            stream.extend(p)
        if eos is not None:
            stream.append(int(eos))
        start = end
    return torch.tensor(stream, dtype=torch.int64)


def pack(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a token stream into (n, block_size) blocks, dropping the incomplete tail."""
    n = stream.numel() // block_size
    return stream[: n * block_size].view(n, block_size).clone()


def load_data(
    data: str | os.PathLike[str],
    tokenizer: Any,
    block_size: int,
    *,
    validation: str | os.PathLike[str] | None = None,
    validation_fraction: float = 0.05,
) -> TextData:
    """Read, tokenize, pack and split a corpus (see the module doc for the formats and the split)."""
    if not 0 < validation_fraction < 1:
        raise GGError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    stream = tokenize(read_documents(data), tokenizer)
    if stream.numel() == 0:
        raise GGError(f"{data}: empty corpus (no text to train on)")
    blocks = pack(stream, block_size)
    tokens = stream.numel()
    if validation is not None:
        vstream = tokenize(read_documents(validation), tokenizer)
        val = pack(vstream, block_size)
        tokens += vstream.numel()
        if len(val) == 0:
            raise GGError(f"{validation}: fewer than {block_size} tokens, not one validation block")
        if len(blocks) == 0:
            raise GGError(f"{data}: only {stream.numel()} tokens, not one block of {block_size}")
        train = blocks
    else:
        if len(blocks) < 2:
            raise GGError(f"{data}: only {stream.numel()} tokens; need at least two blocks of {block_size} "
                          "(one to train, one to validate): add text or lower the block size")
        n_val = min(len(blocks) - 1, max(1, round(validation_fraction * len(blocks))))
        train, val = blocks[: len(blocks) - n_val], blocks[len(blocks) - n_val:]
    return TextData(train=train.contiguous(), validation=val.contiguous(), source=str(data), tokens=tokens)


class BatchStream:
    """Which training blocks each micro-batch of each rank uses (module doc: "Order")."""

    def __init__(self, n: int, seed: int, batch_size: int, grad_accum: int, world: int, rank: int):
        self.n, self.seed = n, seed
        self.batch_size, self.grad_accum, self.world, self.rank = batch_size, grad_accum, world, rank
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * _EPOCH_SEED + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # one epoch cached at a time
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> torch.Tensor:
        """Block indices of micro-batch `micro` of optimizer step `step` on this rank."""
        start = step * self.global_batch + (micro * self.world + self.rank) * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        out = torch.empty(self.batch_size, dtype=torch.int64)
        for epoch in pos.div(self.n, rounding_mode="floor").unique().tolist():
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perm(epoch)[pos[sel] % self.n]
        return out


# ---------------------------------------------------------------------------------------------- model


def load_causal_lm(spec: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, Any, str]:
    """(model in fp32 on `device`, tokenizer, local source) of an HF causal-LM folder or hub id."""
    from ggcompress.io.loading import load_model

    loaded = load_model(spec, device=device, dtype="float32")
    if getattr(loaded.tokenizer, "eos_token_id", None) is None:
        raise GGError(f"{spec}: its tokenizer has no EOS token to separate documents")
    # Loading in float32 rewrites config.dtype to float32: keep what the files hold for save_dtype auto.
    loaded.model.ggcompress_stored_dtype = stored_dtype(loaded.source)
    return loaded.model, loaded.tokenizer, loaded.source


def stored_dtype(source: str | os.PathLike[str]) -> torch.dtype | None:
    """The floating dtype holding most parameters in a checkpoint's files (read from headers only);
    None when the files cannot tell (a .gguf, a .ggz)."""
    from collections import Counter

    from ggcompress.io.checkpoint import DTYPES, FLOAT_DTYPES, open_checkpoint

    try:
        ck = open_checkpoint(source)
    except GGError:
        return None
    counts: Counter[str] = Counter()
    for t in ck.tensors:
        if t.dtype in FLOAT_DTYPES:
            counts[t.dtype] += t.numel
    if not counts:
        return None
    dtype = DTYPES.get(counts.most_common(1)[0][0])
    return dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else None


def fit_block_size(model: Any, config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """(config with block_size clamped to the model's context, note saying so or None).

    A block longer than the position table crashes GPT-2/OPT-style models (IndexError) and runs a rotary
    model past its context; see ggcompress.io.context.
    """
    from ggcompress.io.context import clamp, model_context

    size, note = clamp(config.block_size, model_context(model), "block size")
    if note is None:
        return config, None
    return TrainConfig(**{**config.to_dict(), "block_size": size}), note


def _check_context(model: Any, data: TextData) -> None:
    """Refuse blocks the model cannot read (a clear line instead of an IndexError mid-run)."""
    from ggcompress.io.context import model_context

    context = model_context(model)
    if context.tokens is not None and data.block_size > context.tokens:
        raise GGError(f"blocks of {data.block_size} tokens are longer than the model's context "
                      f"({context.tokens} tokens, config {context.source}): load the data with a block size "
                      f"<= {context.tokens} (fit_block_size does it)")


def source_dtype(model: Any) -> torch.dtype:
    """The dtype the checkpoint was stored in (its files, else config.dtype / torch_dtype), else float32."""
    stored = getattr(model, "ggcompress_stored_dtype", None)
    if isinstance(stored, torch.dtype):
        return stored
    cfg = model.config
    d = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(d, str):
        d = getattr(torch, d, None)
    return d if isinstance(d, torch.dtype) and d.is_floating_point else torch.float32


def round_trip_(model: Any, dtype: torch.dtype) -> None:
    """Round every floating parameter through `dtype` in place, so measurements describe what is saved."""
    from ggcompress.methods.distributed import local

    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                w = local(p)  # elementwise: an FSDP shard is rounded where it lives
                w.copy_(w.to(dtype).to(w.dtype))


def save_hf_model(model: Any, tokenizer: Any, folder: Path, dtype: torch.dtype) -> None:
    """Write `model` (cast to `dtype`) and its tokenizer as an ordinary HF folder (non-atomic)."""
    import copy

    out = copy.deepcopy(model).to(dtype) if _param_dtype(model) != dtype else model
    out.config.use_cache = True
    out.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # transformers writes the weights through a private (0600) temp file: give them the umask's mode
    from ggcompress.io.checkpoint import _umask

    mode = 0o666 & ~_umask()
    for f in Path(folder).iterdir():
        if f.is_file():
            os.chmod(f, mode)


def _param_dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


# ---------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank / world size, and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(pref: str, local_rank: int) -> str:
    if pref == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        return f"cuda:{local_rank}"
    return pref


def dist_info(device: str = "auto") -> DistInfo:
    """This process's rank, world size and device (world 1 unless torch.distributed is initialized)."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve_device(device, local)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend())
    return DistInfo(device=dev)


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistInfo]:
    """Initialize torch.distributed when launched by torchrun (WORLD_SIZE > 1), tear it down after.

    gloo on CPU, nccl on CUDA. A plain `python` launch yields world size 1 and touches nothing.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    owned = False
    if world > 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = _resolve_device(device, local)
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            torch.cuda.set_device(dev)
        try:
            dist.init_process_group(backend=backend)
        except Exception as e:
            raise GGError(f"torch.distributed: cannot initialize the {backend} process group "
                          f"({_first_line(e)})") from None
        owned = True
    try:
        yield dist_info(device)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ---------------------------------------------------------------------------------------------- hooks


class Hook:
    """A caller's addition to the loop. All methods are optional; `model` is the unwrapped module.

    Order within one optimizer step: before_step → forward/backward (loss_term added to the last
    micro-batch) → optimizer.step → after_step. metrics() is called at logging steps only, so it may
    be costly; state_dict() goes into checkpoints so a resumed run continues the hook exactly.
    """

    def on_wrap(self, model: Any) -> None:
        """Called once after the model was sharded (FSDP replaces its parameters with DTensor shards:
        a hook holding parameters fetches them again here)."""

    def before_step(self, model: Any, step: int) -> None:
        """Called before the forward passes of `step`."""

    def loss_term(self, model: Any, step: int) -> torch.Tensor | None:
        """A scalar added to the training loss of `step` (None: nothing)."""
        return None

    def after_step(self, model: Any, step: int) -> None:
        """Called after optimizer.step() of `step` (e.g. a decoupled shrink of the weights)."""

    def metrics(self, model: Any, step: int) -> dict[str, float]:
        """Numbers for the progress display and the history."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned (JSON round trip)."""


# ---------------------------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a finished run reports. history holds one record per `log_every` steps."""

    steps: int
    global_batch: int
    tokens_seen: int
    final_loss: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    sharding: dict[str, Any] = field(default_factory=dict)  # how the model was spread (ShardInfo)
    rank_bytes: dict[str, int] = field(default_factory=dict)  # rank 0's params/grads/optimizer bytes
    comm: dict[str, Any] = field(default_factory=dict)  # gradient codec bytes per step (grad_bits > 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: progress(event): {"event": "step"|"eval"|"checkpoint"|"resume", "step": int, "total": int, ...}
Progress = Callable[[dict[str, Any]], None]


def perplexity(
    model: Any,
    blocks: torch.Tensor,
    *,
    batch_size: int = 8,
    max_blocks: int = 0,
    bf16: bool = False,
    device: str | None = None,
) -> dict[str, float]:
    """Mean next-token loss and perplexity over the first `max_blocks` blocks (0: all).

    Sums in float64; under torch.distributed each rank takes every world-th block and the sums are
    all-reduced, so every rank returns the same numbers.
    """
    from ggcompress.methods.distributed import compute_device, is_fsdp

    info = dist_info()
    dev = device or compute_device(model)
    sel = blocks if max_blocks <= 0 else blocks[:max_blocks]
    mine = sel[info.rank :: info.world]
    # FSDP all-gathers each block's weights inside forward: every rank must run as many forwards as
    # the busiest one (a rank out of blocks runs a discarded one), or the collectives would hang.
    n_calls = math.ceil(math.ceil(len(sel) / info.world) / batch_size)
    if not is_fsdp(model):
        n_calls = math.ceil(len(mine) / batch_size)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=dev)
    with torch.no_grad(), _autocast(dev, bf16 and not is_fsdp(model)):
        for c in range(n_calls):
            batch = mine[c * batch_size : (c + 1) * batch_size].to(dev)
            if len(batch) == 0:
                model(input_ids=sel[:1].to(dev))
                continue
            logits = model(input_ids=batch).logits.float()  # (B, T, V)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total[0] += nll.double()
            total[1] += batch[:, 1:].numel()
    model.train(was_training)
    if is_fsdp(model):
        from ggcompress.methods.distributed import reshard

        reshard(model)
    total = _all_reduce_sum(total)
    loss = float(total[0] / total[1]) if total[1] > 0 else math.nan
    return {"loss": loss, "ppl": math.exp(loss) if math.isfinite(loss) else math.nan,
            "tokens": int(total[1])}


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------- checkpoints


def _ckpt_dir(work_dir: Path) -> Path:
    return work_dir / "checkpoints"


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under work_dir/checkpoints, if any."""
    root = _ckpt_dir(work_dir)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _save_checkpoint(work_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict,
                     keep: int) -> Path:
    """Collective: every rank writes its shards (DCP) into one temporary folder, rank 0 the rest."""
    from ggcompress.methods.distributed import save_state

    info = dist_info()
    root = _ckpt_dir(work_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"  # one name shared by the ranks
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    save_state(tmp / "dcp", model, optimizer)
    barrier()
    if info.is_main:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        state = {**state, "scheduler": scheduler.state_dict(), "saved_world": info.world}
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")  # written last: marks it complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        kept = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
        for old in kept[: max(len(kept) - keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Collective: every rank reads the slices of the DCP state it owns (any saved world size)."""
    from ggcompress.methods.distributed import load_state

    if not (path / "dcp").is_dir():
        raise GGError(f"{path}: training checkpoint in an older layout (no dcp/ folder): "
                      "start over with --force")
    try:
        state = json.loads((path / "state.json").read_text())
        load_state(path / "dcp", model, optimizer)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    except GGError:
        raise
    except Exception as e:
        raise GGError(f"{path}: cannot read the training checkpoint ({_first_line(e)})") from None
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _check_resume_config(path: Path, saved: dict, current: dict) -> None:
    for key, value in current.items():
        if key in _RESUME_FREE:
            continue
        if saved.get(key) != value:
            raise GGError(f"{path}: cannot resume: {key} was {saved.get(key)!r} in the interrupted run, "
                          f"now {value!r} (use the same settings, or --force to start over)")


# ---------------------------------------------------------------------------------------------- the loop


def build_optimizer(model: Any, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (decay on >= 2-D weights only) and the warmup + cosine schedule, on the model's current
    parameters (after FSDP sharding: the shards)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.adam_betas, eps=config.adam_eps)
    warmup = config.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.steps, warmup, config.min_lr_ratio))
    return optimizer, scheduler


def train(
    model: Any,
    data: TextData,
    config: TrainConfig,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    hooks: Sequence[Hook] = (),
    resume: bool = False,
    progress: Progress | None = None,
    run_key: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` in place on `data` for config.steps optimizer steps; returns the run's result.

    `model` is an HF causal LM on the device it should train on (fp32 master weights; `config.bf16`
    autocasts the forward). With `work_dir`, checkpoints go to work_dir/checkpoints every
    `save_every` steps and the finished weights to work_dir/final; `resume=True` continues from the
    newest checkpoint (or returns the finished result). `run_key` holds extra settings (the caller's)
    a resume must match. Under torch.distributed the model is wrapped in DDP here, or sharded in place
    with FSDP2 (config.shard="fsdp"; it stays sharded when train() returns, also for a finished run).
    """
    from ggcompress.methods import distributed as dd

    info = dist_info(config.device)
    notify = progress or (lambda event: None)
    _check_context(model, data)
    wd = Path(work_dir) if work_dir is not None else None
    global_batch = config.batch_size * config.grad_accum * info.world
    key = {**config.to_dict(), **(run_key or {}), "global_batch": global_batch,
           "data_blocks": [len(data.train), len(data.validation), data.block_size]}
    fsdp = config.shard == "fsdp"
    dd.check_launch(config.shard, config.grad_bits, info.world)
    shard_info = dd.ShardInfo("none" if info.world == 1 else "ddp")
    if wd is not None and resume:
        finished = _load_finished(wd, model, key)
        if finished is not None:
            if fsdp and not dd.is_fsdp(model):
                dd.fsdp_wrap(model, info.device, cpu_offload=config.cpu_offload, bf16=config.bf16)
            notify({"event": "finished", "step": finished.steps, "total": config.steps})
            return finished

    model.config.use_cache = False
    model.train()
    if fsdp:
        if not dd.is_fsdp(model):
            shard_info = dd.fsdp_wrap(model, info.device, cpu_offload=config.cpu_offload, bf16=config.bf16)
        else:
            shard_info = dd.ShardInfo("fsdp", len(dd.transformer_blocks(model)), config.cpu_offload,
                                      config.bf16)
        for h in hooks:
            h.on_wrap(model)
    optimizer, scheduler = build_optimizer(model, config)
    stream = BatchStream(len(data.train), config.seed, config.batch_size, config.grad_accum, info.world,
                         info.rank)
    torch.manual_seed(config.seed)

    start, history, evals, resumed_from = 0, [], [], None
    window: list[float] = []  # losses of the steps since the last history record
    ckpt = latest_checkpoint(wd) if (wd is not None and resume) else None
    if ckpt is not None:
        saved = json.loads((ckpt / "state.json").read_text())
        _check_resume_config(ckpt, saved["config"], key)  # before reading gigabytes of state
        state = _load_checkpoint(ckpt, model, optimizer, scheduler)
        start, history, evals = state["step"], state["history"], state["evals"]
        window = state.get("window", [])
        for hook, hs in zip(hooks, state["hooks"], strict=True):
            hook.load_state_dict(hs)
        resumed_from = start
        notify({"event": "resume", "step": start, "total": config.steps, "checkpoint": str(ckpt)})

    ddp = None
    if info.world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = info.device.startswith("cuda")
        ddp = DistributedDataParallel(model, device_ids=[info.device] if on_gpu else None)
    codec = None
    if ddp is not None and config.grad_bits:
        from ggcompress.methods.gradcodec import register

        codec = register(ddp, config.grad_bits, error_feedback=config.grad_error_feedback)
    runner = ddp if ddp is not None else model

    t0 = time.perf_counter()
    last_loss: float | None = None
    held: dict[str, int] = {}
    for step in range(start, config.steps):
        for h in hooks:
            h.before_step(model, step)
        step_loss = torch.zeros((), dtype=torch.float64, device=info.device)
        extra_value = 0.0
        for micro in range(config.grad_accum):
            batch = data.train[stream.indices(step, micro)].to(info.device)  # (B, T)
            last = micro == config.grad_accum - 1
            sync = contextlib.nullcontext() if (ddp is None or last) else ddp.no_sync()
            if fsdp:
                dd.set_gradient_sync(model, last)
            with sync:
                with _autocast(info.device, config.bf16 and not fsdp):  # FSDP: its MixedPrecisionPolicy
                    loss = runner(input_ids=batch, labels=batch).loss.float()
                step_loss += loss.detach().double()
                total = loss / config.grad_accum
                if last:
                    for h in hooks:
                        term = h.loss_term(model, step)
                        if term is not None:
                            total = total + term.to(total.device)  # FSDP CPU offload: a CPU term
                            extra_value += float(term.detach())
                total.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        lr_now = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        if step == start:  # gradients and AdamW moments exist now: what this rank holds
            held = dd.rank_bytes(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        for h in hooks:
            h.after_step(model, step)

        step_loss = _all_reduce_sum(step_loss) / (config.grad_accum * info.world)
        last_loss = float(step_loss)
        window.append(last_loss)
        done = step + 1
        event: dict[str, Any] = {"event": "step", "step": done, "total": config.steps, "loss": last_loss,
                                 "ppl": _exp(last_loss), "lr": lr_now}
        if extra_value:
            event["loss_term"] = extra_value
        if done % config.log_every == 0 or done == config.steps:
            rec = {"step": done, "loss": sum(window) / len(window), "lr": lr_now}
            rec["ppl"] = _exp(rec["loss"])
            for h in hooks:
                rec.update(h.metrics(model, step))
            history.append(rec)
            event.update({k: v for k, v in rec.items() if k not in ("step", "loss", "ppl", "lr")})
            window = []
        notify(event)
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            ev = {"step": done, **perplexity(model, data.validation, batch_size=config.batch_size,
                                             max_blocks=config.eval_blocks, bf16=config.bf16)}
            evals.append(ev)
            notify({"event": "eval", "total": config.steps, **ev})
        if wd is not None and config.save_every and done % config.save_every == 0 and done < config.steps:
            path = _save_checkpoint(wd, done, model, optimizer, scheduler,
                                    {"step": done, "config": key, "history": history, "evals": evals,
                                     "window": window, "hooks": [h.state_dict() for h in hooks]},
                                    config.keep_checkpoints)
            notify({"event": "checkpoint", "step": done, "total": config.steps, "path": str(path)})

    result = TrainResult(
        steps=config.steps, global_batch=stream.global_batch,
        tokens_seen=config.steps * stream.global_batch * data.block_size, final_loss=last_loss,
        seconds=time.perf_counter() - t0, history=history, evals=evals, resumed_from=resumed_from,
        sharding=shard_info.to_dict(), rank_bytes=held,
        comm=codec.summary(config.steps - start, info.world) if codec is not None else {})
    if ddp is not None:
        del ddp
    model.eval()
    if wd is not None:
        _save_finished(wd, model, key, result)
        barrier()
    return result


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def _save_finished(wd: Path, model: Any, key: dict, result: TrainResult) -> None:
    """Collective: the full fp32 weights streamed by rank 0 into work_dir/final, then the result."""
    from ggcompress.io.checkpoint import CheckpointWriter
    from ggcompress.methods.distributed import full_tensors

    info = dist_info()
    if not info.is_main:
        for _ in full_tensors(model):
            pass
        return
    with CheckpointWriter(wd / "final", force=True) as writer:
        for name, t in full_tensors(model):
            writer.add_tensor(name, t)
        writer.write_json("result.json", {"config": key, "result": result.to_dict()})
    shutil.rmtree(_ckpt_dir(wd), ignore_errors=True)


def _load_finished(wd: Path, model: Any, key: dict) -> TrainResult | None:
    from safetensors.torch import load_file

    from ggcompress.methods.distributed import export_names, is_fsdp

    path = wd / "final"
    if not (path / "result.json").is_file():
        return None
    saved = json.loads((path / "result.json").read_text())
    _check_resume_config(path, saved["config"], key)
    loaded: set[str] = set()
    for f in sorted(path.glob("*.safetensors")):
        sd = load_file(f)
        if is_fsdp(model):  # each rank keeps its slices of the full tensors
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            model.load_state_dict(sd, strict=False)
        loaded |= set(sd)
    missing = set(export_names(model)) - loaded
    if missing:
        raise GGError(f"{path}: the finished weights lack {len(missing)} tensors of the model "
                      f"(e.g. {sorted(missing)[0]}): start over with --force")
    model.eval()
    names = {f.name for f in fields(TrainResult)}
    return TrainResult(**{k: v for k, v in saved["result"].items() if k in names})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
