"""Record schema, sources, image preprocessing, tokenisation and the Grain pipeline."""
