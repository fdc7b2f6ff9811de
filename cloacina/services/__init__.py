"""Long-running service processes: the poller, the package reconciler and their health checks."""
