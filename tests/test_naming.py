"""cbm_luigi.naming: the documented name rules, on real values."""
import hashlib
import re

import pytest

from cbm_luigi.naming import (MAX_NAME_LENGTH, RESERVED_WORDS, array_element_names, resolve_column_names,
                              sql_safe_name)


@pytest.mark.parametrize("name, expected", [
    ("gencod-v", "gencod_v"),
    ("a--b", "a__b"),  # runs are not collapsed
    ("a-b", "a_b"),
    ("  cod_cli ", "cod_cli"),
    ("COD_CLI", "cod_cli"),
    ("désignation", "designation"),
    ("Prénom Élève", "prenom_eleve"),
    ("qté#$%&", "qte____"),
    ("straße", "stra_e"),  # ß has no decomposition: non-ASCII leftovers become _
    ("order", "order_"),
    ("ORDER", "order_"),
    ("user", "user_"),
    ("key", "key_"),
    ("percent", "percent_"),
    ("qualify", "qualify_"),  # DuckDB-only reserved word
    ("date", "date"),  # SQL-92 only, not reserved in T-SQL nor DuckDB: kept
    ("1st", "c_1st"),
    ("2-order", "c_2_order"),
    ("", "col"),
    ("   ", "col"),
    ("_etl_x", "src_etl_x"),
    ("_ETL_loaded_at", "src_etl_loaded_at"),
    ("_etlx", "_etlx"),
    ("cod_pro", "cod_pro"),
])
def test_sql_safe_name(name, expected):
    assert sql_safe_name(name) == expected


def test_reserved_words_cover_all_dialects():
    for w in ("SELECT", "FROM", "WHERE", "ORDER", "GROUP", "USER", "KEY", "TABLE", "INDEX", "PERCENT", "FILE",
              "PLAN", "OPEN", "CURRENT", "MERGE", "TRY_CONVERT", "WITHIN",  # T-SQL
              "QUALIFY", "LIMIT", "OFFSET", "WINDOW", "LAMBDA"):  # DuckDB
        assert w in RESERVED_WORDS
    for w in ("DATE", "TIME", "YEAR", "VALUE"):  # common column names, reserved in neither dialect
        assert w not in RESERVED_WORDS
    assert all(w == w.upper() and re.fullmatch(r"[A-Z_]+", w) for w in RESERVED_WORDS)
    assert len(RESERVED_WORDS) > 185
    assert "COD_CLI" not in RESERVED_WORDS


def test_long_names_are_deterministic_bounded_and_distinct():
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    sa, sb = sql_safe_name(a), sql_safe_name(b)
    assert len(sa) == len(sb) == MAX_NAME_LENGTH
    assert sa != sb
    assert sa == sql_safe_name(a)
    assert sa == "x" * 119 + "_" + hashlib.sha1(a.encode()).hexdigest()[:8]
    assert len(sql_safe_name("y" * 128)) == 128 and sql_safe_name("y" * 128) == "y" * 128


@pytest.mark.parametrize("name", ["gencod-v", "désignation", "order", "1st", "_etl_x", "", "x" * 300,
                                  "Prénom Élève", "a--b", "USER"])
def test_idempotent(name):
    once = sql_safe_name(name)
    assert sql_safe_name(once) == once
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", once)


def test_collision_prefers_exact_name_whatever_the_order():
    expected = {"gencod-v": "gencod_v_2", "gencod_v": "gencod_v"}
    assert resolve_column_names(["gencod-v", "gencod_v"]) == expected
    assert resolve_column_names(["gencod_v", "gencod-v"]) == expected
    assert list(resolve_column_names(["gencod-v", "gencod_v"])) == ["gencod-v", "gencod_v"]  # input order kept


def test_collision_suffix_skips_taken_names():
    names = ["a-b", "a_b", "a_b_2", "a b"]
    expected = {"a-b": "a_b_4", "a_b": "a_b", "a_b_2": "a_b_2", "a b": "a_b_3"}  # ' ' < '-' in code points
    assert resolve_column_names(names) == expected
    assert resolve_column_names(list(reversed(names))) == expected


def test_collision_without_exact_original():
    expected = {"Gencod-V": "gencod_v", "gencod-v": "gencod_v_2"}  # 'G' < 'g'
    assert resolve_column_names(["gencod-v", "Gencod-V"]) == expected
    assert resolve_column_names(["Gencod-V", "gencod-v"]) == expected


def test_reserved_names_collide_too():
    assert resolve_column_names(["zal_1", "zal"], reserved=["zal_1", "zal_2"]) == {"zal_1": "zal_1_2",
                                                                                  "zal": "zal"}
    assert resolve_column_names(["_etl_hash", "x"], reserved=["_ETL_HASH"]) == {"_etl_hash": "src_etl_hash",
                                                                              "x": "x"}
    assert resolve_column_names(["Order"], reserved=["ORDER_"]) == {"Order": "order__2"}


def test_collision_of_long_names_stays_within_limit():
    long = "x" * 128
    out = resolve_column_names([long, long.upper()])
    assert out[long] == long
    assert out[long.upper()] == "x" * 126 + "_2"
    assert all(len(v) <= MAX_NAME_LENGTH for v in out.values())


def test_result_is_unique():
    names = ["a", "A", "a ", "a-", "a_", "a#", "a_2", "a__2", "order", "order_", "ORDER"]
    out = resolve_column_names(names)
    assert len(set(out.values())) == len(out) == len(set(names))


def test_array_element_names():
    assert array_element_names("zal", 5) == ["zal_1", "zal_2", "zal_3", "zal_4", "zal_5"]
    assert array_element_names("zal", 0) == []
    assert array_element_names("y" * 128, 10)[-1] == "y" * 125 + "_10"
