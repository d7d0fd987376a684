-- Monitoring views (same columns as the SQL Server ones).
CREATE OR REPLACE VIEW etl.vw_LastRuns AS
SELECT TableName, Step, BatchId, RunId, Status, Mode, Rows, RowsInserted, RowsUpdated, RowsUnchanged,
       RowsDeleted, DurationMs, ErrorMessage, LogTs
FROM (
    SELECT l.*, row_number() OVER (PARTITION BY TableName, Step ORDER BY LogTs DESC, LogId DESC) AS rn
    FROM etl.ETL_Log AS l
) AS x
WHERE rn = 1;

CREATE OR REPLACE VIEW etl.vw_TablePerformance AS
SELECT TableName, Step,
       count(*) AS Runs,
       sum(CASE WHEN Status = 'FAILED' THEN 1 ELSE 0 END) AS Failures,
       CAST(median(DurationMs) AS DOUBLE) AS MedianDurationMs,
       max(DurationMs) AS MaxDurationMs,
       sum(Rows) AS TotalRows,
       CASE WHEN sum(DurationMs) > 0 THEN sum(Rows) * 1000.0 / sum(DurationMs) END AS RowsPerSecond
FROM etl.ETL_Log
WHERE LogTs >= current_timestamp - INTERVAL 7 DAY
GROUP BY TableName, Step;

CREATE OR REPLACE VIEW etl.vw_SLABreach AS
SELECT t.TableName, t.IsCritical, t.SLAHours, t.LastSuccessTs,
       CAST(date_diff('second', t.LastSuccessTs, CAST(current_timestamp AS TIMESTAMP)) AS DOUBLE) / 3600.0
           AS HoursSinceSuccess,
       f.LastStatus, f.LastError, f.LastRunTs,
       CASE WHEN f.LastStatus = 'FAILED' THEN 'FAILING'
            WHEN t.LastSuccessTs IS NULL THEN 'NEVER_LOADED'
            WHEN t.SLAHours IS NOT NULL
                 AND date_diff('second', t.LastSuccessTs, CAST(current_timestamp AS TIMESTAMP)) > t.SLAHours * 3600
                THEN 'LATE'
            ELSE 'OK' END AS SLAStatus
FROM config.ETL_Tables AS t
LEFT JOIN (
    SELECT TableName, Status AS LastStatus, ErrorMessage AS LastError, LogTs AS LastRunTs
    FROM (SELECT l.*, row_number() OVER (PARTITION BY TableName ORDER BY LogTs DESC, LogId DESC) AS rn
          FROM etl.ETL_Log AS l) AS x
    WHERE rn = 1
) AS f ON f.TableName = t.TableName
WHERE t.IsActive;
