"""asyncpg through the pooler in transaction mode, as an application uses it.

Usage: python3 asyncpg_app.py HOST PORT CLIENTS ROUNDS

asyncpg runs every query with arguments as a named prepared statement from its own statement
cache (__asyncpg_stmt_N__: Parse and Describe once, then Bind/Execute), and introspects
types it does not know with prepared queries of its own. Each client is a connection with its
own TimeZone (SET) and application_name (server_settings), and runs ROUNDS rounds of: a cached
query, an explicitly prepared statement, a check of its settings, a transaction that inserts
a row, sees a prepared statement on its server connection and reads a cursor in batches of
40 (Execute with a row limit, PortalSuspended), a failed transaction rolled
back, executemany (Binds pipelined under one Sync), a composite type (introspection), and
every fifth round a COPY in and out. Then a pool of connections (asyncpg.Pool, which resets a
connection with RESET ALL and friends when it is released) runs queries too.

Prints "ok ..." and exits 0, or prints what went wrong and exits 1.
"""

import asyncio
import sys

import asyncpg

ZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"]


async def client(host, port, i, rounds):
    zone = ZONES[i % len(ZONES)]
    name = f"asyncpg{i}"
    conn = await asyncpg.connect(
        host=host, port=port, user="postgres", database="postgres", server_settings={"application_name": name}
    )
    try:
        await conn.execute(f"SET TimeZone = '{zone}'")
        concat = await conn.prepare("select $1::text || '-' || $2::int")
        for r in range(rounds):
            n = await conn.fetchval("select $1::int + 1000", i * 1000 + r)
            if n != i * 1000 + r + 1000:
                raise AssertionError(f"{name} round {r}: got {n}")
            text = await concat.fetchval(name, r)
            if text != f"{name}-{r}":
                raise AssertionError(f"{name} round {r}: prepared statement gave {text}")
            row = await conn.fetchrow(
                "select current_setting('application_name') as app, current_setting('TimeZone') as tz, $1::int as r", r
            )
            if (row["app"], row["tz"]) != (name, zone):
                raise AssertionError(f"{name} round {r}: sees application_name={row['app']} TimeZone={row['tz']}")
            async with conn.transaction():
                await conn.execute("insert into driver_rows (driver, client, round) values ('asyncpg', $1, $2)", i, r)
                prepared = await conn.fetchval("select count(*) from pg_prepared_statements where $1", True)
                if prepared < 1:
                    raise AssertionError(f"{name} round {r}: no prepared statement on the server connection")
                # A cursor read in batches: Executes with a row limit, the portal suspended
                # between them.
                total = 0
                async for rec in conn.cursor("select g from generate_series(1, $1::int) g", 250, prefetch=40):
                    total += rec["g"]
                if total != 250 * 251 // 2:
                    raise AssertionError(f"{name} round {r}: cursor summed {total}")
            try:
                async with conn.transaction():
                    await conn.execute("insert into driver_rows (driver, client, round) values ('asyncpg', $1, -1)", i)
                    await conn.fetchval("select 1 / ($1::int - $1::int)", r)
                raise AssertionError(f"{name} round {r}: division by zero did not fail")
            except asyncpg.exceptions.DivisionByZeroError:
                pass
            await conn.executemany(
                "insert into driver_many (client, round, k) values ($1, $2, $3)", [(i, r, k) for k in range(5)]
            )
            pair = await conn.fetchval("select row($1::int, $2::text)::driver_pair", r, name)
            if (pair["n"], pair["label"]) != (r, name):
                raise AssertionError(f"{name} round {r}: composite gave {pair}")
            if r % 5 == 0:
                await conn.copy_records_to_table(
                    "driver_copy", records=[(i, f"{name} line {r}.{k}") for k in range(20)], columns=["client", "line"]
                )
                lines = await conn.fetch("select line from driver_copy where line like $1", f"{name} %")
                if len(lines) != 20 * (r // 5 + 1):
                    raise AssertionError(f"{name} round {r}: read back {len(lines)} lines")
        many = await conn.fetchval("select count(*) from driver_many where client = $1", i)
        if many != 5 * rounds:
            raise AssertionError(f"{name}: executemany left {many} rows, expected {5 * rounds}")
    finally:
        await conn.close()


async def pooled(host, port, rounds):
    """asyncpg.Pool: a released connection is reset (RESET ALL, UNLISTEN *, CLOSE ALL, ...). One
    connection in the pool, so each acquire gets the one whose SET the reset must undo."""
    async with asyncpg.create_pool(host=host, port=port, user="postgres", database="postgres", min_size=1, max_size=1) as pool:

        async def one(k):
            async with pool.acquire() as conn:
                await conn.execute("SET TimeZone = 'Asia/Tokyo'")
                n = await conn.fetchval("select $1::int * 3", k)
                if n != k * 3:
                    raise AssertionError(f"pool query {k}: got {n}")
            async with pool.acquire() as conn:
                # The reset on release undid the SET, on whatever server connection runs this.
                tz = await conn.fetchval("select current_setting('TimeZone')")
                if tz == "Asia/Tokyo":
                    raise AssertionError(f"pool query {k}: TimeZone survived the pool's reset")

        await asyncio.gather(*(one(k) for k in range(rounds)))


async def main():
    host, port, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    results = await asyncio.gather(*(client(host, port, i, rounds) for i in range(clients)), return_exceptions=True)
    failures = [f"client {i}: {type(e).__name__}: {e}" for i, e in enumerate(results) if isinstance(e, BaseException)]
    try:
        await pooled(host, port, rounds)
    except Exception as e:
        failures.append(f"pool: {type(e).__name__}: {e}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok asyncpg {asyncpg.__version__}: {clients} clients x {rounds} rounds, and a pool")


if __name__ == "__main__":
    asyncio.run(main())
