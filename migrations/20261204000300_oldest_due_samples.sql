-- The oldest due job's age per priority, as each worker last sampled it, kept per minute beside
-- the other counters: the console charts it (a chart of pickup latency only sees jobs that
-- started, and reads 0 while a million wait).
alter table pdq.workers
    add column oldest_due_live_secs double precision,
    add column oldest_due_backfill_secs double precision;
comment on column pdq.workers.oldest_due_live_secs is
    'Seconds the oldest due live job had waited at the worker''s last gauge sample.';
comment on column pdq.workers.oldest_due_backfill_secs is
    'Seconds the oldest due backfill job had waited at the worker''s last gauge sample.';

alter table pdq.worker_samples
    add column oldest_due_live_secs double precision,
    add column oldest_due_backfill_secs double precision;
comment on column pdq.worker_samples.oldest_due_live_secs is
    'The longest wait of a due live job any heartbeat of the minute reported, in seconds.';
comment on column pdq.worker_samples.oldest_due_backfill_secs is
    'The longest wait of a due backfill job any heartbeat of the minute reported, in seconds.';

create or replace function pdq.sample_worker() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    insert into pdq.worker_samples as s (worker_id, minute, api_requests_total,
        rate_limited_total, limiter_pauses_total, paused, oldest_due_live_secs,
        oldest_due_backfill_secs)
    values (new.id, date_trunc('minute', now()), new.api_requests_total,
        new.rate_limited_total, new.limiter_pauses_total, new.state = 'paused',
        new.oldest_due_live_secs, new.oldest_due_backfill_secs)
    on conflict (worker_id, minute) do update
        set api_requests_total = excluded.api_requests_total,
            rate_limited_total = excluded.rate_limited_total,
            limiter_pauses_total = excluded.limiter_pauses_total,
            paused = s.paused or excluded.paused,
            oldest_due_live_secs = greatest(s.oldest_due_live_secs,
                                            excluded.oldest_due_live_secs),
            oldest_due_backfill_secs = greatest(s.oldest_due_backfill_secs,
                                                excluded.oldest_due_backfill_secs);
    -- Keep two days (a range delete through the index: usually finds nothing).
    delete from pdq.worker_samples where minute < now() - interval '2 days';
    return null;
end
$$;
revoke all on function pdq.sample_worker() from public;
