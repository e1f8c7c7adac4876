-- pgredact: the relations a policy protects (policy tables, and their partitions and inheritance
-- children that have no entry of their own), as CTEs over a `spec` CTE holding the policy spec in
-- column j. Shared by the violations query and the masking-view builder.
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
)
