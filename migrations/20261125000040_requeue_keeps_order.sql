-- A requeued dead letter keeps its place in its participant's history (its `seq`): when a
-- newer job of that participant was applied in the meantime, the keys it wrote are not sent
-- again with the older value (they are recorded in pdq.finished_jobs.superseded_keys).
-- `force => true` gives the requeued job a new place, so its values win as if just inserted.
drop function pdq.requeue_dead_letters(bigint[]);

create function pdq.requeue_dead_letters(ids bigint[], force boolean default false)
returns bigint
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
            expires_at, max_attempts, requeued_from, seq)
        select conversation_id, external_tag, participant_id, participant_purpose,
            participant_external_contact_id, participant_name, attributes, priority, now(),
            case when expires_at > now() and isfinite(expires_at) then expires_at end,
            max_attempts, id, case when force then null else coalesce(seq, id) end
        from picked
        order by id, dead_at
        returning 1
    )
    select count(*) from inserted
$$;
revoke all on function pdq.requeue_dead_letters(bigint[], boolean) from public;

-- The keys a requeue (without force) would not send, because a newer job of the same
-- participant already wrote them: what an operator sees before confirming a requeue.
create function pdq.requeue_would_drop(ids bigint[])
returns table (dead_letter_id bigint, key text, newer_seq bigint)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select d.id, a.key, a.seq
    from pdq.dead_letters d
    cross join lateral jsonb_object_keys(d.attributes) as k(key)
    join pdq.applied_keys a
      on a.key = k.key
     and a.target in (
         'c:' || coalesce(d.resolved_conversation_id, d.conversation_id)::text
             || '/p:' || coalesce(d.resolved_participant_id, d.participant_id)::text)
     and a.seq > coalesce(d.seq, d.id)
    where d.id = any(ids) and d.requeued_at is null
    order by d.id, a.key
$$;
revoke all on function pdq.requeue_would_drop(bigint[]) from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant execute on function pdq.requeue_dead_letters(bigint[], boolean) to pdq_operator;
        grant execute on function pdq.requeue_would_drop(bigint[]) to pdq_operator;
    end if;
end
$$;
