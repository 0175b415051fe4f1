-- Records a cost pass's outcome and figures. $1 run, $2 status, $3 error.
update openai.sync_runs
set status = $2, finished_at = now(), error = $3, pages = $4, days_read = $5, inserted = $6,
    changed = $7, unchanged = $8, removed = $9, revisions = $10, days_kept = $11
where id = $1 and status = 'running'
