-- Schemas of the warehouse (idempotent). T-SQL mirror of sql/duckdb/01_schemas.sql.
-- CREATE SCHEMA must be alone in its batch, hence EXEC(). Batches are separated by GO lines: `cbm-etl init-db`
-- sends them one by one over ODBC (GO itself is never sent).
IF SCHEMA_ID(N'config') IS NULL EXEC(N'CREATE SCHEMA [config]')
GO
IF SCHEMA_ID(N'etl') IS NULL EXEC(N'CREATE SCHEMA [etl]')
GO
IF SCHEMA_ID(N'stg') IS NULL EXEC(N'CREATE SCHEMA [stg]')
GO
IF SCHEMA_ID(N'ods') IS NULL EXEC(N'CREATE SCHEMA [ods]')
GO
IF SCHEMA_ID(N'meta') IS NULL EXEC(N'CREATE SCHEMA [meta]')
GO
