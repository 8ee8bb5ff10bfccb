-- What the operator console (`pdq console`) needs: indexes for its keyset-paginated lists and
-- searches, and per-minute samples of the workers' counters for its charts (429s, pauses).

-- Searching jobs by conversation or external tag, wherever they are.
create index jobs_by_conversation on pdq.jobs (conversation_id, id)
    where conversation_id is not null;
create index jobs_by_external_tag on pdq.jobs (external_tag, id)
    where external_tag is not null;
create index finished_jobs_by_conversation on pdq.finished_jobs (conversation_id, id)
    where conversation_id is not null;
create index finished_jobs_by_resolved_conversation
    on pdq.finished_jobs (resolved_conversation_id, id)
    where resolved_conversation_id is not null;
create index finished_jobs_by_external_tag on pdq.finished_jobs (external_tag, id)
    where external_tag is not null;
create index dead_letters_by_conversation on pdq.dead_letters (conversation_id, id)
    where conversation_id is not null;
create index dead_letters_by_resolved_conversation
    on pdq.dead_letters (resolved_conversation_id, id)
    where resolved_conversation_id is not null;
create index dead_letters_by_external_tag on pdq.dead_letters (external_tag, id)
    where external_tag is not null;
create index cancelled_jobs_by_conversation on pdq.cancelled_jobs (conversation_id, id)
    where conversation_id is not null;
create index cancelled_jobs_by_external_tag on pdq.cancelled_jobs (external_tag, id)
    where external_tag is not null;

-- The dead-letter list: newest first, page by page, with or without a reason.
create index dead_letters_waiting_by_time on pdq.dead_letters (dead_at, id)
    where requeued_at is null;
create index dead_letters_waiting_by_reason on pdq.dead_letters (reason, dead_at, id)
    where requeued_at is null;

-- Counters a worker keeps in memory, reported with each heartbeat (totals since it started).
alter table pdq.workers
    add column api_requests_total bigint,
    add column rate_limited_total bigint,
    add column limiter_pauses_total bigint;

comment on column pdq.workers.rate_limited_total is
    'API responses 429 Too Many Requests this worker received since it started.';
comment on column pdq.workers.limiter_pauses_total is
    'Pauses after a 429 or a spent rate-limit window since the worker started.';

-- One row per worker and minute: the counters as of the minute's last heartbeat, so the
-- console can chart 429s, pauses and requests per minute over the last day.
create table pdq.worker_samples (
    worker_id uuid not null,
    minute timestamptz not null,
    api_requests_total bigint,
    rate_limited_total bigint,
    limiter_pauses_total bigint,
    paused boolean not null default false,
    primary key (worker_id, minute)
);
create index worker_samples_by_minute on pdq.worker_samples (minute);

comment on table pdq.worker_samples is
    'Per worker and minute: counters from the heartbeats (the console charts their increase).';

create or replace function pdq.sample_worker() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    insert into pdq.worker_samples as s (worker_id, minute, api_requests_total,
        rate_limited_total, limiter_pauses_total, paused)
    values (new.id, date_trunc('minute', now()), new.api_requests_total,
        new.rate_limited_total, new.limiter_pauses_total, new.state = 'paused')
    on conflict (worker_id, minute) do update
        set api_requests_total = excluded.api_requests_total,
            rate_limited_total = excluded.rate_limited_total,
            limiter_pauses_total = excluded.limiter_pauses_total,
            paused = s.paused or excluded.paused;
    -- Keep two days (a range delete through the index: usually finds nothing).
    delete from pdq.worker_samples where minute < now() - interval '2 days';
    return null;
end
$$;
revoke all on function pdq.sample_worker() from public;

create trigger workers_sample
    after update of api_requests_total, rate_limited_total, limiter_pauses_total on pdq.workers
    for each row execute function pdq.sample_worker();

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.worker_samples to pdq_operator;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant select on pdq.worker_samples to pdq_worker;
    end if;
end
$$;
