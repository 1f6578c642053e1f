"""Layer roles from common HF tensor names, for per-role summaries.

Covers llama/mistral/qwen/gemma (q/k/v/o_proj, gate/up/down_proj), phi-3 (fused qkv_proj, gate_up_proj),
gpt2 (Conv1D c_attn/c_proj/c_fc), gpt-neox/falcon/bloom (query_key_value, dense_h_to_4h, embed_in/out),
gpt-j (fc_in/fc_out), opt (fc1/fc2, out_proj) and bert (query/key/value, intermediate/output.dense).
"""

from __future__ import annotations

import re

ROLES = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_o",
    "mlp_gate",
    "mlp_gate_up",
    "mlp_up",
    "mlp_down",
    "embedding",
    "lm_head",
    "norm",
    "bias",
    "other",
)

# Order matters: first match wins. Names are matched on the module part (without .weight/.bias).
_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("norm", re.compile(r"(^|\.)(\w*norm\w*|ln_\w+|ln_f|LayerNorm|layer_norm)$", re.I)),
    (
        "embedding",
        re.compile(
            r"(embed_tokens|embed_positions|embed_in|wte|wpe|word_embeddings|position_embeddings|"
            r"token_type_embeddings|embeddings?)$"
        ),
    ),
    ("lm_head", re.compile(r"(^|\.)(lm_head|embed_out|output_layer|predictions\.decoder)$")),
    ("attn_qkv", re.compile(r"(c_attn|qkv_proj|query_key_value|Wqkv|W_pack)$")),
    ("attn_q", re.compile(r"(q_proj|self\.query|\.query|q_lin|\.wq)$")),
    ("attn_k", re.compile(r"(k_proj|self\.key|\.key|k_lin|\.wk)$")),
    ("attn_v", re.compile(r"(v_proj|self\.value|\.value|v_lin|\.wv)$")),
    (
        "attn_o",
        re.compile(r"(o_proj|out_proj|attn\.c_proj|attention\.output\.dense|attention\.dense|out_lin|\.wo)$"),
    ),
    ("mlp_gate_up", re.compile(r"(gate_up_proj)$")),
    ("mlp_gate", re.compile(r"(gate_proj|w1|gate)$")),
    ("mlp_down",
     re.compile(r"(down_proj|mlp\.c_proj|(?<!attention\.)output\.dense|fc2|fc_out|w2|dense_4h_to_h)$")),
    ("mlp_up", re.compile(r"(up_proj|c_fc|intermediate\.dense|fc1|fc_in|w3|dense_h_to_4h)$")),
]


def role_of(name: str, ndim: int = 2) -> str:
    """Classify a tensor name into one of ROLES; 1-D `.bias` tensors are `bias`."""
    module, _, leaf = name.rpartition(".")
    if not module:
        module, leaf = name, ""
    if leaf == "bias":
        return "bias"
    if leaf not in ("weight", ""):
        return "other"  # buffers such as position_ids, rotary inv_freq
    for role, pattern in _RULES:
        if pattern.search(module):
            if role == "norm" or ndim >= 2 or role == "embedding":
                return role
    return "norm" if ndim == 1 and leaf == "weight" else "other"
