"""Configuration names that could change meaning, and reads whose emptiness must not be merged (found in review):
a configuration field naming a column by its SQL name when a field of that very name is added at the source; an
empty read made full by a configuration change; LoadAll with no active table."""
from __future__ import annotations

from datetime import date, datetime, timedelta

from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.tasks import LoadAll, LoadTable

from .conftest import assert_ods_equals_source, build, last_error, on_source, put_rows, succeeded, take_rows

DAY = date(2026, 11, 24)






def test_a_field_added_under_a_name_the_configuration_used_as_a_sql_name_stops_the_table_naming_both(env):
    """DateModifCol names `dat_hr_saisie`, the SQL name of the Progress field `dat-hr-saisie`. The ERP adds a field
    `dat_hr_saisie` (sync-columns names it dat_hr_saisie_2): the window must not move to the new, empty field
    without a word (it did: a change at the source was never read again). The table stops, naming both spellings;
    with the Progress name written, the change is read."""
    env.sql("UPDATE config.ETL_Tables SET DateModifCol = 'dat_hr_saisie', DateModifPrecision = 'datetime', "
            "TimeOfDayCol = NULL WHERE TableName = 'lignecli'")
    assert succeeded(build(LoadTable(table="lignecli", mode="full", batch_date=DAY)))
    on_source(env, 'ALTER TABLE lignecli ADD COLUMN "dat_hr_saisie" TIMESTAMP',
              "INSERT INTO SYSCOLUMNS_FULL (id, col, tbl, owner, coltype, width, scale, nullflag, array_extent, "
              "display_order) VALUES ('99', 'dat_hr_saisie', 'lignecli', 'PUB', 'timestamp', 0, 0, 'Y', 0, 99)")
    assert cbm_etl(["sync-columns", "lignecli"]) == 0
    day2 = date.fromordinal(DAY.toordinal() + 1)
    assert not succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_date=day2)))
    assert ("config.ETL_Tables[lignecli].DateModifCol: 'dat_hr_saisie' names two columns of table lignecli, the "
            "Progress field 'dat_hr_saisie' and 'dat-hr-saisie' by its SQL name: write 'dat-hr-saisie'"
            in last_error(env, "lignecli"))
    env.sql("UPDATE config.ETL_Tables SET DateModifCol = 'dat-hr-saisie' WHERE TableName = 'lignecli'")
    assert succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_date=day2)))
    stamp = (datetime.now() + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S.000")
    on_source(env, f"UPDATE lignecli SET qte = 777.5, \"dat-hr-saisie\" = '{stamp}' WHERE num_cde = 1000 AND "
                   "num_lig = 1")
    day3 = date.fromordinal(DAY.toordinal() + 2)
    assert succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_date=day3)))
    assert float(env.sql("SELECT qte FROM ods.lignecli WHERE num_cde = 1000 AND num_lig = 1")[0][0]) == 777.5
    assert "dat-hr-saisie" in env.sql("SELECT Detail FROM etl.ETL_Log WHERE Step = 'extract' AND BatchId = ?",
                                      [day3.isoformat()])[0][0]


def test_an_empty_read_made_full_by_a_configuration_change_is_refused_not_merged(env):
    """A configuration change makes the next incremental read every row (a new field reaches every row), merged as
    an incremental. Empty (the DSN's database being restored, the ERP rebuilding the table), it was merged all the
    same: the new configuration was recorded as loaded and the rows outside later windows never got the field.
    It is refused as an empty full read is, and the same command reads the table again."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_date=DAY)))
    on_source(env, "ALTER TABLE produit ADD COLUMN \"code-naf\" VARCHAR(10) NOT NULL DEFAULT 'X'",
              "INSERT INTO SYSCOLUMNS_FULL (id, col, tbl, owner, coltype, width, scale, nullflag, array_extent, "
              "display_order) VALUES ('99', 'code-naf', 'produit', 'PUB', 'varchar', 10, 0, 'N', 0, 99)")
    assert cbm_etl(["sync-columns", "produit"]) == 0
    saved = take_rows(env, "produit")
    day2 = date.fromordinal(DAY.toordinal() + 1)
    assert not succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=day2)))
    err = last_error(env, "produit")
    assert err.startswith("EmptyFullBatchError") and "read every row" in err and "reads the table" in err, err
    put_rows(env, "produit", saved)  # the source is back, untouched (dat_mod unchanged)
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=day2)))
    day3 = date.fromordinal(DAY.toordinal() + 2)
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=day3)))
    assert env.sql("SELECT COUNT(*) FROM ods.produit WHERE code_naf IS NULL AND NOT _etl_is_deleted")[0][0] == 0
    assert_ods_equals_source(env, "produit")


def test_no_active_table_is_said_as_such_not_as_a_batch_loaded_earlier(env, caplog):
    env.sql("UPDATE config.ETL_Tables SET IsActive = FALSE")
    caplog.set_level("WARNING")
    assert succeeded(build(LoadAll(mode="incremental", batch_date=DAY)))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("LoadAll", "batch "))]
    assert said == ["LoadAll: no table is active in config.ETL_Tables (IsActive): nothing to load"], said


def test_a_sql_name_longer_than_the_warehouse_admits_is_refused_naming_the_configuration_row(env):
    """An operator's SqlName of 133 characters failed the extract with `identifier 'libelle_xxx...' is empty or
    longer than 128 characters`, raised in the dialect: no table, no row of config.ETL_Columns, no word of what
    to do (found in review). It is refused with the other SqlName mistakes."""
    assert cbm_etl(["sync-columns", "famille"]) == 0
    long = "libelle_" + "x" * 125
    env.sql(f"""UPDATE config.ETL_Columns SET SqlName = '{long}', SourceExpression = '"libelle" AS "{long}"',
               IsOverride = TRUE WHERE TableName = 'famille' AND ColumnName = 'libelle'""")
    assert not succeeded(build(LoadTable(table="famille", mode="full")))
    err = last_error(env, "famille")
    assert "config.ETL_Columns[famille.libelle].SqlName = 'libelle_xxx" in err, err
    assert "longer than 128 characters" in err and "choose a shorter SqlName" in err, err
    env.sql("UPDATE config.ETL_Columns SET SqlName = 'libelle_long', SourceExpression = NULL, IsOverride = TRUE "
            "WHERE TableName = 'famille' AND ColumnName = 'libelle'")
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    assert env.sql("SELECT COUNT(*) FROM ods.famille WHERE libelle_long IS NOT NULL")[0][0] > 0
