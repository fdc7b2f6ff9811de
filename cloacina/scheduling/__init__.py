"""Scheduling: trigger polling, cron, leases and dedup locks, sweeper."""
