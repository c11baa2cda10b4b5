"""Flax NNX vision-language models (LLaVA family), Hugging Face import/export and generation."""
