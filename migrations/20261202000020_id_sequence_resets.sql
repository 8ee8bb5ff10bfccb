-- A job id sequence that goes backwards while workers run (a restore without sequences, a
-- failover to a logical replica, which carries no sequence positions) never turns a new update
-- into a silent drop.
--
-- 1. The worker's maintenance checks the sequence every few seconds (not only at start-up) and
--    moves it past every id pdq has recorded: the ids of queued, applied, dead-lettered and
--    cancelled jobs, and every seq (pdq.applied_keys included, whose rows can outlive the jobs
--    they came from). Each healthy check is recorded in pdq.job_id_checks.
-- 2. A job inserted after the last healthy check with an id at or below the position seen then
--    was inserted after the reset; so was a job inserted after a value with a higher seq
--    landed. pdq.sequence_went_back says so; the claim and the target hold send such a job's
--    keys instead of leaving them out, and log the reset as an error.
-- 3. When the check moves the sequence, the jobs still queued that were inserted after the
--    reset get a new place (seq) after every recorded one, in id order: their values win over
--    the older jobs queued before the reset.

-- A seq differs from the row's id only for requeued jobs; these partial indexes keep the maxima
-- cheap without indexing every applied job twice.
create index applied_keys_by_seq on pdq.applied_keys (seq);
create index finished_jobs_by_other_seq on pdq.finished_jobs (seq) where seq <> id;
create index dead_letters_by_other_seq on pdq.dead_letters (seq) where seq <> id;
create index cancelled_jobs_by_other_seq on pdq.cancelled_jobs (seq) where seq <> id;

create table pdq.job_id_checks (
    singleton boolean primary key default true constraint job_id_checks_has_one_row
        check (singleton),
    checked_at timestamptz not null,
    position bigint not null
);
comment on table pdq.job_id_checks is
    'The last check that found the job id sequence ahead of every recorded id: at checked_at '
    'it had handed out ids up to position, so a job inserted later with an id at or below '
    'position was inserted after the sequence went backwards.';

-- Whether a job below a landed value (its place is lower) was in fact inserted after it: its
-- own id (no seq given by a requeue), inserted after the value landed or after the last healthy
-- check with an id that check had already seen handed out.
create function pdq.sequence_went_back(job_seq bigint, job_id bigint, inserted_at timestamptz,
                                       landed_at timestamptz)
returns boolean
language sql stable set search_path = pg_catalog, pg_temp
as $$
    select job_seq is null and (
        landed_at < inserted_at
        or exists (select 1 from pdq.job_id_checks c
                   where inserted_at > c.checked_at and job_id <= c.position))
$$;

-- Checks the job id sequence against every recorded id and seq, and against the last healthy
-- check; when it is behind, moves it past them (never backwards) and gives the jobs inserted
-- since the reset a new place. Returns the highest recorded id, the sequence's last value
-- before the check (0 when it had handed out none), whether it was moved and how many queued
-- jobs got a new place.
create function pdq.check_job_ids(out highest bigint, out sequence_was bigint, out moved boolean,
                                  out replaced bigint)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    sequence_name text := pg_get_serial_sequence('pdq.jobs', 'id');
    last_checked_at timestamptz;
    last_position bigint;
    ahead bigint;
begin
    moved := false;
    replaced := 0;
    for attempt in 1..2 loop
        select greatest(
            (select max(id) from pdq.jobs),
            (select max(seq) from pdq.jobs where seq is not null),
            (select max(id) from pdq.finished_jobs),
            (select max(seq) from pdq.finished_jobs where seq <> id),
            (select max(id) from pdq.dead_letters),
            (select max(seq) from pdq.dead_letters where seq <> id),
            (select max(id) from pdq.cancelled_jobs),
            (select max(seq) from pdq.cancelled_jobs where seq <> id),
            (select max(seq) from pdq.applied_keys),
            0)
        into highest;
        select c.checked_at, c.position into last_checked_at, last_position
        from pdq.job_id_checks c;
        select coalesce(pg_sequence_last_value(sequence_name::regclass), 0) into sequence_was;
        ahead := greatest(highest, coalesce(last_position, 0));
        if sequence_was >= ahead then
            -- Read the clock after the sequence: a job inserted later gets a higher id.
            insert into pdq.job_id_checks (checked_at, position)
            values (clock_timestamp(), sequence_was)
            on conflict (singleton) do update
                set checked_at = excluded.checked_at, position = excluded.position;
            return;
        end if;
        if attempt = 1 then
            -- Behind: stop inserts while moving it, so no id is handed out in between.
            lock table pdq.jobs in exclusive mode;
        end if;
    end loop;
    if last_checked_at is not null then
        with since_reset as (
            select j.id, row_number() over (order by j.id) as n
            from pdq.jobs j
            where j.seq is null and j.id <= last_position and j.created_at > last_checked_at
        ), renumbered as (
            update pdq.jobs j set seq = ahead + s.n
            from since_reset s
            where j.id = s.id
            returning 1
        )
        select count(*) into replaced from renumbered;
    end if;
    perform setval(sequence_name, ahead + replaced);
    moved := true;
    insert into pdq.job_id_checks (checked_at, position)
    values (clock_timestamp(), ahead + replaced)
    on conflict (singleton) do update
        set checked_at = excluded.checked_at, position = excluded.position;
end
$$;
revoke all on function pdq.check_job_ids() from public;

-- The same check, returning only the highest recorded id (the worker's start-up, older callers).
create or replace function pdq.advance_job_ids() returns bigint
language sql security definer set search_path = pg_catalog, pg_temp
as $$ select highest from pdq.check_job_ids() $$;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant execute on function pdq.check_job_ids() to pdq_worker;
        grant select on pdq.job_id_checks to pdq_worker;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.job_id_checks to pdq_operator;
    end if;
end
$$;

comment on column pdq.jobs.seq is
    'Order among the participant''s updates (null: the job id). Set by requeue, or by '
    'pdq.check_job_ids for jobs inserted after the id sequence went backwards; never by producers.';
