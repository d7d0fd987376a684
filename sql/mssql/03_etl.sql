-- Run history, markers (the targets of the warehouse tasks), validation results, Progress catalog copy.
-- T-SQL mirror of sql/duckdb/03_etl.sql (LogId is an IDENTITY where DuckDB uses the sequence etl.seq_log).
IF OBJECT_ID(N'etl.ETL_Log', N'U') IS NULL
CREATE TABLE etl.ETL_Log (
    LogId           BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_ETL_Log PRIMARY KEY,
    RunId           NVARCHAR(64) NOT NULL,
    BatchId         NVARCHAR(64) NOT NULL,
    TableName       NVARCHAR(128) NOT NULL,
    Step            NVARCHAR(32) NOT NULL,     -- extract (its transform included) | stage | merge | validate
    Status          NVARCHAR(16) NOT NULL,     -- SUCCESS | FAILED
    Mode            NVARCHAR(16) NULL,
    [Rows]          BIGINT NULL,
    RowsInserted    BIGINT NULL,
    RowsUpdated     BIGINT NULL,
    RowsUnchanged   BIGINT NULL,
    RowsDeleted     BIGINT NULL,
    DurationMs      BIGINT NULL,
    ErrorMessage    NVARCHAR(MAX) NULL,
    Detail          NVARCHAR(MAX) NULL,
    TaskId          NVARCHAR(450) NULL,
    LogTs           DATETIME2(3) NOT NULL CONSTRAINT DF_ETL_Log_LogTs DEFAULT SYSDATETIME()
)
GO
-- one table's runs of one step over a period (the operator's own queries)
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'IX_ETL_Log_Table_Step_LogTs'
               AND object_id = OBJECT_ID(N'etl.ETL_Log'))
CREATE INDEX IX_ETL_Log_Table_Step_LogTs ON etl.ETL_Log (TableName, Step, LogTs)
GO
-- vw_TablePerformance reads the last 7 days of every table (the index above, led by TableName, cannot seek on
-- LogTs: it read the whole log, 1.5 M rows a year for 1,000 tables; found in review), and prune-history what
-- is older than its cut
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'IX_ETL_Log_LogTs'
               AND object_id = OBJECT_ID(N'etl.ETL_Log'))
CREATE INDEX IX_ETL_Log_LogTs ON etl.ETL_Log (LogTs) INCLUDE (TableName, Step, Status, [Rows], DurationMs, BatchId)
GO
-- vw_LastRuns, vw_SLABreach and `cbm-etl summary` read each table's last rows by LogId (the order they were written)
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'IX_ETL_Log_Table_LogId'
               AND object_id = OBJECT_ID(N'etl.ETL_Log'))
CREATE INDEX IX_ETL_Log_Table_LogId ON etl.ETL_Log (TableName, LogId DESC)
    INCLUDE (Step, Status, BatchId, Mode, LogTs)
GO
IF OBJECT_ID(N'etl.ETL_Markers', N'U') IS NULL
CREATE TABLE etl.ETL_Markers (
    MarkerId        NVARCHAR(450) NOT NULL CONSTRAINT PK_ETL_Markers PRIMARY KEY, -- the Luigi task id
    TableName       NVARCHAR(128) NOT NULL,
    Step            NVARCHAR(32) NOT NULL,
    BatchId         NVARCHAR(64) NOT NULL,
    Mode            NVARCHAR(16) NULL,
    RunId           NVARCHAR(64) NULL,
    [Rows]          BIGINT NULL,
    CreatedAt       DATETIME2(3) NOT NULL CONSTRAINT DF_ETL_Markers_CreatedAt DEFAULT SYSDATETIME()
)
GO
-- markers are looked up by MarkerId (complete()), and otherwise by table (invalidate, summary, the rebuild's
-- unused tag, vw_SLABreach) or by batch (the tables a batch validated: clean-cache, a failed table's message):
-- without these, each of those read every marker, about 1 M rows a year for 1,000 tables (found in review)
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'IX_ETL_Markers_Table_Batch'
               AND object_id = OBJECT_ID(N'etl.ETL_Markers'))
CREATE INDEX IX_ETL_Markers_Table_Batch ON etl.ETL_Markers (TableName, BatchId) INCLUDE (Step, Mode, CreatedAt)
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'IX_ETL_Markers_Batch_Step'
               AND object_id = OBJECT_ID(N'etl.ETL_Markers'))
CREATE INDEX IX_ETL_Markers_Batch_Step ON etl.ETL_Markers (BatchId, Step) INCLUDE (TableName, Mode)
GO
-- per table: what stg.<table> holds now (BatchId/Mode, '' when nothing usable; stg is one table per source
-- table: merge and validate check it is their batch), and the start of the newest extract merged into ods (a
-- batch read before it must not be merged over it)
IF OBJECT_ID(N'etl.ETL_TableState', N'U') IS NULL
CREATE TABLE etl.ETL_TableState (
    TableName       NVARCHAR(128) NOT NULL CONSTRAINT PK_ETL_TableState PRIMARY KEY,
    BatchId         NVARCHAR(64) NOT NULL CONSTRAINT DF_ETL_TableState_BatchId DEFAULT N'',
    Mode            NVARCHAR(16) NOT NULL CONSTRAINT DF_ETL_TableState_Mode DEFAULT N'',
    RunId           NVARCHAR(64) NULL,
    [Rows]          BIGINT NULL,
    ExtractStartedAt DATETIME2(6) NULL,
    StagedAt        DATETIME2(3) NULL,
    MergedExtractStartedAt DATETIME2(6) NULL,
    ExtractShape    NVARCHAR(64) NULL,  -- the table's configuration stg was staged under (TablePlan.extract_shape)
    -- the configuration ods's hashes were last written under and the columns that merge wrote (JSON list);
    -- the last validated extract's start in UTC and the source clock's offset from UTC then (minutes): the
    -- next run must count in that zone
    MergedShape  NVARCHAR(64) NULL,
    MergedColumns NVARCHAR(MAX) NULL,
    ValidatedAtUtc  DATETIME2(6) NULL,
    ValidatedUtcOffset INT NULL
)
GO
-- added after the first release: an older warehouse gets them here (init-db)
IF COL_LENGTH(N'etl.ETL_TableState', N'ExtractShape') IS NULL
ALTER TABLE etl.ETL_TableState ADD ExtractShape NVARCHAR(64) NULL
GO
IF COL_LENGTH(N'etl.ETL_TableState', N'MergedShape') IS NULL
ALTER TABLE etl.ETL_TableState ADD MergedShape NVARCHAR(64) NULL
GO
IF COL_LENGTH(N'etl.ETL_TableState', N'MergedColumns') IS NULL
ALTER TABLE etl.ETL_TableState ADD MergedColumns NVARCHAR(MAX) NULL
GO
IF COL_LENGTH(N'etl.ETL_TableState', N'ValidatedAtUtc') IS NULL
ALTER TABLE etl.ETL_TableState ADD ValidatedAtUtc DATETIME2(6) NULL
GO
IF COL_LENGTH(N'etl.ETL_TableState', N'ValidatedUtcOffset') IS NULL
ALTER TABLE etl.ETL_TableState ADD ValidatedUtcOffset INT NULL
GO
IF OBJECT_ID(N'etl.ETL_Validation', N'U') IS NULL
CREATE TABLE etl.ETL_Validation (
    RunId           NVARCHAR(64) NOT NULL,
    BatchId         NVARCHAR(64) NOT NULL,
    TableName       NVARCHAR(128) NOT NULL,
    CheckName       NVARCHAR(128) NOT NULL,
    Passed          BIT NOT NULL,
    Expected        BIGINT NULL,
    Actual          BIGINT NULL,
    Detail          NVARCHAR(MAX) NULL,
    CheckedAt       DATETIME2(3) NOT NULL CONSTRAINT DF_ETL_Validation_CheckedAt DEFAULT SYSDATETIME()
)
GO
IF OBJECT_ID(N'meta.SYSCOLUMNS_FULL', N'U') IS NULL
CREATE TABLE meta.SYSCOLUMNS_FULL (
    tbl             NVARCHAR(128) NOT NULL,
    col             NVARCHAR(128) NOT NULL,
    coltype         NVARCHAR(64) NOT NULL,
    width           INT NULL,
    scale           INT NULL,
    nullflag        NVARCHAR(1) NULL,
    array_extent    INT NULL,
    label           NVARCHAR(MAX) NULL,
    description     NVARCHAR(MAX) NULL,
    display_order   INT NULL,
    CopiedAt        DATETIME2(3) NOT NULL CONSTRAINT DF_SYSCOLUMNS_FULL_CopiedAt DEFAULT SYSDATETIME(),
    CONSTRAINT PK_SYSCOLUMNS_FULL PRIMARY KEY (tbl, col)
)
GO
