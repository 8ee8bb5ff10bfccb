-- Times past the year 9999 are refused at the door.
--
-- Postgres holds timestamps up to the year 294276, but the worker's clients (sqlx's chrono
-- decoder among them) cannot read a year past 262143, and no update is meant for then. The
-- worker dead-letters such a row as 'malformed_row' when it claims one, but the row's story
-- (pdq jobs show, the console) could not be read afterwards. Rows already queued with such a
-- time are dead-lettered as 'rejected' with the rule and the value named in detail, and every
-- dead letter keeps its times readable: a time past the year 9999 is stored as the last second
-- of 9999 (the original value stays in detail).
-- The time itself, or the last second of the year 9999 for a later one (null stays null).
create function pdq.readable_time(at timestamptz) returns timestamptz
language sql immutable set search_path = pg_catalog, pg_temp
as $$
    select case when isfinite(at) and at >= '10000-01-01 00:00:00+00'
                then '9999-12-31 23:59:59+00'::timestamptz else at end
$$;

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
            where (isfinite(run_at) and run_at >= '10000-01-01 00:00:00+00')
               or (isfinite(expires_at) and expires_at >= '10000-01-01 00:00:00+00')
            returning *
        )
        insert into pdq.dead_letters (%1$s, reason, detail)
        select %1$s, 'rejected',
            'refused by ' || case when run_at >= '10000-01-01 00:00:00+00'
                                  then 'run_at_must_be_before_the_year_10000 (run_at was '
                                       || run_at::text || ')'
                                  else 'expires_at_must_be_before_the_year_10000 (expires_at was '
                                       || expires_at::text || ')' end
                || ' when the rule was added'
        from refused
    $sql$, shared);
end
$$;

update pdq.dead_letters
set run_at = pdq.readable_time(run_at),
    expires_at = pdq.readable_time(expires_at)
where (isfinite(run_at) and run_at >= '10000-01-01 00:00:00+00')
   or (isfinite(expires_at) and expires_at >= '10000-01-01 00:00:00+00');

-- A non-finite time is left to the rules that refuse it, so a row breaks one rule at a time.
alter table pdq.jobs
    add constraint run_at_must_be_before_the_year_10000
        check (not isfinite(run_at) or run_at < '10000-01-01 00:00:00+00'),
    add constraint expires_at_must_be_before_the_year_10000
        check (not isfinite(expires_at) or expires_at < '10000-01-01 00:00:00+00');
