"""Preference losses: pure functions of log-probs -> (loss, metrics)."""
