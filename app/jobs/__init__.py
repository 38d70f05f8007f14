"""One module per job; each exposes `run(ctx: JobContext) -> JobResult`."""
