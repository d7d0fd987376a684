"""Extreme but legal data shapes through the ODBC readers (the SQLite ODBC stand-in): binary columns the driver
reports as fixed-length, text that is not UTF-8 (found in a review that tried every shape on all three readers)."""
from __future__ import annotations

import sqlite3
import subprocess

import pytest

from cbm_luigi.demo_source import Col
from cbm_luigi.tasks import LoadTable

from .conftest import BIN, DEMO_TABLES, build, subprocess_env, succeeded
from .test_progress_quirks import READERS, configure, failure, ods, raw_table, run
from .test_source_odbc import odbc_vars

BLOB_ROWS = [(1, b"\x00", b"\x00\x00"), (2, b"", b""), (3, None, None), (4, b"a\x00b", b"\xff" * 3)]


def test_arrow_odbc_binary_column_reported_as_sql_binary_does_not_abort_the_night(env, monkeypatch):
    """A binary column the driver reports as SQL_BINARY(n) whose values are not all n bytes long (0x00, empty):
    the SQLite ODBC stand-in reports an LVARBINARY column (SQLite BLOB) so, with n = 255; a driver may so report
    a SQL BINARY(n) column. Read into a fixed-size buffer, arrow-odbc panicked on a value of another length and
    the whole process aborted (SIGABRT): no error, no etl.ETL_Log row, and with --continue-on-error no table
    after it loaded. It is read as variable-length binary (readers._prefer), exactly."""
    raw_table(env.source, "docbin", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("r", "varbinary", 20), "VARBINARY(20)"),
                                     (Col("bl", "lvarbinary"), "BLOB")], ("id",), BLOB_ROWS)
    configure(env, monkeypatch, "arrow-odbc", "docbin", Priority=0)  # first in the night
    run = subprocess.run([str(BIN / "luigi"), "--module", "cbm_luigi", "LoadAll", "--mode", "full",
                          "--continue-on-error", "--local-scheduler"], cwd=env.home,
                         env=subprocess_env(env, **odbc_vars(env, "arrow-odbc")), capture_output=True, text=True,
                         timeout=600)
    log = env.sql("SELECT TableName, Step, Status FROM etl.ETL_Log WHERE TableName = 'docbin' ORDER BY LogId")
    validated = {r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' "
                                       "AND Status = 'SUCCESS'")}
    assert run.returncode >= 0, f"the process was killed by signal {-run.returncode}: docbin log {log}, tables " \
                                f"validated {sorted(validated)}; stderr: {run.stderr[-600:]}"
    assert set(DEMO_TABLES) <= validated
    assert env.sql("SELECT id, r, bl FROM ods.docbin ORDER BY id") == BLOB_ROWS


def test_invalid_utf8_through_arrow_odbc_is_refused_naming_column_and_key(env, monkeypatch):
    """Bytes that are not UTF-8 in a character field (a code-page mix-up at the source) stop the table naming its
    column, key and bytes, and what to do. arrow-odbc says only "Datasource returned invalid UTF-8. Lossy
    representation of value: a?b?": the reader reads the SELECT again with its text as bytes to find them."""
    cols = [(Col("id", "integer", nullable=False), "INTEGER"), (Col("a", "varchar", 20), "VARCHAR(20)"),
            (Col("v", "varchar", 20), "VARCHAR(20)"), (Col("z", "varchar", 20), "VARCHAR(20)")]
    raw_table(env.source, "txt", cols, ("id",), [(1, "ok", "ok", "ok"), (2, "ok", "x", "ok"), (3, "é", "é", "é")])
    with sqlite3.connect(env.source) as con:
        con.execute("UPDATE txt SET v = CAST(x'61ff62c3' AS TEXT) WHERE id = 2")
    configure(env, monkeypatch, "arrow-odbc", "txt")
    assert not succeeded(build(LoadTable(table="txt", mode="full")))
    err = failure(env, "txt")
    assert "table txt" in err or "PUB.txt" in err, err
    assert "column v, key id=2: the value b'a\\xffb\\xc3' is not UTF-8" in err, err
    assert "IANAAppCodePage" in err, err
    assert "SourceExpression" in err or "fix the row" in err, err


def test_invalid_utf8_is_named_when_another_row_holds_accented_text_at_its_width(env, monkeypatch):
    """A French ERP: lib VARCHAR(12) holds 'crème brûlée' (12 characters, 14 bytes in UTF-8), which arrow-odbc
    reads fine. The search for the bad value read the SELECT again with arrow-odbc's text as binary, sized at
    the declared width in bytes: it failed on the accented row, and the operator got arrow-odbc's bare message
    (found in review). It reads through pyodbc now, each value's bytes whole."""
    cols = [(Col("id", "integer", nullable=False), "INTEGER"), (Col("lib", "varchar", 12), "VARCHAR(12)"),
            (Col("v", "varchar", 20), "VARCHAR(20)")]
    raw_table(env.source, "txt", cols, ("id",), [(1, "crème brûlée", "ok"), (2, "tarte", "x")])
    configure(env, monkeypatch, "arrow-odbc", "txt")
    # the accented value at its width is no problem for the extract itself
    assert succeeded(build(LoadTable(table="txt", mode="full"))), failure(env, "txt")
    assert ods(env, "txt", ["id", "lib"]) == [(1, "crème brûlée"), (2, "tarte")]

    with sqlite3.connect(env.source) as con:  # a code-page mix-up in another row
        con.execute("UPDATE txt SET v = CAST(x'61ff62c3' AS TEXT) WHERE id = 2")
    assert not succeeded(build(LoadTable(table="txt", mode="full", batch_tag="b")))
    err = failure(env, "txt")
    assert "column v, key id=2: the value b'a\\xffb\\xc3' is not UTF-8" in err, err
    assert "IANAAppCodePage" in err, err


def test_invalid_utf8_message_names_a_text_key_that_is_itself_not_utf8_by_its_bytes(env, monkeypatch):
    """A code-page mix-up rarely spares the key: a client code 'CRÈME' written in latin-1 holds b'CR\\xc8ME' in its
    key and in its label. The key is shown by its bytes (it was shown decoded with replacement marks, a value that
    exists nowhere in Progress: found in review)."""
    cols = [(Col("lib", "varchar", 20), "VARCHAR(20)"), (Col("code", "varchar", 10, nullable=False), "VARCHAR(10)")]
    raw_table(env.source, "txt", cols, ("code",), [("ok", "A"), ("x", "B")])
    configure(env, monkeypatch, "arrow-odbc", "txt", keys="code")
    with sqlite3.connect(env.source) as con:  # the same latin-1 text in the label and in the key
        con.execute("UPDATE txt SET lib = CAST(x'4352c84d45' AS TEXT), code = CAST(x'4352c84d45' AS TEXT) "
                    "WHERE code = 'B'")
    assert not succeeded(build(LoadTable(table="txt", mode="full")))
    err = failure(env, "txt")
    assert "column lib" in err, err
    key = err.split(", key ", 1)[1].split(": the value", 1)[0]
    assert "\ufffd" not in key and "\\xc8" in key, f"key shown as {key!r}: {err}"


def test_a_long_comment_that_is_not_utf8_keeps_the_way_out_in_the_run_log(env, monkeypatch):
    """A French ERP's comment field (a CLOB) holding 6,000 characters written in Windows-1252 with one `é` (0xE9).
    The refusal put the value's whole bytes before the advice, and etl.ETL_Log kept the first 4,000 characters:
    the run log showed thousands of bytes and not what to do, nor the bad byte at the end (found in review). The
    message shows the value around its first bad byte, and says how long it is."""
    text = ("Client historique, livraison le mardi; " * 160)[:6000]
    cols = [(Col("id", "integer", nullable=False), "INTEGER"), (Col("commentaire", "lvarchar"), "TEXT")]
    raw_table(env.source, "notes", cols, ("id",), [(1, "ok"), (2, "x")])
    with sqlite3.connect(env.source) as con:  # the same text, saved by a Windows client in cp1252 with one 'é'
        con.execute("UPDATE notes SET commentaire = CAST(? AS TEXT) WHERE id = 2",
                    [(text + " réglé").encode("cp1252")])
    configure(env, monkeypatch, "arrow-odbc", "notes")
    assert not succeeded(build(LoadTable(table="notes", mode="full")))
    err = failure(env, "notes")
    assert "column commentaire, key id=2: the value ...b'" in err, err[:300]
    assert "r\\xe9gl\\xe9' (6,006 bytes; the part from position " in err, err[:400]
    assert "IANAAppCodePage" in err and "IsExcluded" in err, err
    assert len(err) < 1000, err


def test_a_39_digit_number_handed_over_as_text_is_refused_not_loaded_as_another_number(env, monkeypatch):
    """A Progress DECIMAL of 50 digits is read as DECIMAL(38, s), and a driver may hand it over as text: Arrow
    parsed 39 nines into -20847100762815390390123822295304634369, loaded without a word (found in review)."""
    raw_table(env.source, "big50", [(Col("id", "integer", nullable=False), "INTEGER"),
                                    (Col("n50", "numeric", 50, 0), "VARCHAR(52)")], ("id",), [(1, "9" * 39)])
    configure(env, monkeypatch, "embedded", "big50")
    assert not succeeded(build(LoadTable(table="big50", mode="full")))
    assert f"key id=1: value '{'9' * 39}' does not fit decimal128(38, 0)" in failure(env, "big50")


@pytest.mark.parametrize("reader", READERS)
def test_huge_exponent_text_in_real_load_names_column_key_and_value(env, monkeypatch, reader):
    raw_table(env.source, "numtxt", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("n", "numeric", 38, 10), "VARCHAR(60)")],
              ("id",), [(1, "1.5"), (2, "1e1000000000000000000")])
    configure(env, monkeypatch, reader, "numtxt")
    assert not run("numtxt")
    msg = failure(env, "numtxt")
    # it was "source table PUB.numtxt: extract failed. Driver said: [<class 'decimal.InvalidOperation'>]" --
    # blamed on the driver, no column, key or value
    assert "id=2" in msg and "1e1000000000000000000" in msg, msg
