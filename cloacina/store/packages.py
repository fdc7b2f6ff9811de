"""The package registry: validated ``.cloacina`` archives stored in the database, addressed by fingerprint.

A package's fingerprint is the SHA-256 of its sources (:mod:`cloacina.packaging.archive`), so storing the same
sources twice is one row: :meth:`PackageStore.put` of a known fingerprint only updates ``source_path`` and
``active`` (the first stored archive and manifest are kept). Workers on other machines fetch archives from here
by the fingerprint a run carries (:mod:`cloacina.packaging.loader`). ``active`` says whether a daemon should
schedule the package's triggers; inactive versions stay so that runs started on them can finish.

Only archives that passed :func:`~cloacina.packaging.verify.verify_archive` belong here; readers re-validate
the bytes anyway before importing them.

>>> from cloacina.store.database import Database, rowcount
>>> db = Database(":memory:")
>>> db.upgrade()
>>> store = PackageStore(db)
>>> store.list(), store.get("0" * 64), store.get_archive("0" * 64)
([], None, None)
"""

from __future__ import annotations

import builtins
import json
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from cloacina.store.database import Database, rowcount
from cloacina.store.models import Package
from cloacina.timestamps import iso, utcnow


class StorableArchive(Protocol):
    """What the registry stores of a validated archive (:class:`cloacina.packaging.archive.ValidatedArchive`)."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def manifest_bytes(self) -> bytes: ...
    @property
    def archive(self) -> bytes: ...
    @property
    def size_bytes(self) -> int: ...


def _package_dict(row: Package) -> dict[str, Any]:
    return {
        "fingerprint": row.fingerprint,
        "name": row.name,
        "version": row.version,
        "manifest": json.loads(row.manifest),
        "size_bytes": row.size_bytes,
        "source_path": row.source_path,
        "active": bool(row.active),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


# Every column but the archive bytes: listing a registry must not drag megabytes of blobs along.
_COLUMNS = (
    Package.fingerprint,
    Package.name,
    Package.version,
    Package.manifest,
    Package.size_bytes,
    Package.source_path,
    Package.active,
    Package.created_at,
    Package.updated_at,
)


class PackageStore:
    """Reads and writes the ``packages`` table; every method is one transaction. Dicts carry ISO timestamps."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, validated: StorableArchive, source_path: str | None = None, *, active: bool = True) -> bool:
        """Store a validated archive; ``True`` if its fingerprint was new, ``False`` if it only updated the row."""
        fingerprint = validated.fingerprint
        for _ in range(3):  # two daemons may store the same new package at once; the loser updates
            now = utcnow()
            try:
                with self.db.session() as s:
                    row = s.get(Package, fingerprint)
                    if row is not None:
                        row.source_path = source_path
                        row.active = active
                        row.updated_at = now
                        return False
                    s.add(
                        Package(
                            fingerprint=fingerprint,
                            name=validated.name,
                            version=validated.version,
                            manifest=validated.manifest_bytes.decode("utf-8"),
                            archive=validated.archive,
                            size_bytes=validated.size_bytes,
                            source_path=source_path,
                            active=active,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                return True
            except IntegrityError:
                continue
        raise RuntimeError(f"could not store package {fingerprint}")

    def get_archive(self, fingerprint: str) -> bytes | None:
        """The archive bytes exactly as stored (re-validate them before use), or ``None``."""
        with self.db.session() as s:
            data = s.scalar(select(Package.archive).where(Package.fingerprint == fingerprint))
            return bytes(data) if data is not None else None

    def get(self, fingerprint: str) -> dict[str, Any] | None:
        """The package's row without its archive bytes, or ``None``."""
        with self.db.session() as s:
            row = s.execute(select(*_COLUMNS).where(Package.fingerprint == fingerprint)).one_or_none()
            return _package_dict(row) if row is not None else None  # type: ignore[arg-type]

    def list(self, active_only: bool = False) -> builtins.list[dict[str, Any]]:
        """Every stored package (or only the active ones), by name then newest first."""
        query = select(*_COLUMNS).order_by(Package.name, Package.created_at.desc(), Package.fingerprint)
        if active_only:
            query = query.where(Package.active.is_(True))
        with self.db.session() as s:
            return [_package_dict(row) for row in s.execute(query).all()]  # type: ignore[arg-type]

    def by_source(self, path: str) -> builtins.list[dict[str, Any]]:
        """Packages last stored from the file ``path``."""
        query = select(*_COLUMNS).where(Package.source_path == path).order_by(Package.created_at.desc())
        with self.db.session() as s:
            return [_package_dict(row) for row in s.execute(query).all()]  # type: ignore[arg-type]

    def set_active(self, fingerprint: str, active: bool) -> bool:
        """Mark a package (in)active; ``False`` if no package has that fingerprint."""
        with self.db.session() as s:
            result = s.execute(
                update(Package)
                .where(Package.fingerprint == fingerprint)
                .values(active=bool(active), updated_at=utcnow())
            )
            return rowcount(result) == 1

    def deactivate_others(self, name: str, keep: str) -> builtins.list[str]:
        """Mark every active version of package ``name`` except fingerprint ``keep`` inactive; their fingerprints."""
        with self.db.session() as s:
            found = s.scalars(
                select(Package.fingerprint).where(
                    Package.name == name, Package.active.is_(True), Package.fingerprint != keep
                )
            ).all()
            if found:
                s.execute(
                    update(Package).where(Package.fingerprint.in_(found)).values(active=False, updated_at=utcnow())
                )
            return list(found)
