"""Tiny TransformerConfigs shared by the network, models and partitioning tests."""

from flan_jax.model import network

# T5 v1.1 layout; the model of the T5X fixture (../shared/fixtures/t5x_tiny).
T5_TINY = network.TransformerConfig(
    vocab_size=384,
    emb_dim=128,
    num_heads=4,
    head_dim=32,
    mlp_dim=512,
    num_encoder_layers=2,
    num_decoder_layers=2,
)
# LLaMA-style decoder-only: grouped-query attention, SwiGLU, RoPE, scaled attention logits.
LLAMA = network.TransformerConfig(
    vocab_size=64,
    emb_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    num_decoder_layers=2,
    mlp_activations=("silu", "linear"),
    position_embedding="rope",
    rope_theta=500.0,
    scale_attention_logits=True,
)
