"""ecomgpt-jax: EcomGPT instruction tuning of decoder LLMs on EcomInstruct, in JAX."""

__version__ = "0.1.0"
