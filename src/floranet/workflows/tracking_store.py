"""Where MLflow logs: what a tracking URI names and whether MLflow can log there, checked before anything is
trained; its credentials kept out of every message.

Functions of the URI, which never require MLflow (they read its registry of stores where it is installed):
:mod:`floranet.workflows.tracking` asks them.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from floranet.config import MLFLOW_EXPERIMENT
from floranet.errors import ConfigError
from floranet.utils.download import redacted, redacted_text
from floranet.utils.opener import open_url

# Database stores need SQLAlchemy, which the full mlflow package brings and mlflow-skinny (floranet[mlflow]) does
# not; MLflow 3's default store is one of them (sqlite:///mlflow.db in the current folder).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# Store names MLflow takes whole, with no "://": Databricks (its default profile) and Unity Catalog's two.
NAMED_STORES = ("databricks", "databricks-uc", "uc")
# MLflow 3.17's tracking stores (mlflow/tracking/_tracking_service/utils.py), for when its registry cannot be read:
# a folder or file://, a tracking server, Databricks, and the database engines (those with SQLAlchemy only).
KNOWN_SCHEMES = ("", "file", "http", "https", "databricks", *DATABASE_SCHEMES)
# Registered as tracking stores, yet MLflow's builder for them refuses: Unity Catalog is a model registry.
REGISTRY_ONLY = ("databricks-uc", "uc")
# MLflow's artifact stores, often taken for tracking stores: they keep a tracking server's files, not its runs.
ARTIFACT_SCHEMES = ("s3", "gs", "wasbs", "abfss", "hdfs", "viewfs", "ftp", "sftp", "dbfs", "runs", "models")
# The pre-flight request's limit, in seconds, for connecting and for the answer (MLflow waits 60 s, twice).
ANSWER_TIMEOUT_S = 10.0


def store_scheme(uri: str, given: str) -> str:
    """The scheme MLflow picks ``uri``'s tracking store by, as it reads it: a bare :data:`NAMED_STORES` name
    whole, "" for a path (a Windows drive letter too, ``C:\\mlruns``), a database URI's engine alone
    (``postgresql+psycopg2://`` is postgresql).

    Args:
        uri: The tracking URI.
        given: Where it came from, for the message (``mlflow='...'``, its password hidden).

    Raises:
        ConfigError: urllib cannot read ``uri`` (``http://[::1``): MLflow would fail on it after training.
    """
    if uri in NAMED_STORES:
        return uri
    try:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
    except ValueError as e:
        raise ConfigError(f"The MLflow tracking URI cannot be read ({e}). Received: {given}") from None
    if len(scheme) == 1 and scheme.isalpha():  # a drive letter, as MLflow's get_uri_scheme takes it
        return ""
    return scheme.split("+")[0]


def experiment_name(experiment: str | None, fallback: str | None = MLFLOW_EXPERIMENT) -> str | None:
    """The MLflow experiment to log to: ``experiment``, else ``MLFLOW_EXPERIMENT_NAME`` (which MLflow itself
    reads), else ``fallback`` (:data:`floranet.config.MLFLOW_EXPERIMENT`; None: a child run's parent's).

    Raises:
        ConfigError: ``experiment`` is given but blank or not text (MLflow refused it only after training).
    """
    if experiment is None:
        return os.environ.get("MLFLOW_EXPERIMENT_NAME") or fallback
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"experiment must be the name of an MLflow experiment. Received: experiment={experiment!r}")
    return experiment


def logged_filter(run_dir: str, model_version: str) -> str | None:
    """MLflow's search filter for the finished runs that logged this run folder with this ``model.keras``
    (floranet's tags ``floranet.run_dir`` and ``floranet.model_version``); None when no quote can hold the path
    (it has both ' and ", which MLflow's filter cannot escape).
    """
    quoted = []
    for value in (run_dir, model_version):
        quote = next((q for q in ("'", '"') if q not in value), None)
        if quote is None:
            return None
        quoted.append(f"{quote}{value}{quote}")
    return (
        f"tags.`floranet.run_dir` = {quoted[0]} AND tags.`floranet.model_version` = {quoted[1]} "
        "AND attributes.status = 'FINISHED'"
    )


def local_store_path(uri: str, scheme: str) -> Path | None:
    """What a store on this machine writes, as MLflow resolves it (from the current folder when relative): a file
    store's folder (a path, ``file:``), a SQLite database's file; None for the other stores.

    Args:
        uri: The tracking URI.
        scheme: As :func:`store_scheme` reads it.
    """
    if scheme == "":
        return Path(uri)
    path = urllib.parse.urlsplit(uri).path
    if scheme == "file":
        return Path(urllib.request.url2pathname(path))
    if scheme == "sqlite":  # sqlite:///mlflow.db is mlflow.db, sqlite:////abs/m.db is /abs/m.db
        return Path(path[1:]) if path[1:] not in ("", ":memory:") else None
    return None


def supported_schemes() -> tuple[str, ...]:
    """The schemes of the tracking stores the installed MLflow has, plugins included: read from its registry where
    that can be imported, else :data:`KNOWN_SCHEMES`; never :data:`REGISTRY_ONLY`."""
    try:  # a private name of MLflow's: it may move, and then MLflow 3.17's list stands in
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        schemes = tuple(_tracking_store_registry._registry)
    except (ImportError, AttributeError):
        schemes = KNOWN_SCHEMES
    return tuple(s for s in schemes if s not in REGISTRY_ONLY)


def check_scheme(scheme: str, given: str) -> None:
    """Refuses a scheme MLflow has no tracking store for (``ftp://``, ``s3://``, a typo such as ``htp://``), which
    failed only when logging, after training.

    Args:
        scheme: As :func:`store_scheme` reads it.
        given: Where the URI came from, for the message.

    Raises:
        ConfigError: Not one of :func:`supported_schemes`; the message lists them.
    """
    supported = supported_schemes()
    if scheme in supported:
        return
    if scheme in REGISTRY_ONLY:
        what = f"{scheme} is Unity Catalog's model registry, not a tracking store"
    else:
        what = f"MLflow has no tracking store for {scheme}:// URIs"
        what += (
            " (an artifact store: it keeps a tracking server's files, not runs)" if scheme in ARTIFACT_SCHEMES else ""
        )
    names = ", ".join(f"{s}://" for s in sorted(supported) if s)
    raise ConfigError(f"{what}: give a folder or one of {names}. Received: {given}")


def failure(e: BaseException, tracking_uri: str | None = None) -> str:
    """An MLflow failure in one line: its type and the first line of its message (MLflow's run to many), with
    passwords replaced by ``***`` (MLflow's messages name the URL they requested, credentials and all).

    Args:
        e: What MLflow raised.
        tracking_uri: The URI logged to, as ``log_to_mlflow`` took it (its password is hidden wherever it is).
    """
    text = str(e).strip()
    secrets = [password(tracking_uri or ""), password(os.environ.get("MLFLOW_TRACKING_URI", ""))]
    secrets += [os.environ.get(name) for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")]
    return redacted_text(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}", secrets)


def password(uri: str) -> str | None:
    with contextlib.suppress(ValueError):
        return urllib.parse.urlsplit(uri).password
    return None


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """An http(s) ``uri`` without its ``user:password@``, and MLflow's variables that carry them instead: MLflow
    prints the tracking URI, password and all, in its errors and its "View run at" lines.

    Returns:
        The URI MLflow is given and the variables to set while it logs (none when ``uri`` has no password).
    """
    try:
        parts = urllib.parse.urlsplit(uri)
        password = parts.password
    except ValueError:
        return uri, {}
    if password is None or parts.scheme.lower() not in ("http", "https"):  # a database URI needs its password
        return uri, {}
    host = parts.netloc.rsplit("@", 1)[1]
    credentials = {
        "MLFLOW_TRACKING_USERNAME": urllib.parse.unquote(parts.username or ""),
        "MLFLOW_TRACKING_PASSWORD": urllib.parse.unquote(password),
    }
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), credentials


def check_reachable(target: str, given: str, say: Callable[[str], None] | None = None) -> None:
    """One HTTP request to the tracking server, through the proxy that reaches it as MLflow's client goes: any
    answer, an error status included, will do. A server that accepted connections and never answered cost MLflow's
    retries, 3 minutes of silence, after training; none now answers within :data:`ANSWER_TIMEOUT_S`.

    Args:
        target: The server's URI; its credentials are not sent (an answer is all this asks for).
        given: Where the URI came from, for the message.
        say: Where the line saying what is asked goes (None: nowhere).

    Raises:
        ConfigError: No host in the URI or a port that is no number; no connection, or no answer in time.
    """
    uri, _ = split_credentials(target)
    parts = urllib.parse.urlsplit(uri)
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        host = None
    if not host:
        raise ConfigError(f"An MLflow tracking server's URI names its host (http://host:5000). Received: {given}")
    if say is not None:
        say(f"MLflow: asking the tracking server at {redacted(target)} (at most {ANSWER_TIMEOUT_S:g} s) ...")
    probe = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=_")
    try:
        open_url(probe, timeout=ANSWER_TIMEOUT_S, head_deadline=ANSWER_TIMEOUT_S).close()
        return
    except urllib.error.HTTPError as e:  # an error status is an answer (404: no such experiment; 401: a login)
        e.close()
        return
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):  # TLS answered; MLflow's own certificate settings decide the rest
            return
        why = f"no connection within {ANSWER_TIMEOUT_S:g} s" if isinstance(e.reason, TimeoutError) else ""
        why = why or getattr(e.reason, "strerror", None) or str(e.reason)
    except TimeoutError:  # connected, and no answer (its head_deadline, or a read's timeout)
        why = f"it accepts connections but sends no answer within {ANSWER_TIMEOUT_S:g} s"
    except (OSError, http.client.HTTPException, ValueError) as e:  # closed without an answer, not HTTP, ...
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise ConfigError(
        f"The MLflow tracking server does not answer ({why}): start it, or give another tracking URI. Received: {given}"
    )
