-- Why the shared budget is paused, and who lifted the last pause, for `pdq status` and
-- `pdq budget resume`.
alter table pdq.rate_budgets
    add column pause_reason text,
    add column resumed_by text,
    add column resumed_at timestamptz;

-- Before this release a Retry-After had no ceiling: a pause persisted as 24 h (or more) outlived
-- restarts. Pauses are now capped at 180 s; cut any longer one still in force to that.
update pdq.rate_budgets
set paused_until = least(paused_until, now() + interval '180 seconds'),
    next_slot = least(next_slot, now() + interval '180 seconds'),
    pause_reason = coalesce(pause_reason, 'rate_limited'),
    updated_at = now()
where paused_until > now() + interval '180 seconds'
   or next_slot > now() + interval '180 seconds';

-- Operators may lift a pause (`pdq budget resume`), nothing else.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pdq_operator') then
        grant update (paused_until, next_slot, pause_reason, resumed_by, resumed_at, updated_at)
            on pdq.rate_budgets to pdq_operator;
    end if;
end
$$;
