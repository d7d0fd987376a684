"""Hostile and unusual names end to end (found in review, 2026-11-29): what an operator's configuration values
(SqlName, SourceExpression) and the Progress names they meet must not break.

In that review Progress names themselves (quotes, brackets, `?`, `{}`, `%`, `--`, accents, 32-character names,
reserved words, `-` against `_`, an EXTENT whose elements meet a field) went through sync-columns, discover, full,
incremental and SCD2 loads, validation, summary, invalidate and clean-cache on DuckDB without a fault.
"""
from __future__ import annotations

import pytest

from cbm_luigi import demo_source
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.tasks import LoadTable

from .conftest import build, last_error, on_source, succeeded


# -- 1. a `?` inside a quoted column name is counted as a parameter marker ---------------------------------------

@pytest.mark.parametrize("dimension", [False, True], ids=["type1", "scd2"])
def test_a_sql_name_holding_a_question_mark_is_merged(env, dimension):
    """An operator names famille.actif's ods column `actif?` (SqlName override, which build_plan accepts: only
    `_etl_` names and surrounding blanks are refused). merge_statements returns `sql.count("?")` as the number of
    load-timestamp parameters, and the quoted name's `?` is counted too: every MERGE / INSERT fails with DuckDB's
    "Parameter argument/count mismatch" (pyodbc: "N parameter markers, but M parameters were supplied"),
    every night, with nothing that names the column."""
    assert cbm_etl(["sync-columns", "famille"]) == 0
    env.sql("UPDATE config.ETL_Tables SET IsDimension = ? WHERE TableName = 'famille'", [dimension])
    env.sql("""UPDATE config.ETL_Columns SET SqlName = 'actif?', SourceExpression = '"actif" AS "actif?"',
               IsOverride = TRUE WHERE TableName = 'famille' AND ColumnName = 'actif'""")
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a"))), last_error(env, "famille")
    on_source(env, "UPDATE famille SET actif = 1 - actif WHERE cod_fam = 'F001'")
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b"))), last_error(env, "famille")
    assert env.sql("SELECT RowsUpdated FROM etl.ETL_Log WHERE Step = 'merge' AND BatchId LIKE '%-b'") == [(1,)]


# -- 2. a type-change message names the ods column, which can be another field's Progress name ----------------

def test_a_type_change_is_named_by_the_progress_field_not_another_fields_name(env):
    """produit.prix-vte owns the SQL name `prix_vte`; a field `prix_vte` added later became `prix_vte_2` (the
    case OPERATIONS.md and naming.shown_column describe). When prix-vte's type then changes, the merge stops with
    "ods.produit.prix_vte: the source type changed ... on its row in config.ETL_Columns set IsOverride = 1 ...":
    the row whose ColumnName is `prix_vte` is the other field, and the override set there leaves the table
    failing (or casts the wrong column). Every other message names a column by its Progress name, with the
    warehouse name when it differs."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    on_source(env, 'ALTER TABLE produit ADD COLUMN "prix_vte" INTEGER')
    on_source(env, "INSERT INTO SYSCOLUMNS_FULL (id, col, tbl, owner, coltype, width, scale, nullflag, array_extent, "
                   "label, col_label, description, format, display_order) VALUES ('99', 'prix_vte', 'produit', "
                   "'PUB', 'integer', 0, 0, 'Y', 0, 'x', 'x', '', '', 99)")
    assert cbm_etl(["sync-columns", "produit"]) == 0
    assert env.sql("SELECT ColumnName, SqlName FROM config.ETL_Columns WHERE TableName = 'produit' AND "
                   "ColumnName LIKE 'prix%' ORDER BY 1") == [("prix-vte", "prix_vte"), ("prix_vte", "prix_vte_2")]
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b")))
    on_source(env, "UPDATE SYSCOLUMNS_FULL SET coltype = 'varchar', width = 20, scale = 0 "
                   "WHERE tbl = 'produit' AND col = 'prix-vte'")
    assert cbm_etl(["sync-columns", "produit"]) == 0
    assert not succeeded(build(LoadTable(table="produit", mode="full", batch_tag="c")))
    error = last_error(env, "produit")
    assert "its type changed" in error
    assert "column prix-vte (prix_vte in the warehouse): its type changed" in error, error


# -- 3. a `--` inside a quoted field name is taken for a comment ---------------------------------------------

def test_a_source_expression_over_a_field_named_with_a_double_hyphen_is_accepted(env):
    """Progress names may hold hyphens anywhere after the first letter, `qte--cde` included; sync-columns and the
    loads quote it fine. An override expression that reads it (`COALESCE("qte--cde", 0)`) is refused as holding
    a `--` comment: build_plan blanks out string literals before looking for `--`, but not quoted identifiers,
    so the field can never be cast or defaulted."""
    demo_source.add_table(env.source, TableDef("cde", [Col("id", "integer", nullable=False),
                                                      Col("qte--cde", "integer")], ("id",), [(1, 5), (2, None)]))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES ('cde', 'id')")
    assert cbm_etl(["sync-columns", "cde"]) == 0
    env.sql("""UPDATE config.ETL_Columns SET SourceExpression = 'COALESCE("qte--cde", 0) AS qte__cde',
               IsOverride = TRUE WHERE TableName = 'cde' AND ColumnName = 'qte--cde'""")
    assert succeeded(build(LoadTable(table="cde", mode="full"))), last_error(env, "cde")
    assert env.sql("SELECT id, qte__cde FROM ods.cde ORDER BY id") == [(1, 5), (2, 0)]
