"""A recording stand-in for Domino's flytekit plugin (helpers, task, artifact), put on the path only while
tests load flow.py: tests/test_domino.py (the `standin` fixture) and the Domino rehearsal (PYTHONPATH)."""
