"""One module per job; each exposes `run(ctx: JobContext) -> JobResult` and opens with a
docstring numbering its steps.  A job does its work and returns or raises; it never knows
whether HTTP, the CLI or a test called it.  The runner (app/core/runner.py) claims the
slot, retries and records the run; app/core/registry.py lists the jobs and their
schedules."""
