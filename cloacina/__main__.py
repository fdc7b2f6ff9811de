"""``python -m cloacina``: the same as the ``cloacina`` command."""

from cloacina.cli.main import main

if __name__ == "__main__":
    main()
