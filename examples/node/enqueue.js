#!/usr/bin/env node
// Enqueue one participant-data update into pdq from Node (pg), then wait for it.
//
//     DATABASE_URL=postgres://producer@host/db CONVERSATION_ID=… node enqueue.js
//
// What an upstream system does:
//   1. LISTEN pdq_outcomes first, so no outcome can slip by between the INSERT and the wait.
//   2. INSERT the job with an idempotency key: a retry of the same INSERT is a no-op.
//   3. Handle a refused row by the name of the rule (constraint) that refused it.
//   4. Wait for a notification, and confirm it with pdq.job_status (a notification is only a
//      wake-up: anyone may send one). Poll now and then too: notifications are off unless an
//      operator turned them on (update pdq.settings set notify_outcomes = true), and are lost
//      while disconnected.
//
// Exit status: 0 applied, 1 dead-lettered or cancelled, 2 refused, 3 no outcome in time.
'use strict';

const crypto = require('node:crypto');
const { Client } = require('pg');

const DATABASE_URL = process.env.DATABASE_URL;
const CONVERSATION_ID = process.env.CONVERSATION_ID;
const KEY = process.env.IDEMPOTENCY_KEY || `example-node-${crypto.randomUUID()}`;
const WAIT_SECS = Number(process.env.WAIT_SECS || 60);

const INSERT = `
  insert into pdq.jobs (conversation_id, participant_purpose, attributes, idempotency_key)
  values ($1, 'customer', $2, $3)
  on conflict (idempotency_key) do nothing
  returning id`;

// The job's id; null when the key was enqueued before (the retry did nothing).
async function enqueue(client, attributes, key) {
  const result = await client.query(INSERT, [CONVERSATION_ID, JSON.stringify(attributes), key]);
  return result.rows.length ? result.rows[0].id : null;
}

// pdq.job_status by idempotency key, or null.
async function status(client, key) {
  const result = await client.query(
    'select job_id, state, reason, detail from pdq.job_status($1::text)', [key]);
  return result.rows[0] || null;
}

// Resolves on the next notification, or after `ms` to poll anyway.
function nextNotification(listener, ms) {
  return new Promise((resolve) => {
    const done = (note) => {
      clearTimeout(timer);
      listener.removeListener('notification', done);
      resolve(note);
    };
    const timer = setTimeout(() => done(null), ms);
    listener.on('notification', done);
  });
}

async function main() {
  const listener = new Client({ connectionString: DATABASE_URL });
  const client = new Client({ connectionString: DATABASE_URL });
  await listener.connect();
  await client.connect();
  try {
    await listener.query('listen pdq_outcomes');

    // A refused row: the constraint's name says which rule it broke; nothing was written.
    try {
      await enqueue(client, { vip: true }, `${KEY}-refused`);
      console.error('unexpected: a bad row was accepted');
      return 2;
    } catch (error) {
      if (error.code !== '23514') throw error; // check_violation; anything else is a real error
      console.log(`refused as expected by ${error.constraint}`);
    }

    const attributes = { orderStatus: 'shipped', source: 'node' };
    let jobId;
    try {
      jobId = await enqueue(client, attributes, KEY);
    } catch (error) {
      if (error.code !== '23514') throw error;
      console.log(`refused by ${error.constraint}: ${error.message}`);
      return 2;
    }
    const again = await enqueue(client, attributes, KEY);
    console.log(`enqueued job ${jobId} with key ${KEY}; the same insert again: ${again}`);

    const deadline = Date.now() + WAIT_SECS * 1000;
    while (Date.now() < deadline) {
      const found = await status(client, KEY);
      if (found && ['applied', 'dead_lettered', 'cancelled'].includes(found.state)) {
        const why = found.reason ? ` (${found.reason}: ${found.detail})` : '';
        console.log(`job ${found.job_id}: ${found.state}${why}`);
        return found.state === 'applied' ? 0 : 1;
      }
      const note = await nextNotification(listener, 1000);
      if (note) {
        const payload = JSON.parse(note.payload);
        console.log(`notified: job ${payload.job_id} ${payload.outcome}`);
      }
    }
    console.error(`no outcome within ${WAIT_SECS} s: ${JSON.stringify(await status(client, KEY))}`);
    return 3;
  } finally {
    await listener.end();
    await client.end();
  }
}

main().then((code) => process.exit(code), (error) => {
  console.error(error);
  process.exit(1);
});
