-- What to load: one row per source table, one row per source column, and the order between tables.
CREATE TABLE IF NOT EXISTS config.ETL_Tables (
    TableName           VARCHAR NOT NULL PRIMARY KEY,  -- as in Progress (PUB."<TableName>")
    DestinationTable    VARCHAR,                       -- stg/ods table name (default: SQL-safe TableName)
    PrimaryKeyCols      VARCHAR,                       -- comma-separated Progress or SQL names
    HasTimestamps       BOOLEAN NOT NULL DEFAULT TRUE,
    DateModifCol        VARCHAR,                       -- e.g. dat_mod
    DateModifPrecision  VARCHAR NOT NULL DEFAULT 'date', -- date | datetime
    TimeOfDayCol        VARCHAR,                       -- e.g. heure (seconds since midnight next to a date)
    LookbackInterval    VARCHAR NOT NULL DEFAULT '1 day',
    FilterClause        VARCHAR,                       -- OpenEdge SQL predicate, always applied
    IsDimension         BOOLEAN NOT NULL DEFAULT FALSE, -- TRUE: SCD type 2 history in ods
    IsFact              BOOLEAN NOT NULL DEFAULT FALSE,
    IsCritical          BOOLEAN NOT NULL DEFAULT FALSE, -- a failure stops the tables after it
    Priority            INTEGER NOT NULL DEFAULT 100,   -- lower loads first
    SLAHours            DOUBLE,
    IsActive            BOOLEAN NOT NULL DEFAULT TRUE,
    LastSuccessTs       TIMESTAMP,                      -- start of the last validated extract (local, as the source)
    Notes               VARCHAR,
    LastSuccessUtc      TIMESTAMP                       -- the same instant in UTC: vw_SLABreach's hours
);
-- added after the first release: an older warehouse gets it here (init-db)
ALTER TABLE config.ETL_Tables ADD COLUMN IF NOT EXISTS LastSuccessUtc TIMESTAMP;
CREATE TABLE IF NOT EXISTS config.ETL_Columns (
    TableName           VARCHAR NOT NULL,
    ColumnName          VARCHAR NOT NULL,              -- as in Progress
    SqlName             VARCHAR NOT NULL,              -- SQL-safe name (cbm_luigi/naming.py)
    SourceExpression    VARCHAR,                       -- e.g. "gencod-v" AS gencod_v, or an override
    DataType            VARCHAR NOT NULL,              -- OpenEdge SQL type (SYSCOLUMNS_FULL.coltype)
    Width               INTEGER,
    Scale               INTEGER,
    NullFlag            VARCHAR NOT NULL DEFAULT 'Y',
    ArrayExtent         INTEGER NOT NULL DEFAULT 0,
    ArrayMode           VARCHAR NOT NULL DEFAULT 'split', -- split | single
    IsExcluded          BOOLEAN NOT NULL DEFAULT FALSE,
    IsOverride          BOOLEAN NOT NULL DEFAULT FALSE, -- TRUE: SqlName/SourceExpression set by an operator
    OrdinalPosition     INTEGER,
    Label               VARCHAR,
    Description         VARCHAR,
    IsMissingAtSource   BOOLEAN NOT NULL DEFAULT FALSE,
    SyncedAt            TIMESTAMP,
    PRIMARY KEY (TableName, ColumnName)
);
CREATE TABLE IF NOT EXISTS config.ETL_Dependencies (
    TableName           VARCHAR NOT NULL,
    DependsOn           VARCHAR NOT NULL,
    PRIMARY KEY (TableName, DependsOn)
);
