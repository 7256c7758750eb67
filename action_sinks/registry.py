"""Decides which sink serves each channel, from `actionlayer.yml` and `ACTIONLAYER_SMTP_*` variables.

With nothing configured every channel (email, task, notify and any other) goes to the file outbox at
`actionlayer.config.outbox_dir()`. The settings file looks like:

    channels:
      email:  {sink: smtp, host: mail.example.com, port: 587, from: sales@example.com,
               starttls: true, username: sales, password_env: ACTIONLAYER_SMTP_PASSWORD}
      task:   {sink: file}
      notify: {sink: file, root: /var/actionlayer/notify}

      slack:  {sink: slack, token_env: SLACK_BOT_TOKEN}
      line:   {sink: line, token_env: LINE_CHANNEL_ACCESS_TOKEN}
      crm:    {sink: crm_task, vendor: hubspot, token_env: HUBSPOT_TOKEN}
      hook:   {sink: webhook, url: https://example.com/hooks/actions, secret_env: ACTIONLAYER_WEBHOOK_SECRET}

Each HTTP channel's keys are documented in its module (action_sinks/slack.py, line.py, crm_task.py,
webhook.py). `ACTIONLAYER_SMTP_HOST` (with `_PORT`, `_FROM`, and optional `_USERNAME`, `_STARTTLS`) routes email to
SMTP and overrides the file's values for email; a username's password is read from
`ACTIONLAYER_SMTP_PASSWORD` unless the file names another `password_env`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from action_sinks.base import Sink, SinkConfigError
from action_sinks.file import FileOutbox
from action_sinks.smtp import SmtpSink
from actionlayer import config

SINK_NAMES = ("file", "smtp", "slack", "line", "crm_task", "webhook")
ENV_HOST = "ACTIONLAYER_SMTP_HOST"
ENV_PORT = "ACTIONLAYER_SMTP_PORT"
ENV_FROM = "ACTIONLAYER_SMTP_FROM"
ENV_USERNAME = "ACTIONLAYER_SMTP_USERNAME"
ENV_STARTTLS = "ACTIONLAYER_SMTP_STARTTLS"
DEFAULT_PASSWORD_ENV = "ACTIONLAYER_SMTP_PASSWORD"
DEFAULT_SMTP_PORT = 25

_SMTP_KEYS = {"sink", "host", "port", "from", "timeout", "starttls", "username", "password_env"}
_FILE_KEYS = {"sink", "root", "from"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ChannelSinks(Mapping[str, Sink]):
    """Channel → sink, where a channel without its own entry falls back to the default sink."""

    def __init__(self, routes: Mapping[str, Sink], default: Sink) -> None:
        self.routes = dict(routes)
        self.default = default

    def __getitem__(self, channel: str) -> Sink:
        return self.routes.get(channel, self.default)

    def __contains__(self, channel: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def close(self) -> None:
        """Release the sinks' connections (HTTP clients); safe to call more than once."""
        for sink in {id(s): s for s in [*self.routes.values(), self.default]}.values():
            close = getattr(sink, "close", None)
            if callable(close):
                close()

    def describe(self) -> list[str]:
        """One line per configured channel, without secrets (for `actionlayer status`-style output)."""
        lines = [f"{channel}: {_describe(sink)}" for channel, sink in sorted(self.routes.items())]
        return [*lines, f"(any other channel): {_describe(self.default)}"]


def _describe(sink: Sink) -> str:
    describe = getattr(sink, "describe", None)
    if callable(describe):
        return str(describe())
    if isinstance(sink, SmtpSink):
        return f"smtp {sink.host}:{sink.port} from {sink.sender}"
    if isinstance(sink, FileOutbox):
        return f"file outbox {sink.root}"
    return getattr(sink, "name", type(sink).__name__)


def _load_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SinkConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise SinkConfigError(f"{path}: cannot be read: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SinkConfigError(f"{path}: expected a mapping at the top level, found {type(loaded).__name__}")
    channels = loaded.get("channels") or {}
    if not isinstance(channels, dict):
        raise SinkConfigError(
            f"{path}: key 'channels' must be a mapping of channel → settings, found {channels!r}"
        )
    for channel, entry in channels.items():
        if not isinstance(entry, dict):
            raise SinkConfigError(f"{path}: key 'channels.{channel}' must be a mapping, found {entry!r}")
    return channels


def _port(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise SinkConfigError(f"{where}: port {value!r} is not a number")
    try:
        port = int(str(value).strip())
    except ValueError as exc:
        raise SinkConfigError(f"{where}: port {value!r} is not a number") from exc
    if not 0 < port < 65536:
        raise SinkConfigError(f"{where}: port {port} is outside 1-65535")
    return port


def _flag(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SinkConfigError(f"{where}: {value!r} is not true/false")


def _smtp_sink(entry: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> SmtpSink:
    unknown = sorted(set(entry) - _SMTP_KEYS)
    if unknown:
        raise SinkConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {sorted(_SMTP_KEYS)}")
    host = str(entry.get("host") or "").strip()
    if not host:
        raise SinkConfigError(f"{where}: sink smtp needs a host (key 'host' or {ENV_HOST})")
    sender = str(entry.get("from") or "").strip()
    if not sender:
        raise SinkConfigError(f"{where}: sink smtp needs a sender address (key 'from' or {ENV_FROM})")
    port = _port(entry.get("port", DEFAULT_SMTP_PORT), f"{where}.port")
    timeout_value = entry.get("timeout", 10)
    try:
        timeout = float(timeout_value)
    except (TypeError, ValueError) as exc:
        raise SinkConfigError(f"{where}.timeout: {timeout_value!r} is not a number of seconds") from exc
    username = str(entry["username"]).strip() if entry.get("username") else None
    password_env = str(entry.get("password_env") or "").strip() or (
        DEFAULT_PASSWORD_ENV if username else None
    )
    if username and password_env not in environ:
        raise SinkConfigError(
            f"{where}: username {username!r} is set but the password variable {password_env} is not; "
            "nothing was sent"
        )
    return SmtpSink(
        host=host,
        port=port,
        sender=sender,
        timeout=timeout,
        starttls=_flag(entry.get("starttls", False), f"{where}.starttls"),
        username=username,
        password_env=password_env if username else None,
    )


def _file_sink(entry: Mapping[str, Any], where: str, default_root: Path) -> FileOutbox:
    unknown = sorted(set(entry) - _FILE_KEYS)
    if unknown:
        raise SinkConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {sorted(_FILE_KEYS)}")
    root = Path(entry["root"]) if entry.get("root") else default_root
    if entry.get("from"):
        return FileOutbox(root, sender=str(entry["from"]))
    return FileOutbox(root)


def _env_email_entry(
    file_entry: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> dict[str, Any] | None:
    names = (ENV_HOST, ENV_PORT, ENV_FROM, ENV_USERNAME, ENV_STARTTLS)
    present = {name: environ[name] for name in names if environ.get(name)}
    if not present:
        return None
    if ENV_HOST not in present:
        raise SinkConfigError(
            f"environment: {', '.join(sorted(present))} set but {ENV_HOST} is not; set the host or unset them"
        )
    base = dict(file_entry) if file_entry and file_entry.get("sink") == "smtp" else {}
    base["sink"] = "smtp"
    base["host"] = present[ENV_HOST]
    if ENV_PORT in present:
        base["port"] = _port(present[ENV_PORT], ENV_PORT)
    for env_name, key in ((ENV_FROM, "from"), (ENV_USERNAME, "username")):
        if env_name in present:
            base[key] = present[env_name]
    if ENV_STARTTLS in present:
        base["starttls"] = _flag(present[ENV_STARTTLS], ENV_STARTTLS)
    return base


def build_sinks(
    settings_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    outbox_root: Path | None = None,
) -> ChannelSinks:
    """Build channel → sink from the settings file and environment (defaults: the real ones)."""
    path = Path(settings_path) if settings_path is not None else config.settings_file()
    env = os.environ if environ is None else environ
    root = Path(outbox_root) if outbox_root is not None else config.outbox_dir()
    default = FileOutbox(root)
    channels = _load_settings(path)
    env_email = _env_email_entry(channels.get("email"), env)
    routes: dict[str, Sink] = {}
    for channel, entry in channels.items():
        where = f"{path}: channels.{channel}"
        if channel == "email" and env_email is not None:
            continue
        routes[str(channel)] = _sink_for(entry, where, env, root)
    if env_email is not None:
        routes["email"] = _sink_for(env_email, f"environment {ENV_HOST} etc. (email channel)", env, root)
    return ChannelSinks(routes, default)


def _sink_for(entry: Mapping[str, Any], where: str, environ: Mapping[str, str], root: Path) -> Sink:
    sink_name = entry.get("sink", "file")
    if sink_name == "smtp":
        return _smtp_sink(entry, where, environ)
    if sink_name == "file":
        return _file_sink(entry, where, root)
    # HTTP channels: each module validates its own keys (errors name them) and reads secrets from the
    # environment variables the entry names
    if sink_name == "slack":
        from action_sinks.slack import SlackSink

        return SlackSink.from_settings(entry, where, environ)
    if sink_name == "line":
        from action_sinks.line import LineSink

        return LineSink.from_settings(entry, where, environ)
    if sink_name == "crm_task":
        from action_sinks.crm_task import crm_task_sink

        return crm_task_sink(entry, where, environ)
    if sink_name == "webhook":
        from action_sinks.webhook import WebhookSink

        return WebhookSink.from_settings(entry, where, environ)
    raise SinkConfigError(
        f"{where}.sink: unknown sink {sink_name!r}; expected one of {', '.join(SINK_NAMES)}"
    )
