"""psycopg 3 through pgredact (tests/drivers.rs): what an application does with it at connect
time and after: server version and settings, type introspection (TypeInfo, CompositeInfo), a
masked read with typed parameters over the extended protocol (text and binary, then prepared on
the server once psycopg's prepare threshold is passed), a server-side (named) cursor, COPY TO
STDOUT, and for solutions a non-PII write and a refused PII write."""

import psycopg
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo

from common import (DB, HOST, IDS, PASSWORD, PII_WRITE, PORT, READ, TIER, USER, WRITE,
                    WRITE_ID, report, rows_text, text)

out = {"tool": "psycopg", "version": psycopg.__version__,
       "libpq": psycopg.pq.version(), "introspection": {}}
with psycopg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DB,
                     application_name="pgredact-drivers-psycopg", autocommit=True) as conn:
    intro = out["introspection"]
    intro["server_version"] = conn.info.server_version
    intro["encoding"] = conn.info.encoding
    intro["DateStyle"] = conn.info.parameter_status("DateStyle")
    intro["jsonb_oid"] = TypeInfo.fetch(conn, "jsonb").oid
    info = CompositeInfo.fetch(conn, "customers")
    intro["customers_fields"] = list(info.field_names)
    intro["tables"] = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name", ["public"])]
    read = READ.format(p="%s")
    out["rows"] = rows_text(conn.execute(read, [IDS]).fetchall())
    with conn.cursor(binary=True) as cur:
        out["rows_binary"] = rows_text(cur.execute(read, [IDS]).fetchall())
    # Past prepare_threshold (5) psycopg prepares the statement on the server.
    for _ in range(6):
        out["rows_prepared"] = rows_text(conn.execute(read, [IDS]).fetchall())
    with conn.transaction():
        with conn.cursor(name="pgredact_named") as cur:
            cur.execute(read, [IDS])
            out["rows_named_cursor"] = rows_text(cur.fetchall())
    with conn.cursor() as cur:
        lines = []
        with cur.copy("COPY (" + READ.format(p="ARRAY[" + ",".join(map(str, IDS)) + "]::bigint[]")
                      + ") TO STDOUT") as copy:
            for row in copy.rows():
                lines.append([None if v is None else text(v) for v in row])
        out["rows_copy"] = lines
    if WRITE_ID is not None:
        cur = conn.execute(WRITE.format(p1="%s", p2="%s"), [TIER, WRITE_ID])
        out["write"] = {"rowcount": cur.rowcount, "tier_after": conn.execute(
            "SELECT tier FROM customers WHERE customer_id = %s", [WRITE_ID]).fetchone()[0]}
        try:
            conn.execute(PII_WRITE.format(p1="%s", p2="%s"), ["leak@example.com", WRITE_ID])
            out["pii_write"] = {"sqlstate": None, "message": "succeeded"}
        except psycopg.Error as e:
            out["pii_write"] = {"sqlstate": e.sqlstate, "message": str(e)}
        # The session goes on after the refusal.
        out["after_refusal"] = conn.execute("SELECT 1").fetchone()[0]
report(out)
