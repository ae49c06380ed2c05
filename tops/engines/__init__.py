"""Generation backends behind one protocol (see base.py); `make_engine` picks one from config."""

from __future__ import annotations

from tops.engines.base import Completion, Engine, Message, Request

__all__ = ["Completion", "Engine", "Message", "Request", "make_engine"]


def make_engine(model: str, cfg) -> Engine:
    """Start the configured engine for an already-resolved model path or Hub id."""
    if cfg.kind == "vllm":
        from tops.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, cfg)
    if cfg.kind == "hf":
        from tops.engines.hf_engine import HFEngine

        return HFEngine(model, cfg)
    from tops.engines.openai_engine import OpenAIEngine

    return OpenAIEngine(model, cfg)
