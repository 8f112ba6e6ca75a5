"""ttsplan: latency-optimal test-time scaling (profile -> cost model -> optimizer -> plan -> executor)."""
__version__ = "0.1.0"
