"""The ``cloacina`` command line: one module per command group, assembled in :mod:`cloacina.cli.main`."""
