"""Hallucination evaluators (POPE, CHAIR, AMBER-style) and the generation runner."""
