// node-postgres (pg) through pgredact (tests/drivers.rs): connect, the catalog queries an
// application or ORM runs (tables, columns, types), a masked read with typed parameters (unnamed
// and named prepared statements, array row mode), and for solutions a non-PII write and a
// refused PII write. Prints one JSON report; exits non-zero on any unexpected error.
const path = require('path');
const modules = process.env.PGR_NODE_MODULES;
const pg = require(path.join(modules, 'pg'));
const pgVersion = require(path.join(modules, 'pg', 'package.json')).version;

const env = process.env;
const ids = env.PGR_IDS.split(',').map(Number);
const writeId = env.PGR_WRITE_ID ? Number(env.PGR_WRITE_ID) : null;
const READ = 'SELECT customer_id, first_name, last_name, email, phone, address, birth_date::text, tier ' +
  'FROM customers WHERE customer_id = ANY($1::bigint[]) ORDER BY customer_id';

const text = (v) => (v === null ? null : String(v));

async function main() {
  const out = { tool: 'node-postgres', version: pgVersion, node: process.version, introspection: {} };
  const client = new pg.Client({
    host: env.PGR_HOST, port: Number(env.PGR_PORT), user: env.PGR_USER,
    password: env.PGR_PASSWORD, database: env.PGR_DB, application_name: 'pgredact-drivers-node',
  });
  await client.connect();
  const intro = out.introspection;
  intro.server_version = (await client.query('SHOW server_version_num')).rows[0].server_version_num;
  intro.columns = (await client.query(
    'SELECT column_name, data_type FROM information_schema.columns ' +
    'WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position', ['public', 'customers']))
    .rows.map((r) => r.column_name);
  intro.types = (await client.query(
    "SELECT oid::int, typname FROM pg_catalog.pg_type WHERE typname = ANY($1) ORDER BY typname",
    [['date', 'inet', 'jsonb']])).rows.map((r) => r.typname);
  const asRows = (res) => res.rows.map((r) => r.map(text));
  out.rows = asRows(await client.query({ text: READ, values: [ids], rowMode: 'array' }));
  // A named statement is parsed once and bound again on the second run.
  for (let i = 0; i < 2; i++) {
    out.rows_prepared = asRows(await client.query(
      { name: 'pgredact_read', text: READ, values: [ids], rowMode: 'array' }));
  }
  // The simple protocol (no parameters).
  out.rows_simple = asRows(await client.query({
    text: READ.replace('$1::bigint[]', `ARRAY[${ids.join(',')}]::bigint[]`), rowMode: 'array',
  }));
  if (writeId !== null) {
    const w = await client.query('UPDATE customers SET tier = $1 WHERE customer_id = $2',
      [env.PGR_TIER, writeId]);
    const t = await client.query('SELECT tier FROM customers WHERE customer_id = $1', [writeId]);
    out.write = { rowcount: w.rowCount, tier_after: t.rows[0].tier };
    try {
      await client.query('UPDATE customers SET email = $1 WHERE customer_id = $2',
        ['leak@example.com', writeId]);
      out.pii_write = { sqlstate: null, message: 'succeeded' };
    } catch (e) {
      out.pii_write = { sqlstate: e.code || null, message: e.message };
    }
    out.after_refusal = (await client.query('SELECT 1 AS one')).rows[0].one;
  }
  await client.end();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n${e.code ? `SQLSTATE ${e.code}\n` : ''}`);
  process.exit(1);
});
