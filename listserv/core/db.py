"""Engine and session factory, SQLite pragmas, the unit of work, and migrations."""

from __future__ import annotations

import ast
import functools
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from listserv.core import writegate
from listserv.core.errors import ConfigError, TemporaryFailure

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit (and so the 250 that follows it) survives a power cut, not only a crash.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, **kw: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False,
                                                  "factory": writegate.GatedConnection}, **kw)
        event.listen(engine, "connect", _sqlite_pragmas)
        # this process's writers queue for the write lock, and queue with other processes'
        writegate.install(engine, path if path and path != ":memory:" else None)
        # pysqlite's own transaction handling: BEGIN (deferred) before the first write, so a
        # read-then-write is not atomic against another writer; SELECT ... FOR UPDATE is a
        # no-op. Claims are therefore UPDATE ... WHERE state=... with a row count check, and
        # SQLite deployments run one `serve` process with one incoming worker.
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 10)
    # the connection returned last is used next: the few in use stay warm (unpinged, below),
    # the others idle
    kw.setdefault("pool_use_lifo", True)
    engine = create_engine(url, **kw)
    if not kw.get("pool_pre_ping"):
        _ping_when_idle(engine)
    event.listen(engine, "before_cursor_execute", _without_nul, retval=True)
    return engine


def _without_nul(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                 executemany: bool) -> tuple[str, Any]:
    """PostgreSQL refuses a NUL character in text ("text fields cannot contain NUL"), and a
    stranger's mail can put one in anything stored from it (a Subject, a From address, a
    bounce's diagnostic): stored from any place, it becomes U+FFFD. (SQLite stores it.)"""
    if executemany:
        if any(map(_has_nul, parameters)):
            parameters = [_nul_free(p) for p in parameters]
    elif _has_nul(parameters):
        parameters = _nul_free(parameters)
    return statement, parameters


def _has_nul(params: Any) -> bool:
    values = params.values() if isinstance(params, dict) else params or ()
    return any(isinstance(v, str) and "\x00" in v for v in values)


def _nul_free(params: Any) -> Any:
    def clean(v: Any) -> Any:
        return v.replace("\x00", "\ufffd") if isinstance(v, str) else v
    if isinstance(params, dict):
        return {k: clean(v) for k, v in params.items()}
    return type(params)(map(clean, params))


# A pooled PostgreSQL connection is pinged (a round trip) before it is used again only when
# it sat unused for this many seconds: a busy daemon reuses its connections within
# milliseconds, and a ping each time (pool_pre_ping) was one round trip more per unit of
# work, several on the way from a post's 250 to its first copy. A connection that breaks
# meanwhile fails its unit of work (a temporary failure: 451, or a job retried) and
# SQLAlchemy then replaces every connection of the pool.
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine) -> None:
    def fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:   # the pool connects anew
            raise DisconnectionError(str(exc)) from exc

    event.listen(engine, "connect", fresh)
    event.listen(engine, "checkin", fresh)
    event.listen(engine, "checkout", checkout)


@contextlib.contextmanager
def _committed(session: Session) -> Iterator[Session]:
    """Commit ``session`` when the block ends, roll it back on an error; close it either way."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class Database:
    """The engine plus a session factory; one per process, passed explicitly."""

    def __init__(self, url: str, **kw: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **kw)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def let_writer_finish(self, timeout: float = writegate.YIELD) -> None:
        """SQLite: before a stretch of computing, wait (at most ``timeout`` s) for this
        process's write transaction in progress, if any, to end (writegate.Gate.wait_free).
        A no-op on PostgreSQL, whose writers do not hold up one another."""
        gate = getattr(self.engine, "write_gate", None)
        if gate is not None:
            gate.wait_free(timeout)

    @contextlib.contextmanager
    def unit_of_work(self, *, durable: bool = True) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error. Helpers never commit.

        ``durable=False``: the commit does not wait for the disk (SQLite ``synchronous=
        NORMAL``, PostgreSQL ``synchronous_commit = off``). A power cut may undo it, never
        half of it, and the next durable commit of anyone (which flushes the log up to
        itself) makes it durable too. Only for work that is redone when it is undone."""
        if durable:
            session = self.sessions()
        elif self.is_sqlite:      # a connection-wide pragma: set, and put back, around it
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                conn.commit()
                try:
                    with _committed(Session(bind=conn, expire_on_commit=False)) as session:
                        yield session
                finally:
                    conn.rollback()
                    conn.exec_driver_sql("PRAGMA synchronous=FULL")
                    conn.commit()
            return
        else:
            session = self.sessions()
            session.execute(text("SET LOCAL synchronous_commit = off"))
        with _committed(session):
            yield session

    def check(self) -> None:
        """Connect once; raise ConfigError with one clear line when the database is unreachable."""
        try:
            with self.engine.connect():
                pass
        except OperationalError as exc:
            raise ConfigError(f"cannot open database {safe_url(self.url)}: "
                              f"{str(exc.orig).strip().splitlines()[0]}") from None

    def dispose(self) -> None:
        self.engine.dispose()


def safe_url(url: str) -> str:
    """The URL with any password hidden."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


# ---------------------------------------------------------------------------- migrations


def alembic_config(db: Database) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = db.engine
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    from alembic import command

    if inspect(db.engine).has_table("alembic_version"):
        refuse_newer(db)
    try:
        command.upgrade(alembic_config(db), revision)
    except OperationalError as exc:
        raise ConfigError(f"cannot migrate database {safe_url(db.url)}: "
                          f"{str(exc.orig).strip().splitlines()[0]}") from None


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(db: Database) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(db)).get_current_head()


def known_revision(db: Database, revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config(db)).get_revision(revision) is not None
    except CommandError:
        return False


def refuse_newer(db: Database) -> None:
    """ConfigError when the database was migrated by a newer listserv than this one."""
    cur = current_revision(db)
    if cur is not None and not known_revision(db, cur):
        raise ConfigError(f"database schema is at {cur}, which this listserv "
                          f"(schema {head_revision(db)}) does not know: it was upgraded by a "
                          "newer listserv; run that version")


@functools.lru_cache(maxsize=1)
def script_heads() -> frozenset[str]:
    """The head revisions of the migration scripts, read from the files with ``ast``: the
    common check (the database is at the one head) needs no Alembic import (≈11 MB RSS
    that an idle daemon would keep). Read once per process: CPython 3.11's ``ast.parse`` is
    not safe while another thread parses too (the traceback module does, to print a
    traceback): "SystemError: AST constructor recursion depth mismatch"."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value_node = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value_node = node.target, node.value
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            name = target.id
            if name == "revision":
                revisions.add(str(ast.literal_eval(value_node)))
            elif name == "down_revision":
                value = ast.literal_eval(value_node)    # None, one id, or a tuple (a merge)
                revised.update([value] if isinstance(value, str) else value or ())
    return frozenset(revisions - revised)


def require_schema(db: Database) -> None:
    """Raise a one-line error when the database was never initialised or is behind."""
    db.check()
    if not inspect(db.engine).has_table("alembic_version"):
        raise ConfigError(f"database {safe_url(db.url)} is not initialised: run 'listserv init'")
    with db.engine.connect() as conn:
        stamped = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if len(stamped) == 1 and stamped == script_heads():
        return                                  # at the one head: nothing to say
    refuse_newer(db)
    cur, head = current_revision(db), head_revision(db)
    if cur != head:
        raise ConfigError(f"database schema is at {cur}, expected {head}: "
                          "run 'listserv db upgrade'")


def temporary(exc: SQLAlchemyError) -> TemporaryFailure:
    return TemporaryFailure(f"database unavailable: {type(exc).__name__}")
