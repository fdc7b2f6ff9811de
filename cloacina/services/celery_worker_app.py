"""The worker app for Celery's own command line: ``celery -A cloacina.services.celery_worker_app worker``.

Importing this module builds the app from the ``CLOACINA_*`` environment, after importing the workflows of
``$CLOACINA_APP`` (a module name or a path to a ``.py`` file) and recording them in the workflow catalog, as
Celery's ``-A`` expects of an app module.
``cloacina worker`` does the same with readable options; use this only to start Celery yourself::

    CLOACINA_APP=myapp CLOACINA_BROKER_URL=redis://... celery -A cloacina.services.celery_worker_app worker
"""

from __future__ import annotations

import os

from cloacina.definitions.app_loader import load_app
from cloacina.deployment.settings import CloacinaSettings
from cloacina.deployment.wiring import celery_options
from cloacina.dispatch.celery_app import create_app
from cloacina.services.worker import node_runner_factory, record_workflows

APP_ENV_VAR = "CLOACINA_APP"

_settings = CloacinaSettings()
if os.environ.get(APP_ENV_VAR):
    load_app(os.environ[APP_ENV_VAR])
    record_workflows(_settings)  # the workflow catalog (a warning, not a failure, if the database is down)
app = create_app(celery_options(_settings), node_runner_factory(_settings))
