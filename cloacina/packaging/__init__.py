"""Packages: the ``.cloacina`` manifest schema, archive build and validation, isolated discovery.

- :mod:`~cloacina.packaging.manifest`: ``manifest.json`` models (the canonical manifest of every package), JSON Schema.
- :mod:`~cloacina.packaging.members`: reading archive members safely (gzip or bzip2), limits, ``PackageError``.
- :mod:`~cloacina.packaging.archive`: deterministic archives, format recognition, static validation.
- :mod:`~cloacina.packaging.cloaca_manifest`: the one ``package.toml`` resolver (cloaca's defaults and inference).
- :mod:`~cloacina.packaging.cloaca_format`: cloaca's archives (``package.toml``; the older ``manifest.json``).
- :mod:`~cloacina.packaging.cloaca_binding`: what a cloaca package's import registered -> its complete manifest.
- :mod:`~cloacina.packaging.discover`: import a package's entry module in a child process.
- :mod:`~cloacina.packaging.builder`: ``pyproject.toml`` -> ``NAME-VERSION.cloacina`` (ours).
- :mod:`~cloacina.packaging.cloaca_build`: ``package.toml`` + ``workflow/`` -> ``NAME-VERSION.cloacina`` (cloaca's).
- :mod:`~cloacina.packaging.verify`: static validation plus an isolated import compared with the manifest.
"""
