-- One row per `pdq run` process: a heartbeat every few seconds, so `pdq status` (and operators
-- with plain SQL) can see which workers are alive, what they are doing and why they are paused.
-- A row whose heartbeat stopped without a clean shutdown is shown as gone; workers prune rows
-- that have been stopped or gone for a while.
create table pdq.workers (
    id uuid primary key,
    -- The name the worker writes into `locked_by` of the jobs it holds.
    name text not null,
    host text not null,
    pid integer not null,
    version text not null,
    started_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    executors integer not null,
    -- running, paused (see pause_reason), stopping (shutdown under way) or stopped.
    state text not null,
    pause_reason text,
    -- The shared request budget this worker takes its slots from, and its limit.
    budget_name text,
    budget_per_minute integer,
    -- API requests this worker sent in the last minute (null when it cannot tell).
    api_requests_last_minute integer,
    stopped_at timestamptz,
    constraint worker_state_is_known check (state in ('running', 'paused', 'stopping', 'stopped'))
);

comment on table pdq.workers is
    'Heartbeats of pdq run processes (pdq status lists them; stale rows are shown as gone).';

create index workers_by_last_seen on pdq.workers (last_seen_at);

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant select, insert, update, delete on pdq.workers to pdq_worker;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.workers to pdq_operator;
    end if;
end
$$;
