-- The functions the CHECK constraints and the generated participant_key call run on every
-- INSERT and on every UPDATE of a job (claims and retries rewrite the row, and Postgres checks
-- the constraints and recomputes the generated column each time). A `SET search_path` clause
-- keeps Postgres from inlining them and costs a configuration change per call: it made a
-- claim of 64 units several times slower. Instead, every name in their bodies is qualified
-- with pg_catalog (functions, operators and types), so a producer who may create objects in a
-- schema on its search_path still cannot shadow anything they use.

create or replace function pdq.attribute_values_are_strings(attributes jsonb) returns boolean
language sql immutable parallel safe
as $$
    select pg_catalog.jsonb_typeof(attributes) operator(pg_catalog.<>) 'object'
        or not exists (select 1 from pg_catalog.jsonb_each(attributes) as e
                       where pg_catalog.jsonb_typeof(e.value) operator(pg_catalog.<>) 'string')
$$;
alter function pdq.attribute_values_are_strings(jsonb) reset all;

create or replace function pdq.attribute_keys_are_not_empty(attributes jsonb) returns boolean
language sql immutable parallel safe
as $$
    select pg_catalog.jsonb_typeof(attributes) operator(pg_catalog.<>) 'object'
        or not exists (select 1 from pg_catalog.jsonb_object_keys(attributes) as k(key)
                       where pg_catalog.btrim(k.key) operator(pg_catalog.=) '')
$$;
alter function pdq.attribute_keys_are_not_empty(jsonb) reset all;

create or replace function pdq.request_bytes(attributes jsonb) returns integer
language sql immutable parallel safe
as $$
    select pg_catalog.octet_length(
        '{"attributes":' operator(pg_catalog.||) attributes::pg_catalog.text
        operator(pg_catalog.||) '}')
$$;
alter function pdq.request_bytes(jsonb) reset all;

create or replace function pdq.participant_key(
    conversation_id uuid, external_tag text, participant_id uuid, participant_purpose text,
    participant_external_contact_id text, participant_name text
) returns text
language sql immutable parallel safe
as $$
    select coalesce('c:' operator(pg_catalog.||) conversation_id::pg_catalog.text,
                    't:' operator(pg_catalog.||) external_tag)
        operator(pg_catalog.||) '/' operator(pg_catalog.||)
        coalesce('p:' operator(pg_catalog.||) participant_id::pg_catalog.text,
                 'x:' operator(pg_catalog.||) participant_external_contact_id,
                 'n:' operator(pg_catalog.||) participant_name,
                 'r:' operator(pg_catalog.||) coalesce(participant_purpose, 'customer'))
$$;
alter function pdq.participant_key(uuid, text, uuid, text, text, text) reset all;
