"""Typed settings loaded from one TOML file plus LISTSERV_* environment overrides.

Settings are passed explicitly; there is no global instance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Mapping

from listserv.core.errors import ConfigError

DATA_DIR_MARK = "<data_dir>"


DAYS_MAX = 36500      # day counts: date arithmetic stays within datetime's range


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///<data_dir>/listserv.db"
    # how long a process's claim on a job or delivery batch lasts unless renewed (renewed every
    # third of it); the work of a process that died is taken over after this
    lease_seconds: float = 30.0


@dataclass(frozen=True)
class IntakeSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    protocol: str = "smtp"
    max_message_size: int = 10485760
    max_connections: int = 500               # concurrent sessions; over it: 421 4.7.0, close
    idle_timeout: float = 60.0               # seconds a client may stay silent
    max_recipients_per_message: int = 100    # RCPTs per transaction; then 452 4.5.3


@dataclass(frozen=True)
class DeliverySettings:
    outbound: str = "maildir:<data_dir>/outbox"
    max_recipients_per_transaction: int = 500
    connections: int = 8
    verp: bool = True
    retry_schedule: tuple[int, ...] = (60, 300, 900, 3600, 14400)
    give_up_after_days: float = 5.0


@dataclass(frozen=True)
class ModerationSettings:
    token_lifetime_days: float = 14.0
    require_authenticated_replies: bool = False
    trusted_authserv_id: str = ""


@dataclass(frozen=True)
class WebSettings:
    listen: str = "127.0.0.1:8080"           # "" turns the web part off
    base_url: str = "http://127.0.0.1:8080"  # the public URL that links in mail use


@dataclass(frozen=True)
class ArchiveSettings:
    mbox: bool = True                        # also write <data_dir>/archives/LIST/YYYY-MM.mbox
    pages: bool = True                       # refresh the static pages in <data_dir>/archives/LIST/html/


@dataclass(frozen=True)
class Settings:
    data_dir: str = "./listserv-data"
    site_domain: str = "localhost"
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    web: WebSettings = field(default_factory=WebSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)

    # -- derived paths -------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def spool_path(self) -> Path:
        return self.data_path / "spool"

    @property
    def archive_path(self) -> Path:
        return self.data_path / "archives"

    @property
    def database_url(self) -> str:
        return expand(self.database.url, self.data_dir)

    @property
    def outbound(self) -> str:
        return expand(self.delivery.outbound, self.data_dir)


SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "intake": IntakeSettings,
    "delivery": DeliverySettings,
    "moderation": ModerationSettings,
    "web": WebSettings,
    "archive": ArchiveSettings,
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("intake", "protocol"): ("smtp", "lmtp"),
}


def expand(value: str, data_dir: str) -> str:
    return value.replace(DATA_DIR_MARK, data_dir.rstrip("/") or "/")


def _convert(name: str, default: Any, value: Any, from_env: bool) -> Any:
    """Coerce one value to the type of its default; raise ConfigError naming the key."""
    try:
        if isinstance(default, bool):
            if from_env and isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            if from_env and isinstance(value, str):
                value = int(value.strip())
            if not isinstance(value, int):
                raise ValueError
            if value < 0:
                raise ValueError
            return value
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            if from_env and isinstance(value, str):
                value = float(value.strip())
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError
            return float(value)
        if isinstance(default, tuple):
            if from_env and isinstance(value, str):
                text = value.strip()
                value = json.loads(text) if text.startswith("[") else text.split(",")
                value = [int(str(v).strip()) for v in value]
            if not isinstance(value, list) or not value:
                raise ValueError
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ValueError
            return tuple(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        pass
    kind = type(default).__name__ if not isinstance(default, tuple) else "list of positive integers"
    raise ConfigError(f"configuration key {name!r}: invalid value {value!r} (expected {kind})")


def _apply(cls: type, values: Mapping[str, Any], prefix: str, from_env: bool) -> dict[str, Any]:
    defaults = {f.name: _default_of(f) for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in defaults or key in SECTIONS and prefix == "":
            raise ConfigError(f"unknown configuration key {name!r}")
        out[key] = _convert(name, defaults[key], value, from_env)
        choices = CHOICES.get((prefix.rstrip("."), key))
        if choices and out[key] not in choices:
            raise ConfigError(
                f"configuration key {name!r}: {value!r} is not one of {', '.join(choices)}"
            )
    return out


def _default_of(f: dataclasses.Field) -> Any:  # type: ignore[type-arg]
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Any = f.default_factory
    return factory()


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings: defaults < TOML file (path or $LISTSERV_CONFIG) < LISTSERV_* variables."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get("LISTSERV_CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {p}") from None
        except IsADirectoryError:
            raise ConfigError(f"configuration path is a directory: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {p} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"configuration file {p} is not UTF-8 text (byte "
                              f"{exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from None

    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"configuration key {key!r} must be a table [{key}]")
            sections[key].update(_apply(SECTIONS[key], value, f"{key}.", False))
        else:
            top.update(_apply(Settings, {key: value}, "", False))

    # Environment overrides: LISTSERV_<SECTION>_<KEY> or LISTSERV_<KEY>.
    for var, value in env.items():
        if not var.startswith("LISTSERV_") or var == "LISTSERV_CONFIG":
            continue
        if var.startswith("LISTSERV_TEST_"):
            continue  # reserved for the test suite
        rest = var[len("LISTSERV_"):].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                sections[section].update(_apply(SECTIONS[section], {key: value}, f"{section}.", True))
                break
        else:
            if rest in SECTIONS:
                raise ConfigError(f"environment variable {var} names a section, not a key")
            top.update(_apply(Settings, {rest: value}, "", True))

    for key, value in list(top.items()):
        if key in SECTIONS:
            raise ConfigError(f"unknown configuration key {key!r}")
    built = {name: SECTIONS[name](**vals) for name, vals in sections.items()}
    settings = Settings(**top, **built)
    _validate(settings)
    return settings


def _outbound_ok(out: str) -> bool:
    if out.startswith("maildir:"):
        return bool(out[len("maildir:"):].strip())
    if not out.startswith("smtp://"):
        return False
    parts = urlsplit(out)
    try:
        port = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0 and not parts.path.strip("/")


def _validate(s: Settings) -> None:
    if not (0 < s.intake.port < 65536):
        raise ConfigError(f"configuration key 'intake.port': {s.intake.port} is not a TCP port")
    for key, value in (("intake.max_connections", s.intake.max_connections),
                       ("intake.max_recipients_per_message",
                        s.intake.max_recipients_per_message)):
        if value < 1:
            raise ConfigError(f"configuration key {key!r} must be at least 1")
    if not 0 < s.intake.idle_timeout <= 86400:
        raise ConfigError("configuration key 'intake.idle_timeout' must be between 0 and "
                          "86400 seconds")
    # Day counts: dates computed from them must stay within what datetime can represent.
    for key, days in (("moderation.token_lifetime_days", s.moderation.token_lifetime_days),
                      ("delivery.give_up_after_days", s.delivery.give_up_after_days)):
        if not 0 < days <= DAYS_MAX:
            raise ConfigError(f"configuration key {key!r}: {days} is not a number of days "
                              f"between 0 and {DAYS_MAX}")
    if any(not 0 <= delay <= DAYS_MAX * 86400 for delay in s.delivery.retry_schedule):
        raise ConfigError("configuration key 'delivery.retry_schedule': each delay must be "
                          f"between 0 and {DAYS_MAX * 86400} seconds")
    if not 3 <= s.database.lease_seconds <= 3600:
        raise ConfigError("configuration key 'database.lease_seconds' must be between 3 and "
                          "3600 seconds")
    if s.delivery.connections < 1:
        raise ConfigError("configuration key 'delivery.connections' must be at least 1")
    if s.delivery.max_recipients_per_transaction < 1:
        raise ConfigError(
            "configuration key 'delivery.max_recipients_per_transaction' must be at least 1")
    out = s.outbound
    if not _outbound_ok(out):
        raise ConfigError(
            f"configuration key 'delivery.outbound': {out!r} must be maildir:PATH or smtp://HOST:PORT")
    if s.web.listen:
        parse_listen(s.web.listen)
    base = urlsplit(s.web.base_url)
    if base.scheme not in ("http", "https") or not base.hostname or base.query or base.fragment:
        raise ConfigError(
            f"configuration key 'web.base_url': {s.web.base_url!r} must be http(s)://HOST[/PATH]")
    url = s.database_url
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise ConfigError(f"configuration key 'database.url': unsupported database {url!r}")


def parse_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port); ConfigError naming web.listen otherwise."""
    host, sep, port = listen.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(
            f"configuration key 'web.listen': {listen!r} must be HOST:PORT (or \"\" for off)")
    return host, int(port)


def replace(settings: Settings, **changes: Any) -> Settings:
    """Return a copy with top-level or dotted ('delivery.verp') keys changed (for tests)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if "__" in key:
            section, sub = key.split("__", 1)
            nested.setdefault(section, {})[sub] = value
        else:
            top[key] = value
    for section, vals in nested.items():
        top[section] = dataclasses.replace(getattr(settings, section), **vals)
    return dataclasses.replace(settings, **top)
