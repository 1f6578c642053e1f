"""Training-side methods: the shared training engine, BackSlash, DeepShape, GG initialization."""
