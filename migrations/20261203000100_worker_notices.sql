-- What a worker wants operators to know without being unhealthy (a wake-up channel that
-- never fires), shown by `pdq status` beside the worker.
alter table pdq.workers add column notice text;

comment on column pdq.workers.notice is
    'Something the worker wants operators to know that does not stop it (e.g. wake-ups that never arrive), or null.';
