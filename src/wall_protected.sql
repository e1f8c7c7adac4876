-- pgredact: the relations a policy protects (policy tables, and their partitions and inheritance
-- children that have no entry of their own), as CTEs over a `spec` CTE holding the policy spec in
-- column j. Shared by the violations query, the converted grants of enforce() and the
-- masking-view builder.
ptab AS (
  SELECT c.oid AS relid, t.value AS tj
  FROM spec, jsonb_array_elements(spec.j -> 'tables') t(value)
  JOIN pg_namespace n ON n.nspname = (t.value ->> 'schema')
  JOIN pg_class c ON c.relnamespace = n.oid
   AND c.relname = (t.value ->> 'name')
),
prot(relid, policy_relid) AS (
  SELECT relid, relid FROM ptab
  UNION
  SELECT i.inhrelid, p.policy_relid FROM prot p
  JOIN pg_inherits i ON i.inhparent = p.relid
  WHERE NOT EXISTS (SELECT 1 FROM ptab x WHERE x.relid = i.inhrelid)
),
-- The masks of each protected relation, column name -> mask: its policy table's `columns`, and,
-- when that table has privacy_by_default, every other column of the relation itself (user
-- columns, not dropped; so a column added later, or one only a child has) that its `public`
-- list does not name, masked with redact. The one place that decides which columns are PII.
pmasks(relid, policy_relid, cols) AS (
  SELECT p.relid, p.policy_relid,
         coalesce(t.tj -> 'columns', '{}'::jsonb)
         || CASE WHEN coalesce((t.tj ->> 'privacy_by_default')::boolean, false) THEN coalesce(
              (SELECT jsonb_object_agg(a.attname::text, '{"kind": "redact"}'::jsonb)
               FROM pg_attribute a
               WHERE a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
                 AND NOT (coalesce(t.tj -> 'columns', '{}'::jsonb) ? a.attname)
                 AND NOT (coalesce(t.tj -> 'public', '[]'::jsonb) ? a.attname)),
              '{}'::jsonb) ELSE '{}'::jsonb END
  FROM prot p JOIN ptab t ON t.relid = p.policy_relid
)
