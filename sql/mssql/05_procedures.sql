-- etl.SyncConfigColumns: refresh config.ETL_Columns from the catalog copy in meta.SYSCOLUMNS_FULL, in SQL.
--
-- For sites that copy SYSPROGRESS.SYSCOLUMNS_FULL into meta.SYSCOLUMNS_FULL themselves (linked server, SSIS,
-- an Agent job). `cbm-etl sync-columns` does the same in Python and remains the reference: it also refreshes
-- meta.SYSCOLUMNS_FULL and applies the full naming rules of cbm_luigi/naming.py (accents stripped, reserved
-- words suffixed with _, collisions resolved with _2, _3, ...). This procedure only names NEW columns, with a
-- simpler rule: lower-case, every character outside [A-Za-z0-9_] replaced by '_', a leading digit prefixed
-- with 'c_', a leading '_etl_' prefixed with 'src'. When two columns would get the same name (or a name equal
-- to an array element such as zal_1) it raises an error listing them instead of guessing: run
-- `cbm-etl sync-columns <table>`, or set SqlName yourself with IsOverride = 1.
--
-- Operator choices survive: IsExcluded and ArrayMode are never touched; SqlName and SourceExpression are kept
-- on every existing row (an existing name never changes here, whatever set it, so IsOverride = 1 rows keep
-- theirs), and IsOverride = 1 rows keep DataType, Width and Scale (the type their expression returns). Columns no longer in the catalog copy get IsMissingAtSource = 1 (kept in ods, no longer read);
-- a column that comes back gets IsMissingAtSource = 0. Only tables present in meta.SYSCOLUMNS_FULL are
-- touched (a table absent from the copy is not marked missing). One transaction, XACT_ABORT ON: any error
-- rolls everything back and is re-thrown. Returns one row: added, updated, missing. Call it outside any open
-- transaction (its rollback would also end the caller's).
CREATE OR ALTER PROCEDURE etl.SyncConfigColumns
    @TableName NVARCHAR(128) = NULL
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;

    DECLARE @now DATETIME2(3) = SYSDATETIME();
    DECLARE @added INT = 0;
    DECLARE @updated INT = 0;
    DECLARE @missing INT = 0;
    DECLARE @collisions NVARCHAR(MAX);
    DECLARE @msg NVARCHAR(2048);
    DECLARE @bad NVARCHAR(32) = N'%[^A-Za-z0-9_]%';

    -- COLLATE DATABASE_DEFAULT: comparisons with config.* never hit a collation conflict
    DECLARE @cat TABLE (
        TableName       NVARCHAR(128) COLLATE DATABASE_DEFAULT NOT NULL,
        ColumnName      NVARCHAR(128) COLLATE DATABASE_DEFAULT NOT NULL,
        IsNew           BIT NOT NULL,
        SqlName         NVARCHAR(128) COLLATE DATABASE_DEFAULT NULL,
        DataType        NVARCHAR(64) NOT NULL,
        Width           INT NULL,
        Scale           INT NULL,
        NullFlag        NVARCHAR(1) NOT NULL,
        ArrayExtent     INT NOT NULL,
        OrdinalPosition INT NULL,
        Label           NVARCHAR(MAX) NULL,
        Description     NVARCHAR(MAX) NULL,
        PRIMARY KEY (TableName, ColumnName)
    );
    DECLARE @out TABLE (
        TableName       NVARCHAR(128) COLLATE DATABASE_DEFAULT NOT NULL,
        OutName         NVARCHAR(200) COLLATE DATABASE_DEFAULT NOT NULL,
        ColumnName      NVARCHAR(128) COLLATE DATABASE_DEFAULT NOT NULL
    );

    BEGIN TRY
        IF @TableName IS NOT NULL AND NOT EXISTS (SELECT 1 FROM meta.SYSCOLUMNS_FULL WHERE tbl = @TableName)
        BEGIN
            SET @msg = CONCAT(N'etl.SyncConfigColumns: table ', @TableName, N' has no row in meta.SYSCOLUMNS_FULL. ',
                              N'Copy the catalog first (cbm-etl sync-columns does it) or check the name.');
            THROW 50010, @msg, 1;
        END;

        BEGIN TRANSACTION;

        INSERT INTO @cat (TableName, ColumnName, IsNew, SqlName, DataType, Width, Scale, NullFlag, ArrayExtent,
                          OrdinalPosition, Label, Description)
        SELECT m.tbl, m.col, CASE WHEN c.ColumnName IS NULL THEN 1 ELSE 0 END, c.SqlName, m.coltype, m.width,
               m.scale, COALESCE(m.nullflag, N'Y'), COALESCE(m.array_extent, 0), m.display_order, m.label,
               m.description
        FROM meta.SYSCOLUMNS_FULL AS m
        LEFT JOIN config.ETL_Columns AS c ON c.TableName = m.tbl AND c.ColumnName = m.col
        WHERE @TableName IS NULL OR m.tbl = @TableName;

        -- names of new columns (see the header for how they differ from cbm_luigi/naming.py)
        UPDATE @cat SET SqlName = LOWER(LTRIM(RTRIM(ColumnName))) WHERE IsNew = 1;
        UPDATE @cat SET SqlName = N'col' WHERE IsNew = 1 AND SqlName = N'';
        WHILE EXISTS (SELECT 1 FROM @cat
                      WHERE IsNew = 1 AND PATINDEX(@bad, SqlName COLLATE Latin1_General_BIN2) > 0)
            UPDATE @cat
            SET SqlName = STUFF(SqlName, PATINDEX(@bad, SqlName COLLATE Latin1_General_BIN2), 1, N'_')
            WHERE IsNew = 1 AND PATINDEX(@bad, SqlName COLLATE Latin1_General_BIN2) > 0;
        UPDATE @cat SET SqlName = N'c_' + SqlName WHERE IsNew = 1 AND LEFT(SqlName, 1) LIKE N'[0-9]';
        UPDATE @cat SET SqlName = N'src' + SqlName WHERE IsNew = 1 AND LEFT(SqlName, 5) = N'_etl_';

        -- every output name of the synced tables (split arrays become <name>_1 .. <name>_<extent>)
        INSERT INTO @out (TableName, OutName, ColumnName)
        SELECT n.TableName,
               CASE WHEN n.ArrayExtent > 0 AND n.ArrayMode = N'split'
                    THEN CONCAT(n.SqlName, N'_', e.i) ELSE n.SqlName END,
               n.ColumnName
        FROM (
            SELECT k.TableName, k.ColumnName, k.SqlName, k.ArrayExtent,
                   COALESCE(c.ArrayMode, N'split') AS ArrayMode
            FROM @cat AS k
            LEFT JOIN config.ETL_Columns AS c ON c.TableName = k.TableName AND c.ColumnName = k.ColumnName
        ) AS n
        CROSS APPLY (
            SELECT TOP (CASE WHEN n.ArrayExtent > 0 AND n.ArrayMode = N'split' THEN n.ArrayExtent ELSE 1 END)
                   ROW_NUMBER() OVER (ORDER BY (SELECT NULL)) AS i
            FROM sys.all_columns
        ) AS e;

        -- NVARCHAR(MAX) inputs: STRING_AGG of NVARCHAR(n) stops at 4000 characters (error 9829)
        SELECT @collisions = STRING_AGG(CAST(CONCAT(d.TableName, N'.', d.OutName, N' <- ', d.Cols)
                                             AS NVARCHAR(MAX)), N'; ')
        FROM (
            SELECT o.TableName, o.OutName, STRING_AGG(CAST(o.ColumnName AS NVARCHAR(MAX)), N', ') AS Cols
            FROM (SELECT DISTINCT TableName, OutName, ColumnName FROM @out) AS o
            GROUP BY o.TableName, o.OutName
            HAVING COUNT(*) > 1
        ) AS d;

        IF @collisions IS NOT NULL
        BEGIN
            SET @msg = LEFT(CONCAT(N'etl.SyncConfigColumns: name collision, nothing was changed: ', @collisions,
                                   N'. Run cbm-etl sync-columns <table> (full naming rules) or set SqlName ',
                                   N'with IsOverride = 1 in config.ETL_Columns.'), 2048);
            THROW 50011, @msg, 1;
        END;

        UPDATE c
        -- an override declares the type its SourceExpression returns: its DataType, Width and Scale stay
        SET DataType = CASE WHEN c.IsOverride = 1 THEN c.DataType ELSE k.DataType END,
            Width = CASE WHEN c.IsOverride = 1 THEN c.Width ELSE k.Width END,
            Scale = CASE WHEN c.IsOverride = 1 THEN c.Scale ELSE k.Scale END, NullFlag = k.NullFlag,
            ArrayExtent = k.ArrayExtent, OrdinalPosition = k.OrdinalPosition, Label = k.Label,
            Description = k.Description, IsMissingAtSource = 0, SyncedAt = @now
        FROM config.ETL_Columns AS c
        INNER JOIN @cat AS k ON k.TableName = c.TableName AND k.ColumnName = c.ColumnName
        WHERE k.IsNew = 0;
        SET @updated = @@ROWCOUNT;

        INSERT INTO config.ETL_Columns (TableName, ColumnName, SqlName, SourceExpression, DataType, Width, Scale,
                                        NullFlag, ArrayExtent, ArrayMode, IsExcluded, IsOverride, OrdinalPosition,
                                        Label, Description, IsMissingAtSource, SyncedAt)
        SELECT k.TableName, k.ColumnName, k.SqlName,
               CONCAT(N'"', REPLACE(k.ColumnName, N'"', N'""'), N'" AS "', REPLACE(k.SqlName, N'"', N'""'), N'"'),
               k.DataType, k.Width, k.Scale, k.NullFlag, k.ArrayExtent, N'split', 0, 0, k.OrdinalPosition,
               k.Label, k.Description, 0, @now
        FROM @cat AS k
        WHERE k.IsNew = 1;
        SET @added = @@ROWCOUNT;

        UPDATE c
        SET IsMissingAtSource = 1, SyncedAt = @now
        FROM config.ETL_Columns AS c
        WHERE c.IsMissingAtSource = 0
          AND c.TableName IN (SELECT k.TableName FROM @cat AS k)
          AND NOT EXISTS (SELECT 1 FROM @cat AS k WHERE k.TableName = c.TableName AND k.ColumnName = c.ColumnName);
        SET @missing = @@ROWCOUNT;

        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF XACT_STATE() <> 0
            ROLLBACK TRANSACTION;
        THROW;
    END CATCH;

    SELECT @added AS added, @updated AS updated, @missing AS missing;
END;
GO
