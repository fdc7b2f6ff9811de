"""Apps for the distributed tests: imported by ``cloacina worker|poller --app tests.dist_apps.<module>``."""
