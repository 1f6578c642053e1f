"""k-bit code packing (k = 1..8): each row of codes as one little-endian bit stream (docs/gf.md §3).

Code ``j`` of a row occupies stream bits ``j*k .. j*k + k - 1`` (its least significant bit first), and
stream bit ``i`` is bit ``i % 8`` (LSB = 0) of the row's byte ``i // 8``. So two 4-bit codes share a
byte as ``c0 | c1 << 4``, eight 3-bit codes fill exactly 3 bytes, and a row of ``cols`` codes takes
``ceil(cols * k / 8)`` bytes, its unused high bits zero. Rows never share a byte, so a row (an output
feature) can be unpacked on its own.

Implementation: 8 codes always make exactly k bytes, so groups of 8 are packed through one int64 word.
"""

from __future__ import annotations

import torch

from ggcompress.errors import GGError

_CHUNK = 1 << 20  # codes per row chunk


def packed_cols(cols: int, bits: int) -> int:
    """Bytes per row for ``cols`` codes of ``bits`` bits."""
    return -(-cols * bits // 8)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise GGError(f"code width {bits!r}: expected 1..8 bits")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, cols) uint8 codes < 2**bits -> (rows, ceil(cols * bits / 8)) uint8 bytes."""
    _check_bits(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise GGError(f"pack_codes: expected 2-D uint8 codes, got {codes.dtype} {tuple(codes.shape)}")
    if bits == 8:
        return codes.contiguous()
    rows, cols = codes.shape
    if codes.numel() and int(codes.max()) >> bits:
        raise GGError(f"pack_codes: a code does not fit in {bits} bits")
    out = torch.empty((rows, packed_cols(cols, bits)), dtype=torch.uint8, device=codes.device)
    step = max(1, _CHUNK // max(cols, 1))
    g8 = -(-cols // 8)
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    for r0 in range(0, rows, step):
        c = codes[r0:r0 + step].to(torch.int64)
        c = torch.nn.functional.pad(c, (0, g8 * 8 - cols)).view(-1, g8, 8)
        word = (c << shifts).sum(dim=2)  # (r, g8): 8 codes -> 8*bits bits
        b = ((word[..., None] >> byte_shifts) & 0xFF).to(torch.uint8).view(-1, g8 * bits)
        out[r0:r0 + step] = b[:, : out.shape[1]]
    return out


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: (rows, ceil(cols * bits / 8)) uint8 -> (rows, cols) uint8 codes."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise GGError(f"unpack_codes: expected 2-D uint8 bytes, got {packed.dtype} {tuple(packed.shape)}")
    rows = packed.shape[0]
    if packed.shape[1] != packed_cols(cols, bits):
        raise GGError(f"unpack_codes: {packed.shape[1]} bytes per row, expected {packed_cols(cols, bits)} "
                      f"for {cols} codes of {bits} bits")
    if bits == 8:
        return packed.contiguous()
    out = torch.empty((rows, cols), dtype=torch.uint8, device=packed.device)
    step = max(1, _CHUNK // max(cols, 1))
    g8 = -(-cols // 8)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    mask = (1 << bits) - 1
    for r0 in range(0, rows, step):
        b = packed[r0:r0 + step].to(torch.int64)
        b = torch.nn.functional.pad(b, (0, g8 * bits - b.shape[1])).view(-1, g8, bits)
        word = (b << byte_shifts).sum(dim=2)  # (r, g8)
        c = ((word[..., None] >> shifts) & mask).to(torch.uint8).view(-1, g8 * 8)
        out[r0:r0 + step] = c[:, :cols]
    return out
