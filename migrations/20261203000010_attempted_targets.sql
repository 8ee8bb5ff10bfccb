-- A job whose PATCH may have reached the API (it was attempted and has not finished: waiting
-- for its retry, or rescued after its worker froze or died) holds back the older values of the
-- participant it resolved to, whatever locator each job used.
--
-- resolved_key is the participant key (c:<conversation>/p:<participant>) a unit claimed under
-- another locator (purpose, name, external contact or tag) resolved to, written when the unit
-- takes that participant and before its PATCH is sent. A job that names both ids has it in
-- participant_key already.
alter table pdq.jobs add column resolved_key text;
comment on column pdq.jobs.resolved_key is
    'The participant (c:<conversation>/p:<participant>) this job last resolved to and held '
    'before sending, when it names the participant another way; set by the worker only.';

create index jobs_by_resolved_key on pdq.jobs (resolved_key, id) where resolved_key is not null;

-- The claim asks, per claimed job, whether a newer job of its participant was attempted and has
-- not finished; attempted jobs are few (running or waiting for a retry), so this index stays
-- small whatever the backlog behind a participant.
create index jobs_attempted_by_participant on pdq.jobs (participant_key)
    where first_attempt_at is not null;
