-- pgredact: what breaks the wall. Input: $1 the policy spec (jsonb, see wall.rs), $2 the control
-- role. One row per finding: severity ('violation' or 'warning'), kind, role, object, column,
-- privilege, how (why it is a finding), fix (SQL or a comment), auto (the fix is a REVOKE/GRANT
-- PostgreSQL lets a superuser run as the object's owner, so the DDL-time trigger applies it).
-- Self-contained (no pgredact function), so `pgredact check` and `setup-sql` can run it before
-- anything is installed. Runs with search_path = pg_catalog (control connections and the
-- SECURITY DEFINER functions pin it), so no name here can be redirected.
WITH RECURSIVE
spec AS (SELECT $1::jsonb AS j, $2::name AS ctl),
@PROTECTED@,
pii0 AS (
  SELECT DISTINCT p.relid, a.attnum, a.attname
  FROM pmasks p
  JOIN LATERAL jsonb_object_keys(p.cols) k(col) ON true
  JOIN pg_attribute a ON a.attrelid = p.relid
   AND a.attname = k.col AND a.attnum > 0 AND NOT a.attisdropped
),
-- Reading a parent reads its descendants' rows with only the parent's privileges checked: a
-- column that is PII in a protected descendant is PII in every ancestor.
anc(relid, child) AS (
  SELECT i.inhparent, p.relid FROM prot p JOIN pg_inherits i ON i.inhrelid = p.relid
  UNION
  SELECT i.inhparent, a.child FROM anc a JOIN pg_inherits i ON i.inhrelid = a.relid
),
pii AS (
  SELECT relid, attnum, attname FROM pii0
  UNION
  SELECT an.relid, a.attnum, a.attname FROM anc an JOIN pii0 ON pii0.relid = an.child
  JOIN pg_attribute a ON a.attrelid = an.relid
   AND a.attname = pii0.attname AND a.attnum > 0 AND NOT a.attisdropped
),
pii_rel AS (
  SELECT p.relid, c.relowner, p.relid::regclass::text AS rel,
         c.relrowsecurity, c.relacl AS relacl_,
         (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
          FROM pg_attribute a
          WHERE a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
            AND NOT EXISTS (SELECT 1 FROM pii x WHERE x.relid = p.relid AND x.attnum = a.attnum)) AS plain_cols
  FROM (SELECT DISTINCT relid FROM pii) p JOIN pg_class c ON c.oid = p.relid
),
unmasked AS (
  SELECT ur.oid, ur.rolname FROM spec, jsonb_array_elements_text(spec.j -> 'unmasked_roles') u(name)
  JOIN pg_roles ur ON ur.rolname = u.name
),
-- Roles that see raw data: superusers, the control role, members of the unmasked roles.
exempt AS (
  SELECT r.oid, r.rolname FROM pg_roles r, spec
  WHERE r.rolsuper OR r.rolname = spec.ctl
     OR EXISTS (SELECT 1 FROM unmasked u WHERE pg_has_role(r.oid, u.oid, 'MEMBER'))
),
-- Masked: every other role, PUBLIC included (oid 0). Predefined roles (pg_*) are judged through
-- their members.
masked AS (
  SELECT r.oid, r.rolname::text AS name, quote_ident(r.rolname) AS sql
  FROM pg_roles r
  WHERE r.oid >= 16384 AND NOT EXISTS (SELECT 1 FROM exempt e WHERE e.oid = r.oid)
  UNION ALL SELECT 0, 'public', 'PUBLIC'
),
-- What PUBLIC loses, the unmasked roles and the control role get back directly (their members
-- had it through PUBLIC): revoking from PUBLIC never narrows an exempt role.
regrant_to AS (
  SELECT string_agg(quote_ident(x.rolname), ', ' ORDER BY x.rolname) AS list
  FROM (SELECT rolname FROM unmasked UNION SELECT ctl FROM spec) x
),
privs(p) AS (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('REFERENCES')),
-- Grants on protected relations (and ancestors of them) to masked roles.
table_grants AS (
  SELECT r.relid, r.rel, r.plain_cols, r.relowner, m.oid AS grantee, m.name, m.sql, acl.privilege_type AS priv,
         acl.grantor, acl.is_grantable
  FROM pii_rel r, aclexplode(r.relacl_) acl
  JOIN masked m ON m.oid = acl.grantee
  WHERE acl.privilege_type = ANY (ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES', 'TRIGGER'])
),
col_grants AS (
  SELECT r.relid, r.rel, r.relowner, p.attnum, p.attname, m.oid AS grantee, m.name, m.sql,
         acl.privilege_type AS priv, acl.grantor
  FROM pii p JOIN pii_rel r ON r.relid = p.relid
  JOIN pg_attribute a ON a.attrelid = p.relid AND a.attnum = p.attnum,
  aclexplode(a.attacl) acl
  JOIN masked m ON m.oid = acl.grantee
),
-- Relations whose rules (a view's SELECT, a table's INSERT/UPDATE/DELETE rules) read exposing
-- relations with their owner's privileges; foreign tables (remote data pgredact cannot mask) and
-- their ancestors.
expo(relid, via) AS (
  SELECT relid, NULL::text FROM pii_rel
  UNION
  SELECT c.oid, 'a foreign table' FROM pg_class c WHERE c.relkind = 'f'
  UNION
  SELECT rw.ev_class, d.refobjid::regclass::text
  FROM expo e
  JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass
   AND d.refobjid = e.relid AND d.classid = 'pg_rewrite'::regclass
  JOIN pg_rewrite rw ON rw.oid = d.objid
  JOIN pg_class vc ON vc.oid = rw.ev_class
  JOIN pg_namespace vn ON vn.oid = vc.relnamespace
  WHERE rw.ev_class <> e.relid
    AND vn.nspname NOT LIKE 'pgredact\_masked%'
    AND (d.refobjsubid = 0
         OR NOT EXISTS (SELECT 1 FROM pii_rel x WHERE x.relid = e.relid)
         OR EXISTS (SELECT 1 FROM pii x WHERE x.relid = e.relid AND x.attnum = d.refobjsubid))
    AND (vc.relkind = 'm'
         OR (EXISTS (SELECT 1 FROM exempt x WHERE x.oid = vc.relowner)
             AND NOT EXISTS (SELECT 1 FROM unnest(vc.reloptions) o
                             WHERE o ~* '^security_invoker=(true|on|yes|1)$')))
),
foreign_anc(relid) AS (
  SELECT i.inhparent FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE c.relkind = 'f'
  UNION
  SELECT i.inhparent FROM foreign_anc f JOIN pg_inherits i ON i.inhrelid = f.relid
),
-- Materialized views hold copies: one whose definition calls user code its owner ran is a copy
-- of whatever that code read.
matview_user_code AS (
  SELECT DISTINCT rw.ev_class AS relid, d.refobjid::regprocedure::text AS via
  FROM pg_rewrite rw JOIN pg_class vc ON vc.oid = rw.ev_class
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass
   AND d.objid = rw.oid AND d.refclassid = 'pg_proc'::regclass
  WHERE vc.relkind = 'm' AND d.refobjid >= 16384
    AND EXISTS (SELECT 1 FROM exempt x WHERE x.oid = vc.relowner)
),
exposing AS (
  SELECT e.relid, min(e.via) AS via FROM expo e
  WHERE NOT EXISTS (SELECT 1 FROM pii_rel x WHERE x.relid = e.relid)
  GROUP BY e.relid
  UNION SELECT relid, 'its foreign descendants' FROM foreign_anc
  UNION SELECT relid, via FROM matview_user_code
),
exposing_rel AS (
  SELECT x.relid, min(x.via) AS via, c.relowner, c.relkind, x.relid::regclass::text AS rel,
         c.relacl
  FROM exposing x JOIN pg_class c ON c.oid = x.relid
  GROUP BY x.relid, c.relowner, c.relkind, c.relacl
),
-- The privilege that makes PostgreSQL run a rule (or read a relation).
exposing_priv AS (
  SELECT x.*, 'SELECT' AS priv FROM exposing_rel x WHERE x.relkind <> 'r' OR x.via = 'its foreign descendants'
  UNION ALL
  SELECT x.*, CASE rw.ev_type WHEN '1' THEN 'SELECT' WHEN '2' THEN 'UPDATE' WHEN '3' THEN 'INSERT' ELSE 'DELETE' END
  FROM exposing_rel x JOIN pg_rewrite rw ON rw.ev_class = x.relid
  WHERE x.relkind = 'r' AND x.via IS DISTINCT FROM 'its foreign descendants'
),
-- SECURITY DEFINER routines owned by a role that reads raw data.
secdef AS (
  SELECT p.oid, p.oid::regprocedure::text AS fn, p.proowner,
         COALESCE(p.proacl, acldefault('f', p.proowner)) AS acl
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE p.prosecdef AND p.oid >= 16384
    AND p.prorettype <> ALL (ARRAY['trigger'::regtype, 'event_trigger'::regtype])
    AND n.nspname <> ALL (ARRAY['pgredact', 'pgredact_admin'])
    AND EXISTS (SELECT 1 FROM exempt x WHERE x.oid = p.proowner)
),
-- Wraps a fix in SET ROLE when the grant was made by someone other than the owner (a superuser
-- revokes as the owner).
findings AS (
  -- 1. Every (masked role, PII column, privilege) PostgreSQL would allow, however it is held.
  SELECT 'violation' AS severity, 'column privilege' AS kind, m.name AS role, r.rel AS object,
         p.attname::text AS col, pv.p AS privilege,
         CASE
           WHEN m.oid = r.relowner THEN 'owns the table'
           WHEN EXISTS (SELECT 1 FROM table_grants g WHERE g.relid = r.relid AND g.grantee = m.oid AND g.priv = pv.p) THEN 'a table-level grant'
           WHEN EXISTS (SELECT 1 FROM col_grants g WHERE g.relid = r.relid AND g.attnum = p.attnum AND g.grantee = m.oid AND g.priv = pv.p) THEN 'a column grant'
           WHEN m.oid <> 0 AND has_column_privilege('public', p.relid, p.attnum, pv.p) THEN 'a grant to PUBLIC'
           ELSE COALESCE('membership in ' || (
             SELECT string_agg(quote_ident(g.rolname), ', ' ORDER BY g.rolname)
             FROM pg_roles g
             WHERE g.oid <> m.oid AND m.oid <> 0
               AND pg_has_role(m.oid, g.oid, 'USAGE')
               AND (has_column_privilege(g.oid, p.relid, p.attnum, pv.p)
                    AND (g.oid < 16384 OR NOT EXISTS (SELECT 1 FROM exempt e WHERE e.oid = g.oid)))),
             'another route')
         END AS how,
         NULL::text AS fix, false AS auto, 10 AS ord
  FROM pii p JOIN pii_rel r ON r.relid = p.relid CROSS JOIN masked m CROSS JOIN privs pv
  WHERE has_column_privilege(CASE WHEN m.oid = 0 THEN 'public' ELSE m.name END, p.relid, p.attnum, pv.p)
  UNION ALL
  -- TRIGGER on a protected relation: a trigger runs as whoever writes a row and sees all of it.
  SELECT 'violation', 'trigger privilege', g.name, g.rel, NULL, 'TRIGGER', 'a table-level grant (a trigger sees every column of the rows others write)',
         NULL, false, 11
  FROM table_grants g WHERE g.priv = 'TRIGGER'
  UNION ALL
  -- Fixes: table-level grants become column grants without the PII columns.
  SELECT 'fix', 'table grant', g.name, g.rel, NULL, g.priv, NULL,
         CASE WHEN g.grantor = g.relowner THEN '' ELSE format('SET ROLE %I; ', (SELECT rolname FROM pg_roles WHERE oid = g.grantor)) END
         || format('REVOKE %s ON %s FROM %s;', g.priv, g.rel, g.sql)
         || CASE WHEN g.priv <> 'TRIGGER' AND g.plain_cols IS NOT NULL
              THEN format(' GRANT %s (%s) ON %s TO %s%s;', g.priv, g.plain_cols, g.rel, g.sql,
                                     CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) ELSE '' END
         || CASE WHEN g.grantee = 0 THEN format(' GRANT %s ON %s TO %s;', g.priv, g.rel, (SELECT list FROM regrant_to)) ELSE '' END
         || CASE WHEN g.grantor = g.relowner THEN '' ELSE ' RESET ROLE;' END
         || CASE WHEN g.priv <> 'TRIGGER' AND g.plain_cols IS NOT NULL
              THEN format(' INSERT INTO pgredact_admin.converted_grants VALUES (%s, %L, %L, %L) ON CONFLICT DO NOTHING;',
                          g.relid, CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.name END, g.priv, g.is_grantable) ELSE '' END,
         g.grantor = g.relowner, 20
  FROM table_grants g
  UNION ALL
  SELECT 'fix', 'column grant', g.name, g.rel, g.attname::text, g.priv, NULL,
         CASE WHEN g.grantor = g.relowner THEN '' ELSE format('SET ROLE %I; ', (SELECT rolname FROM pg_roles WHERE oid = g.grantor)) END
         || format('REVOKE %s (%I) ON %s FROM %s;', g.priv, g.attname, g.rel, g.sql)
         || CASE WHEN g.grantee = 0 THEN format(' GRANT %s (%I) ON %s TO %s;', g.priv, g.attname, g.rel, (SELECT list FROM regrant_to)) ELSE '' END
         || CASE WHEN g.grantor = g.relowner THEN '' ELSE ' RESET ROLE;' END,
         g.grantor = g.relowner, 21
  FROM col_grants g
  UNION ALL
  SELECT 'fix', 'owner', m.name, r.rel, NULL, NULL, NULL,
         format('-- %s owns %s and can always read every column: make it a member of an unmasked role, or change the owner (ALTER TABLE %s OWNER TO ...)', m.sql, r.rel, r.rel),
         false, 22
  FROM pii_rel r JOIN masked m ON m.oid = r.relowner
  UNION ALL
  -- 2. Memberships that read data past privileges, or let a role become one that sees raw data.
  SELECT 'violation', 'membership', m.name, g.rolname::text, NULL, 'MEMBER',
         CASE WHEN g.rolname = ANY (ARRAY['pg_read_all_stats', 'pg_monitor'])
              THEN 'can read the query texts of every session, which hold literal values'
              WHEN g.rolname LIKE 'pg\_%' THEN 'reads or writes data past column privileges'
              ELSE 'can SET ROLE to a role that sees raw data' END,
         format('REVOKE %I FROM %s;', g.rolname, m.sql), false, 30
  FROM pg_auth_members am JOIN masked m ON m.oid = am.member
  JOIN pg_roles g ON g.oid = am.roleid
  WHERE g.rolname = ANY (ARRAY['pg_read_all_data', 'pg_write_all_data', 'pg_read_server_files',
          'pg_write_server_files', 'pg_execute_server_program', 'pg_read_all_stats', 'pg_monitor'])
     OR (g.oid >= 16384 AND (g.rolsuper OR g.rolname = (SELECT ctl FROM spec)))
  UNION ALL
  SELECT 'violation', 'role attribute', m.name, m.name, NULL, a.attr, a.why,
         format('ALTER ROLE %s NO%s;', m.sql, a.attr), false, 31
  FROM pg_roles r JOIN masked m ON m.oid = r.oid
  CROSS JOIN LATERAL (VALUES
      ('CREATEROLE', r.rolcreaterole, 'can grant itself membership in an unmasked role'),
      ('REPLICATION', r.rolreplication, 'can stream every row through replication')) a(attr, has, why)
  WHERE a.has
  UNION ALL
  SELECT 'violation', 'admin option', m.name, u.rolname::text, NULL, 'ADMIN', 'can grant itself membership in an unmasked role',
         format('REVOKE ADMIN OPTION FOR %I FROM %s;', u.rolname, m.sql), false, 32
  FROM pg_auth_members am JOIN masked m ON m.oid = am.member
  JOIN pg_roles u ON u.oid = am.roleid
  WHERE am.admin_option AND EXISTS (SELECT 1 FROM exempt e WHERE e.oid = u.oid)
  UNION ALL
  -- 3. Views, rules, materialized views and foreign tables that hand out PII.
  SELECT 'violation', 'exposing relation', m.name, x.rel, NULL, x.priv,
         CASE WHEN x.via = 'a foreign table' THEN 'is a foreign table: its remote data cannot be masked'
              WHEN x.via = 'its foreign descendants' THEN 'includes rows of foreign tables, whose remote data cannot be masked'
              WHEN x.relkind = 'm' THEN format('is a materialized view holding a copy of %s', COALESCE(x.via, 'PII'))
              ELSE format('reads %s with the privileges of its owner %I', x.via, (SELECT rolname FROM pg_roles WHERE oid = x.relowner)) END,
         NULL, false, 40
  FROM exposing_priv x CROSS JOIN masked m
  WHERE has_table_privilege(CASE WHEN m.oid = 0 THEN 'public' ELSE m.name END, x.relid, x.priv)
  UNION ALL
  SELECT 'fix', 'exposing relation', m.name, x.rel, NULL, x.priv, NULL,
         CASE WHEN acl.grantor = x.relowner THEN '' ELSE format('SET ROLE %I; ', (SELECT rolname FROM pg_roles WHERE oid = acl.grantor)) END
         || format('REVOKE %s ON %s FROM %s;', x.priv, x.rel, m.sql)
         || CASE WHEN m.oid = 0 THEN format(' GRANT %s ON %s TO %s;', x.priv, x.rel, (SELECT list FROM regrant_to)) ELSE '' END
         || CASE WHEN acl.grantor = x.relowner THEN '' ELSE ' RESET ROLE;' END
         || format(' -- %s', CASE WHEN x.via IS NULL THEN 'it exposes PII' ELSE 'it exposes ' || x.via END),
         acl.grantor = x.relowner, 41
  FROM exposing_priv x, aclexplode(x.relacl) acl
  JOIN masked m ON m.oid = acl.grantee
  WHERE acl.privilege_type = x.priv
  UNION ALL
  SELECT 'violation', 'security definer routine', m.name, s.fn, NULL, 'EXECUTE',
         format('runs with the privileges of %I, who reads raw data', (SELECT rolname FROM pg_roles WHERE oid = s.proowner)),
         NULL, false, 50
  FROM secdef s CROSS JOIN masked m
  WHERE has_function_privilege(CASE WHEN m.oid = 0 THEN 'public' ELSE m.name END, s.oid, 'EXECUTE')
  UNION ALL
  SELECT 'fix', 'security definer routine', m.name, s.fn, NULL, 'EXECUTE', NULL,
         CASE WHEN acl.grantor = s.proowner THEN '' ELSE format('SET ROLE %I; ', (SELECT rolname FROM pg_roles WHERE oid = acl.grantor)) END
         || format('REVOKE EXECUTE ON ROUTINE %s FROM %s;', s.fn, m.sql)
         || CASE WHEN m.oid = 0 THEN format(' GRANT EXECUTE ON ROUTINE %s TO %s;', s.fn, (SELECT list FROM regrant_to)) ELSE '' END
         || CASE WHEN acl.grantor = s.proowner THEN '' ELSE ' RESET ROLE;' END
         || ' -- SECURITY DEFINER: it runs as a role that reads raw data',
         acl.grantor = s.proowner, 51
  FROM secdef s, aclexplode(s.acl) acl
  JOIN masked m ON m.oid = acl.grantee
  WHERE acl.privilege_type = 'EXECUTE'
  UNION ALL
  -- 4. Large objects: pgredact cannot know what they hold and does not mask them.
  SELECT 'violation', 'large object', m.name, 'large object ' || lo.oid::text, NULL, acl.privilege_type,
         'large objects are not masked',
         format('REVOKE %s ON LARGE OBJECT %s FROM %s;', acl.privilege_type, lo.oid, m.sql),
         acl.grantor = lo.lomowner, 60
  FROM pg_largeobject_metadata lo, aclexplode(lo.lomacl) acl
  JOIN masked m ON m.oid = acl.grantee
  UNION ALL
  SELECT 'violation', 'setting', 'public', 'lo_compat_privileges', NULL, 'SELECT',
         'every role may read every large object', '-- ALTER SYSTEM SET lo_compat_privileges = off; (then reload)', false, 61
  WHERE current_setting('lo_compat_privileges') = 'on'
  UNION ALL
  -- 5. What the masking views need.
  SELECT 'violation', 'row-level security', NULL, r.rel, NULL, NULL,
         'has row-level security: its masking view would apply the control role''s row policies, not the reader''s',
         format('-- %s: row-level security is not supported on protected relations', r.rel), false, 70
  FROM pii_rel r WHERE r.relrowsecurity
  UNION ALL
  SELECT 'violation', 'control role', (SELECT ctl FROM spec), r.rel, a.attname::text, 'SELECT',
         'the control role cannot read it, so its masking view cannot',
         format('-- GRANT SELECT ON %s TO %I;', r.rel, (SELECT ctl FROM spec)), false, 71
  FROM pii_rel r JOIN pg_attribute a ON a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped
  WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = (SELECT ctl FROM spec))
    AND NOT has_column_privilege((SELECT ctl FROM spec), r.relid, a.attnum, 'SELECT')
    AND EXISTS (SELECT 1 FROM ptab t WHERE t.relid = r.relid)
  UNION ALL
  -- The DDL triggers that keep all this true as DDL commits.
  SELECT 'violation', 'ddl trigger', NULL, e.name, NULL, NULL,
         'is missing or not enabled ALWAYS: a new partition or grant would not be locked down as it commits',
         pg_catalog.format('-- run the output of `pgredact setup-sql` (it creates and enables %s)', e.name), false, 72
  FROM (VALUES ('pgredact_ddl'), ('pgredact_ddl_start')) e(name)
  WHERE NOT EXISTS (SELECT 1 FROM pg_event_trigger t WHERE t.evtname = e.name AND t.evtenabled = 'A')
  UNION ALL
  -- 6. Warnings: what PostgreSQL cannot stop, and what would break later.
  SELECT 'warning', 'direct privilege of an unmasked role''s member', e.rolname::text, r.rel, p.attname::text, pv.p,
         'held directly, not through an unmasked role: revoking its membership would leave it',
         NULL, false, 80
  FROM pii p JOIN pii_rel r ON r.relid = p.relid
  JOIN pg_roles e ON e.oid >= 16384 AND NOT e.rolsuper AND e.rolname <> (SELECT ctl FROM spec)
   AND EXISTS (SELECT 1 FROM exempt x WHERE x.oid = e.oid)
   AND NOT EXISTS (SELECT 1 FROM unmasked u WHERE u.oid = e.oid)
  CROSS JOIN privs pv
  WHERE pv.p = 'SELECT'
    AND (EXISTS (SELECT 1 FROM aclexplode(r.relacl_) acl WHERE acl.grantee = e.oid AND acl.privilege_type = pv.p)
         OR EXISTS (SELECT 1 FROM pg_attribute a, aclexplode(a.attacl) acl
                    WHERE a.attrelid = p.relid AND a.attnum = p.attnum
                      AND acl.grantee = e.oid AND acl.privilege_type = pv.p))
  UNION ALL
  SELECT 'warning', 'user trigger', NULL, r.rel, NULL, NULL,
         format('has trigger %I, which runs %s for every writer, masked roles included, and sees every column: it must not copy or raise PII',
                           t.tgname, t.tgfoid::regprocedure::text),
         NULL, false, 81
  FROM pii_rel r JOIN pg_trigger t ON t.tgrelid = r.relid
  JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn ON fn.oid = f.pronamespace
  WHERE NOT t.tgisinternal AND fn.nspname <> 'pgredact'
)
SELECT severity, kind, role, object, col, privilege, how, fix, auto FROM findings
ORDER BY ord, object, role, col, privilege
