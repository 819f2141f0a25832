"""psycopg 3 through the pooler in transaction mode, as an application uses it.

Usage: python3 psycopg_app.py HOST PORT CLIENTS ROUNDS

Each client is its own connection and thread, in autocommit, with prepare_threshold=0: every
statement psycopg runs is a named server-side prepared statement (_pg3_N), prepared once per
connection and then only bound. The client sets its own TimeZone and application_name, then
runs ROUNDS rounds of: a prepared query with a parameter, a check of its own settings, a
transaction that inserts a row and sees a prepared statement on the server connection it runs
on, a failed transaction rolled back (psycopg then sends DEALLOCATE ALL), a pipeline of five
queries (several Syncs in flight), and every fifth round a COPY in and out; then more
statements than its cache holds, so that psycopg evicts them with DEALLOCATE. Fewer server
connections than clients means the statements move between server connections under the
driver's feet.

Prints "ok ..." and exits 0, or prints what went wrong and exits 1.
"""

import sys
import threading

import psycopg
from psycopg import errors

ZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"]


def client(host, port, i, rounds):
    zone = ZONES[i % len(ZONES)]
    name = f"psycopg{i}"
    with psycopg.connect(
        host=host, port=port, user="postgres", dbname="postgres", application_name=name,
        autocommit=True, prepare_threshold=0,
    ) as conn:
        conn.execute(f"SET TimeZone = '{zone}'")
        for r in range(rounds):
            n = conn.execute("select %s::int + 1000", (i * 1000 + r,)).fetchone()[0]
            if n != i * 1000 + r + 1000:
                raise AssertionError(f"{name} round {r}: got {n}")
            app, tz = conn.execute(
                "select current_setting('application_name'), current_setting('TimeZone')"
            ).fetchone()
            if (app, tz) != (name, zone):
                raise AssertionError(f"{name} round {r}: sees application_name={app} TimeZone={tz}")
            with conn.transaction():
                conn.execute("insert into driver_rows (driver, client, round) values ('psycopg', %s, %s)", (i, r))
                # The statements this connection prepared are on the server connection the
                # transaction runs on, under the pooler's names.
                prepared = conn.execute("select count(*) from pg_prepared_statements").fetchone()[0]
                if prepared < 1:
                    raise AssertionError(f"{name} round {r}: no prepared statement on the server connection")
            try:
                with conn.transaction():
                    conn.execute("insert into driver_rows (driver, client, round) values ('psycopg', %s, -1)", (i,))
                    conn.execute("select 1 / (%s - %s)", (r, r))
                raise AssertionError(f"{name} round {r}: division by zero did not fail")
            except errors.DivisionByZero:
                pass
            with conn.pipeline():
                cursors = [conn.execute("select %s::int * 2", (k,)) for k in range(5)]
            got = [c.fetchone()[0] for c in cursors]
            if got != [k * 2 for k in range(5)]:
                raise AssertionError(f"{name} round {r}: pipeline gave {got}")
            if r % 5 == 0:
                with conn.cursor() as cur:
                    with cur.copy("COPY driver_copy (client, line) FROM STDIN") as copy:
                        for k in range(20):
                            copy.write_row((i, f"{name} line {r}.{k}"))
                    lines = []
                    with cur.copy(f"COPY (select line from driver_copy where client = {i} order by line) TO STDOUT") as copy:
                        for row in copy.rows():
                            lines.append(row[0])
                    if len(lines) != 20 * (r // 5 + 1):
                        raise AssertionError(f"{name} round {r}: copied back {len(lines)} lines")
        # A statement cache smaller than the statements in use: psycopg evicts with
        # "DEALLOCATE _pg3_N" (and prepares again), a name only the pooler knows.
        conn.prepared_max = 3
        for r in range(3):
            for k in range(6):
                n = conn.execute(f"select %s::int + {k}", (r,)).fetchone()[0]
                if n != r + k:
                    raise AssertionError(f"{name} eviction round {r}.{k}: got {n}")


def main():
    host, port, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    failures = []

    def run(i):
        try:
            client(host, port, i, rounds)
        except Exception as e:  # reported below, with the client's number
            failures.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok psycopg {psycopg.__version__}: {clients} clients x {rounds} rounds")


if __name__ == "__main__":
    main()
