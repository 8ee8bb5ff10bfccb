-- pdq.inflight and pdq.rate_budgets only coordinate running workers, so they skip the WAL.
-- After a Postgres crash they come back empty, which is safe: a participant's running jobs stay
-- in pdq.jobs (logged) and keep later jobs of that participant from being claimed until their
-- lease expires, and the budget schedule simply starts again from now.
alter table pdq.inflight set unlogged;
alter table pdq.rate_budgets set unlogged;
