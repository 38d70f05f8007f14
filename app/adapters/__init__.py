"""The outside services a job calls, each behind one small interface: Stripe (the gateway,
and which mode its key is in) and object storage (a local directory or S3).  Each adapter
turns its library's failures into the project's errors (app/core/errors.py) where the
library is called, so neither the jobs' callers nor the runner know any library."""
