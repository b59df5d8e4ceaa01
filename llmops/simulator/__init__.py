"""An OpenAI-compatible model provider on loopback, for the embedded default, tests and benchmarks."""

from llmops.simulator.behaviour import MODELS, SimModel, answer
from llmops.simulator.server import SimConfig, build_app, run_in_thread, serve

__all__ = ["MODELS", "SimConfig", "SimModel", "answer", "build_app", "run_in_thread", "serve"]
