"""Everything of this project that speaks to Domino or stands in for it, in one place.

api: Domino's REST API client (`make environments`, `make submit`); environments: the stages' Domino
environments and their builds; submit: the checks before `pyflyte run --remote`; plugin: Domino's
`run_domino_job_task` and friends for machines without Domino's flytekit plugin.
"""
