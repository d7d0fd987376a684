"""Settings from the environment and `.env` (python-dotenv).

Credentials live here and only here: never in Luigi parameters (the web view shows those), never in logs.
With no `.env` at all every setting points at the embedded demo (SQLite source, DuckDB warehouse) under `var/`.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values, load_dotenv
from dotenv.parser import parse_stream

# The key is a connection-string keyword for a secret: PWD, PASSWORD, PASSWD, SECRET or a keyword ending with one
# (KeyStoreSecret, TrustStorePassword, KeyPassword: letters only before it), ACCESSTOKEN, or Microsoft's CLIENTKEY
# and CLIENTCERTIFICATE (`file:<path>,password:<pwd>`), wherever they stand. The plain words KEY, PASS, TOKEN and
# DataDirect's short KP, KSP, TSP (KeyPassword, KeystorePassword, TruststorePassword) are also names a Progress
# field may have, and messages name a row by its key columns (`key token='A1'`): those count where a connection
# string has them, at the start of a line or right after `;`, `{`, `"` or `'` (as a key column, `key=...`
# masked the value refused, the reason and the advice after it: found in review). A key column named in a
# message keeps its value: `sort_key=5`, `hkey=7`, `monkey=1` (any ending KEY, PASS or TOKEN masked them, and with
# them the rest of the message: found in review). The values of those keywords in the connection strings of the
# settings are masked wherever they appear too (`register_secrets`), whatever stands before their keyword.
# The value is `{...}` (ODBC braces, `}}` inside is an escaped `}`), "..." or '...' (doubled quote inside), each
# with whatever follows up to the next `;` (ODBC does not quote: `PWD="ab"cd` is one password, and its tail
# leaked), or anything up to the next `;` or line end.
# The mask is a braced value, `PWD={***}`: masking the text again (messages are masked where they are made and
# again on their way to the log) matches exactly that, instead of taking everything after it up to the line end.
_STRONG_KEYS = r"[A-Z]*(?:PWD|PASSWORD|PASSWD|SECRET)|ACCESSTOKEN|CLIENTKEY|CLIENTCERTIFICATE"
_PLAIN_KEYS = r"KEY|PASS|TOKEN|KP|KSP|TSP"
_SECRET_NAME = re.compile(rf"(?i)(?:{_STRONG_KEYS}|{_PLAIN_KEYS})")
_SECRET_KEYS = re.compile(rf"""(?im)(?:\b({_STRONG_KEYS})\b|(?:^|(?<=[;{{"']))({_PLAIN_KEYS})\b)[ \t]*=[ \t]*"""
                          r"""(\{\*\*\*\}(?!\})|(?:\{(?:[^}]|\}\})*\}|"(?:[^"]|"")*"|'(?:[^']|'')*')[^;\r\n]*"""
                          r"""|[^;\r\n]*)""")
MASK = "{***}"
_KNOWN_SECRETS: set[str] = set()
MIN_KNOWN_SECRET = 3  # a shorter value would mask every such word or number of every message


def mask_secrets(text: str) -> str:
    """Mask password-like values in a connection string or any message that may quote one."""
    text = _SECRET_KEYS.sub(lambda m: f"{m.group(1) or m.group(2)}={MASK}", text or "")
    for value in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def register_secrets(connection: str) -> None:
    """The values of a connection string's secret keywords, masked in every message from now on: a driver may
    quote them where no keyword stands right before them."""
    for m in _PAIR.finditer(connection or ""):
        key, value = m.group(1), m.group(2).strip()
        if _SECRET_NAME.fullmatch(key.strip()) and value != MASK:
            for v in (value, value[1:-1].replace("}}", "}") if value.startswith("{") and value.endswith("}")
                      else None):
                if v and len(v) >= MIN_KNOWN_SECRET:
                    _KNOWN_SECRETS.add(v)


# connection-string keys whose values are shown where the pipeline names its connections (init-db, summary,
# messages): every other value is masked, whatever its key is called
_SHOWN_KEYS = frozenset({"DRIVER", "DSN", "SERVER", "HOST", "HOSTNAME", "PORT", "PORTNUMBER", "DATABASE", "DB",
                         "DATABASENAME", "UID", "USER", "USER ID", "USERNAME", "LOGONID", "ENCRYPT",
                         "TRUSTSERVERCERTIFICATE", "APP", "APPLICATION NAME", "STEPAPI"})
_PAIR = re.compile(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")


def connection_summary(text: str) -> str:
    """An ODBC connection string with only the values of _SHOWN_KEYS shown (driver, server, database, user):
    mask_secrets goes by the names passwords have, so a mistyped keyword (`PDW=`, `Pasword=`) passed it whole
    (found in review); here any other value is masked, and text that is not `key=value` is left out."""
    out = []
    for m in _PAIR.finditer(text or ""):
        key, value = m.group(1), m.group(2).strip()
        out.append(f"{key}={value if key.upper() in _SHOWN_KEYS else MASK}")
    return ";".join(out)


class _MaskedRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return mask_secrets(super().getMessage())


_WARNED: set[str] = set()


def warn_once(logger: logging.Logger, message: str) -> None:
    """A warning said once per process: Luigi asks requires() on every scheduling pass, and a run loads each of
    hundreds of tables with the same configuration."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def install_log_masking() -> None:
    """Mask secrets in every log record of the process, tracebacks included (idempotent). Luigi's worker logs a
    failed task's exception itself, so a driver message quoting a connection string is masked on the way out
    whatever logger or handler writes it."""
    base = logging.getLogRecordFactory()
    if getattr(base, "masks_secrets", False):
        return

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        if type(record) is logging.LogRecord:
            record.__class__ = _MaskedRecord
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text instead of formatting again
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return record

    factory.masks_secrets = True
    logging.setLogRecordFactory(factory)


@dataclass(frozen=True)
class Settings:
    home: Path
    source_kind: str  # 'demo' (SQLite file read by Python's sqlite3) | 'odbc' (pyodbc / arrow-odbc)
    source_path: Path  # demo source file
    source_odbc: str = field(repr=False)  # ODBC connection string (secret)
    source_init_sql: tuple[str, ...]  # statements run after connecting (e.g. ATTACH for the SQLite stand-in)
    source_isolation: str  # READ_UNCOMMITTED | DEFAULT
    source_dialect: str  # 'openedge' | 'sqlite-standin' (the ODBC test stand-in)
    odbc_reader: str  # 'auto' | 'arrow-odbc' | 'pyodbc'
    warehouse_kind: str  # 'duckdb' | 'mssql'
    duckdb_path: Path
    mssql_odbc: str = field(repr=False)
    cache_dir: Path = Path("var/cache")
    batch_rows: int = 50_000
    duckdb_memory_limit: str = "256MB"  # the embedded warehouse (raised for wide MERGEs: duckdb_wh.before_merge)
    transform_memory_limit: str = "256MB"  # the in-memory transform engine (shapes batches as they are read)
    duckdb_threads: int = 2
    query_timeout_s: int = 0
    connect_retries: int = 3
    allow_empty_full: tuple[str, ...] = ()  # tables whose full batch may be empty (else refused: see steps.merge)
    mssql_bulk_timeout_s: int = 86_400  # one bulk copy into stg (mssql-python's own default is 30 s)
    source_timezone: str = ""  # the ERP's clock (IANA name); empty: this process's local time zone

    def source_zone(self) -> tzinfo | None:
        """The zone the source's local times (dat_mod, LastSuccessTs) are counted in; None: this process's."""
        return ZoneInfo(self.source_timezone) if self.source_timezone else None

    def empty_full_allowed(self, table: str) -> bool:
        return "*" in self.allow_empty_full or table.lower() in self.allow_empty_full

    def describe(self) -> str:
        src = str(self.source_path) if self.source_kind == "demo" else connection_summary(self.source_odbc)
        return f"source={self.source_kind}:{src} warehouse={self.describe_warehouse()}"

    def describe_warehouse(self) -> str:
        wh = str(self.duckdb_path) if self.warehouse_kind == "duckdb" else connection_summary(self.mssql_odbc)
        return f"{self.warehouse_kind}:{wh}"


_ISOLATIONS = ("READ_UNCOMMITTED", "DEFAULT")  # DEFAULT: the connection's own (DefaultIsolationLevel)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


class SettingError(ValueError):
    """A CBM_* setting holds a value the product cannot use: the message names it and what it takes."""


def _int(name: str, default: int, minimum: int) -> int:
    text = _env(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"{name}={text!r}: a whole number is expected (default {default})") from None
    if value < minimum:
        raise SettingError(f"{name}={text!r}: at least {minimum} (default {default})")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    text = _env(name, default)
    value = "_".join(text.upper().split()) if upper else text.lower()  # `READ UNCOMMITTED` as in ODBC
    if value not in choices:
        raise SettingError(f"{name}={text!r}: one of {', '.join(choices)} (default {default})")
    return value


_SIZE = re.compile(r"\s*(\d+(\.\d+)?\s*([KMGT]i?B|[KMGT])|\d+(\.\d+)?\s*%|-1|none)\s*", re.I)


def _size(name: str, default: str) -> str:
    """A DuckDB memory limit: `256MB`, `1.5GB`, `2GiB`, `80%`, `-1` or `none` (no limit)."""
    text = _env(name, default)
    if not _SIZE.fullmatch(text):
        raise SettingError(f"{name}={text!r}: a size such as 256MB, 1.5GB or 80% (default {default})")
    return text


# every CBM_* name the product reads (Settings below, the fault points of faults.py, the bulk copy switch of
# mssql_wh.py, the live SQL Server tests)
KNOWN_NAMES = frozenset({
    "CBM_HOME", "CBM_ENV_FILE", "CBM_SOURCE_KIND", "CBM_DEMO_SOURCE", "CBM_SOURCE_ODBC", "CBM_SOURCE_INIT_SQL",
    "CBM_SOURCE_ISOLATION", "CBM_SOURCE_DIALECT", "CBM_ODBC_READER", "CBM_WAREHOUSE_KIND", "CBM_DUCKDB_PATH",
    "CBM_MSSQL_ODBC", "CBM_CACHE_DIR", "CBM_BATCH_ROWS", "CBM_DUCKDB_MEMORY_LIMIT", "CBM_TRANSFORM_MEMORY_LIMIT",
    "CBM_DUCKDB_THREADS", "CBM_QUERY_TIMEOUT_S", "CBM_CONNECT_RETRIES", "CBM_ALLOW_EMPTY_FULL",
    "CBM_MSSQL_BULK_TIMEOUT_S", "CBM_MSSQL_BULK", "CBM_PAUSE_AT", "CBM_PAUSE_FILE", "CBM_FAIL_AT", "CBM_TEST_MSSQL",
    "CBM_SOURCE_TIMEZONE"})


def check_names(names) -> None:
    """A CBM_* name the product does not read is a typo until shown otherwise: `CBM_WAREHOUSE_KND=mssql` left
    the default DuckDB warehouse in use, and init-db's advice built one (found in review)."""
    unknown = sorted(n for n in names if n.startswith("CBM_") and n not in KNOWN_NAMES)
    if unknown:
        said = [f"{n} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(n, KNOWN_NAMES, 1, 0.75))
                else n for n in unknown]
        raise SettingError(f"unknown setting {', '.join(said)}: correct or remove it (in .env or the environment); "
                           f"the settings are listed in config/.env.template")


def _zone(name: str) -> str:
    text = _env(name)
    if text:
        try:
            ZoneInfo(text)
        except (ValueError, ZoneInfoNotFoundError):
            raise SettingError(f"{name}={text!r}: an IANA time zone such as Europe/Paris (default: the host's "
                               f"own)") from None
    return text


def _check_readable(env_file: Path) -> None:
    """A settings file its group or others can read is said (once a process). Every line of it must parse:
    python-dotenv skips a line it cannot read, and after an unterminated quote every line that follows, with a
    warning only, so their settings took their demo defaults (found in review: the whole file dropped). The
    lines are named, never shown (one may hold a password). A line with no `=` holds no setting: it is said."""
    mode = env_file.stat().st_mode
    if mode & 0o077:  # OPERATIONS: mode 600
        warn_once(logging.getLogger(__name__), f"{env_file} is open to its group or other users (mode "
                                               f"{mode & 0o777:o}): it holds the passwords: `chmod 600 {env_file}`")
    with open(env_file, encoding="utf-8-sig") as f:
        errors = [b for b in parse_stream(f) if b.error]
    # a line without '=' holds no setting (a `;` comment, `set -a`): python-dotenv skipping it loses nothing, and
    # the release before read such a file (found in review)
    for b in errors:
        if "=" not in b.original.string:
            warn_once(logging.getLogger(__name__), f"{env_file}: line {b.original.line} is not a setting (a name, "
                                                   f"'=', a value) nor a # comment; it is skipped")
    bad = [b.original.line for b in errors if "=" in b.original.string]
    if bad:
        raise SettingError(f"{env_file}: line(s) {', '.join(map(str, bad))} cannot be read (an unterminated quote, "
                           f"text after a closing quote?), and python-dotenv would skip them (after an "
                           f"unterminated quote, maybe every line that follows): fix the quoting (a value with spaces, "
                           f"'#' or quotes in double quotes, an inner double quote escaped as \\\"), then run again")


def home_dir() -> Path:
    """CBM_HOME, or the working directory when it is unset or empty (it cannot be set in .env: see below)."""
    return Path(_env("CBM_HOME") or os.getcwd()).resolve()


def load_settings() -> Settings:
    """Read `.env` (the one in CBM_HOME or the current directory) then the process environment."""
    home = home_dir()
    named = os.environ.get("CBM_ENV_FILE")  # unset: CBM_HOME's .env if there is one; empty: no file
    env_file = home / ".env" if named is None else Path(named.strip()) if named.strip() else None
    if named and named.strip() and not env_file.is_file():
        # a typo or a moved file silently gave every setting its demo default (the embedded warehouse instead of
        # SQL Server: found in review)
        raise SettingError(f"CBM_ENV_FILE={named!r}: no such file ({env_file.resolve()}): point it at the "
                           f"settings file (config/.env.template shows one), or leave it empty to read none")
    if env_file is not None and env_file.is_file():
        _check_readable(env_file)
        # where .env is read from cannot be set in it: CBM_HOME written there entered the environment after this
        # call had resolved var/ from the working directory, so a run's later calls used another warehouse (an
        # empty one, whose advice to run init-db led nowhere: found in review)
        inside = sorted(k for k in dotenv_values(env_file) if k.strip() in ("CBM_HOME", "CBM_ENV_FILE"))
        if inside:
            raise SettingError(f"{' and '.join(inside)} in {env_file}: they say where the settings file is read "
                               f"from, so they are environment variables (the cron line, the shell), not .env "
                               f"settings: remove them from the file and set them in the environment")
        load_dotenv(env_file, override=False)
    check_names(os.environ)
    var = home / "var"

    def path(name: str, default: Path) -> Path:
        value = _env(name)
        p = Path(value) if value else default
        return p if p.is_absolute() else (home / p)

    init = _env("CBM_SOURCE_INIT_SQL")
    register_secrets(_env("CBM_SOURCE_ODBC"))
    register_secrets(_env("CBM_MSSQL_ODBC"))
    return Settings(
        home=home,
        source_kind=_choice("CBM_SOURCE_KIND", "demo", ("demo", "odbc")),
        source_path=path("CBM_DEMO_SOURCE", var / "demo_source.sqlite"),
        source_odbc=_env("CBM_SOURCE_ODBC"),
        source_init_sql=tuple(s.strip() for s in init.split(";;") if s.strip()),
        source_isolation=_choice("CBM_SOURCE_ISOLATION", "READ_UNCOMMITTED", _ISOLATIONS, upper=True),
        source_dialect=_choice("CBM_SOURCE_DIALECT", "openedge", ("openedge", "sqlite-standin")),
        odbc_reader=_choice("CBM_ODBC_READER", "auto", ("auto", "arrow-odbc", "pyodbc")),
        warehouse_kind=_choice("CBM_WAREHOUSE_KIND", "duckdb", ("duckdb", "mssql")),
        duckdb_path=path("CBM_DUCKDB_PATH", var / "warehouse.duckdb"),
        mssql_odbc=_env("CBM_MSSQL_ODBC"),
        cache_dir=path("CBM_CACHE_DIR", var / "cache"),
        batch_rows=_int("CBM_BATCH_ROWS", 50000, 1000),  # a ceiling; extract.batch_rows_for sizes below it
        duckdb_memory_limit=_size("CBM_DUCKDB_MEMORY_LIMIT", "256MB"),
        transform_memory_limit=_size("CBM_TRANSFORM_MEMORY_LIMIT", "256MB"),
        duckdb_threads=_int("CBM_DUCKDB_THREADS", 2, 1),
        query_timeout_s=_int("CBM_QUERY_TIMEOUT_S", 0, 0),
        connect_retries=_int("CBM_CONNECT_RETRIES", 3, 0),
        allow_empty_full=tuple(t.strip().lower() for t in _env("CBM_ALLOW_EMPTY_FULL").split(",") if t.strip()),
        mssql_bulk_timeout_s=_int("CBM_MSSQL_BULK_TIMEOUT_S", 86400, 1),
        source_timezone=_zone("CBM_SOURCE_TIMEZONE"),
    )
