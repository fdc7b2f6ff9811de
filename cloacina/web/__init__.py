"""The web process: the HTTP API under ``/api/v1``, health and metrics, and the console at ``/``.

Build the ASGI app with :func:`cloacina.web.app.create_app`; ``cloacina web`` serves it with uvicorn.
"""
