"""Discovery from the OpenEdge catalog (SYSPROGRESS): tables, typed columns, candidate keys."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import translate
from .readers import Reader


@dataclass(frozen=True)
class CatalogColumn:
    table: str
    name: str
    coltype: str
    width: int | None
    scale: int | None
    nullable: bool
    array_extent: int
    label: str | None
    description: str | None
    position: int


MODIF_DATE_CANDIDATES = ("dat_mod", "date_mod", "dat-mod", "datmod", "dat_maj", "date_maj", "dat-maj")
TIME_OF_DAY_CANDIDATES = ("heure", "hr_mod", "heure_mod", "heure-mod", "hre_mod")


def list_tables(reader: Reader) -> list[str]:
    try:
        return [r[0] for r in reader.query(reader.dialect.tables_sql())]
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, action="list tables from SYSPROGRESS.SYSTABLES") from None


def read_columns(reader: Reader, table: str) -> list[CatalogColumn]:
    try:
        rows = reader.query(reader.dialect.columns_sql(), [table])
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, table=table, action="read SYSPROGRESS.SYSCOLUMNS_FULL") from None
    return [CatalogColumn(table, r[0], str(r[1]).strip().lower(), _int(r[2]), _int(r[3]),
                          str(r[4]).strip().upper() != "N", _int(r[5]) or 0, r[6], r[7], _int(r[8]) or i)
            for i, r in enumerate(rows, 1)]


def proposed_key(reader: Reader, table: str) -> list[str]:
    """The shortest active unique index's columns (ties: index name order) — a proposal, never applied silently.
    An inactive index (added online, not yet built by idxbuild) is not enforced: its columns may hold duplicates."""
    try:
        rows = reader.query(reader.dialect.unique_index_sql(), [table])
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, table=table, action="read SYSPROGRESS.SYSINDEXES") from None
    indexes: dict[str, list[str]] = {}
    inactive: set[str] = set()
    for idxname, _seq, col, active in rows:
        indexes.setdefault(idxname, []).append(col)
        if active is not None and str(active).strip().lower() in ("0", "false", "n", "no"):  # BIT, as drivers hand it
            inactive.add(idxname)
    candidates = [(name, cols) for name, cols in indexes.items() if name not in inactive]
    if not candidates:
        return []
    return min(candidates, key=lambda kv: (len(kv[1]), kv[0]))[1]


def modification_candidates(columns: list[CatalogColumn]) -> tuple[str | None, str | None]:
    """(date column, seconds-since-midnight column) by the Proginov naming habits."""
    names = {c.name.lower(): c for c in columns}
    date_col = next((names[n].name for n in MODIF_DATE_CANDIDATES
                     if n in names and names[n].coltype in ("date", "timestamp", "timestamp_timezone")), None)
    tod = next((names[n].name for n in TIME_OF_DAY_CANDIDATES
                if n in names and names[n].coltype in ("integer", "int", "bigint")), None)
    return date_col, tod


def row_count(reader: Reader, table: str) -> int:
    try:
        return int(reader.query(reader.dialect.count_sql(table))[0][0])
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, table=table, action="count rows") from None


def _int(v) -> int | None:
    return None if v is None or v == "" else int(v)
