"""Preference-pair builders (Re-Align retrieval, POVID, BDHS) and the sentence embedder their filters use."""
