"""The modules here are apps for the distributed tests' worker and poller processes: pytest must not import them
while collecting (``--doctest-modules`` would), because importing one registers its workflows and triggers in the
test process."""

collect_ignore_glob = ["*.py"]
