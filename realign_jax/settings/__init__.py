"""The typed settings tree: every config key declared once (sections.py), the roots of each
mode and the one check of a config (runs.py), the machinery (keys.py).
`python -m realign_jax.settings [mode]` lists the keys with their defaults and meanings."""
