"""A recording stand-in for Domino's flytekit plugin, used only by tests/test_domino.py (see helpers.py)."""
