-- A job id sequence that went backwards (a restore without sequences, a failover to a logical
-- replica, a TRUNCATE ... RESTART IDENTITY) is caught by the insert that would get a reused
-- id, not seconds later by a worker: a job's id is its place in its participant's history,
-- and a job inserted after the reset must come after every job inserted before it.
--
-- Each insert compares its id with the position the last healthy check saw
-- (pdq.job_id_checks, kept by every worker every few seconds) and looks it up among the recorded
-- jobs. An id at or below that position, or one a job already has, was handed out before: the sequence is moved past every recorded id and seq and the row takes the next
-- id. The first insert after a reset pays for the repair (under a transaction-scoped lock so
-- concurrent inserts never hand out one id twice); every other insert pays for one primary-key
-- lookup per table. A reset to a value above that position whose ids no recorded job has any
-- more (pruned) is left to the workers' check, as before. Each repair is recorded in
-- pdq.job_id_resets and reported once, as an error, by a worker.

create table pdq.job_id_resets (
    id bigint generated always as identity primary key,
    detected_at timestamptz not null default clock_timestamp(),
    sequence_was bigint not null,
    moved_to bigint not null,
    reported boolean not null default false
);
comment on table pdq.job_id_resets is
    'Each time an insert found the job id sequence behind ids already handed out and moved it; '
    'a worker reports every row once (reported) as an error in its log.';

-- The highest id or seq pdq has recorded anywhere.
create function pdq.highest_recorded_job_id() returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
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
        (select position from pdq.job_id_checks),
        0)
$$;
revoke all on function pdq.highest_recorded_job_id() from public;

create function pdq.jobs_assign_unused_id() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    checked bigint;
    sequence_name text;
    was bigint;
    ahead bigint;
begin
    -- An id at or below the last check's position was handed out before that check; an id a
    -- recorded job already has was handed out before too (a reset before the first check, or
    -- since the last one). Neither test can mistake inserts that commit out of order.
    select c.position into checked from pdq.job_id_checks c;
    if (checked is null or new.id > checked)
       and not exists (select 1 from pdq.jobs j where j.id = new.id)
       and not exists (select 1 from pdq.finished_jobs f where f.id = new.id)
       and not exists (select 1 from pdq.dead_letters d where d.id = new.id)
       and not exists (select 1 from pdq.cancelled_jobs x where x.id = new.id) then
        return new;
    end if;
    sequence_name := pg_get_serial_sequence('pdq.jobs', 'id');
    -- One repair at a time; an insert that waited here finds the sequence already moved.
    perform pg_advisory_xact_lock(hashtext('pdq.jobs_assign_unused_id'));
    was := new.id;
    ahead := pdq.highest_recorded_job_id();
    new.id := nextval(sequence_name);
    if new.id > ahead then
        -- Another insert moved it while this one waited for the lock.
        return new;
    end if;
    perform setval(sequence_name, ahead);
    new.id := nextval(sequence_name);
    insert into pdq.job_id_resets (sequence_was, moved_to) values (was, ahead);
    raise warning 'pdq: the job id sequence went backwards (it handed out % although ids up to % are recorded): moved it past them; this job is %',
        was, ahead, new.id;
    return new;
end
$$;
revoke all on function pdq.jobs_assign_unused_id() from public;

-- Named to fire before every other row trigger of pdq.jobs (they fire in name order): the
-- idempotency key is recorded with the id the row ends up with.
create trigger jobs_assign_unused_id before insert on pdq.jobs
    for each row execute function pdq.jobs_assign_unused_id();

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant select, update on pdq.job_id_resets to pdq_worker;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.job_id_resets to pdq_operator;
    end if;
end
$$;
