-- A value that may have landed but was never confirmed: its job's PATCH got an error or no
-- answer (or its worker's lease was lost), and the job then left the queue without a confirmed
-- landing (cancelled, dead-lettered, expired, or applied later with other keys). Per participant
-- and key, the newest such value is kept here. A unit about to send an older value of that key
-- reads the participant's attributes first: if the API holds this value, it landed, and the
-- older one is left out; otherwise the older one is sent. A confirmed landing of a value at
-- least as new (pdq.applied_keys) removes the row.
create table pdq.uncertain_values (
    target text not null,
    key text not null,
    seq bigint not null,
    value text not null,
    noted_at timestamptz not null default now(),
    primary key (target, key)
);
comment on table pdq.uncertain_values is
    'Per participant (c:<conversation>/p:<participant>) and key, the newest value whose PATCH may '
    'have landed unseen; an older value is sent only after reading that the API does not hold it.';

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_worker') then
        grant select, insert, update, delete on pdq.uncertain_values to pdq_worker;
    end if;
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant select on pdq.uncertain_values to pdq_operator;
    end if;
end
$$;
