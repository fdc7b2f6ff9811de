"""The modules here are apps for ``cloacina run`` subprocess tests: pytest must not import them while collecting
(``--doctest-modules`` would), because importing one registers its workflows and triggers in the test process."""

collect_ignore_glob = ["*.py"]
