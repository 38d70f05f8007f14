"""HTTP routes: thin layers that parse, authorize, call the runner and map status codes."""
