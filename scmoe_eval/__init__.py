"""scmoe-eval: decoding strategies for Mixture-of-Experts LLMs, centred on SCMoE."""

__version__ = "0.1.0"
