"""Packages: the ``.cloacina`` manifest schema, archive build and validation, isolated discovery.

- :mod:`~cloacina.packaging.manifest`: pydantic models of ``manifest.json`` and its JSON Schema.
- :mod:`~cloacina.packaging.archive`: deterministic archives, static validation, ``PackageError``.
- :mod:`~cloacina.packaging.discover`: import a package's entry module in a child process.
- :mod:`~cloacina.packaging.builder`: ``pyproject.toml`` -> ``NAME-VERSION.cloacina``.
- :mod:`~cloacina.packaging.verify`: static validation plus an isolated import compared with the manifest.
"""
