"""Conversion of NeMo `.nemo` checkpoints to the engine's format (installed as `nemotron_engine.weights`)."""
