"""realign_jax: preference alignment of vision-language models against hallucination, in JAX."""
