-- Every column of pdq.rate_budgets that a role other than the worker may write (pdq_operator may
-- update paused_until, next_slot, pause_reason, resumed_by, resumed_at and updated_at) holds
-- only what the workers can read.
--
-- `update pdq.rate_budgets set next_slot = 'infinity'` made every worker and `pdq status` fail
-- to read the row (no client decodes an infinite time, nor one past the year 262143), and the
-- row stayed so across restarts. Rows already holding such a value are repaired first (a time
-- that cannot be a real pause becomes now, which ends the pause), so the rules are validated.
-- A far-future time that is still readable is allowed here; the worker never waits longer than
-- a pause may last whatever the row says, and `pdq budget resume` repairs it.

update pdq.rate_budgets
set next_slot = case when isfinite(next_slot) and next_slot < '10000-01-01 00:00:00+00'
                     then next_slot else now() end,
    paused_until = case when isfinite(paused_until) and paused_until < '10000-01-01 00:00:00+00'
                        then paused_until else now() end,
    updated_at = case when isfinite(updated_at) and updated_at < '10000-01-01 00:00:00+00'
                      then updated_at else now() end,
    resumed_at = case when isfinite(resumed_at) and resumed_at < '10000-01-01 00:00:00+00'
                      then resumed_at else null end,
    pause_reason = case when pause_reason ~ '^[a-z_]{1,64}$' then pause_reason
                        when pause_reason is null then null else 'operator' end,
    resumed_by = case when resumed_by is null then null
                      else left(regexp_replace(resumed_by, '[\u0001-\u001f\u007f-\u009f]', ' ', 'g'), 256) end
where not (isfinite(next_slot) and next_slot < '10000-01-01 00:00:00+00')
   or not (isfinite(paused_until) and paused_until < '10000-01-01 00:00:00+00')
   or not (isfinite(updated_at) and updated_at < '10000-01-01 00:00:00+00')
   or not coalesce(isfinite(resumed_at) and resumed_at < '10000-01-01 00:00:00+00', true)
   or pause_reason !~ '^[a-z_]{1,64}$'
   or char_length(resumed_by) > 256 or resumed_by ~ '[\u0001-\u001f\u007f-\u009f]';

alter table pdq.rate_budgets
    add constraint next_slot_must_be_finite_and_before_the_year_10000
        check (isfinite(next_slot) and next_slot < '10000-01-01 00:00:00+00'),
    add constraint paused_until_must_be_finite_and_before_the_year_10000
        check (isfinite(paused_until) and paused_until < '10000-01-01 00:00:00+00'),
    add constraint updated_at_must_be_finite_and_before_the_year_10000
        check (isfinite(updated_at) and updated_at < '10000-01-01 00:00:00+00'),
    add constraint resumed_at_must_be_finite_and_before_the_year_10000
        check (isfinite(resumed_at) and resumed_at < '10000-01-01 00:00:00+00'),
    add constraint pause_reason_must_be_a_lowercase_word
        check (pause_reason ~ '^[a-z_]{1,64}$'),
    -- Control characters (Unicode Cc) are what a terminal acts on.
    add constraint resumed_by_must_be_at_most_256_printable_characters
        check (char_length(resumed_by) <= 256 and resumed_by !~ '[\u0001-\u001f\u007f-\u009f]');
