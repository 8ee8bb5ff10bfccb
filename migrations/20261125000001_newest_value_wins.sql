-- The newest accepted value wins per participant and key, whatever locator each job used.
--
-- `seq` orders a participant's updates: a job's own id, or, for a requeued dead letter, the id
-- of the job it came from (so a requeue cannot overwrite a value inserted after it).
-- `pdq.applied_keys` remembers, per resolved participant and key, the seq of the newest value
-- the API accepted; a unit drops the keys a newer job already wrote and records them.
alter table pdq.jobs add column seq bigint;
alter table pdq.dead_letters add column seq bigint;
alter table pdq.finished_jobs add column seq bigint;
alter table pdq.finished_jobs add column superseded_keys text[];

comment on column pdq.jobs.seq is
    'Order among the participant''s updates (null: the job id). Set by requeue, never by producers.';
comment on column pdq.finished_jobs.superseded_keys is
    'Keys not sent because a newer job of the same participant had already written them.';

create table pdq.applied_keys (
    -- The resolved participant, as pdq.participant_key(conversation_id, null, participant_id, …).
    target text not null,
    key text not null,
    seq bigint not null,
    applied_at timestamptz not null default now(),
    primary key (target, key)
);
create index applied_keys_by_time on pdq.applied_keys (applied_at);

comment on table pdq.applied_keys is
    'Per resolved participant and attribute key, the seq of the newest value the API accepted.';

-- A unit holds one pdq.inflight row for the participant key it was claimed under and, once it
-- resolved a tag or purpose to ids, a second row for the resolved participant: both rows carry
-- the unit's lease token.
alter table pdq.inflight drop constraint inflight_lease_token_key;
create index inflight_by_lease on pdq.inflight (lease_token);

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant select, insert, update, delete on pdq.applied_keys to pdq_worker;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.applied_keys to pdq_operator;
    end if;
end
$$;
