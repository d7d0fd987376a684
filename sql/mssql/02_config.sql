-- What to load: one row per source table, one row per source column, and the order between tables.
-- T-SQL mirror of sql/duckdb/02_config.sql: same tables, same column names. Idempotent (created when missing;
-- an existing table only gets the columns added since, never changed).
IF OBJECT_ID(N'config.ETL_Tables', N'U') IS NULL
CREATE TABLE config.ETL_Tables (
    TableName           NVARCHAR(128) NOT NULL CONSTRAINT PK_ETL_Tables PRIMARY KEY, -- as in Progress
    DestinationTable    NVARCHAR(128) NULL,            -- stg/ods table name (default: SQL-safe TableName)
    PrimaryKeyCols      NVARCHAR(1000) NULL,           -- comma-separated Progress or SQL names
    HasTimestamps       BIT NOT NULL CONSTRAINT DF_ETL_Tables_HasTimestamps DEFAULT 1,
    DateModifCol        NVARCHAR(128) NULL,            -- e.g. dat_mod
    DateModifPrecision  NVARCHAR(16) NOT NULL CONSTRAINT DF_ETL_Tables_DateModifPrecision DEFAULT N'date',
    TimeOfDayCol        NVARCHAR(128) NULL,            -- seconds since midnight next to a date
    LookbackInterval    NVARCHAR(32) NOT NULL CONSTRAINT DF_ETL_Tables_LookbackInterval DEFAULT N'1 day',
    FilterClause        NVARCHAR(MAX) NULL,            -- OpenEdge SQL predicate, always applied
    IsDimension         BIT NOT NULL CONSTRAINT DF_ETL_Tables_IsDimension DEFAULT 0, -- 1: SCD type 2 in ods
    IsFact              BIT NOT NULL CONSTRAINT DF_ETL_Tables_IsFact DEFAULT 0,
    IsCritical          BIT NOT NULL CONSTRAINT DF_ETL_Tables_IsCritical DEFAULT 0, -- a failure stops later tables
    Priority            INT NOT NULL CONSTRAINT DF_ETL_Tables_Priority DEFAULT 100, -- lower loads first
    SLAHours            FLOAT NULL,
    IsActive            BIT NOT NULL CONSTRAINT DF_ETL_Tables_IsActive DEFAULT 1,
    LastSuccessTs       DATETIME2(3) NULL,             -- start of the last validated extract (local, as the source)
    Notes               NVARCHAR(MAX) NULL,
    LastSuccessUtc      DATETIME2(3) NULL              -- the same instant in UTC: vw_SLABreach's hours
)
GO
-- added after the first release: an older warehouse gets it here (init-db)
IF COL_LENGTH(N'config.ETL_Tables', N'LastSuccessUtc') IS NULL
ALTER TABLE config.ETL_Tables ADD LastSuccessUtc DATETIME2(3) NULL
GO
IF OBJECT_ID(N'config.ETL_Columns', N'U') IS NULL
CREATE TABLE config.ETL_Columns (
    TableName           NVARCHAR(128) NOT NULL,
    ColumnName          NVARCHAR(128) NOT NULL,        -- as in Progress
    SqlName             NVARCHAR(128) NOT NULL,        -- SQL-safe name (cbm_luigi/naming.py)
    SourceExpression    NVARCHAR(MAX) NULL,            -- e.g. "gencod-v" AS "gencod_v", or an override
    DataType            NVARCHAR(64) NOT NULL,         -- OpenEdge SQL type (SYSCOLUMNS_FULL.coltype)
    Width               INT NULL,
    Scale               INT NULL,
    NullFlag            NVARCHAR(1) NOT NULL CONSTRAINT DF_ETL_Columns_NullFlag DEFAULT N'Y',
    ArrayExtent         INT NOT NULL CONSTRAINT DF_ETL_Columns_ArrayExtent DEFAULT 0,
    ArrayMode           NVARCHAR(16) NOT NULL CONSTRAINT DF_ETL_Columns_ArrayMode DEFAULT N'split', -- split | single
    IsExcluded          BIT NOT NULL CONSTRAINT DF_ETL_Columns_IsExcluded DEFAULT 0,
    IsOverride          BIT NOT NULL CONSTRAINT DF_ETL_Columns_IsOverride DEFAULT 0, -- 1: names set by an operator
    OrdinalPosition     INT NULL,
    Label               NVARCHAR(MAX) NULL,
    Description         NVARCHAR(MAX) NULL,
    IsMissingAtSource   BIT NOT NULL CONSTRAINT DF_ETL_Columns_IsMissingAtSource DEFAULT 0,
    SyncedAt            DATETIME2(3) NULL,
    CONSTRAINT PK_ETL_Columns PRIMARY KEY (TableName, ColumnName)
)
GO
IF OBJECT_ID(N'config.ETL_Dependencies', N'U') IS NULL
CREATE TABLE config.ETL_Dependencies (
    TableName           NVARCHAR(128) NOT NULL,
    DependsOn           NVARCHAR(128) NOT NULL,
    CONSTRAINT PK_ETL_Dependencies PRIMARY KEY (TableName, DependsOn)
)
GO
