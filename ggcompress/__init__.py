"""ggcompress: GG-prior compression for LLM checkpoints."""
__version__ = "0.1.0"
