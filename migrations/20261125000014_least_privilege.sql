-- Least privilege per role. Each role gets exactly what its commands use; everything else is
-- revoked table by table, so the rights that tables of other migrations grant (for example the
-- worker's on pdq.applied_keys) are left alone; a new table grants its own rights.
--
--   pdq_producer: INSERT of the contract columns only (never id, state, attempts, leases…),
--                 SELECT (id, idempotency_key) for ON CONFLICT … RETURNING, pdq.enqueue.
--   pdq_operator: reads everything; requeues through pdq.requeue_dead_letters (no INSERT on
--                 pdq.jobs) and purges dead letters.
--   pdq_worker:   claims, finishes and archives jobs; reads the protected prefixes and the
--                 migration bookkeeping; prunes dead letters and idempotency keys only through
--                 pdq.prune_dead_letters and pdq.prune_idempotency_keys.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_producer') then
        revoke all on pdq.jobs, pdq.inflight, pdq.finished_jobs, pdq.dead_letters,
            pdq.rate_budgets, pdq.protected_key_prefixes, pdq._sqlx_migrations,
            pdq.idempotency_keys from pdq_producer;
        grant insert (conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, run_at,
            expires_at, idempotency_key, max_attempts) on pdq.jobs to pdq_producer;
        grant select (id, idempotency_key) on pdq.jobs to pdq_producer;
        grant execute on function pdq.enqueue(jsonb, uuid, text, uuid, text, text, text, text,
            timestamptz, timestamptz, text, integer) to pdq_producer;
    end if;

    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        revoke all on pdq.jobs, pdq.inflight, pdq.finished_jobs, pdq.dead_letters,
            pdq.rate_budgets, pdq.protected_key_prefixes, pdq._sqlx_migrations,
            pdq.idempotency_keys from pdq_operator;
        grant select on pdq.jobs, pdq.inflight, pdq.finished_jobs, pdq.dead_letters,
            pdq.rate_budgets, pdq.protected_key_prefixes, pdq._sqlx_migrations,
            pdq.idempotency_keys to pdq_operator;
        grant delete on pdq.dead_letters to pdq_operator;
        grant execute on function pdq.requeue_dead_letters(bigint[]) to pdq_operator;
    end if;

    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        revoke all on pdq.jobs, pdq.inflight, pdq.finished_jobs, pdq.dead_letters,
            pdq.rate_budgets, pdq.protected_key_prefixes, pdq._sqlx_migrations,
            pdq.idempotency_keys from pdq_worker;
        execute format('revoke all on sequence %s from pdq_worker',
            pg_get_serial_sequence('pdq.jobs', 'id'));
        revoke execute on function pdq.enqueue(jsonb, uuid, text, uuid, text, text, text, text,
            timestamptz, timestamptz, text, integer) from pdq_worker;
        revoke execute on function pdq.requeue_dead_letters(bigint[]) from pdq_worker;
        grant select, update, delete on pdq.jobs to pdq_worker;
        grant select, insert, update, delete on pdq.inflight, pdq.rate_budgets to pdq_worker;
        grant select, insert, delete on pdq.finished_jobs to pdq_worker;
        grant select, insert on pdq.dead_letters to pdq_worker;
        grant select on pdq.protected_key_prefixes, pdq._sqlx_migrations to pdq_worker;
        grant execute on function pdq.advance_job_ids(), pdq.prune_dead_letters(interval, integer),
            pdq.prune_idempotency_keys(interval, integer) to pdq_worker;
    end if;
end
$$;
