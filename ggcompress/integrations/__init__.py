"""Bridges to other tools: lm-eval evaluation and the offline tasks ggcompress ships."""
