"""asyncpg through pgredact (tests/drivers.rs): asyncpg sends client_encoding 'utf-8' at startup,
prepares every statement (binary results), introspects every type it does not know with its own
catalog query (here: the row type of a table, a domain-free composite, and an array of it), and
resets pooled connections when they are released. A masked read, a cursor, COPY TO, and for
solutions a non-PII write and a refused PII write."""

import asyncio

import asyncpg

from common import (DB, HOST, IDS, PASSWORD, PII_WRITE, PORT, READ, TIER, USER, WRITE,
                    WRITE_ID, report, rows_text)


async def main():
    out = {"tool": "asyncpg", "version": asyncpg.__version__, "introspection": {}}
    conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                 database=DB, server_settings={
                                     "application_name": "pgredact-drivers-asyncpg"})
    intro = out["introspection"]
    intro["server_version"] = list(conn.get_server_version())[:2]
    intro["client_encoding"] = conn.get_settings().client_encoding
    intro["tables"] = [r["table_name"] for r in await conn.fetch(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 "
        "ORDER BY table_name", "public")]
    # A composite result makes asyncpg introspect the row type (its TYPE_BY_OID query).
    rec = await conn.fetchval(
        "SELECT c FROM customers c WHERE customer_id = $1", IDS[0])
    intro["row_type_fields"] = list(rec.keys())
    out["row_as_record"] = [None if v is None else str(v) for v in rec.values()]
    read = READ.format(p="$1::bigint[]")
    out["rows"] = rows_text(await conn.fetch(read, IDS))
    stmt = await conn.prepare(read)
    out["rows_prepared"] = rows_text(await stmt.fetch(IDS))
    async with conn.transaction():
        out["rows_cursor"] = rows_text([r async for r in conn.cursor(read, IDS)])
    await conn.close()

    # A pool. On release asyncpg resets the connection with its reset query, which ends in
    # RESET ALL: it passes (the session's search path is still its first), so the pool keeps
    # asyncpg's default reset.
    probe = await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                  database=DB)
    out["pool_reset_query"] = probe.get_reset_query()
    try:
        await probe.reset()
        out["default_reset"] = {"sqlstate": None, "message": "succeeded"}
    except asyncpg.PostgresError as e:
        out["default_reset"] = {"sqlstate": e.sqlstate, "message": str(e)}
    await probe.close()

    pool = await asyncpg.create_pool(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                     database=DB, min_size=1, max_size=1)
    for _ in range(2):
        async with pool.acquire() as c:
            out["rows_pool"] = rows_text(await c.fetch(read, IDS))
    if WRITE_ID is not None:
        async with pool.acquire() as c:
            status = await c.execute(WRITE.format(p1="$1", p2="$2"), TIER, WRITE_ID)
            out["write"] = {"rowcount": int(status.split()[-1]), "tier_after": await c.fetchval(
                "SELECT tier FROM customers WHERE customer_id = $1", WRITE_ID)}
            try:
                await c.execute(PII_WRITE.format(p1="$1", p2="$2"), "leak@example.com", WRITE_ID)
                out["pii_write"] = {"sqlstate": None, "message": "succeeded"}
            except asyncpg.PostgresError as e:
                out["pii_write"] = {"sqlstate": e.sqlstate, "message": str(e)}
            out["after_refusal"] = await c.fetchval("SELECT 1")
    await pool.close()
    report(out)


asyncio.run(main())
