-- The API request budget shared by every `pdq run` process on this database: a GCRA schedule
-- (`next_slot` is the earliest time the next request may go out) and a shared pause after 429.
create table pdq.rate_budgets (
    name text primary key,
    next_slot timestamptz not null default now(),
    paused_until timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Attribute keys owned by Genesys Cloud or other tools: pdq refuses to write under them.
-- Edit this table to change the policy (delete a row to allow a prefix, insert to protect one).
create table pdq.protected_key_prefixes (
    prefix text primary key,
    owner text not null
);
insert into pdq.protected_key_prefixes (prefix, owner) values
    ('context.', 'Genesys web chat and messenger (form fields, userData)'),
    ('conversationDetails.', 'Genesys Cloud platform'),
    ('dialer', 'Genesys outbound dialer (dialerContactId, dialerCampaignId, ...)'),
    ('scriptOutputVariable', 'Genesys scripts');

-- Refuses a statement whose rows write a protected key; set-based (one check per statement),
-- so a million-row backfill pays for one query, not a million trigger calls.
create or replace function pdq.refuse_protected_keys() returns trigger
language plpgsql security definer set search_path = pg_catalog, pdq
as $$
declare
    offending text;
begin
    select k.key || ' (owned by ' || p.owner || ')' into offending
    from new_rows n
    cross join lateral jsonb_object_keys(
        case when jsonb_typeof(n.attributes) = 'object' then n.attributes else '{}' end) as k(key)
    join pdq.protected_key_prefixes p on starts_with(k.key, p.prefix)
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

create trigger jobs_refuse_protected_keys
    after insert on pdq.jobs
    referencing new table as new_rows
    for each statement execute function pdq.refuse_protected_keys();

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant select, insert, update, delete on pdq.rate_budgets, pdq.protected_key_prefixes
            to pdq_worker;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.rate_budgets, pdq.protected_key_prefixes to pdq_operator;
    end if;
end
$$;
