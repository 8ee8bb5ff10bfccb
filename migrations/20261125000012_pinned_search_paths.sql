-- Every function a constraint, generated column or trigger uses resolves names in pg_catalog
-- only, whatever search_path the inserting session set: a producer who may create objects in a
-- schema on its search_path cannot shadow jsonb_typeof, btrim or an operator and slip rows past
-- the checks.
alter function pdq.attribute_values_are_strings(jsonb) set search_path = pg_catalog, pg_temp;
alter function pdq.attribute_keys_are_not_empty(jsonb) set search_path = pg_catalog, pg_temp;
alter function pdq.request_bytes(jsonb) set search_path = pg_catalog, pg_temp;
alter function pdq.participant_key(uuid, text, uuid, text, text, text)
    set search_path = pg_catalog, pg_temp;
alter function pdq.notify_jobs_inserted() set search_path = pg_catalog, pg_temp;

-- Protected prefixes match whatever the case (`Context.foo` is as protected as `context.foo`).
create or replace function pdq.refuse_protected_keys() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    offending text;
begin
    select k.key || ' (owned by ' || p.owner || ')' into offending
    from new_rows n
    cross join lateral jsonb_object_keys(
        case when jsonb_typeof(n.attributes) = 'object' then n.attributes else '{}' end) as k(key)
    join pdq.protected_key_prefixes p on starts_with(lower(k.key), lower(p.prefix))
    limit 1;
    if offending is not null then
        raise exception 'attribute key % is protected', offending
            using errcode = 'check_violation',
                  constraint = 'attribute_keys_must_not_use_a_protected_prefix',
                  schema = 'pdq', table = 'jobs',
                  hint = 'pdq never writes keys other owners manage; see pdq.protected_key_prefixes';
    end if;
    return null;
end
$$;
