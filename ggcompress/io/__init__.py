"""Reading and writing checkpoints: safetensors files, shards, folders, hub ids, runnable models."""
