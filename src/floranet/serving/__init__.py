"""Serving: a REST API and web page for one finished run, with dynamic batching."""

from floranet.serving.app import create_app, model_version
from floranet.serving.batcher import Batcher
from floranet.serving.server import access_settings, is_loopback, run_server, serve_in_thread
from floranet.serving.uploads import RequestError, extract_upload, read_body

__all__ = [
    "access_settings",
    "Batcher",
    "RequestError",
    "create_app",
    "extract_upload",
    "is_loopback",
    "model_version",
    "read_body",
    "run_server",
    "serve_in_thread",
]
