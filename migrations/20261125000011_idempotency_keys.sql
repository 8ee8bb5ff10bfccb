-- Idempotency keys get their own table, written in the same statement as the job and untouched
-- by finishing and by pruning finished jobs: a key is known from the moment its job is inserted
-- until it is older than the key horizon (pdq.prune_idempotency_keys; 30 days by default),
-- whether the job is pending, running, applied, dead-lettered or pruned.
create table pdq.idempotency_keys (
    key text primary key,
    job_id bigint not null,
    created_at timestamptz not null default now()
);
create index idempotency_keys_by_time on pdq.idempotency_keys (created_at);

comment on table pdq.idempotency_keys is
    'Every idempotency key pdq has accepted, kept for the key horizon (pdq.prune_idempotency_keys).';

insert into pdq.idempotency_keys (key, job_id, created_at)
select idempotency_key, id, created_at from pdq.jobs where idempotency_key is not null
union all
select idempotency_key, id, finished_at from pdq.finished_jobs where idempotency_key is not null
union all
select idempotency_key, id, dead_at from pdq.dead_letters where idempotency_key is not null
on conflict (key) do nothing;

drop trigger jobs_skip_known_idempotency_key on pdq.jobs;
drop function pdq.skip_known_idempotency_key();

-- Records the key of a new job; a key already recorded makes the row a no-op (it is skipped).
-- The primary key makes a concurrent insert of the same key wait for the first transaction:
-- it is skipped once that commits and goes ahead if that rolls back.
create or replace function pdq.record_idempotency_key() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    insert into pdq.idempotency_keys (key, job_id) values (new.idempotency_key, new.id)
    on conflict (key) do nothing;
    if not found then
        return null;
    end if;
    return new;
end
$$;
revoke all on function pdq.record_idempotency_key() from public;

create trigger jobs_record_idempotency_key
    before insert on pdq.jobs
    for each row when (new.idempotency_key is not null)
    execute function pdq.record_idempotency_key();

-- Forgets keys recorded more than `older_than` ago, at most `max_rows` per call; a key whose job
-- is still queued is kept. Returns how many keys were forgotten.
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
        select k.key from pdq.idempotency_keys k
        where k.created_at < now() - older_than
          and not exists (select 1 from pdq.jobs j where j.idempotency_key = k.key)
        order by k.created_at
        limit max_rows
        for update skip locked
    ), forgotten as (
        delete from pdq.idempotency_keys k using old where k.key = old.key returning 1
    )
    select count(*) into pruned from forgotten;
    return pruned;
end
$$;
revoke all on function pdq.prune_idempotency_keys(interval, integer) from public;

-- Returns the new job's id, the id of the queued job that already has this idempotency key, or
-- null when the key was already applied or dead-lettered (within the key horizon).
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
        select j.id into new_id from pdq.jobs j where j.idempotency_key = enqueue.idempotency_key;
    end if;
    return new_id;
end
$$;
