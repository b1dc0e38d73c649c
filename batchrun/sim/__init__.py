"""A local OpenAI-compatible simulator: rate limits, faults, Files and Batch API."""

from .config import SimConfig
from .server import SimServer, Simulator

__all__ = ["SimConfig", "SimServer", "Simulator"]
