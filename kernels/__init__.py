"""Triton kernels, one op per file (installed as `nemotron_engine.kernels`).

attention.py: cache-aware relative-position attention over the paged cache; layernorm.py: LayerNorm (+ residual add).
"""
