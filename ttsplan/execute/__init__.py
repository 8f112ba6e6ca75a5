"""Executing plans: the runner (a plan's request on the relay engine or vLLM, voted), the results
files of dataset runs, and random-weight timing."""
