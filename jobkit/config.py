"""Settings: one frozen dataclass read from ``JOBKIT_*`` variables, overridable by arguments.

The original names stay importable as module constants (``WORKER_POLL_INTERVAL``,
``MAX_JOB_RETRIES``, ``WORKER_ENABLED``): they are the defaults, read once from
the environment at import time. Code that needs the live value calls
:func:`Settings.from_env`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError
from .urls import (
    DEFAULT_DATABASE_URL,
    SUPPORTED_SCHEMES,
    check_alert_url,
    check_url,
    redact_url,
    safe_url,
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Every knob jobkit has. Field ``x`` is read from ``JOBKIT_X``."""

    database_url: str = DEFAULT_DATABASE_URL
    worker_poll_interval: float = 2.0
    max_job_retries: int = 3
    worker_enabled: bool = False
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 300.0
    cut_analysis_seconds: float = 0.5
    lease_seconds: float = 60.0
    heartbeat_seconds: float | None = None  # None: lease_seconds / 3
    job_timeout: float | None = None
    shutdown_grace_seconds: float = 30.0
    concurrency: int = 1
    dev_endpoints: bool = False
    alert_url: str | None = None
    media_dir: str = "./media"
    max_upload_bytes: int = 100 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    worker_dead_after_seconds: float | None = None  # None: 3 heartbeats
    alert_timeout: float = 5.0
    alert_retries: int = 3
    health_min_workers: int = 1
    auto_migrate: bool = False
    max_running: str | None = None  # "cut_analysis=2,resize=4": global per-type limits
    progress_interval: float = 0.5
    video_max_width: int = 3840
    video_max_height: int = 2160
    video_max_seconds: float = 4 * 3600.0
    db_pool_size: int = 50  # connections per process, each kept open once made

    def __post_init__(self) -> None:
        check_url(_env_name("database_url"), self.database_url)
        for name in ("worker_poll_interval", "retry_backoff_base", "retry_backoff_max",
                     "cut_analysis_seconds", "shutdown_grace_seconds", "progress_interval"):
            _non_negative(name, getattr(self, name))
        for name in ("lease_seconds", "alert_timeout", "video_max_seconds"):
            _positive(name, getattr(self, name))
        for name in ("heartbeat_seconds", "job_timeout", "worker_dead_after_seconds"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        if self.max_job_retries < 0:
            raise ConfigError(_env_name("max_job_retries"), self.max_job_retries,
                              "a whole number >= 0")
        for name in ("video_max_width", "video_max_height"):
            if getattr(self, name) < 1:
                raise ConfigError(_env_name(name), getattr(self, name), "a whole number >= 1")
        if self.db_pool_size < 1:
            raise ConfigError(_env_name("db_pool_size"), self.db_pool_size, "a whole number >= 1")
        for name in ("alert_retries", "health_min_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(_env_name(name), getattr(self, name), "a whole number >= 0")
        if self.concurrency < 1:
            raise ConfigError(_env_name("concurrency"), self.concurrency, "a whole number >= 1")
        if self.alert_url is not None:
            try:
                check_alert_url(self.alert_url)
            except ValueError:
                raise ConfigError(_env_name("alert_url"), safe_url(self.alert_url),
                                  "an http:// or https:// URL with a host") from None
        for name in ("max_upload_bytes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(_env_name(name), getattr(self, name), "a whole number >= 1")
        if self.max_running:
            _parse_limits(self.max_running)
        if self.heartbeat_seconds is not None and self.heartbeat_seconds >= self.lease_seconds:
            raise ConfigError(_env_name("heartbeat_seconds"), self.heartbeat_seconds,
                              f"a number of seconds below the lease ({self.lease_seconds:g})")

    @property
    def limits(self) -> dict[str, int]:
        """``max_running`` as ``{job_type: limit}``."""
        return _parse_limits(self.max_running) if self.max_running else {}

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats (a third of the lease unless set)."""
        return self.heartbeat_seconds if self.heartbeat_seconds is not None else self.lease_seconds / 3

    @property
    def dead_after(self) -> float:
        """Seconds of heartbeat silence after which a worker counts as dead."""
        if self.worker_dead_after_seconds is not None:
            return self.worker_dead_after_seconds
        return max(self.lease_seconds, 3 * self.heartbeat_interval)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``JOBKIT_*`` variables, then apply ``overrides`` (None = unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = _env_name(f.name)
            if var in env:
                values[f.name] = _parse(f.name, f.type, env[var])
        # The original name for the URL is accepted as a fallback.
        if "database_url" not in values and env.get("DATABASE_URL", "").startswith(SUPPORTED_SCHEMES):
            values["database_url"] = env["DATABASE_URL"]
        for key, value in overrides.items():
            if key not in {f.name for f in fields(cls)}:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_shown(f.name, v)}"
            for f in fields(self) if (v := getattr(self, f.name)) != f.default
        )
        return f"Settings({shown})"


def _shown(name: str, value: Any) -> str:
    if name == "database_url":
        return repr(redact_url(value))
    if name == "alert_url" and value:
        return repr(safe_url(value))
    return repr(value)


def _env_name(field_name: str) -> str:
    return "JOBKIT_" + field_name.upper()


def _parse(name: str, type_: Any, raw: str) -> Any:
    var = _env_name(name)
    text = raw.strip()
    type_s = str(type_)
    optional = "None" in type_s
    if optional and text.lower() in ("", "none", "null"):
        return None
    if type_s.startswith("bool"):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(var, raw, "true or false")
    if type_s.startswith("int"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(var, raw, "a whole number") from None
    if type_s.startswith("float"):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(var, raw, "a number of seconds") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(var, raw, "a finite number of seconds")
        return value
    return raw


def _parse_limits(text: str) -> dict[str, int]:
    limits: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if not sep or not name.strip() or n < 1:
            raise ConfigError(_env_name("max_running"), text,
                              "job_type=N pairs separated by commas, e.g. cut_analysis=2,resize=4")
        limits[name.strip()] = n
    return limits


def _non_negative(name: str, value: float) -> None:
    if not (value >= 0):
        raise ConfigError(_env_name(name), value, "a number of seconds >= 0")


def _positive(name: str, value: float) -> None:
    if not (value > 0):
        raise ConfigError(_env_name(name), value, "a number of seconds > 0")


_ORIGINAL_NAMES = {
    "WORKER_POLL_INTERVAL": "worker_poll_interval",
    "MAX_JOB_RETRIES": "max_job_retries",
    "WORKER_ENABLED": "worker_enabled",
    "DATABASE_URL": "database_url",
}


def __getattr__(name: str) -> Any:
    """The original module constants, read from the environment when asked for."""
    if name in _ORIGINAL_NAMES:
        return getattr(Settings.from_env(), _ORIGINAL_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
