"""Serving: the deployment record, routing, dynamic batching, the prediction log, and the HTTP API.

Import ``create_app`` from ``tl_platform.serving.app`` (it pulls in FastAPI); the other modules are light.
"""
