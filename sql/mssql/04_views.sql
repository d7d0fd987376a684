-- Monitoring views: same names and columns as sql/duckdb/04_views.sql.
-- CREATE OR ALTER VIEW (SQL Server 2016 SP1+) must be the first statement of its batch: one view per batch.
CREATE OR ALTER VIEW etl.vw_LastRuns AS
SELECT x.TableName, x.Step, x.BatchId, x.RunId, x.Status, x.Mode, x.[Rows], x.RowsInserted, x.RowsUpdated,
       x.RowsUnchanged, x.RowsDeleted, x.DurationMs, x.ErrorMessage, x.LogTs
FROM (
    SELECT l.TableName, l.Step, l.BatchId, l.RunId, l.Status, l.Mode, l.[Rows], l.RowsInserted, l.RowsUpdated,
           l.RowsUnchanged, l.RowsDeleted, l.DurationMs, l.ErrorMessage, l.LogTs,
           ROW_NUMBER() OVER (PARTITION BY l.TableName, l.Step ORDER BY l.LogTs DESC, l.LogId DESC) AS rn
    FROM etl.ETL_Log AS l
) AS x
WHERE x.rn = 1;
GO
-- PERCENTILE_CONT is a window function in T-SQL (no GROUP BY form): computed per (TableName, Step) over the
-- last 7 days, then aggregated with the other measures (it is constant within a group).
CREATE OR ALTER VIEW etl.vw_TablePerformance AS
WITH recent AS (
    SELECT l.TableName, l.Step, l.Status, l.[Rows], l.DurationMs,
           PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY l.DurationMs)
               OVER (PARTITION BY l.TableName, l.Step) AS MedianDurationMs
    FROM etl.ETL_Log AS l
    WHERE l.LogTs >= DATEADD(DAY, -7, SYSDATETIME())
)
SELECT r.TableName, r.Step,
       COUNT(*) AS Runs,
       SUM(CASE WHEN r.Status = 'FAILED' THEN 1 ELSE 0 END) AS Failures,
       CAST(MAX(r.MedianDurationMs) AS FLOAT) AS MedianDurationMs,
       MAX(r.DurationMs) AS MaxDurationMs,
       SUM(r.[Rows]) AS TotalRows,
       CASE WHEN SUM(r.DurationMs) > 0 THEN CAST(SUM(r.[Rows]) AS FLOAT) * 1000.0 / SUM(r.DurationMs) END
           AS RowsPerSecond
FROM recent AS r
GROUP BY r.TableName, r.Step;
GO
CREATE OR ALTER VIEW etl.vw_SLABreach AS
SELECT t.TableName, t.IsCritical, t.SLAHours, t.LastSuccessTs,
       CAST(DATEDIFF_BIG(SECOND, t.LastSuccessTs, SYSDATETIME()) AS FLOAT) / 3600.0 AS HoursSinceSuccess,
       f.LastStatus, f.LastError, f.LastRunTs,
       CASE WHEN f.LastStatus = 'FAILED' THEN 'FAILING'
            WHEN t.LastSuccessTs IS NULL THEN 'NEVER_LOADED'
            WHEN t.SLAHours IS NOT NULL
                 AND DATEDIFF_BIG(SECOND, t.LastSuccessTs, SYSDATETIME()) > t.SLAHours * 3600
                THEN 'LATE'
            ELSE 'OK' END AS SLAStatus
FROM config.ETL_Tables AS t
LEFT JOIN (
    SELECT x.TableName, x.Status AS LastStatus, x.ErrorMessage AS LastError, x.LogTs AS LastRunTs
    FROM (SELECT l.TableName, l.Status, l.ErrorMessage, l.LogTs,
                 ROW_NUMBER() OVER (PARTITION BY l.TableName ORDER BY l.LogTs DESC, l.LogId DESC) AS rn
          FROM etl.ETL_Log AS l) AS x
    WHERE x.rn = 1
) AS f ON f.TableName = t.TableName
WHERE t.IsActive = 1;
GO
