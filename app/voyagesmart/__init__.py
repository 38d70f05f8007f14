"""What the service knows about VoyageSmart's own data, shared by the jobs that read it:
which subscription rows count as paid, when a user was last seen, where a stored file is
referenced, how one run's subscription changes are put back, and sample rows written the
way VoyageSmart's app writes them (demo, tests, benchmarks).  The tables themselves are
in app/models/voyagesmart.py."""
