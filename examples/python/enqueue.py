#!/usr/bin/env python3
"""Enqueue one participant-data update into pdq from Python (psycopg 3), then wait for it.

    DATABASE_URL=postgres://producer@host/db CONVERSATION_ID=… python3 enqueue.py

What an upstream system does:
  1. LISTEN pdq_outcomes first, so no outcome can slip by between the INSERT and the wait.
  2. INSERT the job with an idempotency key: a retry of the same INSERT is a no-op.
  3. Handle a refused row by the name of the rule (constraint) that refused it.
  4. Wait for a notification, and confirm it with pdq.job_status (a notification is only a
     wake-up: anyone may send one). Poll now and then too: notifications are off unless an
     operator turned them on (update pdq.settings set notify_outcomes = true), and are lost
     while disconnected.

Exit status: 0 applied, 1 dead-lettered or cancelled, 2 refused, 3 no outcome in time.
"""

import json
import os
import sys
import time
import uuid

import psycopg
from psycopg import errors

DATABASE_URL = os.environ["DATABASE_URL"]
CONVERSATION_ID = os.environ["CONVERSATION_ID"]
KEY = os.environ.get("IDEMPOTENCY_KEY") or f"example-python-{uuid.uuid4()}"
WAIT_SECS = float(os.environ.get("WAIT_SECS", "60"))

INSERT = """
    insert into pdq.jobs (conversation_id, participant_purpose, attributes, idempotency_key)
    values (%s, 'customer', %s, %s)
    on conflict (idempotency_key) do nothing
    returning id
"""


def enqueue(conn, attributes, key):
    """The job's id; None when the key was enqueued before (the retry did nothing)."""
    with conn.transaction():
        row = conn.execute(INSERT, (CONVERSATION_ID, json.dumps(attributes), key)).fetchone()
    return row[0] if row else None


def status(conn, key):
    """pdq.job_status by idempotency key: (job_id, state, reason, detail), or None."""
    return conn.execute(
        "select job_id, state, reason, detail from pdq.job_status(%s::text)", (key,)
    ).fetchone()


def main():
    listener = psycopg.connect(DATABASE_URL, autocommit=True)
    listener.execute("listen pdq_outcomes")
    conn = psycopg.connect(DATABASE_URL, autocommit=True)

    # A refused row: the constraint's name says which rule it broke; nothing was written.
    try:
        enqueue(conn, {"vip": True}, f"{KEY}-refused")
        print("unexpected: a bad row was accepted", file=sys.stderr)
        return 2
    except errors.CheckViolation as error:
        print(f"refused as expected by {error.diag.constraint_name}")

    attributes = {"orderStatus": "shipped", "source": "python"}
    try:
        job_id = enqueue(conn, attributes, KEY)
    except errors.CheckViolation as error:
        print(f"refused by {error.diag.constraint_name}: {error.diag.message_primary}")
        return 2
    again = enqueue(conn, attributes, KEY)
    print(f"enqueued job {job_id} with key {KEY}; the same insert again: {again}")

    deadline = time.monotonic() + WAIT_SECS
    while time.monotonic() < deadline:
        found = status(conn, KEY)
        if found and found[1] in ("applied", "dead_lettered", "cancelled"):
            job, state, reason, detail = found
            print(f"job {job}: {state}" + (f" ({reason}: {detail})" if reason else ""))
            return 0 if state == "applied" else 1
        # Wake up on a notification for any job, or after a second to poll anyway.
        for note in listener.notifies(timeout=1.0, stop_after=1):
            payload = json.loads(note.payload)
            print(f"notified: job {payload.get('job_id')} {payload.get('outcome')}")
    print(f"no outcome within {WAIT_SECS:.0f} s: {status(conn, KEY)}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
