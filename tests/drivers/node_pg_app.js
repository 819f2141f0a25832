// node-postgres (the `pg` package) through the pooler in transaction mode, as an application
// uses it.
//
// Usage: node node_pg_app.js HOST PORT CLIENTS ROUNDS
//
// A query given a `name` is a named prepared statement: node-postgres sends Parse the first
// time a connection runs that name and from then on only Bind/Execute, trusting the server to
// still hold it; it never deallocates. A query with values and no name goes as an unnamed
// statement, one without values as a simple Query. Each client is its own connection (all on
// one event loop, running at once), with its own TimeZone (SET) and application_name (in its
// config), and runs ROUNDS rounds of: two named statements, a check of its settings, a
// transaction (BEGIN/COMMIT) that inserts a row and sees a prepared statement on its server
// connection, a failed transaction rolled back, and several queries handed over at once
// (node-postgres queues them and sends each when the one before has finished). Then a
// pg.Pool of connections runs named statements too.
//
// Prints "ok ..." and exits 0, or prints what went wrong and exits 1.
"use strict";

const pg = require("pg");

const ZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"];

function check(ok, what) {
  if (!ok) {
    throw new Error(what);
  }
}

async function client(host, port, i, rounds) {
  const zone = ZONES[i % ZONES.length];
  const name = `nodepg${i}`;
  const conn = new pg.Client({ host, port, user: "postgres", database: "postgres", application_name: name });
  await conn.connect();
  try {
    await conn.query(`SET TimeZone = '${zone}'`);
    for (let r = 0; r < rounds; r++) {
      const add = await conn.query({ name: "add", text: "select $1::int + 1000 as n", values: [i * 1000 + r] });
      check(add.rows[0].n === i * 1000 + r + 1000, `${name} round ${r}: got ${add.rows[0].n}`);
      const concat = await conn.query({ name: "concat", text: "select $1::text || '-' || $2::int as t", values: [name, r] });
      check(concat.rows[0].t === `${name}-${r}`, `${name} round ${r}: concat gave ${concat.rows[0].t}`);
      const settings = await conn.query({
        name: "settings",
        text: "select current_setting('application_name') as app, current_setting($1) as tz",
        values: ["TimeZone"],
      });
      const { app, tz } = settings.rows[0];
      check(app === name && tz === zone, `${name} round ${r}: sees application_name=${app} TimeZone=${tz}`);

      await conn.query("BEGIN");
      await conn.query({
        name: "insert",
        text: "insert into driver_rows (driver, client, round) values ('nodepg', $1, $2)",
        values: [i, r],
      });
      // The statements this client prepared are on the server connection the transaction
      // runs on, under the pooler's names.
      const prepared = await conn.query("select count(*)::int as n from pg_prepared_statements");
      check(prepared.rows[0].n >= 1, `${name} round ${r}: no prepared statement on the server connection`);
      await conn.query("COMMIT");

      await conn.query("BEGIN");
      let failed = null;
      try {
        await conn.query("insert into driver_rows (driver, client, round) values ('nodepg', $1, -1)", [i]);
        await conn.query({ name: "divide", text: "select 1 / ($1::int - $2::int)", values: [r, r] });
      } catch (e) {
        failed = e;
      }
      check(failed !== null, `${name} round ${r}: division by zero did not fail`);
      check(failed.code === "22012", `${name} round ${r}: failed with ${failed.code} ${failed.message}`);
      await conn.query("ROLLBACK");

      // Handed over at once: node-postgres queues them on the connection.
      const many = await Promise.all(
        [0, 1, 2, 3, 4].map((k) => conn.query({ name: "double", text: "select $1::int * 2 as d", values: [k] })),
      );
      const got = many.map((res) => res.rows[0].d);
      check(JSON.stringify(got) === JSON.stringify([0, 2, 4, 6, 8]), `${name} round ${r}: queued queries gave ${got}`);
    }
  } finally {
    await conn.end();
  }
}

async function pooled(host, port, rounds) {
  const pool = new pg.Pool({ host, port, user: "postgres", database: "postgres", max: 4 });
  try {
    const runs = [];
    for (let k = 0; k < 4 * rounds; k++) {
      runs.push(
        pool.query({ name: "pooled", text: "select $1::int + 7 as n", values: [k] }).then((res) => {
          check(res.rows[0].n === k + 7, `pool query ${k}: got ${res.rows[0].n}`);
        }),
      );
    }
    await Promise.all(runs);
  } finally {
    await pool.end();
  }
}

async function main() {
  const [host, portText, clientsText, roundsText] = process.argv.slice(2);
  const [port, clients, rounds] = [Number(portText), Number(clientsText), Number(roundsText)];
  const failures = [];
  const runs = [];
  for (let i = 0; i < clients; i++) {
    runs.push(client(host, port, i, rounds).catch((e) => failures.push(`client ${i}: ${e.message}`)));
  }
  await Promise.all(runs);
  try {
    await pooled(host, port, rounds);
  } catch (e) {
    failures.push(`pool: ${e.message}`);
  }
  if (failures.length > 0) {
    console.log(failures.join("\n"));
    process.exit(1);
  }
  console.log(`ok node-postgres ${require("pg/package.json").version}: ${clients} clients x ${rounds} rounds`);
}

main();
