"""How operators see the service: failure alerts (email, webhook) and the incidents that
group them, Sentry events and Crons check-ins, Prometheus metrics, the dashboard's view of
jobs and runs, and the statistics behind them (a run unlike its job's recent runs, a trend
heading for a limit), and what each run cost.  Everything here reads the run log or
measures a run, and never changes one."""
