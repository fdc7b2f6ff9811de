"""A run's DAG laid out in layers, ready to draw as SVG (pure: no I/O, no templates).

Tasks are placed in columns by level, as ``Workflow.get_execution_levels`` counts them: a root is level 0 and
every other task sits one level after its deepest dependency. Inside a column, tasks are ordered by the mean row
of their neighbours (a few barycenter sweeps down and up), which removes most edge crossings of the DAGs people
write. Edges are cubic curves from the right side of a dependency to the left side of its dependent.

>>> layout = layout_dag({"extract": [], "clean": ["extract"], "load": ["extract", "clean"]})
>>> [(n.task_id, n.level) for n in layout.nodes]
[('extract', 0), ('clean', 1), ('load', 2)]
>>> [(e.source, e.target) for e in layout.edges]
[('extract', 'clean'), ('extract', 'load'), ('clean', 'load')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NODE_WIDTH = 168
NODE_HEIGHT = 44
COLUMN_GAP = 64
ROW_GAP = 18
MARGIN = 12
_SWEEPS = 4


@dataclass(frozen=True)
class DagNode:
    """One task's box: its top-left corner, its size, and where it sits (level = column, row inside it)."""

    task_id: str
    level: int
    row: int
    x: int
    y: int
    width: int = NODE_WIDTH
    height: int = NODE_HEIGHT

    @property
    def center_y(self) -> int:
        return self.y + self.height // 2


@dataclass(frozen=True)
class DagEdge:
    """A dependency drawn from ``source`` (the dependency) to ``target`` (the task that waits for it)."""

    source: str
    target: str
    path: str  # SVG path data


@dataclass(frozen=True)
class DagLayout:
    nodes: tuple[DagNode, ...]
    edges: tuple[DagEdge, ...]
    width: int
    height: int

    def node(self, task_id: str) -> DagNode:
        return next(n for n in self.nodes if n.task_id == task_id)


def task_levels(dependencies: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each task's level: 0 for a root, else one more than its deepest dependency. Dependencies on tasks that
    are not in the mapping are ignored; a cycle (never valid in a workflow) is broken where it is found.

    >>> task_levels({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["missing"]})
    {'a': 0, 'b': 1, 'c': 1, 'd': 2, 'e': 0}
    """
    levels: dict[str, int] = {}
    visiting: set[str] = set()

    def level(task: str) -> int:
        if task in levels:
            return levels[task]
        visiting.add(task)
        deps = [d for d in dependencies[task] if d in dependencies and d not in visiting]
        result = 1 + max((level(d) for d in deps), default=-1)
        visiting.discard(task)
        levels[task] = result
        return result

    for task in dependencies:
        level(task)
    return {task: levels[task] for task in dependencies}


def _order_columns(
    columns: list[list[str]], parents: Mapping[str, list[str]], children: Mapping[str, list[str]]
) -> list[list[str]]:
    """Barycenter ordering: sort each column by the mean position of its neighbours in the column before (sweep
    down) or after (sweep up); ties keep the declaration order, so a chain stays a straight line."""
    position = {t: i for column in columns for i, t in enumerate(column)}

    def sweep(indexes: range, neighbours: Mapping[str, list[str]]) -> None:
        for i in indexes:
            column = columns[i]

            def key(task: str, column: list[str] = column) -> tuple[float, int]:
                near = [position[n] for n in neighbours[task]]
                return (sum(near) / len(near) if near else float(position[task]), column.index(task))

            columns[i] = sorted(column, key=key)
            position.update({t: j for j, t in enumerate(columns[i])})

    for _ in range(_SWEEPS):
        sweep(range(1, len(columns)), parents)
        sweep(range(len(columns) - 2, -1, -1), children)
    return columns


def layout_dag(dependencies: Mapping[str, Sequence[str]]) -> DagLayout:
    """Lay out tasks (``{task_id: [dependency ids]}``, in declaration order) left to right by level.

    Columns are centred vertically against the tallest one, so a fan-out and its fan-in line up.
    """
    levels = task_levels(dependencies)
    columns: list[list[str]] = [[] for _ in range(max(levels.values(), default=-1) + 1)]
    for task in dependencies:  # declaration order inside a level
        columns[levels[task]].append(task)
    parents = {t: [d for d in deps if d in levels and levels[d] < levels[t]] for t, deps in dependencies.items()}
    children: dict[str, list[str]] = {t: [] for t in dependencies}
    for task, deps in parents.items():
        for dep in deps:
            children[dep].append(task)
    columns = _order_columns(columns, parents, children)

    tallest = max((len(c) for c in columns), default=0)
    full_height = tallest * NODE_HEIGHT + max(tallest - 1, 0) * ROW_GAP
    nodes: dict[str, DagNode] = {}
    for level, column in enumerate(columns):
        column_height = len(column) * NODE_HEIGHT + (len(column) - 1) * ROW_GAP
        top = MARGIN + (full_height - column_height) // 2
        for row, task in enumerate(column):
            x = MARGIN + level * (NODE_WIDTH + COLUMN_GAP)
            nodes[task] = DagNode(task, level, row, x, top + row * (NODE_HEIGHT + ROW_GAP))

    edges: list[DagEdge] = []
    for task in dependencies:
        for dep in parents[task]:
            edges.append(DagEdge(dep, task, _curve(nodes[dep], nodes[task])))
    width = 2 * MARGIN + len(columns) * NODE_WIDTH + max(len(columns) - 1, 0) * COLUMN_GAP
    ordered = tuple(nodes[t] for column in columns for t in column)
    return DagLayout(ordered, tuple(edges), width, 2 * MARGIN + full_height)


def _curve(source: DagNode, target: DagNode) -> str:
    """A cubic curve leaving ``source``'s right side and entering ``target``'s left side horizontally."""
    x1, y1 = source.x + source.width, source.center_y
    x2, y2 = target.x, target.center_y
    bend = max((x2 - x1) // 2, 16)
    return f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
