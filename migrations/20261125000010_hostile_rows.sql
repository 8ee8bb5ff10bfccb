-- Archiving can never collide: a reset sequence (TRUNCATE … RESTART IDENTITY, a failover to a
-- logical replica, which does not carry sequence positions) may hand out an id that
-- pdq.finished_jobs or pdq.dead_letters already holds; both now keep the second row too.
alter table pdq.finished_jobs drop constraint finished_jobs_pkey;
create index finished_jobs_by_id on pdq.finished_jobs (id);
alter table pdq.dead_letters drop constraint dead_letters_pkey;
create index dead_letters_by_id on pdq.dead_letters (id);

-- Rows no producer can write any more, whatever it puts in the columns it may set.
--
-- A non-finite run_at or expires_at broke the claimer (timestamps it cannot decode), and an
-- expires_at at or before run_at is an update that expires before it may start. Rows already
-- queued with them are repaired where the meaning is plain (run_at -infinity: due now;
-- expires_at infinity: no deadline); those that expire before they may start are dead-lettered
-- as 'expired', as the worker would have, and the rest as 'rejected' with the rule named in
-- detail, before the rules are added, so the rules hold for every row.
update pdq.jobs set run_at = least(created_at, now()) where run_at = '-infinity';
update pdq.jobs set expires_at = null where expires_at = 'infinity';
-- The columns both tables share are copied, whatever other migrations added to both.
do $$
declare
    shared text;
begin
    select string_agg(quote_ident(d.column_name), ', ' order by d.ordinal_position) into shared
    from information_schema.columns d
    join information_schema.columns j
        on j.table_schema = 'pdq' and j.table_name = 'jobs' and j.column_name = d.column_name
       and j.is_generated = 'NEVER'
    where d.table_schema = 'pdq' and d.table_name = 'dead_letters' and d.is_generated = 'NEVER'
      and d.column_name not in ('reason', 'detail');
    execute format($sql$
        with refused as (
            delete from pdq.jobs
            where not isfinite(run_at) or not isfinite(expires_at)
               or (first_attempt_at is null and expires_at <= run_at)
            returning *
        )
        insert into pdq.dead_letters (%1$s, reason, detail)
        select %1$s,
            case when isfinite(run_at) and isfinite(expires_at) then 'expired' else 'rejected' end,
            'refused by ' || case when not isfinite(run_at) then 'run_at_must_be_finite'
                                  when not isfinite(expires_at) then 'expires_at_must_be_finite'
                                  else 'expires_at_must_be_after_run_at' end
                || ' when the rule was added'
        from refused
    $sql$, shared);
end
$$;

update pdq.jobs set attempts = 0 where attempts < 0;
-- A running row a producer gave an endless lease is handed to lease recovery.
update pdq.jobs set locked_until = now() where not isfinite(locked_until);

alter table pdq.jobs
    add constraint run_at_must_be_finite check (isfinite(run_at)),
    add constraint expires_at_must_be_finite check (isfinite(expires_at)),
    -- Only the producer's row is judged (a retry may later move run_at up to the deadline),
    -- and a non-finite time is left to the two rules above, so a row breaks one rule at a time.
    add constraint expires_at_must_be_after_run_at check (
        expires_at > run_at or first_attempt_at is not null
        or not isfinite(run_at) or not isfinite(expires_at)),
    add constraint attempts_must_not_be_negative check (attempts >= 0);

-- Job ids come from the sequence only.
alter table pdq.jobs alter column id set generated always;

-- Moves the job id sequence past every id pdq.jobs, pdq.finished_jobs and pdq.dead_letters hold
-- (the worker calls it at start-up). Never moves the sequence backwards. Returns the highest id
-- in use.
create or replace function pdq.advance_job_ids() returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    sequence_name text := pg_get_serial_sequence('pdq.jobs', 'id');
    highest bigint;
    position bigint;
begin
    for attempt in 1..2 loop
        select greatest((select max(id) from pdq.jobs), (select max(id) from pdq.finished_jobs),
                        (select max(id) from pdq.dead_letters), 0)
        into highest;
        select coalesce(s.last_value, 0) into position
        from pg_catalog.pg_sequences s
        where s.schemaname = 'pdq' and s.sequencename = split_part(sequence_name, '.', 2);
        if position >= highest then
            return highest;
        end if;
        if attempt = 1 then
            -- Behind: stop inserts while moving it, so no id is handed out in between.
            lock table pdq.jobs in exclusive mode;
        else
            perform setval(sequence_name, highest);
        end if;
    end loop;
    return highest;
end
$$;
revoke all on function pdq.advance_job_ids() from public;
