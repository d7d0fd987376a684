"""What differs between the warehouse SQL dialects: quoting, literals, types. Everything else is shared.

`quote` is the one helper every warehouse identifier goes through.
"""
from __future__ import annotations

from ..types import ColumnType


class IdentifierError(ValueError):
    pass


class WarehouseDialect:
    name = ""
    true = "TRUE"
    false = "FALSE"
    max_identifier = 128
    count = "COUNT"  # a row count that holds more than 2^31 rows (DuckDB's COUNT is a BIGINT)

    def quote(self, name: str) -> str:
        raise NotImplementedError

    @staticmethod
    def literal(text: str) -> str:
        """A string literal, for the few places a value cannot be a parameter (a file path in DDL)."""
        return "'" + str(text).replace("'", "''") + "'"

    def table(self, schema: str, name: str) -> str:
        return f"{self.quote(schema)}.{self.quote(name)}"

    def held(self, table_ref: str) -> str:
        """A table in a FROM whose rows read stay locked until the transaction ends (nothing to add where one
        process holds the warehouse)."""
        return table_ref

    def check_identifier(self, name: str) -> str:
        if not name or len(name) > self.max_identifier:
            raise IdentifierError(f"identifier {name!r} is empty or longer than {self.max_identifier} characters")
        return name

    def column_type(self, ctype: ColumnType, max_len: int | None = None) -> str:
        raise NotImplementedError

    def limit(self, sql_select_body: str, n: int) -> str:
        """`SELECT <body>` limited to n rows."""
        raise NotImplementedError

    def is_true(self, expr: str) -> str:
        return f"{expr} = {self.true}"

    def is_false(self, expr: str) -> str:
        return f"{expr} = {self.false}"

    def same_value(self, left: str, right: str, ctype: ColumnType) -> str:
        """`left` holds exactly `right`'s value (NULL the same as NULL)."""
        return f"{left} IS NOT DISTINCT FROM {right}"

    def extends_text(self, old: str, new: str, sep: str) -> str:
        """`new` is the text `old`, then `sep`, then more (not true when either is NULL)."""
        return f"starts_with({new}, {old} || {self.literal(sep)})"

    length_fn = "length"
    binary_length_fn = "octet_length"
    text_bytes_fn = "strlen"  # bytes of a VARCHAR's UTF-8 (length counts characters)

    # types of the technical columns
    hash_type = "VARCHAR(32)"
    id_type = "VARCHAR(64)"
    ts_type = "TIMESTAMP"
    bool_type = "BOOLEAN"
    text_type = "VARCHAR"
    int_type = "BIGINT"

    max_row_bytes: int | None = None  # fixed-length data a row may hold (None: no practical limit)

    @staticmethod
    def fixed_bits(type_text: str) -> int:
        """Bits a value of `type_text` takes in a row's fixed-length part (where max_row_bytes applies)."""
        return 0


class DuckDbDialect(WarehouseDialect):
    name = "duckdb"

    def quote(self, name: str) -> str:
        return '"' + self.check_identifier(name).replace('"', '""') + '"'

    def column_type(self, ctype: ColumnType, max_len: int | None = None) -> str:
        return ctype.duckdb_type()

    def limit(self, body: str, n: int) -> str:
        return f"SELECT {body} LIMIT {int(n)}"


class TsqlDialect(WarehouseDialect):
    name = "mssql"
    true = "1"
    false = "0"
    count = "COUNT_BIG"  # COUNT and SUM of an int are int: Msg 8115 past 2,147,483,647 rows
    hash_type = "CHAR(32)"
    id_type = "NVARCHAR(64)"
    ts_type = "DATETIME2(3)"
    bool_type = "BIT"
    text_type = "NVARCHAR(MAX)"
    # Sizes ods NVARCHAR(n) from stg (steps.stage_lengths writes `MAX(<length_fn>(col))`). LEN ignores trailing
    # blanks and, under _SC collations, counts a surrogate pair as one: both under-size the column. DATALENGTH
    # of an NVARCHAR is 2 bytes per UTF-16 code unit, exactly what NVARCHAR(n) counts.
    length_fn = "0.5 * DATALENGTH"
    binary_length_fn = "DATALENGTH"  # VARBINARY(n) counts bytes
    text_bytes_fn = "DATALENGTH"

    def quote(self, name: str) -> str:
        return "[" + self.check_identifier(name).replace("]", "]]") + "]"

    def held(self, table_ref: str) -> str:
        """UPDLOCK, HOLDLOCK: the rows read keep an update lock to the transaction's end, so another run's stage
        (its UPDATE of the same etl.ETL_TableState row) waits for this merge or validation to commit. A plain read
        under READ COMMITTED lets go at once: another run restaged the table between the merge's check and its
        MERGE, which merged that run's batch as its own (found in review)."""
        return f"{table_ref} WITH (UPDLOCK, HOLDLOCK)"

    def same_value(self, left: str, right: str, ctype: ColumnType) -> str:
        """SQL Server 2019 has no IS NOT DISTINCT FROM, and its `=` on strings follows the column's collation
        (usually case-insensitive) and ignores trailing blanks (as it does trailing zero bytes of binary): text
        compares under a binary collation and with its length."""
        exact = f"{left} = {right}"
        if ctype.kind in ("string", "binary"):
            collate = " COLLATE Latin1_General_BIN2" if ctype.kind == "string" else ""
            exact = f"{left} = {right}{collate} AND DATALENGTH({left}) = DATALENGTH({right})"
        return f"(({exact}) OR ({left} IS NULL AND {right} IS NULL))"

    def extends_text(self, old: str, new: str, sep: str) -> str:
        """The head of `new` as long as `old` + `sep`, under a binary collation (case counts; both end with
        `sep`, so trailing blanks do too). As NVARCHAR(MAX): `+` cuts an NVARCHAR(n) at 4,000 characters, and
        CHARINDEX searches for 8,000 at most (found in review)."""
        head = f"CAST({old} AS NVARCHAR(MAX)) + {self.literal(sep)}"
        return f"LEFT({new}, LEN({head})) = {head} COLLATE Latin1_General_BIN2"

    def column_type(self, ctype: ColumnType, max_len: int | None = None) -> str:
        return ctype.mssql_type(max_len)

    def limit(self, body: str, n: int) -> str:
        return f"SELECT TOP ({int(n)}) {body}"

    max_row_bytes = 8060  # fixed-length data of one row (Msg 1701 at CREATE TABLE otherwise)

    @staticmethod
    def fixed_bits(type_text: str) -> int:
        """Bits a value of `type_text` takes in a row's fixed-length part (0 for variable-length types; BIT
        columns share bytes, 8 to a byte)."""
        t = type_text.upper().replace(" ", "")
        base, _, arg = t.partition("(")
        n = int(arg.rstrip(")").split(",")[0]) if arg and arg[0].isdigit() else None
        if base in ("DECIMAL", "NUMERIC"):
            p = n or 18
            return 8 * (5 if p <= 9 else 9 if p <= 19 else 13 if p <= 28 else 17)
        if base in ("DATETIME2", "DATETIMEOFFSET"):  # fractional digits 7 by default; an offset adds 2 bytes
            digits = 7 if n is None else n
            return 8 * ((6 if digits <= 2 else 7 if digits <= 4 else 8) + (2 if base == "DATETIMEOFFSET" else 0))
        if base in ("CHAR", "BINARY"):
            return 8 * (n or 1)
        if base == "NCHAR":
            return 16 * (n or 1)
        return {"BIT": 1, "TINYINT": 8, "SMALLINT": 16, "INT": 32, "BIGINT": 64, "REAL": 32, "FLOAT": 64,
                "DATE": 24, "DATETIME": 64, "TIME": 40}.get(base, 0)


def dialect_named(name: str) -> WarehouseDialect:
    return {"duckdb": DuckDbDialect, "mssql": TsqlDialect}[name]()
