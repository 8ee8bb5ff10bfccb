-- Dead letters hold customer data: they are pruned after a retention window, like applied jobs.
-- Deletes dead letters that died more than `older_than` ago, at most `max_rows` per call, and
-- returns how many were deleted. The worker calls it; it needs no DELETE grant for that.
create or replace function pdq.prune_dead_letters(older_than interval, max_rows integer)
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
    return pruned;
end
$$;
revoke all on function pdq.prune_dead_letters(interval, integer) from public;

-- Requeueing runs with the owner's rights, so operators need no INSERT on pdq.jobs. Two dead
-- letters may share an id (see pdq.advance_job_ids); each is requeued as its own job.
create or replace function pdq.requeue_dead_letters(ids bigint[]) returns bigint
language sql security definer set search_path = pg_catalog, pg_temp
as $$
    with picked as (
        update pdq.dead_letters d
        set requeued_at = now(), requeue_count = d.requeue_count + 1
        where d.id = any(ids) and d.requeued_at is null
        returning d.*
    ), inserted as (
        insert into pdq.jobs (conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, run_at,
            expires_at, max_attempts, requeued_from)
        select conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, now(),
            case when expires_at > now() and isfinite(expires_at) then expires_at end,
            max_attempts, id
        from picked
        order by id, dead_at
        returning 1
    )
    select count(*) from inserted
$$;
revoke all on function pdq.requeue_dead_letters(bigint[]) from public;
