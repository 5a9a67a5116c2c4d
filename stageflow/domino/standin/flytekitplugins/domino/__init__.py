"""Domino's flytekit plugin, for flows compiled without it: `flytekitplugins.domino.helpers`, `.task` and
`.artifact` as public flows import them, each a thin, recording layer over stageflow/domino/plugin.py.

Never installed: stageflow.dag appends this folder to the path only while it compiles a flow and only when
the real plugin is not importable, so it can never shadow Domino's own inside Domino. Tests put it on the
path the same way (the `standin` fixture, PYTHONPATH in the Domino rehearsal) and read what each call recorded.
"""
