"""The warehouse interface: sessions with transactions, DDL scripts, introspection, staging.

A `Session` runs qmark-parameterised SQL (`?`) on one connection; `transaction()` commits or rolls back as a
whole, which is how a marker row lands together with the data it vouches for.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

from ..settings import Settings
from ..shipped import shipped
from .dialects import WarehouseDialect
from .statements import Column


class Session:
    def execute(self, sql: str, params: list | tuple | None = None) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        raise NotImplementedError

    def query_dicts(self, sql: str, params: list | tuple | None = None) -> list[dict]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: list[list | tuple]) -> None:
        """One statement for many parameter rows (a driver may send them in one go)."""
        for row in rows:
            self.execute(sql, row)

    def scalar(self, sql: str, params: list | tuple | None = None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Session"]:
        self.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")


class Warehouse:
    dialect: WarehouseDialect
    kind = ""

    def __init__(self, settings: Settings):
        self.settings = settings

    def session(self) -> contextlib.AbstractContextManager[Session]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def script_statements(self) -> list[str]:
        """The statements of sql/<dialect>/*.sql in file order (one statement per batch)."""
        where = shipped(f"sql/{self.dialect.name}")
        paths = sorted(where.glob("*.sql"))
        if not paths:  # running none would leave init-db's "run init-db" advice looping (found in review)
            raise FileNotFoundError(f"no SQL script in {where}: this installation of cbm_luigi lacks its sql/ "
                                    f"files; reinstall it (from its wheel, or `pip install -e .` in a checkout)")
        out = []
        for path in paths:
            out += split_script(path.read_text(encoding="utf-8"), self.dialect.name)
        return out

    def init_db(self) -> int:
        stmts = self.script_statements()
        with self.session() as s:
            for stmt in stmts:
                s.execute(stmt)
        return len(stmts)

    def table_columns(self, s: Session, schema: str, table: str) -> dict[str, tuple[str, bool]]:
        """name -> (type text as the dialect writes it, nullable); {} when the table does not exist."""
        raise NotImplementedError

    def replace_stage(self, s: Session, table: str, batch_path: Path, columns: list[Column], tech,
                      keys: dict[str, str] | None = None) -> int:
        """Replace stg.<table> with the batch parquet's rows (business columns, `_etl_hashdiff`,
        `_etl_source_ts`) plus the run's technical values `tech` (transform.TechnicalValues), inside the
        caller's transaction where the dialect allows. Returns the row count. `keys`: the key columns, SQL name
        -> Progress name, for a message that names a row."""
        raise NotImplementedError

    needs_string_lengths = False
    max_columns: int | None = None  # columns per table the warehouse admits (None: no practical limit)

    def row_too_wide(self, error: str) -> bool:
        """Whether a write failed because a row is wider than the warehouse admits (only known when written)."""
        return False

    def out_of_memory(self, error: str) -> bool:
        """Whether a statement failed because the warehouse ran out of the memory it is given."""
        return False

    def missing_relation(self, error: str) -> bool:
        """Whether a statement failed because a table or view it names does not exist."""
        return False

    def before_merge(self, s: Session, n_columns: int, rows: int = 0, *, written: int = 0,
                     text_bytes: int = 0, replaced_bytes: int = 0, new_table: bool = False) -> None:
        """Hook run in the merge's session before the statements that write ods (resource tuning), with the
        `rows` the MERGE joins with ods (0 when every row is new: a plain INSERT), the rows `written`, the bytes
        of their long values and of those they overwrite, and whether the merge has just created ods (a first
        load); nothing by default."""

    def text_counts(self, text_bytes: int, *, rows: int = 0, written: int = 0, replaced: int = 0) -> bool:
        """Whether long values of `text_bytes` in a merge (before_merge's arguments) would raise its memory: an
        upper bound that would not spares measuring them exactly. No by default."""
        return False

    @contextlib.contextmanager
    def measuring(self, s: Session):
        """The resources for reading a table's long values to measure them (DuckDB: its memory limit); as they
        are by default."""
        yield

    def memory_in_force(self) -> tuple[str, str] | None:
        """The memory limit the warehouse's statements run under now, and what to do when a step runs out of it
        (for messages); None when it has none."""
        return None

    # whether a step may leave the warehouse's memory limit changed (DuckDB's SET outlives a rollback): a failed
    # step then opens a session to put it back (steps._settle_resources); no warehouse by default
    sets_memory = False

    def settle_resources(self, s: Session) -> None:
        """Hook run as a merge starts: the configured resources back if a step before changed them; nothing by
        default."""

    @contextlib.contextmanager
    def validation_memory(self, s: Session):
        """Around the validation's checks, in its session (resource tuning); nothing by default."""
        yield

    def keyed_as(self, s: Session, table: str, keys: list[str]) -> bool:
        """Whether ods.<table> is known to have been loaded under exactly `keys` all along (so no row can have a
        NULL in one of them); False when the warehouse cannot tell (DuckDB: the check it spares is cheap there)."""
        return False

    def key_index_ddl(self, s: Session, table: str, keys: list[str], stmts: list[str]):
        """Keeps an index on ods's key columns where the warehouse needs one to merge without scanning, around
        `stmts` (the schema changes about to run): (statements to run before them, None or a function of ods's
        column types after them returning the statements to run then). Nothing by default (DuckDB joins by hash;
        an index would only slow its inserts)."""
        return [], None


def split_script(text: str, dialect: str) -> list[str]:
    """Split a .sql file into statements: on lines holding only `GO` (T-SQL) or on `;` at a line's end."""
    text = re.sub(r"(?m)^\s*--.*$", "", text)
    if dialect == "mssql":
        parts = re.split(r"(?im)^\s*GO\s*$", text)
    else:
        parts = re.split(r";\s*$", text, flags=re.M)
    return [p.strip() for p in parts if p.strip()]


def open_warehouse(settings: Settings) -> Warehouse:
    if settings.warehouse_kind == "duckdb":
        from .duckdb_wh import DuckDbWarehouse
        return DuckDbWarehouse(settings)
    if settings.warehouse_kind == "mssql":
        from .mssql_wh import MssqlWarehouse
        return MssqlWarehouse(settings)
    raise ValueError(f"CBM_WAREHOUSE_KIND={settings.warehouse_kind!r}: expected 'duckdb' or 'mssql'")
