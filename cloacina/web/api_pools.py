"""``/api/v1/pools``: task pools with their slots, the slots in use and the tasks waiting; defining, resizing and
deleting them (as ``cloacina pools``). A change applies to every worker at its tasks' next start."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from cloacina.definitions.naming import NAME_PATTERN
from cloacina.errors import DefinitionError
from cloacina.store.pools import PoolInfo, PoolStore, check_pool_name
from cloacina.web.auth import WRITE_RESPONSES, require_writer
from cloacina.web.deps import Runner, not_found, require_name
from cloacina.web.errors import ApiError
from cloacina.web.schemas import ErrorBody, PoolList, PoolOut, PoolPut

router = APIRouter()
PoolName = Annotated[str, Path(pattern=NAME_PATTERN, description="The pool's name.")]
POOL_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown pool."}}


def _out(pool: PoolInfo) -> PoolOut:
    return PoolOut(**pool.to_dict())


def _store(runner: Runner) -> PoolStore:
    return PoolStore(runner.db)


def list_pools(runner: Runner) -> PoolList:
    return PoolList(pools=[_out(p) for p in _store(runner).list_pools()])


@router.get("/pools", response_model=PoolList, tags=["pools"])
def get_pools(runner: Runner) -> PoolList:
    """Every pool by name: its slots, the slots its Running tasks take (``used``) and its Ready tasks
    (``waiting``)."""
    return list_pools(runner)


@router.get("/pools/{name}", response_model=PoolOut, responses=POOL_404, tags=["pools"])
def get_pool(name: str, runner: Runner) -> PoolOut:
    found = _store(runner).get_pool(require_name("pool", name))
    if found is None:
        raise not_found("pool", name)
    return _out(found)


@router.put(
    "/pools/{name}",
    response_model=PoolOut,
    responses=WRITE_RESPONSES,
    dependencies=[Depends(require_writer)],
    tags=["pools"],
)
def put_pool(name: PoolName, body: PoolPut, runner: Runner) -> PoolOut:
    """Create the pool or set its slots (``{"slots": 4, "description": "..."}``); 0 slots pauses its tasks.
    A name other than 1-200 letters, digits, ``_``, ``.``, ``-`` (not starting with ``.`` or ``-``) is a 422."""
    try:
        check_pool_name(name)
    except DefinitionError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return _out(_store(runner).set_pool(name, body.slots, body.description))


@router.delete(
    "/pools/{name}",
    status_code=204,
    response_class=Response,
    responses={**POOL_404, **WRITE_RESPONSES},
    dependencies=[Depends(require_writer)],
    tags=["pools"],
)
def delete_pool(name: str, runner: Runner) -> Response:
    """Delete the pool: tasks waiting for it fail (their pool is undefined); tasks running in it finish."""
    if not _store(runner).delete_pool(require_name("pool", name)):
        raise not_found("pool", name)
    return Response(status_code=204)
