"""Backends other than the relay engine (ttsplan.engine) that run a plan: vLLM."""
