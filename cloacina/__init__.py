"""cloacina: event-triggered and cron-scheduled workflows with Cloacina's ``cloaca`` API.

``import cloacina as cloaca`` runs code written for cloaca::

    import cloacina as cloaca

    with cloaca.WorkflowBuilder("hello") as builder:
        @cloaca.task(id="greet")
        def greet(context):
            context.set("greeting", f"hello {context.get('name')}")
            return context

    with cloaca.DefaultRunner(":memory:") as runner:
        print(runner.execute("hello", cloaca.Context({"name": "world"})).final_context.get("greeting"))
"""

from cloacina.context import Context, canonical_json, context_hash
from cloacina.definitions.authoring import (
    WorkflowParamsDecorator,
    WorkflowSecretsDecorator,
    boundary_schema,
    var,
    var_or,
    workflow_params,
    workflow_secrets,
)
from cloacina.definitions.declare import TaskDecorator, TriggerDecorator, WorkflowBuilder, task, trigger
from cloacina.definitions.duration import parse_duration_ms
from cloacina.definitions.namespace import TaskNamespace, WorkflowContext
from cloacina.definitions.registry import register_workflow_constructor
from cloacina.definitions.retry import BackoffStrategy, RetryCondition, RetryPolicy, RetryPolicyBuilder
from cloacina.definitions.rules import (
    all_of,
    always,
    any_of,
    context_value,
    none_of,
    task_failed,
    task_skipped,
    task_success,
)
from cloacina.definitions.trigger import TriggerResult
from cloacina.definitions.workflow import Workflow
from cloacina.errors import (
    CloacinaError,
    DefinitionError,
    PermanentError,
    SchemaNotMigratedError,
    StoreError,
    TaskError,
    TaskTimeoutError,
    TenantError,
    TransientError,
    TriggerPollError,
    WorkflowNotFoundError,
)
from cloacina.execution.task_handle import TaskHandle
from cloacina.runner.config import DefaultRunnerConfig
from cloacina.runner.default_runner import DefaultRunner
from cloacina.runner.errors import (
    CronDisabledError,
    RunnerOperationError,
    RunnerShutDownError,
    RunnerStartError,
    SchemaSetupError,
    WorkflowTimeoutError,
)
from cloacina.runner.results import RunHandle, WorkflowResult
from cloacina.secrets import EnvSecretsBackend, SecretsBackend, get_secrets_backend, set_secrets_backend
from cloacina.tenants import DatabaseAdmin, TenantConfig, TenantCredentials

__version__ = "0.1.0"

__all__ = [
    # Data
    "Context",
    "canonical_json",
    "context_hash",
    # Definitions
    "WorkflowBuilder",
    "Workflow",
    "task",
    "TaskDecorator",
    "register_workflow_constructor",
    "RetryPolicy",
    "RetryPolicyBuilder",
    "BackoffStrategy",
    "RetryCondition",
    "TaskHandle",
    "trigger",
    "TriggerDecorator",
    "TriggerResult",
    "parse_duration_ms",
    # Package authoring, runtime variables and namespaces
    "workflow_params",
    "WorkflowParamsDecorator",
    "workflow_secrets",
    "WorkflowSecretsDecorator",
    "boundary_schema",
    "var",
    "var_or",
    "TaskNamespace",
    "WorkflowContext",
    # Secrets
    "SecretsBackend",
    "EnvSecretsBackend",
    "set_secrets_backend",
    "get_secrets_backend",
    # Trigger rules
    "all_of",
    "any_of",
    "none_of",
    "always",
    "context_value",
    "task_success",
    "task_failed",
    "task_skipped",
    # Running
    "DefaultRunner",
    "DefaultRunnerConfig",
    "WorkflowResult",
    "RunHandle",
    # Multi-tenancy (PostgreSQL)
    "DatabaseAdmin",
    "TenantConfig",
    "TenantCredentials",
    # Errors
    "CloacinaError",
    "DefinitionError",
    "TaskError",
    "TransientError",
    "PermanentError",
    "TaskTimeoutError",
    "TriggerPollError",
    "StoreError",
    "SchemaNotMigratedError",
    "WorkflowNotFoundError",
    "RunnerStartError",
    "SchemaSetupError",
    "RunnerShutDownError",
    "WorkflowTimeoutError",
    "RunnerOperationError",
    "CronDisabledError",
    "TenantError",
]
