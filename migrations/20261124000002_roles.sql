-- Least-privilege roles (NOLOGIN groups: grant them to your login roles).
--   pdq_producer: may only enqueue (INSERT into pdq.jobs or call pdq.enqueue).
--   pdq_operator: may read everything and requeue or purge dead letters.
--   pdq_worker:   runs `pdq run`.
-- Roles are cluster-wide: creating them is skipped quietly when they exist or when the migrating
-- user may not create roles (grant them by hand in that case).
do $$
declare
    role_name text;
begin
    foreach role_name in array array['pdq_producer', 'pdq_operator', 'pdq_worker'] loop
        begin
            execute format('create role %I nologin', role_name);
        exception when duplicate_object or unique_violation then
            null;
        when insufficient_privilege then
            raise notice 'pdq: cannot create role %, skipping its grants', role_name;
        end;
    end loop;
end
$$;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_producer') then
        grant usage on schema pdq to pdq_producer;
        grant insert on pdq.jobs to pdq_producer;
        grant select (id, idempotency_key) on pdq.jobs to pdq_producer;
        grant execute on function pdq.enqueue(jsonb, uuid, text, uuid, text, text, text, text,
            timestamptz, timestamptz, text, integer) to pdq_producer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant usage on schema pdq to pdq_operator;
        grant select on all tables in schema pdq to pdq_operator;
        grant update (requeued_at, requeue_count), delete on pdq.dead_letters to pdq_operator;
        grant insert on pdq.jobs to pdq_operator;
        grant execute on function pdq.requeue_dead_letters(bigint[]) to pdq_operator;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant usage on schema pdq to pdq_worker;
        grant select, insert, update, delete on all tables in schema pdq to pdq_worker;
        grant usage on all sequences in schema pdq to pdq_worker;
        grant execute on all functions in schema pdq to pdq_worker;
    end if;
end
$$;
