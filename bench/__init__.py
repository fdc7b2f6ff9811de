"""Benchmarks of cloacina (embedded and distributed), each printing JSON; see each module's docstring."""
