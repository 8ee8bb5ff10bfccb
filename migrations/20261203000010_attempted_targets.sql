-- A job whose PATCH may have reached the API and has not finished (waiting for its retry after
-- an error answered to its PATCH or no answer at all, or rescued after its worker froze or
-- died) holds back the older values of the participant it resolved to, whatever locator each
-- job used. A job that was only claimed, or found its participant busy, sent nothing and holds
-- nothing back.
--
-- maybe_sent is set, and never cleared while the job is queued, when an attempt of the job
-- ended after its PATCH left without a clear refusal: a 5xx, a timeout or reset, a lost lease.
--
-- resolved_key is the participant key (c:<conversation>/p:<participant>) a unit claimed under
-- another locator (purpose, name, external contact or tag) resolved to, written when the unit
-- takes that participant and before its PATCH is sent. A job that names both ids has it in
-- participant_key already.
alter table pdq.jobs add column resolved_key text;
alter table pdq.jobs add column maybe_sent boolean not null default false;
comment on column pdq.jobs.maybe_sent is
    'An attempt of this job may have reached the API (an error or no answer after its PATCH, '
    'a lost lease); older values of its participant wait until it finishes. Set by the worker.';
alter table pdq.jobs add column quiet_until timestamptz;
comment on column pdq.jobs.quiet_until is
    'Its last PATCH got no answer (a timeout, a reset) and the API may still apply it: until '
    'then no other unit sends to its participant. Set by the worker.';
comment on column pdq.jobs.resolved_key is
    'The participant (c:<conversation>/p:<participant>) this job last resolved to and held '
    'before sending, when it names the participant another way; set by the worker only.';

create index jobs_maybe_sent_by_resolved_key on pdq.jobs (resolved_key)
    where resolved_key is not null and maybe_sent;

-- The claim asks, per claimed job, whether a newer job of its participant may have been sent
-- and has not finished; such jobs are few, so this index stays small whatever the backlog
-- behind a participant, and a claim writes nothing into it.
create index jobs_maybe_sent_by_participant on pdq.jobs (participant_key) where maybe_sent;
