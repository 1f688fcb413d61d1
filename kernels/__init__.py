"""Triton kernels, one op per file (installed as `nemotron_engine.kernels`)."""
