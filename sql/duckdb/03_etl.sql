-- Run history, markers (the targets of the warehouse tasks), validation results, Progress catalog copy.
CREATE SEQUENCE IF NOT EXISTS etl.seq_log;
CREATE TABLE IF NOT EXISTS etl.ETL_Log (
    LogId           BIGINT DEFAULT nextval('etl.seq_log') PRIMARY KEY,
    RunId           VARCHAR NOT NULL,
    BatchId         VARCHAR NOT NULL,
    TableName       VARCHAR NOT NULL,
    Step            VARCHAR NOT NULL,   -- extract (its transform included) | stage | merge | validate
    Status          VARCHAR NOT NULL,   -- SUCCESS | FAILED
    Mode            VARCHAR,
    Rows            BIGINT,
    RowsInserted    BIGINT,
    RowsUpdated     BIGINT,
    RowsUnchanged   BIGINT,
    RowsDeleted     BIGINT,
    DurationMs      BIGINT,
    ErrorMessage    VARCHAR,
    Detail          VARCHAR,
    TaskId          VARCHAR,
    LogTs           TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS etl.ETL_Markers (
    MarkerId        VARCHAR NOT NULL PRIMARY KEY,  -- the Luigi task id
    TableName       VARCHAR NOT NULL,
    Step            VARCHAR NOT NULL,
    BatchId         VARCHAR NOT NULL,
    Mode            VARCHAR,
    RunId           VARCHAR,
    Rows            BIGINT,
    CreatedAt       TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- per table: what stg.<table> holds now (BatchId/Mode, '' when nothing usable; stg is one relation per table:
-- merge and validate check it is their batch), and the start of the newest extract merged into ods (a batch
-- read before it must not be merged over it)
CREATE TABLE IF NOT EXISTS etl.ETL_TableState (
    TableName       VARCHAR NOT NULL PRIMARY KEY,
    BatchId         VARCHAR NOT NULL DEFAULT '',
    Mode            VARCHAR NOT NULL DEFAULT '',
    RunId           VARCHAR,
    Rows            BIGINT,
    ExtractStartedAt TIMESTAMP,
    StagedAt        TIMESTAMP,
    MergedExtractStartedAt TIMESTAMP,
    ExtractShape    VARCHAR,        -- the table's configuration stg was staged under (TablePlan.extract_shape)
    -- the configuration ods's hashes were last written under and the columns that merge wrote (JSON list);
    -- the last validated extract's start in UTC and the source clock's offset from UTC then (minutes): the
    -- next run must count in that zone
    MergedShape  VARCHAR,
    MergedColumns VARCHAR,
    ValidatedAtUtc  TIMESTAMP,
    ValidatedUtcOffset INTEGER
);
-- added after the first release: an older warehouse gets them here (init-db)
ALTER TABLE etl.ETL_TableState ADD COLUMN IF NOT EXISTS ExtractShape VARCHAR;
ALTER TABLE etl.ETL_TableState ADD COLUMN IF NOT EXISTS MergedShape VARCHAR;
ALTER TABLE etl.ETL_TableState ADD COLUMN IF NOT EXISTS MergedColumns VARCHAR;
ALTER TABLE etl.ETL_TableState ADD COLUMN IF NOT EXISTS ValidatedAtUtc TIMESTAMP;
ALTER TABLE etl.ETL_TableState ADD COLUMN IF NOT EXISTS ValidatedUtcOffset INTEGER;
CREATE TABLE IF NOT EXISTS etl.ETL_Validation (
    RunId           VARCHAR NOT NULL,
    BatchId         VARCHAR NOT NULL,
    TableName       VARCHAR NOT NULL,
    CheckName       VARCHAR NOT NULL,
    Passed          BOOLEAN NOT NULL,
    Expected        BIGINT,
    Actual          BIGINT,
    Detail          VARCHAR,
    CheckedAt       TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS meta.SYSCOLUMNS_FULL (
    tbl             VARCHAR NOT NULL,
    col             VARCHAR NOT NULL,
    coltype         VARCHAR NOT NULL,
    width           INTEGER,
    scale           INTEGER,
    nullflag        VARCHAR,
    array_extent    INTEGER,
    label           VARCHAR,
    description     VARCHAR,
    display_order   INTEGER,
    CopiedAt        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (tbl, col)
);
