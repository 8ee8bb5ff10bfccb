-- Every text a producer writes is bounded at the door, by a named rule.
--
-- Unbounded texts reached places with hard limits: a 9,000-byte idempotency key made the
-- outcome notification exceed NOTIFY's 8,000-byte payload limit, which failed every statement
-- that archived it (and, in one chunk, every job beside it); an attribute key of a few
-- kilobytes exceeds the b-tree entry limit of pdq.applied_keys, which the worker writes only
-- once the update was applied. The limits (in characters, so at most four times as many bytes):
--
--   idempotency_key                                             200
--   external_tag                                                256
--   participant_purpose, participant_external_contact_id,
--   participant_name                                            256
--   each attribute key                                          256
--
-- Rows already queued that break a new rule are dead-lettered as 'rejected' with the rule named
-- in detail (as the rules on times did), and the rules are added VALIDATED, not NOT VALID: a
-- NOT VALID check still applies to every later UPDATE of a row, and the worker rewrites a row
-- on every claim and retry, so an old row over a limit would make the claim statement that
-- picked it fail, over and over, for the whole batch.

-- The longest attribute key, in characters (0 for no keys or a non-object). Every name is
-- qualified with pg_catalog and there is no SET clause, so Postgres may inline it (see
-- 20261125000070_inlinable_checks.sql).
create or replace function pdq.longest_attribute_key(attributes jsonb) returns integer
language sql immutable parallel safe
as $$
    select coalesce(pg_catalog.max(pg_catalog.char_length(k.key)), 0)
    from pg_catalog.jsonb_object_keys(
        case when pg_catalog.jsonb_typeof(attributes) operator(pg_catalog.=) 'object'
             then attributes else '{}'::pg_catalog.jsonb end) as k(key)
$$;
alter function pdq.longest_attribute_key(jsonb) reset all;

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
            where char_length(idempotency_key) > 200 or char_length(external_tag) > 256
               or char_length(participant_purpose) > 256
               or char_length(participant_external_contact_id) > 256
               or char_length(participant_name) > 256
               or pdq.longest_attribute_key(attributes) > 256
            returning *
        )
        insert into pdq.dead_letters (%1$s, reason, detail)
        select %1$s, 'rejected',
            'refused by ' || case
                when char_length(idempotency_key) > 200
                    then 'idempotency_key_must_be_at_most_200_characters'
                when char_length(external_tag) > 256
                    then 'external_tag_must_be_at_most_256_characters'
                when pdq.longest_attribute_key(attributes) > 256
                    then 'attribute_keys_must_be_at_most_256_characters'
                else 'participant_locator_must_be_at_most_256_characters' end
                || ' when the rule was added'
        from refused
    $sql$, shared);
end
$$;

alter table pdq.jobs
    add constraint idempotency_key_must_be_at_most_200_characters
        check (char_length(idempotency_key) <= 200),
    add constraint external_tag_must_be_at_most_256_characters
        check (char_length(external_tag) <= 256),
    add constraint participant_locator_must_be_at_most_256_characters
        check (char_length(participant_purpose) <= 256
               and char_length(participant_external_contact_id) <= 256
               and char_length(participant_name) <= 256),
    add constraint attribute_keys_must_be_at_most_256_characters
        check (pdq.longest_attribute_key(attributes) <= 256);

-- A key is recorded in pdq.idempotency_keys by a BEFORE INSERT trigger, which runs before the
-- checks: an over-long key would reach that table's index first and fail with Postgres' own
-- "index row size" error (or not at all). This trigger, named to fire first (triggers fire in
-- name order), refuses it with the rule's name instead. Its WHEN clause is evaluated without
-- calling the function, so rows within the limit pay nothing.
create or replace function pdq.refuse_long_idempotency_key() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'idempotency_key is % characters long, more than 200',
            char_length(new.idempotency_key)
        using errcode = 'check_violation',
              constraint = 'idempotency_key_must_be_at_most_200_characters',
              schema = 'pdq', table = 'jobs';
end
$$;
revoke all on function pdq.refuse_long_idempotency_key() from public;

create trigger jobs_bound_idempotency_key
    before insert on pdq.jobs
    for each row when (pg_catalog.char_length(new.idempotency_key) > 200)
    execute function pdq.refuse_long_idempotency_key();

-- The id a requeued job was first enqueued with (following up to 20 requeues back); null for
-- a job that was never requeued.
create or replace function pdq.origin_job_id(job_id bigint) returns bigint
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    with recursive back(id, hops) as (
        select d.id, 1 from pdq.dead_letters d where d.requeued_as = job_id
        union all
        select d.id, b.hops + 1
        from back b join pdq.dead_letters d on d.requeued_as = b.id
        where b.hops < 20
    )
    select id from back order by hops desc limit 1
$$;
revoke all on function pdq.origin_job_id(bigint) from public;

-- Outcome notifications carry ids and the outcome only: no idempotency key, no customer data.
-- Postgres has no access control on channels (any login that can connect may LISTEN, and may
-- NOTIFY a forged payload), so a notification is a wake-up that a listener confirms with
-- pdq.job_status. The payload is a few dozen bytes, far under NOTIFY's 8,000-byte limit; a
-- reason that is not a plain word is left out, and a payload over the limit is never sent, so
-- no row can make the archiving statement fail.
create or replace function pdq.notify_outcomes() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    payload text;
begin
    if tg_table_name = 'dead_letters' then
        for payload in
            select jsonb_strip_nulls(jsonb_build_object(
                       'job_id', d.id, 'origin_job_id', pdq.origin_job_id(d.id),
                       'outcome', 'dead_lettered',
                       'reason', case when d.reason ~ '^[a-z_]{1,64}$' then d.reason end))::text
            from new_rows d order by d.id
        loop
            if octet_length(payload) < 8000 then
                perform pg_notify('pdq_outcomes', payload);
            end if;
        end loop;
    else
        for payload in
            select jsonb_strip_nulls(jsonb_build_object(
                       'job_id', f.id, 'origin_job_id', pdq.origin_job_id(f.id),
                       'outcome', case tg_table_name when 'finished_jobs' then 'applied'
                                  else 'cancelled' end))::text
            from new_rows f order by f.id
        loop
            if octet_length(payload) < 8000 then
                perform pg_notify('pdq_outcomes', payload);
            end if;
        end loop;
    end if;
    return null;
end
$$;
revoke all on function pdq.notify_outcomes() from public;

comment on column pdq.settings.notify_outcomes is
    'Send NOTIFY pdq_outcomes ({"job_id", "origin_job_id", "outcome", "reason"}) per finished job: a wake-up only, confirm with pdq.job_status.';
