-- Monitoring views: same names and columns as sql/duckdb/04_views.sql.
-- CREATE OR ALTER VIEW (SQL Server 2016 SP1+) must be the first statement of its batch: one view per batch.
-- "Latest" is by LogId (the order rows were written), never by LogTs: a local wall-clock time repeats an hour
-- when the clocks go back, and a failure logged in the first 02:10 sorted before a success of the second 02:40.
CREATE OR ALTER VIEW etl.vw_LastRuns AS
SELECT x.TableName, x.Step, x.BatchId, x.RunId, x.Status, x.Mode, x.[Rows], x.RowsInserted, x.RowsUpdated,
       x.RowsUnchanged, x.RowsDeleted, x.DurationMs, x.ErrorMessage, x.LogTs
FROM (
    SELECT l.TableName, l.Step, l.BatchId, l.RunId, l.Status, l.Mode, l.[Rows], l.RowsInserted, l.RowsUpdated,
           l.RowsUnchanged, l.RowsDeleted, l.DurationMs, l.ErrorMessage, l.LogTs,
           ROW_NUMBER() OVER (PARTITION BY l.TableName, l.Step ORDER BY l.LogId DESC) AS rn
    FROM etl.ETL_Log AS l
) AS x
WHERE x.rn = 1;
GO
-- PERCENTILE_CONT is a window function in T-SQL (no GROUP BY form): computed per (TableName, Step) over the
-- last 7 days, then aggregated with the other measures (it is constant within a group).
CREATE OR ALTER VIEW etl.vw_TablePerformance AS
WITH recent AS (
    SELECT l.TableName, l.Step, l.Status, l.[Rows], l.DurationMs,
           -- durations and rows of the successful runs only (PERCENTILE_CONT skips the NULLs of failed ones)
           PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY CASE WHEN l.Status = 'SUCCESS' THEN l.DurationMs END)
               OVER (PARTITION BY l.TableName, l.Step) AS MedianDurationMs
    FROM etl.ETL_Log AS l
    WHERE l.LogTs >= DATEADD(DAY, -7, SYSDATETIME())
)
SELECT r.TableName, r.Step,
       COUNT(*) AS Runs,
       SUM(CASE WHEN r.Status = 'FAILED' THEN 1 ELSE 0 END) AS Failures,
       CAST(MAX(r.MedianDurationMs) AS FLOAT) AS MedianDurationMs,
       MAX(CASE WHEN r.Status = 'SUCCESS' THEN r.DurationMs END) AS MaxDurationMs,
       SUM(CASE WHEN r.Status = 'SUCCESS' THEN r.[Rows] END) AS TotalRows,
       CASE WHEN SUM(CASE WHEN r.Status = 'SUCCESS' AND r.[Rows] IS NOT NULL THEN r.DurationMs END) > 0
            THEN CAST(SUM(CASE WHEN r.Status = 'SUCCESS' THEN r.[Rows] END) AS FLOAT) * 1000.0
                 / SUM(CASE WHEN r.Status = 'SUCCESS' AND r.[Rows] IS NOT NULL THEN r.DurationMs END) END
           AS RowsPerSecond
FROM recent AS r
GROUP BY r.TableName, r.Step;
GO
CREATE OR ALTER VIEW etl.vw_SLABreach AS
SELECT t.TableName, t.IsCritical, t.SLAHours, t.LastSuccessTs,
       CAST(t.SecondsSinceSuccess AS FLOAT) / 3600.0 AS HoursSinceSuccess,
       f.LastStatus, f.LastError, f.LastRunTs,
       -- a failure is over once its batch validated (a rerun killed between that commit and its log rows)
       CASE WHEN f.LastStatus = 'FAILED' AND NOT EXISTS (
                SELECT 1 FROM etl.ETL_Markers AS m
                WHERE m.TableName = t.TableName AND m.Step = 'validate' AND m.BatchId = f.LastBatchId
                  AND m.Mode = f.LastMode)
                THEN 'FAILING'
            WHEN t.SecondsSinceSuccess IS NULL THEN 'NEVER_LOADED'
            WHEN t.SLAHours IS NOT NULL AND t.SecondsSinceSuccess > t.SLAHours * 3600 THEN 'LATE'
            ELSE 'OK' END AS SLAStatus
FROM (
    -- seconds in UTC (LastSuccessUtc), so a daylight-saving change does not move them; local times for a load
    -- validated before that column existed, or when it lags LastSuccessTs by more than any UTC offset (15 h:
    -- written by an older version of cbm_luigi after the upgrade). LastSuccessTs moved back or cleared by hand
    -- (to read rows again) moves nothing: the load happened when LastSuccessUtc says
    SELECT c.TableName, c.IsCritical, c.SLAHours, c.LastSuccessTs, c.IsActive,
           CASE WHEN c.LastSuccessUtc IS NOT NULL AND (c.LastSuccessTs IS NULL
                     OR DATEDIFF_BIG(SECOND, c.LastSuccessUtc, c.LastSuccessTs) <= 54000)
                    THEN DATEDIFF_BIG(SECOND, c.LastSuccessUtc, SYSUTCDATETIME())
                WHEN c.LastSuccessTs IS NOT NULL
                    THEN DATEDIFF_BIG(SECOND, c.LastSuccessTs, SYSDATETIME()) END AS SecondsSinceSuccess
    FROM config.ETL_Tables AS c
) AS t
-- each active table's last log row: one seek of IX_ETL_Log_Table_LogId a table (a ROW_NUMBER over the log read
-- all of it at every check-sla and summary: found in review); the same row as DuckDB's row_number
OUTER APPLY (
    SELECT TOP (1) l.Status AS LastStatus, l.ErrorMessage AS LastError, l.LogTs AS LastRunTs,
           l.BatchId AS LastBatchId, l.Mode AS LastMode
    FROM etl.ETL_Log AS l
    WHERE l.TableName = t.TableName
    ORDER BY l.LogId DESC
) AS f
WHERE t.IsActive = 1;
GO
