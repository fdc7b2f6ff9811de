"""Catalog app: ``catalog_flow``, which the catalog tests start by name from processes that never import this module.

``double`` doubles ``n`` (or raises when the context has ``"fail": true``) and records the process that ran it;
``report`` runs only when ``double`` succeeded (a trigger rule, so the rule travels through the catalog too).
``CATALOG_ATTEMPTS`` (default 1) sets the attempts of ``double``: processes that import this module with another
value have another version of the workflow (the same graph); with ``CATALOG_AUDIT=1`` the workflow has a third
task, ``audit`` (another graph).
"""

import os

import cloacina as cloaca

ATTEMPTS = int(os.environ.get("CATALOG_ATTEMPTS", "1"))

with cloaca.WorkflowBuilder("catalog_flow") as builder:
    builder.description("Doubles n on a worker")
    builder.tag("team", "catalog")

    @cloaca.task(id="double", retry_attempts=ATTEMPTS, timeout_seconds=60)
    def double(ctx):
        if ctx.get("fail"):
            raise ValueError("asked to fail")
        ctx.set("n", ctx.get("n", 0) * 2)
        ctx.set("double_pid", os.getpid())
        ctx.set("double_ppid", os.getppid())
        return ctx

    @cloaca.task(id="report", dependencies=["double"], trigger_rules={"type": "TaskSuccess", "task_name": "double"})
    def report(ctx):
        ctx.set("report", f"n is {ctx.get('n')}")
        return ctx

    if os.environ.get("CATALOG_AUDIT") == "1":

        @cloaca.task(id="audit", dependencies=["report"])
        def audit(ctx):
            ctx.set("audited", True)
            return ctx
