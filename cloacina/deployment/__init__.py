"""Wiring a deployment: settings from the environment and the objects every process builds from them."""
