-- Monitoring views (same columns as the SQL Server ones).
-- "Latest" is by LogId (the order rows were written), never by LogTs: a local wall-clock time repeats an hour
-- when the clocks go back, and a failure logged in the first 02:10 sorted before a success of the second 02:40.
CREATE OR REPLACE VIEW etl.vw_LastRuns AS
SELECT TableName, Step, BatchId, RunId, Status, Mode, Rows, RowsInserted, RowsUpdated, RowsUnchanged,
       RowsDeleted, DurationMs, ErrorMessage, LogTs
FROM (
    SELECT l.*, row_number() OVER (PARTITION BY TableName, Step ORDER BY LogId DESC) AS rn
    FROM etl.ETL_Log AS l
) AS x
WHERE rn = 1;

CREATE OR REPLACE VIEW etl.vw_TablePerformance AS
-- durations and rows of the successful runs only (a failed attempt stops early: it would pull the median down)
SELECT TableName, Step,
       count(*) AS Runs,
       sum(CASE WHEN Status = 'FAILED' THEN 1 ELSE 0 END) AS Failures,
       CAST(median(CASE WHEN Status = 'SUCCESS' THEN DurationMs END) AS DOUBLE) AS MedianDurationMs,
       max(CASE WHEN Status = 'SUCCESS' THEN DurationMs END) AS MaxDurationMs,
       sum(CASE WHEN Status = 'SUCCESS' THEN Rows END) AS TotalRows,
       CASE WHEN sum(CASE WHEN Status = 'SUCCESS' AND Rows IS NOT NULL THEN DurationMs END) > 0
            THEN sum(CASE WHEN Status = 'SUCCESS' THEN Rows END) * 1000.0
                 / sum(CASE WHEN Status = 'SUCCESS' AND Rows IS NOT NULL THEN DurationMs END) END AS RowsPerSecond
FROM etl.ETL_Log
WHERE LogTs >= current_timestamp - INTERVAL 7 DAY
GROUP BY TableName, Step;

CREATE OR REPLACE VIEW etl.vw_SLABreach AS
SELECT t.TableName, t.IsCritical, t.SLAHours, t.LastSuccessTs,
       CAST(t.SecondsSinceSuccess AS DOUBLE) / 3600.0 AS HoursSinceSuccess,
       f.LastStatus, f.LastError, f.LastRunTs,
       -- a failure is over once its batch validated (a rerun killed between that commit and its log rows
       -- leaves the failure as the table's last row, and the next rerun rightly finds nothing left to do)
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
    -- (to read rows again) moves nothing: the load happened when LastSuccessUtc says (found in review: a window
    -- moved back two days paged LATE, a cleared one NEVER_LOADED)
    SELECT c.*,
           CASE WHEN c.LastSuccessUtc IS NOT NULL AND (c.LastSuccessTs IS NULL
                     OR date_diff('second', c.LastSuccessUtc, c.LastSuccessTs) <= 54000)
                    THEN date_diff('second', c.LastSuccessUtc, CAST(timezone('UTC', current_timestamp) AS TIMESTAMP))
                WHEN c.LastSuccessTs IS NOT NULL
                    THEN date_diff('second', c.LastSuccessTs, CAST(current_timestamp AS TIMESTAMP)) END
               AS SecondsSinceSuccess
    FROM config.ETL_Tables AS c
) AS t
LEFT JOIN (
    SELECT TableName, Status AS LastStatus, ErrorMessage AS LastError, LogTs AS LastRunTs,
           BatchId AS LastBatchId, Mode AS LastMode
    FROM (SELECT l.*, row_number() OVER (PARTITION BY TableName ORDER BY LogId DESC) AS rn
          FROM etl.ETL_Log AS l) AS x
    WHERE rn = 1
) AS f ON f.TableName = t.TableName
WHERE t.IsActive;
