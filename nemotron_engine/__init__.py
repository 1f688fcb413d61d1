"""nemotron_engine: an inference engine for NVIDIA's cache-aware streaming FastConformer RNN-T ASR models."""
from .config import ModelConfig
from .engine import Engine, Result, Stream, Update

__all__ = ["Engine", "Stream", "Result", "Update", "ModelConfig"]
__version__ = "0.1.0"
