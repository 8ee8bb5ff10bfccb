-- Producers are told apart: every job records the producer that inserted it (from the inserting
-- role, never from the row), a producer reads and asks about only its own jobs (row-level
-- security on pdq.jobs; pdq.job_status filtered), and idempotency keys are unique per producer.
-- Operators, workers and the owner see every job.
--
-- A producer identity is a role that is a direct member of pdq_producer. A login granted
-- pdq_producer itself is its own identity; logins that are members of a NOLOGIN group granted
-- pdq_producer (`create role crm nologin in role pdq_producer; grant crm to crm_a, crm_b`)
-- share the group's identity: they see each other's jobs and share their idempotency keys.

-- The producer identity of `who`: the direct member of pdq_producer whose rights `who` uses
-- (`who` itself when it is one; by name when several), else `who`.
create function pdq.producer_identity_of(who name) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp
as $$
declare
    identity text;
begin
    select m.rolname::text into identity
    from pg_catalog.pg_auth_members a
    join pg_catalog.pg_roles g on g.oid = a.roleid and g.rolname = 'pdq_producer'
    join pg_catalog.pg_roles m on m.oid = a.member
    where m.rolname = who or pg_catalog.pg_has_role(who, m.oid, 'USAGE')
    order by m.rolname = who desc, m.rolname
    limit 1;
    return coalesce(identity, who::text);
end
$$;

-- The producer identity of the current role: what a job it inserts records (the default of
-- pdq.jobs.producer, evaluated per row: plpgsql, so its plan is made once per session).
create function pdq.producer_identity() returns text
language plpgsql stable set search_path = pg_catalog, pg_temp
as $$
declare
    identity text;
begin
    select m.rolname::text into identity
    from pg_catalog.pg_auth_members a
    join pg_catalog.pg_roles g on g.oid = a.roleid and g.rolname = 'pdq_producer'
    join pg_catalog.pg_roles m on m.oid = a.member
    where m.rolname = current_user or pg_catalog.pg_has_role(current_user, m.oid, 'USAGE')
    order by m.rolname = current_user desc, m.rolname
    limit 1;
    return coalesce(identity, current_user::text);
end
$$;

-- Whether `who` sees every job: a superuser, the owner of the schema pdq (or a member of it),
-- an operator or a worker.
create function pdq.sees_every_job(who name) returns boolean
language sql stable set search_path = pg_catalog, pg_temp
as $$
    select coalesce(
        (select r.rolsuper
             or pg_catalog.pg_has_role(who, n.nspowner, 'MEMBER')
             or exists (select 1 from pg_catalog.pg_roles g
                        where g.rolname in ('pdq_operator', 'pdq_worker')
                          and pg_catalog.pg_has_role(who, g.oid, 'USAGE'))
         from pg_catalog.pg_roles r, pg_catalog.pg_namespace n
         where r.rolname = who and n.nspname = 'pdq'),
        false)
$$;

-- Jobs recorded before this release have no producer (null): operators see them, producers do
-- not. A producer cannot write the column (it holds INSERT on the contract columns only).
alter table pdq.jobs add column producer text;
alter table pdq.jobs alter column producer set default pdq.producer_identity();
alter table pdq.finished_jobs add column producer text;
alter table pdq.dead_letters add column producer text;
alter table pdq.cancelled_jobs add column producer text;
comment on column pdq.jobs.producer is
    'The producer identity that inserted the job (pdq.producer_identity()); null: before 0.x.';

-- Keys are unique per producer. A key recorded before this release ('' producer) still makes a
-- repeat from any producer a no-op.
alter table pdq.idempotency_keys add column producer text not null default '';
alter table pdq.idempotency_keys alter column producer drop default;
alter table pdq.idempotency_keys drop constraint idempotency_keys_pkey;
alter table pdq.idempotency_keys add primary key (producer, key);
create index idempotency_keys_by_key on pdq.idempotency_keys (key);

-- pdq.jobs keeps its unique index on idempotency_key (producers' `on conflict (idempotency_key)
-- do nothing` needs it to name its arbiter), so at most one queued row may carry a given key.
-- This table says which key is taken: the first producer's job carries the key; another
-- producer's queued job with the same key is stored with idempotency_key null while the first
-- one holds it (its key stays recorded in pdq.idempotency_keys, where pdq.job_status finds it).
create table pdq.idempotency_key_holders (
    key text primary key,
    job_id bigint not null
);
comment on table pdq.idempotency_key_holders is
    'Which idempotency key a queued job carries in pdq.jobs (released by pdq.prune_idempotency_keys).';
insert into pdq.idempotency_key_holders (key, job_id)
select idempotency_key, id from pdq.jobs where idempotency_key is not null;

-- Records the key of a new job for its producer; a key this producer (or anyone before this
-- release) already recorded makes the row a no-op (it is skipped). A concurrent insert of the
-- same key by the same producer waits for the first transaction (the primary key).
create or replace function pdq.record_idempotency_key() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    inserted_by text := coalesce(new.producer, pdq.producer_identity());
    held bigint;
begin
    if exists (select 1 from pdq.idempotency_keys k
               where k.producer = '' and k.key = new.idempotency_key) then
        return null;
    end if;
    insert into pdq.idempotency_keys (producer, key, job_id)
    values (inserted_by, new.idempotency_key, new.id)
    on conflict on constraint idempotency_keys_pkey do nothing;
    if not found then
        return null;
    end if;
    insert into pdq.idempotency_key_holders (key, job_id) values (new.idempotency_key, new.id)
    on conflict (key) do nothing;
    if not found then
        -- Another producer's job holds the key: still queued, it keeps it; gone, this one
        -- takes the hold over (the row lock orders concurrent takers).
        select h.job_id into held from pdq.idempotency_key_holders h
        where h.key = new.idempotency_key for update;
        if exists (select 1 from pdq.jobs j where j.id = held) then
            new.idempotency_key := null;
        else
            update pdq.idempotency_key_holders set job_id = new.id
            where key = new.idempotency_key;
        end if;
    end if;
    return new;
end
$$;
revoke all on function pdq.record_idempotency_key() from public;

-- Forgets keys recorded more than `older_than` ago, at most `max_rows` per call; a key whose job
-- is still queued is kept. Releases the holds of keys whose job left pdq.jobs. Returns how many
-- keys were forgotten.
create or replace function pdq.prune_idempotency_keys(older_than interval, max_rows integer)
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    pruned bigint;
begin
    if older_than < interval '0' then
        raise exception 'older_than must not be negative' using errcode = 'invalid_parameter_value';
    end if;
    with old as (
        select k.ctid from pdq.idempotency_keys k
        where k.created_at < now() - older_than
          and not exists (select 1 from pdq.jobs j where j.id = k.job_id)
        order by k.created_at
        limit max_rows
        for update skip locked
    ), forgotten as (
        delete from pdq.idempotency_keys k
        where k.ctid = any(array(select ctid from old)) and k.created_at < now() - older_than
        returning 1
    )
    select count(*) into pruned from forgotten;
    with released as (
        select h.ctid from pdq.idempotency_key_holders h
        where not exists (select 1 from pdq.jobs j where j.id = h.job_id)
        limit max_rows
        for update skip locked
    )
    delete from pdq.idempotency_key_holders h where h.ctid = any(array(select ctid from released))
        and not exists (select 1 from pdq.jobs j where j.id = h.job_id);
    return pruned;
end
$$;
revoke all on function pdq.prune_idempotency_keys(interval, integer) from public;

-- Returns the new job's id, the id of the queued job this producer already enqueued with this
-- idempotency key, or null when the key was already applied or dead-lettered (within the key
-- horizon).
create or replace function pdq.enqueue(
    attributes jsonb,
    conversation_id uuid default null,
    external_tag text default null,
    participant_id uuid default null,
    participant_purpose text default null,
    participant_external_contact_id text default null,
    participant_name text default null,
    priority text default 'live',
    run_at timestamptz default now(),
    expires_at timestamptz default null,
    idempotency_key text default null,
    max_attempts integer default 20
) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    new_id bigint;
begin
    insert into pdq.jobs as j (attributes, conversation_id, external_tag, participant_id,
        participant_purpose, participant_external_contact_id, participant_name, priority,
        run_at, expires_at, idempotency_key, max_attempts)
    values (enqueue.attributes, enqueue.conversation_id, enqueue.external_tag,
        enqueue.participant_id, enqueue.participant_purpose,
        enqueue.participant_external_contact_id, enqueue.participant_name, enqueue.priority,
        coalesce(enqueue.run_at, now()), enqueue.expires_at, enqueue.idempotency_key,
        enqueue.max_attempts)
    on conflict on constraint idempotency_key_already_enqueued do nothing
    returning j.id into new_id;
    if new_id is null and enqueue.idempotency_key is not null then
        -- Skipped: the key is recorded. Its job is still queued, or already gone.
        select s.current_job_id into new_id from pdq.job_status(enqueue.idempotency_key) s
        where s.state in ('pending', 'running');
    end if;
    return new_id;
end
$$;

-- Requeued dead letters keep their producer.
create or replace function pdq.requeue_dead_letters(ids bigint[], force boolean default false)
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    new_ids bigint[];
    from_ids bigint[];
begin
    with picked as (
        update pdq.dead_letters d
        set requeued_at = now(), requeue_count = d.requeue_count + 1
        where d.id = any(ids) and d.requeued_at is null
        returning d.*
    ), inserted as (
        insert into pdq.jobs (conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, run_at,
            expires_at, max_attempts, requeued_from, seq, producer)
        select conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, now(),
            case when expires_at > now() and isfinite(expires_at) then expires_at end,
            max_attempts, id, case when force then null else coalesce(seq, id) end, producer
        from picked
        order by id, dead_at
        returning pdq.jobs.id, pdq.jobs.requeued_from
    )
    select coalesce(array_agg(i.id order by i.id), '{}'),
           coalesce(array_agg(i.requeued_from order by i.id), '{}')
    into new_ids, from_ids
    from inserted i;

    -- The k-th dead letter of an id (by dead_at) became the k-th new job made from that id.
    update pdq.dead_letters d set requeued_as = m.job_id
    from (select n.job_id, n.from_id,
                 row_number() over (partition by n.from_id order by n.job_id) as k
          from unnest(new_ids, from_ids) as n(job_id, from_id)) m
    join (select t.ctid as row_id, t.id,
                 row_number() over (partition by t.id order by t.dead_at) as k
          from pdq.dead_letters t
          where t.id = any(from_ids) and t.requeued_at = now() and t.requeued_as is null) r
      on r.id = m.from_id and r.k = m.k
    where d.ctid = r.row_id;

    return cardinality(new_ids);
end
$$;

-- Cancelled jobs keep their producer.
create or replace function pdq.cancel_jobs(ids bigint[], note text default null)
returns table (job_id bigint, idempotency_key text)
language sql security definer set search_path = pg_catalog, pg_temp
as $$
    with cancelled as (
        delete from pdq.jobs j
        where j.id = any(ids) and j.state = 'pending'
        returning j.*
    ), archived as (
        insert into pdq.cancelled_jobs (id, conversation_id, external_tag, participant_id,
            participant_purpose, participant_external_contact_id, participant_name, attributes,
            priority, run_at, expires_at, idempotency_key, max_attempts, created_at, attempts,
            first_attempt_at, last_attempt_at, last_error, requeued_from, seq, cancelled_by,
            note, producer)
        select id, conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, run_at,
            expires_at, idempotency_key, max_attempts, created_at, attempts, first_attempt_at,
            last_attempt_at, last_error, requeued_from, seq, session_user, cancel_jobs.note,
            producer
        from cancelled
        order by id
    )
    select c.id, c.idempotency_key from cancelled c order by c.id
$$;

create or replace view pdq.job_records as
select j.id,
    j.state,
    j.conversation_id, j.external_tag, j.participant_id, j.participant_purpose,
    j.participant_external_contact_id, j.participant_name,
    j.attributes, j.priority, j.idempotency_key, j.max_attempts,
    j.created_at, j.run_at, j.expires_at,
    j.attempts, j.first_attempt_at, j.last_attempt_at, j.last_error,
    j.locked_by,
    coalesce(i.locked_until, j.locked_until) as locked_until,
    null::timestamptz as finished_at,
    null::uuid as resolved_conversation_id, null::uuid as resolved_participant_id,
    null::integer as coalesced_with, null::text[] as superseded_keys,
    null::text as reason, null::text as detail, null::integer as http_status,
    null::text as error_code, null::text as error_message, null::text as context_id,
    null::text as correlation_id, null::jsonb as error_body,
    null::timestamptz as requeued_at, null::bigint as requeued_as, 0 as requeue_count,
    j.requeued_from,
    null::text as cancelled_by, null::text as note,
    j.participant_key,
    j.producer
from pdq.jobs j
left join lateral (
    select max(f.locked_until) as locked_until from pdq.inflight f
    where j.state = 'running' and f.lease_token = j.lease_token
) i on true
union all
select f.id, 'applied',
    f.conversation_id, f.external_tag, f.participant_id, f.participant_purpose,
    f.participant_external_contact_id, f.participant_name,
    f.attributes, f.priority, f.idempotency_key, null,
    f.created_at, f.run_at, null,
    f.attempts, f.first_attempt_at, null, null,
    f.locked_by, null,
    f.finished_at,
    f.resolved_conversation_id, f.resolved_participant_id,
    f.coalesced_with, f.superseded_keys,
    null, null, null, null, null, null, null, null,
    null, null, 0, null,
    null, null,
    null,
    f.producer
from pdq.finished_jobs f
union all
select d.id, 'dead_lettered',
    d.conversation_id, d.external_tag, d.participant_id, d.participant_purpose,
    d.participant_external_contact_id, d.participant_name,
    d.attributes, d.priority, d.idempotency_key, d.max_attempts,
    d.created_at, d.run_at, d.expires_at,
    d.attempts, d.first_attempt_at, d.last_attempt_at, null,
    d.locked_by, null,
    d.dead_at,
    d.resolved_conversation_id, d.resolved_participant_id,
    null, null,
    d.reason, d.detail, d.http_status, d.error_code, d.error_message, d.context_id,
    d.correlation_id, d.error_body,
    d.requeued_at, d.requeued_as, d.requeue_count, null,
    null, null,
    null,
    d.producer
from pdq.dead_letters d
union all
select c.id, 'cancelled',
    c.conversation_id, c.external_tag, c.participant_id, c.participant_purpose,
    c.participant_external_contact_id, c.participant_name,
    c.attributes, c.priority, c.idempotency_key, c.max_attempts,
    c.created_at, c.run_at, c.expires_at,
    c.attempts, c.first_attempt_at, c.last_attempt_at, c.last_error,
    null, null,
    c.cancelled_at,
    null, null,
    null, null,
    'cancelled', c.note, null, null, null, null, null, null,
    null, null, 0, c.requeued_from,
    c.cancelled_by, c.note,
    null,
    c.producer
from pdq.cancelled_jobs c;

-- What became of a job, for its producer (or anyone who sees every job): no row for another
-- producer's job, as for an id pdq does not know.
create or replace function pdq.job_status(id bigint)
returns table (
    job_id bigint, idempotency_key text, state text, current_job_id bigint, requeues integer,
    created_at timestamptz, run_at timestamptz, attempts integer, last_attempt_at timestamptz,
    finished_at timestamptz, reason text, detail text, http_status integer,
    correlation_id text, conversation_id uuid, participant_id uuid
)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    with viewer as (
        select pdq.sees_every_job(session_user) as every_job,
               pdq.producer_identity_of(session_user) as producer
    )
    select s.*
    from (select r from pdq.job_records r, viewer v
          where r.id = job_status.id and (v.every_job or r.producer = v.producer)
          order by r.finished_at desc nulls first limit 1) newest
    cross join lateral pdq.job_status_of(newest.r) s
$$;
revoke all on function pdq.job_status(bigint) from public;

-- The same, by the caller's idempotency key (a producer's keys are its own: another producer's
-- job with the same key is not answered). Operators are answered the newest job with the key.
create or replace function pdq.job_status(idempotency_key text)
returns table (
    job_id bigint, idempotency_key text, state text, current_job_id bigint, requeues integer,
    created_at timestamptz, run_at timestamptz, attempts integer, last_attempt_at timestamptz,
    finished_at timestamptz, reason text, detail text, http_status integer,
    correlation_id text, conversation_id uuid, participant_id uuid
)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    with viewer as (
        select pdq.sees_every_job(session_user) as every_job,
               pdq.producer_identity_of(session_user) as producer
    ), keyed as (
        select k.job_id, nullif(k.producer, '') as producer
        from pdq.idempotency_keys k, viewer v
        where k.key = job_status.idempotency_key and (v.every_job or k.producer = v.producer)
    ), candidates as (
        select r from pdq.job_records r join keyed k
            on r.id = k.job_id and r.producer is not distinct from k.producer
        where r.idempotency_key = job_status.idempotency_key or r.idempotency_key is null
        union all
        select r from pdq.job_records r, viewer v
        where v.every_job and r.idempotency_key = job_status.idempotency_key
    )
    select s.job_id, coalesce(s.idempotency_key, job_status.idempotency_key), s.state,
        s.current_job_id, s.requeues, s.created_at, s.run_at, s.attempts, s.last_attempt_at,
        s.finished_at, s.reason, s.detail, s.http_status, s.correlation_id, s.conversation_id,
        s.participant_id
    from (select c.r from candidates c
          order by (c.r).idempotency_key is not null desc, (c.r).finished_at desc nulls first
          limit 1) newest
    cross join lateral pdq.job_status_of(newest.r) s
$$;
revoke all on function pdq.job_status(text) from public;

-- Row-level security on pdq.jobs, the one table a producer may read (id and idempotency_key):
-- a producer sees and inserts only rows of its own identity. Operators and workers have a
-- policy that is always true (constant-folded: the workers' claims plan as before); the owner
-- and superusers are not subject to it.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_producer') then
        alter table pdq.jobs enable row level security;
        create policy producers_see_their_own_jobs on pdq.jobs to pdq_producer
            using (producer = (select pdq.producer_identity()))
            with check (producer = (select pdq.producer_identity()));
        if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
            create policy operators_see_every_job on pdq.jobs to pdq_operator
                using (true) with check (true);
            grant select on pdq.idempotency_key_holders to pdq_operator;
        end if;
        if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
            create policy workers_see_every_job on pdq.jobs to pdq_worker
                using (true) with check (true);
        end if;
    end if;
end
$$;
