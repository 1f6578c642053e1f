"""Layer-role recognition on real HF naming schemes (llama, gpt2, bert)."""

import pytest

from ggcompress.stats.roles import role_of

CASES = {
    "model.embed_tokens.weight": "embedding",
    "model.layers.0.self_attn.q_proj.weight": "attn_q",
    "model.layers.0.self_attn.k_proj.weight": "attn_k",
    "model.layers.0.self_attn.v_proj.weight": "attn_v",
    "model.layers.0.self_attn.o_proj.weight": "attn_o",
    "model.layers.0.mlp.gate_proj.weight": "mlp_gate",
    "model.layers.0.mlp.up_proj.weight": "mlp_up",
    "model.layers.0.mlp.down_proj.weight": "mlp_down",
    "model.layers.0.input_layernorm.weight": "norm",
    "model.layers.0.post_attention_layernorm.weight": "norm",
    "model.norm.weight": "norm",
    "lm_head.weight": "lm_head",
    "transformer.wte.weight": "embedding",
    "transformer.wpe.weight": "embedding",
    "transformer.h.0.attn.c_attn.weight": "attn_qkv",
    "transformer.h.0.attn.c_proj.weight": "attn_o",
    "transformer.h.0.mlp.c_fc.weight": "mlp_up",
    "transformer.h.0.mlp.c_proj.weight": "mlp_down",
    "transformer.h.0.ln_1.weight": "norm",
    "transformer.ln_f.weight": "norm",
    "transformer.h.0.attn.c_attn.bias": "bias",
    "embeddings.word_embeddings.weight": "embedding",
    "embeddings.LayerNorm.weight": "norm",
    "encoder.layer.0.attention.self.query.weight": "attn_q",
    "encoder.layer.0.attention.self.key.weight": "attn_k",
    "encoder.layer.0.attention.self.value.weight": "attn_v",
    "encoder.layer.0.attention.output.dense.weight": "attn_o",
    "encoder.layer.0.attention.output.LayerNorm.weight": "norm",
    "encoder.layer.0.intermediate.dense.weight": "mlp_up",
    "encoder.layer.0.output.dense.weight": "mlp_down",
    "encoder.layer.0.output.LayerNorm.weight": "norm",
    "pooler.dense.weight": "other",
    "cls.predictions.decoder.weight": "lm_head",
    # phi-3: fused q/k/v and gate/up
    "model.layers.0.self_attn.qkv_proj.weight": "attn_qkv",
    "model.layers.0.mlp.gate_up_proj.weight": "mlp_gate_up",
    # gpt-neox
    "gpt_neox.embed_in.weight": "embedding",
    "gpt_neox.layers.0.attention.query_key_value.weight": "attn_qkv",
    "gpt_neox.layers.0.attention.dense.weight": "attn_o",
    "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": "mlp_up",
    "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": "mlp_down",
    "embed_out.weight": "lm_head",
    # opt
    "model.decoder.embed_positions.weight": "embedding",
    "model.decoder.layers.0.self_attn.out_proj.weight": "attn_o",
    "model.decoder.layers.0.fc1.weight": "mlp_up",
    "model.decoder.layers.0.fc2.weight": "mlp_down",
    "model.decoder.layers.0.final_layer_norm.weight": "norm",
    # gpt-j
    "transformer.h.0.mlp.fc_in.weight": "mlp_up",
    "transformer.h.0.mlp.fc_out.weight": "mlp_down",
    # gemma 2 / qwen 3 extra norms
    "model.layers.0.pre_feedforward_layernorm.weight": "norm",
    "model.layers.0.self_attn.q_norm.weight": "norm",
    "embeddings.position_ids": "other",
}


@pytest.mark.parametrize("name, role", sorted(CASES.items()))
def test_role_of(name: str, role: str) -> None:
    assert role_of(name, 1 if role in ("norm", "bias") else 2) == role
