-- Looking a job up wherever it is (pending, running, applied, dead-lettered or cancelled),
-- cancelling pending jobs, `pdq.job_status` for upstream systems and the opt-in
-- `NOTIFY pdq_outcomes`.

-- Pending jobs an operator cancelled (`pdq jobs cancel`), kept as history with who and when.
-- They are pruned with the dead letters (same retention: see pdq.prune_dead_letters below).
create table pdq.cancelled_jobs (
    id bigint not null,
    conversation_id uuid,
    external_tag text,
    participant_id uuid,
    participant_purpose text,
    participant_external_contact_id text,
    participant_name text,
    attributes jsonb not null,
    priority text not null,
    run_at timestamptz not null,
    expires_at timestamptz,
    idempotency_key text,
    max_attempts integer not null,
    created_at timestamptz not null,
    attempts integer not null,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_error jsonb,
    requeued_from bigint,
    seq bigint,
    cancelled_at timestamptz not null default now(),
    cancelled_by text not null default session_user,
    note text
);
create index cancelled_jobs_by_id on pdq.cancelled_jobs (id);
create index cancelled_jobs_by_time on pdq.cancelled_jobs (cancelled_at);
create index cancelled_jobs_by_idempotency_key on pdq.cancelled_jobs (idempotency_key)
    where idempotency_key is not null;

comment on table pdq.cancelled_jobs is
    'Pending jobs an operator cancelled (pdq.cancel_jobs), with who and when; never sent.';

-- A requeued dead letter records the job it became, so a job's story (and its outcome) can be
-- followed from the dead letter to the job that finally applied it.
alter table pdq.dead_letters add column requeued_as bigint;
create index dead_letters_by_requeued_as on pdq.dead_letters (requeued_as)
    where requeued_as is not null;
comment on column pdq.dead_letters.requeued_as is
    'The id of the job pdq.requeue_dead_letters made of this dead letter.';

-- Links for dead letters requeued before this release, as far as the jobs are still queued.
update pdq.dead_letters d set requeued_as = j.id
from pdq.jobs j
where j.requeued_from = d.id and d.requeued_at is not null and d.requeued_as is null;

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
            expires_at, max_attempts, requeued_from, seq)
        select conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, now(),
            case when expires_at > now() and isfinite(expires_at) then expires_at end,
            max_attempts, id, case when force then null else coalesce(seq, id) end
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

-- Every job pdq knows, one row per record, in one shape: queued and running jobs, applied jobs,
-- dead letters and cancelled jobs. Ids can repeat across records (a restarted id sequence): the
-- newest record of an id is the one with the latest `finished_at`, a queued job first.
create view pdq.job_records as
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
    j.participant_key
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
    null
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
    null
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
    null
from pdq.cancelled_jobs c;

comment on view pdq.job_records is
    'Every job pdq knows: queued, running, applied, dead-lettered or cancelled (one row per record).';

-- The explanation in a stored error: the `message` (or `detail`) of a JSON error, or the text.
create or replace function pdq.error_text(error text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp
as $$
declare
    parsed jsonb;
begin
    if error is null or left(ltrim(error), 1) <> '{' then
        return error;
    end if;
    begin
        parsed := error::jsonb;
    exception when others then
        return error;
    end;
    return coalesce(parsed->>'message', parsed->>'detail', error);
end
$$;
revoke all on function pdq.error_text(text) from public;

-- The idempotency key of the job a requeued job came from (following up to 20 requeues back).
create or replace function pdq.origin_idempotency_key(job_id bigint) returns text
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    with recursive back(id, key, hops) as (
        select d.id, d.idempotency_key, 1 from pdq.dead_letters d where d.requeued_as = job_id
        union all
        select d.id, d.idempotency_key, b.hops + 1
        from back b join pdq.dead_letters d on d.requeued_as = b.id
        where b.key is null and b.hops < 20
    )
    select key from back where key is not null order by hops limit 1
$$;
revoke all on function pdq.origin_idempotency_key(bigint) from public;

-- What became of one record of pdq.job_records, following requeues forward (up to 20).
create or replace function pdq.job_status_of(first pdq.job_records)
returns table (
    job_id bigint,
    idempotency_key text,
    state text,
    current_job_id bigint,
    requeues integer,
    created_at timestamptz,
    run_at timestamptz,
    attempts integer,
    last_attempt_at timestamptz,
    finished_at timestamptz,
    reason text,
    detail text,
    http_status integer,
    correlation_id text,
    conversation_id uuid,
    participant_id uuid
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    r pdq.job_records := first;
    next_record pdq.job_records;
    hops integer := 0;
begin
    while r.requeued_as is not null and hops < 20 loop
        select * into next_record from pdq.job_records n
        where n.id = r.requeued_as and n.created_at >= r.requeued_at
        order by n.finished_at desc nulls first
        limit 1;
        exit when not found;
        r := next_record;
        hops := hops + 1;
    end loop;
    job_id := first.id;
    idempotency_key := coalesce(first.idempotency_key, pdq.origin_idempotency_key(first.id));
    state := r.state;
    current_job_id := r.id;
    requeues := hops;
    created_at := first.created_at;
    run_at := case when r.state in ('pending', 'running') then r.run_at end;
    attempts := r.attempts;
    last_attempt_at := r.last_attempt_at;
    finished_at := r.finished_at;
    reason := case
        when r.state in ('dead_lettered', 'cancelled') then r.reason
        when r.state = 'pending' then coalesce(r.last_error->>'failure', r.last_error->>'reason')
    end;
    detail := case
        when r.state = 'cancelled' then 'cancelled by ' || r.cancelled_by
            || coalesce(': ' || r.note, '')
        when r.state = 'dead_lettered' then pdq.error_text(r.detail)
        when r.state = 'pending' then coalesce(r.last_error->>'message', r.last_error->>'detail')
    end;
    http_status := case
        when r.state = 'dead_lettered' then r.http_status
        when jsonb_typeof(r.last_error->'status') = 'number'
            then (r.last_error->>'status')::numeric::integer
    end;
    correlation_id := coalesce(r.correlation_id, r.last_error->>'correlation_id');
    conversation_id := coalesce(r.resolved_conversation_id, r.conversation_id);
    participant_id := coalesce(r.resolved_participant_id, r.participant_id);
    return next;
end
$$;
revoke all on function pdq.job_status_of(pdq.job_records) from public;

-- What became of a job: its state (pending, running, applied, dead_lettered, cancelled), times
-- and reason; no row when pdq does not know the id (never issued, or pruned after retention).
-- A requeued dead letter reports the job it became (`current_job_id`, `requeues`).
create or replace function pdq.job_status(id bigint)
returns table (
    job_id bigint, idempotency_key text, state text, current_job_id bigint, requeues integer,
    created_at timestamptz, run_at timestamptz, attempts integer, last_attempt_at timestamptz,
    finished_at timestamptz, reason text, detail text, http_status integer,
    correlation_id text, conversation_id uuid, participant_id uuid
)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select s.*
    from (select r from pdq.job_records r where r.id = job_status.id
          order by r.finished_at desc nulls first limit 1) newest
    cross join lateral pdq.job_status_of(newest.r) s
$$;
revoke all on function pdq.job_status(bigint) from public;

-- The same, by the producer's idempotency key.
create or replace function pdq.job_status(idempotency_key text)
returns table (
    job_id bigint, idempotency_key text, state text, current_job_id bigint, requeues integer,
    created_at timestamptz, run_at timestamptz, attempts integer, last_attempt_at timestamptz,
    finished_at timestamptz, reason text, detail text, http_status integer,
    correlation_id text, conversation_id uuid, participant_id uuid
)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select s.*
    from (select r from pdq.job_records r where r.idempotency_key = job_status.idempotency_key
          order by r.finished_at desc nulls first limit 1) newest
    cross join lateral pdq.job_status_of(newest.r) s
$$;
revoke all on function pdq.job_status(text) from public;

-- Cancels pending jobs: moves those of `ids` that are still pending (never a running one) to
-- pdq.cancelled_jobs with who (the session's role) and an optional note. Returns the cancelled
-- jobs. Their idempotency keys stay recorded: enqueueing the same key again is still a no-op.
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
            note)
        select id, conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, run_at,
            expires_at, idempotency_key, max_attempts, created_at, attempts, first_attempt_at,
            last_attempt_at, last_error, requeued_from, seq, session_user, cancel_jobs.note
        from cancelled
        order by id
    )
    select c.id, c.idempotency_key from cancelled c order by c.id
$$;
revoke all on function pdq.cancel_jobs(bigint[], text) from public;

-- Cancelled jobs hold customer data like dead letters do and share their retention: the
-- worker's dead-letter pruning removes both.
create or replace function pdq.prune_dead_letters(older_than interval, max_rows integer)
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    pruned bigint;
    pruned_cancelled bigint;
begin
    if older_than < interval '0' then
        raise exception 'older_than must not be negative' using errcode = 'invalid_parameter_value';
    end if;
    with old as (
        select d.ctid from pdq.dead_letters d
        where d.dead_at < now() - older_than
        order by d.dead_at
        limit max_rows
        for update skip locked
    ), deleted as (
        delete from pdq.dead_letters d
        where d.ctid = any(array(select ctid from old)) and d.dead_at < now() - older_than
        returning 1
    )
    select count(*) into pruned from deleted;
    with old as (
        select c.ctid from pdq.cancelled_jobs c
        where c.cancelled_at < now() - older_than
        order by c.cancelled_at
        limit max_rows
        for update skip locked
    ), deleted as (
        delete from pdq.cancelled_jobs c
        where c.ctid = any(array(select ctid from old)) and c.cancelled_at < now() - older_than
        returning 1
    )
    select count(*) into pruned_cancelled from deleted;
    return pruned + pruned_cancelled;
end
$$;

-- Settings an administrator or operator changes with an UPDATE (one row).
create table pdq.settings (
    singleton boolean primary key default true constraint settings_has_one_row check (singleton),
    -- Send `NOTIFY pdq_outcomes` for every job applied, dead-lettered or cancelled.
    notify_outcomes boolean not null default false,
    updated_at timestamptz not null default now(),
    updated_by text not null default session_user
);
insert into pdq.settings default values;

comment on column pdq.settings.notify_outcomes is
    'Send NOTIFY pdq_outcomes ({"job_id", "idempotency_key", "outcome", "reason"}) per finished job.';

-- One notification per archived row. A requeued job carries the key of the job it came from.
-- The payload stays under NOTIFY's 8000-byte limit: a longer key is left out (null).
create or replace function pdq.notify_outcomes() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    payload text;
begin
    if tg_table_name = 'dead_letters' then
        for payload in
            select jsonb_build_object('job_id', n.id, 'idempotency_key', n.key,
                                      'outcome', 'dead_lettered', 'reason', n.reason)::text
            from (select d.id, d.reason,
                         coalesce(d.idempotency_key, pdq.origin_idempotency_key(d.id)) as key
                  from new_rows d order by d.id) n
        loop
            perform pg_notify('pdq_outcomes', payload);
        end loop;
    else
        for payload in
            select jsonb_build_object('job_id', n.id, 'idempotency_key', n.key,
                                      'outcome', case tg_table_name when 'finished_jobs'
                                                 then 'applied' else 'cancelled' end)::text
            from (select f.id,
                         coalesce(f.idempotency_key, pdq.origin_idempotency_key(f.id)) as key
                  from new_rows f order by f.id) n
        loop
            perform pg_notify('pdq_outcomes', payload);
        end loop;
    end if;
    return null;
end
$$;
revoke all on function pdq.notify_outcomes() from public;

-- The outcome triggers exist only while pdq.settings.notify_outcomes is on: a trigger with a
-- transition table makes every archiving statement collect its rows, so when nobody listens
-- the workers' finishing statements pay nothing.
create or replace function pdq.apply_settings() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    archive text;
begin
    foreach archive in array array['finished_jobs', 'dead_letters', 'cancelled_jobs'] loop
        if new.notify_outcomes then
            execute format('create or replace trigger %I after insert on pdq.%I '
                'referencing new table as new_rows for each statement '
                'execute function pdq.notify_outcomes()', archive || '_notify_outcomes', archive);
        else
            execute format('drop trigger if exists %I on pdq.%I',
                archive || '_notify_outcomes', archive);
        end if;
    end loop;
    new.updated_at := now();
    new.updated_by := session_user;
    return new;
end
$$;
revoke all on function pdq.apply_settings() from public;

create trigger settings_apply
    before update on pdq.settings
    for each row when (old.notify_outcomes is distinct from new.notify_outcomes)
    execute function pdq.apply_settings();

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_producer') then
        grant execute on function pdq.job_status(bigint), pdq.job_status(text) to pdq_producer;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.cancelled_jobs, pdq.job_records, pdq.settings to pdq_operator;
        grant update (notify_outcomes) on pdq.settings to pdq_operator;
        grant execute on function pdq.job_status(bigint), pdq.job_status(text),
            pdq.cancel_jobs(bigint[], text) to pdq_operator;
    end if;
end
$$;
