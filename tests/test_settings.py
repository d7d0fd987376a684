"""Secrets: masked in connection strings and in everything the process logs (tracebacks included)."""
from __future__ import annotations

import logging

import cbm_luigi  # noqa: F401 — installs the log masking, as `luigi --module cbm_luigi` does
from cbm_luigi.settings import mask_secrets


def test_mask_secrets_handles_braces_quotes_and_escapes():
    cases = {"DRIVER={d};UID=etl;PWD={ab}}c;d};DB=x": "DRIVER={d};UID=etl;PWD=***;DB=x",
             'HostName=h;Password="p;w";Port=1': "HostName=h;Password=***;Port=1",
             "PWD='a;''b';X=1": "PWD=***;X=1",
             "UID=u;pwd = plain;DB=x": "UID=u;pwd=***;DB=x",
             "Password=secret": "Password=***",
             # compound keywords of the DataDirect and Microsoft drivers
             "UID=a;KeyStoreSecret=hunter2;TrustStorePassword=ts;KeyStorePassword=ks;KeyPassword=kp;Passwd=pw;X=1":
                 "UID=a;KeyStoreSecret=***;TrustStorePassword=***;KeyStorePassword=***;KeyPassword=***;Passwd=***;X=1",
             # a key column named in a message keeps its value: only letters may come before the keyword
             "table t, column c, key sort_key=5: value 'x'": "table t, column c, key sort_key=5: value 'x'"}
    for text, masked in cases.items():
        assert mask_secrets(text) == masked
        assert "secret" not in mask_secrets(text) and "plain" not in mask_secrets(text)
        assert "hunter2" not in mask_secrets(text)


def test_every_log_record_is_masked_traceback_included(caplog):
    log = logging.getLogger("luigi-interface")
    try:
        raise RuntimeError("[Driver] login failed for DRIVER={x};UID=etl;PWD=hunter2;HOST=h")
    except RuntimeError:
        with caplog.at_level(logging.ERROR):
            log.exception("task failed: %s", "Password=hunter2")
    text = caplog.text
    assert "task failed: Password=***" in text and "PWD=***;HOST=h" in text and "hunter2" not in text


def test_masking_stops_at_the_line_end():
    """A masked value ends at `;` or the end of its line: the rest of a traceback stays readable."""
    assert mask_secrets("UID=u;PWD=x\nTraceback (most recent call last):") == \
        "UID=u;PWD=***\nTraceback (most recent call last):"
