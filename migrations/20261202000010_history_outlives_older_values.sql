-- Which value of a key landed (pdq.applied_keys) is kept as long as an older value of it can
-- still be sent: a queued job (scheduled far ahead, waiting for a retry) or a dead letter not
-- yet requeued with a lower seq. The prune (src/queue/retention.rs) reads the lowest seq still
-- to come from these two indexes; cancelled jobs never come back and do not count.
create index jobs_by_seq on pdq.jobs (seq) where seq is not null;
create index dead_letters_waiting_by_seq on pdq.dead_letters ((coalesce(seq, id)))
    where requeued_at is null;

comment on column pdq.applied_keys.applied_at is
    'When the value at this seq landed (a lower seq landing later leaves it alone). The row is '
    'pruned after the retention of applied jobs, once no queued job or waiting dead letter has '
    'a lower seq.';
