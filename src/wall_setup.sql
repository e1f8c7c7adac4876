-- pgredact: the superuser part of the wall, printed by `pgredact setup-sql` and run once per
-- protected database by a superuser (again after upgrading pgredact). Idempotent.
--
-- Schema pgredact_admin belongs to the superuser running this: the control role (@CTL@) may
-- use it and call pgredact_admin.enforce(), but cannot change anything in it, so no code the
-- control role writes ever runs with superuser rights. The functions here read the policy
-- (pgredact.policy, written by pgredact serve as data, never as SQL text) and the catalog, and
-- they quote every name they put into a statement.
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS pgredact AUTHORIZATION @CTL@;
SET ROLE @CTL@;
@CONTROL_OBJECTS@
RESET ROLE;
CREATE SCHEMA IF NOT EXISTS pgredact_admin;
REVOKE ALL ON SCHEMA pgredact_admin FROM PUBLIC;
GRANT USAGE ON SCHEMA pgredact_admin TO @CTL@;

-- The masking views pgredact_admin.sync() built: which relation, where, and from which policy.
CREATE TABLE IF NOT EXISTS pgredact_admin.masking_views (
    relid oid PRIMARY KEY,
    view_schema name NOT NULL,
    view_name name NOT NULL,
    only_view name,
    fingerprint text,
    body_md5 text
);
REVOKE ALL ON pgredact_admin.masking_views FROM PUBLIC;
GRANT SELECT ON pgredact_admin.masking_views TO @CTL@;

-- Table-level grants to masked roles that became column grants: a column added later that is
-- not PII gets the same grant, so the conversion stays invisible to the grantee.
CREATE TABLE IF NOT EXISTS pgredact_admin.converted_grants (
    relid oid NOT NULL,
    grantee text NOT NULL,
    privilege text NOT NULL,
    grantable boolean NOT NULL,
    PRIMARY KEY (relid, grantee, privilege)
);
REVOKE ALL ON pgredact_admin.converted_grants FROM PUBLIC;

-- A random token: pgredact_admin.enforce() sets it while it runs, so the DDL it issues does not
-- start it again. Nobody but a superuser can read it, so nobody else can switch enforcement off.
CREATE TABLE IF NOT EXISTS pgredact_admin.secret (id boolean PRIMARY KEY DEFAULT true CHECK (id), token text NOT NULL);
REVOKE ALL ON pgredact_admin.secret FROM PUBLIC;
INSERT INTO pgredact_admin.secret (token) VALUES (pg_catalog.gen_random_uuid()::text) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION pgredact_admin.wall_version() RETURNS integer LANGUAGE sql IMMUTABLE AS $f$ SELECT @VERSION@ $f$;
REVOKE ALL ON FUNCTION pgredact_admin.wall_version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_admin.wall_version() TO @CTL@;

-- The SCRAM verifier (pg_authid.rolpassword) of a role that may log in, for pgredact to
-- complete SCRAM itself: with TLS on both legs a relayed exchange cannot succeed, and channel
-- binding needs it (README, "SCRAM through pgredact"). A verifier and the ClientKey pgredact
-- recovers with it suffice to log in as the role, so only the control role may call this, and
-- superusers' verifiers are never returned: a compromised pgredact cannot become a superuser.
-- NULL for other roles and for md5 or no passwords (pgredact then relays the exchange).
CREATE OR REPLACE FUNCTION pgredact_admin.auth_verifier(role_name name) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT a.rolpassword FROM pg_catalog.pg_authid a
   WHERE a.rolname = role_name AND a.rolcanlogin AND NOT a.rolsuper
     AND pg_catalog.starts_with(a.rolpassword, 'SCRAM-SHA-256$')
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.auth_verifier(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_admin.auth_verifier(name) TO @CTL@;

-- The masking expression of one column: column name, type, typmod and the mask (jsonb: kind and
-- its options). NULL in gives NULL out, and the result keeps the column's type. Types are
-- written as format_type prints them with search_path = pg_catalog (qualified outside it).
-- Columns are read through the alias r, the key through k (see sync()).
-- Masks inside json/jsonb documents, in a schema of their own (STABLE: `fake` reads its word lists). The masking views call these as
-- the reading role (PostgreSQL checks function privileges, and resolves the names inside SQL and
-- PL/pgSQL bodies, as the caller), so this schema is usable by PUBLIC and holds nothing else. A
-- masked role calling them directly learns only the mask of a value it already has: the keyed
-- hash needs the key as an argument, which only the views' owner can read. No `SET search_path` (a GUC save/restore on every call,
-- and these run once per JSON node): every function, operator and type below is qualified with
-- pg_catalog, so the caller's search_path cannot redirect anything.
CREATE SCHEMA IF NOT EXISTS pgredact_mask;
REVOKE ALL ON SCHEMA pgredact_mask FROM PUBLIC;
GRANT USAGE ON SCHEMA pgredact_mask TO PUBLIC;
CREATE OR REPLACE FUNCTION pgredact_mask.mask_json_leaf(v pg_catalog.jsonb, m pg_catalog.jsonb, ipad pg_catalog.bytea, opad pg_catalog.bytea)
RETURNS pg_catalog.jsonb LANGUAGE plpgsql STABLE PARALLEL SAFE AS $f$
DECLARE
  k pg_catalog.text := m OPERATOR(pg_catalog.->>) 'kind';
  ty pg_catalog.text := pg_catalog.jsonb_typeof(v);
  t pg_catalog.text;
  kf pg_catalog.int4;
  kl pg_catalog.int4;
  pad pg_catalog.text;
BEGIN
  IF v IS NULL OR ty OPERATOR(pg_catalog.=) 'null' OR k OPERATOR(pg_catalog.=) 'keep' THEN RETURN v; END IF;
  IF k OPERATOR(pg_catalog.=) 'null' OR ty OPERATOR(pg_catalog.=) 'object' OR ty OPERATOR(pg_catalog.=) 'array' THEN
    RETURN CAST('null' AS pg_catalog.jsonb);
  END IF;
  IF k OPERATOR(pg_catalog.=) 'redact' THEN
    RETURN CAST(CASE WHEN ty OPERATOR(pg_catalog.=) 'string' THEN '"****"'
      WHEN ty OPERATOR(pg_catalog.=) 'number' THEN '0' ELSE 'false' END AS pg_catalog.jsonb);
  END IF;
  IF k OPERATOR(pg_catalog.=) 'constant' THEN
    RETURN pg_catalog.to_jsonb(m OPERATOR(pg_catalog.->>) 'value');
  END IF;
  IF ty OPERATOR(pg_catalog.=) 'boolean' THEN RETURN CAST('false' AS pg_catalog.jsonb); END IF;
  t := v OPERATOR(pg_catalog.#>>) '{}';
  IF k OPERATOR(pg_catalog.=) 'email' THEN
    RETURN pg_catalog.to_jsonb(CASE WHEN pg_catalog.strpos(t, '@') OPERATOR(pg_catalog.>) 0
      THEN pg_catalog.concat(pg_catalog.left(t, 1), '***@', pg_catalog.substr(t, pg_catalog.strpos(t, '@') OPERATOR(pg_catalog.+) 1))
      ELSE '****' END);
  END IF;
  IF k OPERATOR(pg_catalog.=) 'partial' THEN
    kf := COALESCE(pg_catalog.int4(m OPERATOR(pg_catalog.->) 'keep_first'), 0);
    kl := COALESCE(pg_catalog.int4(m OPERATOR(pg_catalog.->) 'keep_last'), 0);
    pad := COALESCE(m OPERATOR(pg_catalog.->>) 'padding', '****');
    RETURN pg_catalog.to_jsonb(CASE WHEN pg_catalog.length(t) OPERATOR(pg_catalog.<=) (kf OPERATOR(pg_catalog.+) kl) THEN pad
      ELSE pg_catalog.concat(pg_catalog.left(t, kf), pad, pg_catalog.right(t, kl)) END);
  END IF;
  IF k OPERATOR(pg_catalog.=) 'hash' THEN
    IF ipad IS NULL OR opad IS NULL THEN RETURN CAST('null' AS pg_catalog.jsonb); END IF;
    RETURN pg_catalog.to_jsonb(pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(opad OPERATOR(pg_catalog.||)
      pg_catalog.sha256(ipad OPERATOR(pg_catalog.||) pg_catalog.convert_to(t, 'UTF8'))), 'hex'), 16));
  END IF;
  -- The same fake as for a text column holding the value: HMAC-SHA256(key, 'fake' || value).
  IF k OPERATOR(pg_catalog.=) 'fake' THEN
    IF ipad IS NULL OR opad IS NULL THEN RETURN CAST('null' AS pg_catalog.jsonb); END IF;
    RETURN pg_catalog.to_jsonb(pgredact_mask.fake(m OPERATOR(pg_catalog.->>) 'flavour',
      pg_catalog.sha256(opad OPERATOR(pg_catalog.||) pg_catalog.sha256(ipad OPERATOR(pg_catalog.||)
        pg_catalog.convert_to(pg_catalog.concat('fake', t), 'UTF8')))));
  END IF;
  RETURN CAST('null' AS pg_catalog.jsonb);
END
$f$;
REVOKE ALL ON FUNCTION pgredact_mask.mask_json_leaf(jsonb, jsonb, bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_mask.mask_json_leaf(jsonb, jsonb, bytea, bytea) TO PUBLIC;

-- Walks a document: `path` is the node's path (`/key` per object level, JSON Pointer escapes;
-- array elements share their array's path), `m` the mask in force. The first rule (strictest
-- first) whose regular expression matches the path replaces `m` for the node and below.
CREATE OR REPLACE FUNCTION pgredact_mask.mask_json_walk(doc pg_catalog.jsonb, rules pg_catalog.jsonb, ipad pg_catalog.bytea, opad pg_catalog.bytea, path pg_catalog.text, m pg_catalog.jsonb)
RETURNS pg_catalog.jsonb LANGUAGE plpgsql STABLE PARALLEL SAFE AS $f$
DECLARE
  i pg_catalog.int4;
  ty pg_catalog.text := pg_catalog.jsonb_typeof(doc);
  out pg_catalog.jsonb;
BEGIN
  FOR i IN 0 .. pg_catalog.jsonb_array_length(rules) OPERATOR(pg_catalog.-) 1 LOOP
    IF path OPERATOR(pg_catalog.~) (rules OPERATOR(pg_catalog.->) i OPERATOR(pg_catalog.->>) 're') THEN
      m := rules OPERATOR(pg_catalog.->) i OPERATOR(pg_catalog.->) 'mask';
      EXIT;
    END IF;
  END LOOP;
  IF ty OPERATOR(pg_catalog.=) 'object' OR ty OPERATOR(pg_catalog.=) 'array' THEN
    IF m OPERATOR(pg_catalog.->>) 'kind' OPERATOR(pg_catalog.=) 'null' THEN RETURN CAST('null' AS pg_catalog.jsonb); END IF;
    IF ty OPERATOR(pg_catalog.=) 'object' THEN
      SELECT pg_catalog.jsonb_object_agg(j.k, pgredact_mask.mask_json_walk(j.v, rules, ipad, opad,
               path OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) pg_catalog.replace(pg_catalog.replace(j.k, '~', '~0'), '/', '~1'), m))
        INTO out FROM pg_catalog.jsonb_each(doc) AS j(k, v);
      RETURN COALESCE(out, CAST('{}' AS pg_catalog.jsonb));
    END IF;
    SELECT pg_catalog.jsonb_agg(pgredact_mask.mask_json_walk(j.v, rules, ipad, opad, path, m) ORDER BY j.n)
      INTO out FROM pg_catalog.jsonb_array_elements(doc) WITH ORDINALITY AS j(v, n);
    RETURN COALESCE(out, CAST('[]' AS pg_catalog.jsonb));
  END IF;
  IF m OPERATOR(pg_catalog.->>) 'kind' OPERATOR(pg_catalog.=) 'keep' THEN RETURN doc; END IF;
  RETURN pgredact_mask.mask_json_leaf(doc, m, ipad, opad);
END
$f$;
REVOKE ALL ON FUNCTION pgredact_mask.mask_json_walk(jsonb, jsonb, bytea, bytea, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_mask.mask_json_walk(jsonb, jsonb, bytea, bytea, text, jsonb) TO PUBLIC;

-- The mask of one document. The walk above is the definition; this is the same answer, faster
-- for the usual case (default keep): a rule can select something only if the document's text
-- holds its last key (`needle`); a document no rule can touch is returned as it is, and when
-- every rule that can is a plain key path to a scalar, those scalars are replaced in place
-- (least strict first, so the strictest wins). Anything else takes the walk.
CREATE OR REPLACE FUNCTION pgredact_mask.mask_json(doc pg_catalog.jsonb, spec pg_catalog.jsonb, ipad pg_catalog.bytea, opad pg_catalog.bytea)
RETURNS pg_catalog.jsonb LANGUAGE plpgsql STABLE PARALLEL SAFE AS $f$
DECLARE
  rules pg_catalog.jsonb := spec OPERATOR(pg_catalog.->) 'rules';
  dflt pg_catalog.jsonb := COALESCE(spec OPERATOR(pg_catalog.->) 'default', CAST('{"kind": "keep"}' AS pg_catalog.jsonb));
  t pg_catalog.text;
  r pg_catalog.jsonb;
  v pg_catalog.jsonb;
  ks pg_catalog.text[];
  out pg_catalog.jsonb := doc;
  i pg_catalog.int4;
BEGIN
  IF doc IS NULL THEN RETURN NULL; END IF;
  IF dflt OPERATOR(pg_catalog.->>) 'kind' OPERATOR(pg_catalog.<>) 'keep' THEN
    RETURN pgredact_mask.mask_json_walk(doc, rules, ipad, opad, '', dflt);
  END IF;
  t := CAST(doc AS pg_catalog.text);
  FOR i IN REVERSE pg_catalog.jsonb_array_length(rules) OPERATOR(pg_catalog.-) 1 .. 0 LOOP
    r := rules OPERATOR(pg_catalog.->) i;
    IF (r OPERATOR(pg_catalog.?) 'needle')
       AND pg_catalog.strpos(t, r OPERATOR(pg_catalog.->>) 'needle') OPERATOR(pg_catalog.=) 0 THEN
      CONTINUE;
    END IF;
    IF NOT (r OPERATOR(pg_catalog.?) 'keys') THEN
      RETURN pgredact_mask.mask_json_walk(doc, rules, ipad, opad, '', dflt);
    END IF;
    ks := CAST(r OPERATOR(pg_catalog.->>) 'keys' AS pg_catalog.text[]);
    v := doc OPERATOR(pg_catalog.#>) ks;
    IF v IS NULL OR pg_catalog.jsonb_typeof(v) OPERATOR(pg_catalog.=) 'object' OR pg_catalog.jsonb_typeof(v) OPERATOR(pg_catalog.=) 'array' THEN
      RETURN pgredact_mask.mask_json_walk(doc, rules, ipad, opad, '', dflt);
    END IF;
    out := pg_catalog.jsonb_set(out, ks, pgredact_mask.mask_json_leaf(v, r OPERATOR(pg_catalog.->) 'mask', ipad, opad));
  END LOOP;
  RETURN out;
END
$f$;
REVOKE ALL ON FUNCTION pgredact_mask.mask_json(jsonb, jsonb, bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_mask.mask_json(jsonb, jsonb, bytea, bytea) TO PUBLIC;

-- Whether the reading role is a member of role `r` (per-role masks), superusers excepted; false
-- for a role that does not exist. Masking views built by earlier versions call it; the current
-- ones inline the same built-in expression (mask_expr). `is_superuser` follows SET ROLE, as
-- CURRENT_USER does.
CREATE OR REPLACE FUNCTION pgredact_mask.member_of(r pg_catalog.name)
RETURNS pg_catalog.bool LANGUAGE sql STABLE PARALLEL SAFE AS $f$
  SELECT COALESCE(pg_catalog.pg_has_role(pg_catalog.to_regrole(pg_catalog.quote_ident(r)), 'MEMBER'), false)
         AND NOT CAST(pg_catalog.current_setting('is_superuser') AS pg_catalog.bool)
$f$;
REVOKE ALL ON FUNCTION pgredact_mask.member_of(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_mask.member_of(name) TO PUBLIC;

-- Masks `fake` and `noise` (README, "Mask kinds"), called by the masking views as the reader,
-- like the JSON maskers above (every name qualified, no SET search_path). The keyed hash
-- (HMAC-SHA256 with the key only the views' owner can read) is computed in the view and arrives
-- here as `mac`: a masked role calling these directly cannot compute it for a value it guesses,
-- so it learns nothing it does not already see.
--
-- The word lists of `fake`: the `fake` crate's EN locale as pgredact was built with it (filled
-- below by `pgredact setup-sql`; public data, readable by everyone). n is 0-based.
CREATE TABLE IF NOT EXISTS pgredact_mask.fake_lists (list text PRIMARY KEY, size integer NOT NULL CHECK (size > 0));
CREATE TABLE IF NOT EXISTS pgredact_mask.fake_words (list text, n integer, word text NOT NULL, PRIMARY KEY (list, n));
REVOKE ALL ON pgredact_mask.fake_lists, pgredact_mask.fake_words FROM PUBLIC;
GRANT SELECT ON pgredact_mask.fake_lists, pgredact_mask.fake_words TO PUBLIC;
BEGIN;
@FAKE_DATA@
COMMIT;

-- `len` (at most 7) bytes of `mac` from byte `first` (0-based), big-endian, as a non-negative integer.
CREATE OR REPLACE FUNCTION pgredact_mask.mac_int(mac pg_catalog.bytea, first pg_catalog.int4, len pg_catalog.int4)
RETURNS pg_catalog.int8 LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $f$
  SELECT CAST(CAST(pg_catalog.concat('x', pg_catalog.lpad(pg_catalog.encode(pg_catalog.substr($1, $2 OPERATOR(pg_catalog.+) 1, $3), 'hex'), 16, '0')) AS pg_catalog.bit(64)) AS pg_catalog.int8)
$f$;

-- Entry (w_i mod size) of a fake list, w_i being bytes 4i..4i+3 of mac.
CREATE OR REPLACE FUNCTION pgredact_mask.fake_pick(list pg_catalog.text, mac pg_catalog.bytea, i pg_catalog.int4)
RETURNS pg_catalog.text LANGUAGE sql STABLE PARALLEL SAFE STRICT AS $f$
  SELECT w.word FROM pgredact_mask.fake_lists l JOIN pgredact_mask.fake_words w ON w.list OPERATOR(pg_catalog.=) l.list
  WHERE l.list OPERATOR(pg_catalog.=) $1
    AND w.n OPERATOR(pg_catalog.=) CAST(pgredact_mask.mac_int($2, $3 OPERATOR(pg_catalog.*) 4, 4) OPERATOR(pg_catalog.%) l.size AS pg_catalog.int4)
$f$;

-- A format such as `(^##) ###-####` with each `#` replaced by a digit and each `^` by a digit
-- 1-9, taken from the bytes of mac from byte `start` on (byte mod 10, 1 + byte mod 9).
CREATE OR REPLACE FUNCTION pgredact_mask.fake_fill(tpl pg_catalog.text, mac pg_catalog.bytea, start pg_catalog.int4)
RETURNS pg_catalog.text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT AS $f$
DECLARE
  out pg_catalog.text := '';
  ch pg_catalog.text;
  b pg_catalog.int4 := start;
  i pg_catalog.int4;
BEGIN
  FOR i IN 1 .. pg_catalog.length(tpl) LOOP
    ch := pg_catalog.substr(tpl, i, 1);
    IF ch OPERATOR(pg_catalog.=) '#' THEN
      ch := CAST(pg_catalog.get_byte(mac, b) OPERATOR(pg_catalog.%) 10 AS pg_catalog.text);
      b := b OPERATOR(pg_catalog.+) 1;
    ELSIF ch OPERATOR(pg_catalog.=) '^' THEN
      ch := CAST(1 OPERATOR(pg_catalog.+) (pg_catalog.get_byte(mac, b) OPERATOR(pg_catalog.%) 9) AS pg_catalog.text);
      b := b OPERATOR(pg_catalog.+) 1;
    END IF;
    out := out OPERATOR(pg_catalog.||) ch;
  END LOOP;
  RETURN out;
END
$f$;

-- Lower-case ASCII letters only (for e-mail local parts).
CREATE OR REPLACE FUNCTION pgredact_mask.fake_ascii(t pg_catalog.text)
RETURNS pg_catalog.text LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $f$
  SELECT pg_catalog.regexp_replace(pg_catalog.lower($1), '[^a-z]', '', 'g')
$f$;

-- The fake value of a flavour for mac = HMAC(key, 'fake' || value). See README for each flavour.
CREATE OR REPLACE FUNCTION pgredact_mask.fake(flavour pg_catalog.text, mac pg_catalog.bytea)
RETURNS pg_catalog.text LANGUAGE plpgsql STABLE PARALLEL SAFE AS $f$
BEGIN
  IF mac IS NULL THEN RETURN NULL; END IF;
  IF flavour OPERATOR(pg_catalog.=) 'first_name' THEN
    RETURN pgredact_mask.fake_pick('first_name', mac, 0);
  ELSIF flavour OPERATOR(pg_catalog.=) 'last_name' THEN
    RETURN pgredact_mask.fake_pick('last_name', mac, 0);
  ELSIF flavour OPERATOR(pg_catalog.=) 'name' THEN
    RETURN pg_catalog.concat(pgredact_mask.fake_pick('first_name', mac, 0), ' ', pgredact_mask.fake_pick('last_name', mac, 1));
  ELSIF flavour OPERATOR(pg_catalog.=) 'email' THEN
    RETURN pg_catalog.concat(pgredact_mask.fake_ascii(pgredact_mask.fake_pick('first_name', mac, 0)), '.',
      pgredact_mask.fake_ascii(pgredact_mask.fake_pick('last_name', mac, 1)),
      pgredact_mask.mac_int(mac, 8, 4) OPERATOR(pg_catalog.%) 100, '@example.',
      (CAST('{com,net,org}' AS pg_catalog.text[]))[CAST(1 OPERATOR(pg_catalog.+) (pgredact_mask.mac_int(mac, 12, 4) OPERATOR(pg_catalog.%) 3) AS pg_catalog.int4)]);
  ELSIF flavour OPERATOR(pg_catalog.=) 'phone' THEN
    RETURN pgredact_mask.fake_fill(pgredact_mask.fake_pick('phone_format', mac, 0), mac, 4);
  ELSIF flavour OPERATOR(pg_catalog.=) 'street_address' THEN
    RETURN pg_catalog.concat(1 OPERATOR(pg_catalog.+) (pgredact_mask.mac_int(mac, 0, 4) OPERATOR(pg_catalog.%) 9999), ' ',
      pgredact_mask.fake_pick('last_name', mac, 1), ' ', pgredact_mask.fake_pick('street_suffix', mac, 2));
  ELSIF flavour OPERATOR(pg_catalog.=) 'city' THEN
    RETURN pg_catalog.concat(
      CASE WHEN (pgredact_mask.mac_int(mac, 8, 4) OPERATOR(pg_catalog.%) 4) OPERATOR(pg_catalog.=) 0
           THEN pg_catalog.concat(pgredact_mask.fake_pick('city_prefix', mac, 3), ' ') ELSE '' END,
      pgredact_mask.fake_pick('last_name', mac, 0), pgredact_mask.fake_pick('city_suffix', mac, 1));
  END IF;
  RETURN NULL;
END
$f$;

-- A noise offset from mac: sign from the low bit of byte 7 (1: negative), size
-- 1 + floor(u * max(m, 1) / 2^56) with u the first 7 bytes, so 1 to max(m, 1), never 0.
CREATE OR REPLACE FUNCTION pgredact_mask.noise_offset(mac pg_catalog.bytea, m pg_catalog.numeric)
RETURNS pg_catalog.numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $f$
  SELECT (1 OPERATOR(pg_catalog.+) pg_catalog.div(CAST(pgredact_mask.mac_int($1, 0, 7) AS pg_catalog.numeric) OPERATOR(pg_catalog.*) GREATEST($2, 1),
            CAST(72057594037927936 AS pg_catalog.numeric)))
         OPERATOR(pg_catalog.*) CASE WHEN (pg_catalog.get_byte($1, 7) OPERATOR(pg_catalog.&) 1) OPERATOR(pg_catalog.=) 1 THEN -1 ELSE 1 END
$f$;

-- Noise on an integer or numeric x: in units of `unit` (1 for integers, 10^-scale for
-- numeric(p,s), the value's own scale for numeric), x moves by 1 to floor(|x| * ppm / 10^6)
-- units (at least one), the other way when the first would leave [lo, hi]. 0 stays 0.
CREATE OR REPLACE FUNCTION pgredact_mask.noise_num(x pg_catalog.numeric, mac pg_catalog.bytea, ppm pg_catalog.int8, unit pg_catalog.numeric, lo pg_catalog.numeric, hi pg_catalog.numeric)
RETURNS pg_catalog.numeric LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
DECLARE
  un pg_catalog.numeric := unit;
  xu pg_catalog.numeric;
  d pg_catalog.numeric;
  r pg_catalog.numeric;
BEGIN
  IF x IS NULL OR mac IS NULL THEN RETURN NULL; END IF;
  IF x OPERATOR(pg_catalog.=) 0 OR x OPERATOR(pg_catalog.=) CAST('NaN' AS pg_catalog.numeric)
     OR pg_catalog.abs(x) OPERATOR(pg_catalog.=) CAST('Infinity' AS pg_catalog.numeric) THEN
    RETURN x;
  END IF;
  IF un IS NULL THEN
    un := pg_catalog.power(CAST(10 AS pg_catalog.numeric), CAST(0 OPERATOR(pg_catalog.-) pg_catalog.scale(x) AS pg_catalog.numeric));
  END IF;
  xu := pg_catalog.round(x OPERATOR(pg_catalog./) un);
  d := pgredact_mask.noise_offset(mac, pg_catalog.div(pg_catalog.abs(xu) OPERATOR(pg_catalog.*) ppm, CAST(1000000 AS pg_catalog.numeric)));
  r := (xu OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.*) un;
  IF (lo IS NOT NULL AND r OPERATOR(pg_catalog.<) lo) OR (hi IS NOT NULL AND r OPERATOR(pg_catalog.>) hi) THEN
    r := (xu OPERATOR(pg_catalog.-) d) OPERATOR(pg_catalog.*) un;
  END IF;
  IF unit IS NULL THEN
    RETURN pg_catalog.round(r, pg_catalog.scale(x));
  END IF;
  RETURN r;
END
$f$;

-- Noise on a float: x * (1 + k / 10^9), k = ±ppm * (1 + floor(u * 1000 / 2^56)) (a change of
-- ppm/1000 to ppm parts per million), shrinking when |x| is within a factor 2 of the type's
-- limit `maxabs`. 0, NaN and infinities stay as they are.
CREATE OR REPLACE FUNCTION pgredact_mask.noise_float(x pg_catalog.float8, mac pg_catalog.bytea, ppm pg_catalog.int8, maxabs pg_catalog.float8)
RETURNS pg_catalog.float8 LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
DECLARE
  k pg_catalog.int8;
BEGIN
  IF x IS NULL OR mac IS NULL THEN RETURN NULL; END IF;
  IF x OPERATOR(pg_catalog.=) 0 OR x OPERATOR(pg_catalog.=) CAST('NaN' AS pg_catalog.float8)
     OR pg_catalog.abs(x) OPERATOR(pg_catalog.=) CAST('Infinity' AS pg_catalog.float8) THEN
    RETURN x;
  END IF;
  k := ppm OPERATOR(pg_catalog.*) (1 OPERATOR(pg_catalog.+) CAST(pg_catalog.div(CAST(pgredact_mask.mac_int(mac, 0, 7) AS pg_catalog.numeric) OPERATOR(pg_catalog.*) 1000,
         CAST(72057594037927936 AS pg_catalog.numeric)) AS pg_catalog.int8));
  IF (pg_catalog.get_byte(mac, 7) OPERATOR(pg_catalog.&) 1) OPERATOR(pg_catalog.=) 1
     OR pg_catalog.abs(x) OPERATOR(pg_catalog.>) (maxabs OPERATOR(pg_catalog./) 2) THEN
    k := 0 OPERATOR(pg_catalog.-) k;
  END IF;
  RETURN x OPERATOR(pg_catalog.*) (CAST(1 AS pg_catalog.float8) OPERATOR(pg_catalog.+) (CAST(k AS pg_catalog.float8) OPERATOR(pg_catalog./) CAST(1000000000 AS pg_catalog.float8)));
END
$f$;

-- Noise on a date: ± 1 to `days` days, the other way when the first would leave the date range.
CREATE OR REPLACE FUNCTION pgredact_mask.noise_date(x pg_catalog.date, mac pg_catalog.bytea, days pg_catalog.int8)
RETURNS pg_catalog.date LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
DECLARE
  d pg_catalog.int4;
  dx pg_catalog.int8;
BEGIN
  IF x IS NULL OR mac IS NULL THEN RETURN NULL; END IF;
  IF NOT pg_catalog.isfinite(x) THEN RETURN x; END IF;
  d := CAST(pgredact_mask.noise_offset(mac, CAST(days AS pg_catalog.numeric)) AS pg_catalog.int4);
  dx := x OPERATOR(pg_catalog.-) CAST('2000-01-01' AS pg_catalog.date);
  -- 2145031948 and -2451545: the last and first dates PostgreSQL holds, counted from 2000-01-01.
  IF (dx OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.>) 2145031948
     OR (dx OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.<) -2451545 THEN
    d := 0 OPERATOR(pg_catalog.-) d;
  END IF;
  RETURN x OPERATOR(pg_catalog.+) d;
END
$f$;

-- Noise on a timestamp (without time zone): ± 1 to `secs` seconds, the other way at the range's ends.
CREATE OR REPLACE FUNCTION pgredact_mask.noise_ts(x pg_catalog.timestamp, mac pg_catalog.bytea, secs pg_catalog.int8)
RETURNS pg_catalog.timestamp LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
DECLARE
  d pg_catalog.int8;
  e pg_catalog.float8;
BEGIN
  IF x IS NULL OR mac IS NULL THEN RETURN NULL; END IF;
  IF NOT pg_catalog.isfinite(x) THEN RETURN x; END IF;
  d := CAST(pgredact_mask.noise_offset(mac, CAST(secs AS pg_catalog.numeric)) AS pg_catalog.int8);
  e := pg_catalog.date_part('epoch', x);
  IF (e OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.>) 9224318015999 OR (e OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.<) -210866803200 THEN
    d := 0 OPERATOR(pg_catalog.-) d;
  END IF;
  RETURN x OPERATOR(pg_catalog.+) pg_catalog.make_interval(0, 0, 0, 0, 0, 0, CAST(d AS pg_catalog.float8));
END
$f$;

-- The same for timestamptz: whole seconds added to an instant, so TimeZone plays no part.
CREATE OR REPLACE FUNCTION pgredact_mask.noise_tstz(x pg_catalog.timestamptz, mac pg_catalog.bytea, secs pg_catalog.int8)
RETURNS pg_catalog.timestamptz LANGUAGE plpgsql STABLE PARALLEL SAFE AS $f$
DECLARE
  d pg_catalog.int8;
  e pg_catalog.float8;
BEGIN
  IF x IS NULL OR mac IS NULL THEN RETURN NULL; END IF;
  IF NOT pg_catalog.isfinite(x) THEN RETURN x; END IF;
  d := CAST(pgredact_mask.noise_offset(mac, CAST(secs AS pg_catalog.numeric)) AS pg_catalog.int8);
  e := pg_catalog.date_part('epoch', x);
  IF (e OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.>) 9224318015999 OR (e OPERATOR(pg_catalog.+) d) OPERATOR(pg_catalog.<) -210866803200 THEN
    d := 0 OPERATOR(pg_catalog.-) d;
  END IF;
  RETURN x OPERATOR(pg_catalog.+) pg_catalog.make_interval(0, 0, 0, 0, 0, 0, CAST(d AS pg_catalog.float8));
END
$f$;

DO $g$
DECLARE f text;
BEGIN
  FOREACH f IN ARRAY ARRAY['mac_int(bytea, integer, integer)', 'fake_pick(text, bytea, integer)', 'fake_fill(text, bytea, integer)',
      'fake_ascii(text)', 'fake(text, bytea)', 'noise_offset(bytea, numeric)',
      'noise_num(numeric, bytea, bigint, numeric, numeric, numeric)', 'noise_float(double precision, bytea, bigint, double precision)',
      'noise_date(date, bytea, bigint)', 'noise_ts(timestamp without time zone, bytea, bigint)',
      'noise_tstz(timestamp with time zone, bytea, bigint)'] LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION pgredact_mask.%s FROM PUBLIC', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION pgredact_mask.%s TO PUBLIC', f);
  END LOOP;
END
$g$;

-- Bytes of a value that no session setting changes (DateStyle, TimeZone, extra_float_digits,
-- client_encoding...), as SQL text for expression `e` of type `typ`: UTF-8 text for strings and
-- enums, the binary send form otherwise. NULL for arrays, composites, json and xml.
CREATE OR REPLACE FUNCTION pgredact_admin.stable_bytes(e text, typ oid)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  base oid;
  cat "char";
  send regproc;
BEGIN
  SELECT bt.oid, bt.typcategory, bt.typsend INTO base, cat, send
  FROM pg_type ty JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
  WHERE ty.oid = typ;
  IF cat IN ('S', 'E') THEN
    RETURN format('pg_catalog.convert_to(CAST(%s AS pg_catalog.text), ''UTF8'')', e);
  END IF;
  IF cat IN ('A', 'C', 'P', 'X') OR base IN ('json'::regtype, 'jsonb'::regtype, 'xml'::regtype) OR send = 0 THEN
    RETURN NULL;
  END IF;
  RETURN format('%s(CAST(%s AS %s))', send::text, e, format_type(base, NULL));
END
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.stable_bytes(text, oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgredact_admin.mask_expr(col name, typ oid, typmod integer, m jsonb)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  t text := format_type(typ, typmod);
  c text := 'r.' || quote_ident(col);
  ct text := format('CAST(r.%s AS pg_catalog.text)', quote_ident(col));
  base name;
  cat "char";
  kind text := m ->> 'kind';
  kf integer := coalesce((m ->> 'keep_first')::integer, 0);
  kl integer := coalesce((m ->> 'keep_last')::integer, 0);
  -- The outer CAST keeps the type modifier too (a CASE would drop it). `r.ctid` keeps the planner
  -- off the raw column: a masked value that names the row's ctid (unique, and in no index) is
  -- estimated as distinct per row from the row count alone, never from the raw column's
  -- statistics (GROUP BY, DISTINCT and Memoize choices, and with them the order of rows returned
  -- without ORDER BY), and no index-only scan of an index on the raw column can produce it (it
  -- would hand out masked values in the raw values' order). Costs one null test per value.
  guard text := format('CAST(CASE WHEN %s IS NULL OR r.ctid IS NULL THEN NULL ELSE %%s END AS %s)', c, t);
  v text;
  mac text;
  ts text;
  num_p integer;
  num_s integer;
  unit text;
  lo text;
  hi text;
BEGIN
  -- Per-role masks (`[roles.<role>]`): the reading role's membership picks the mask, first role
  -- listed first, the default mask for everyone else (superusers, members of every role for
  -- pg_has_role, read the default masks here). Each test is a scalar subquery, so
  -- PostgreSQL evaluates it once per query (an InitPlan), not per row; a role that does not
  -- exist (yet) matches no one. Every branch is cast to the column's type, so the CASE keeps the
  -- type modifier.
  IF m ? 'by_role' THEN
    -- The reader is a member of the role, superusers excepted (a role that does not exist: no
    -- one is). Built-in functions only, in an InitPlan: evaluated once per query, no SPI, and
    -- nothing to inline at planning (pgredact_mask.member_of, which earlier views call, costs
    -- either).
    SELECT 'CASE' || string_agg(format(' WHEN (SELECT COALESCE(pg_catalog.pg_has_role(pg_catalog.to_regrole(%L), ''MEMBER''), false)'
                                       ' AND NOT CAST(pg_catalog.current_setting(''is_superuser'') AS pg_catalog.bool)) THEN %s',
                                       quote_ident(e.x ->> 'role'),
                                       pgredact_admin.mask_expr(col, typ, typmod, (e.x -> 'mask') || CASE WHEN m ? 'rowkey' THEN jsonb_build_object('rowkey', m -> 'rowkey') ELSE '{}' END)),
                                '' ORDER BY e.i)
           || format(' ELSE %s END', pgredact_admin.mask_expr(col, typ, typmod, m - 'by_role'))
      INTO v
    FROM jsonb_array_elements(m -> 'by_role') WITH ORDINALITY AS e(x, i);
    RETURN v;
  END IF;
  SELECT bt.typname, bt.typcategory INTO base, cat
  FROM pg_type ty JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
  WHERE ty.oid = typ;
  CASE kind
  WHEN 'null' THEN
    RETURN format('CAST(NULL AS %s)', t);
  WHEN 'redact' THEN
    v := CASE WHEN cat = 'S' THEN '''****''' WHEN cat = 'N' THEN '0'
              WHEN base = 'date' THEN '''1900-01-01'''
              WHEN base IN ('timestamp', 'timestamptz') THEN '''1900-01-01 00:00''' END;
    IF v IS NULL THEN RETURN format('CAST(NULL AS %s)', t); END IF;
    RETURN format(guard, v);
  WHEN 'constant' THEN
    RETURN format(guard, quote_literal(m ->> 'value'));
  WHEN 'email' THEN
    RETURN format(guard, format(
      'CASE WHEN pg_catalog.strpos(%1$s, ''@'') > 0 THEN pg_catalog.concat(pg_catalog.left(%1$s, 1), ''***@'', pg_catalog.substr(%1$s, pg_catalog.strpos(%1$s, ''@'') + 1)) ELSE ''****'' END', ct));
  WHEN 'partial' THEN
    RETURN format(guard, format(
      'CASE WHEN pg_catalog.length(%1$s) <= %2$s THEN %3$s ELSE pg_catalog.concat(pg_catalog.left(%1$s, %4$s), %3$s, pg_catalog.right(%1$s, %5$s)) END',
      ct, kf + kl, quote_literal(coalesce(m ->> 'padding', '****')), kf, kl));
  WHEN 'hash' THEN
    -- HMAC-SHA256 with the key only the control role (the view's owner) can read (joined as k).
    RETURN format(guard, format(
      'pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||) pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) pg_catalog.convert_to(%s, ''UTF8''))), ''hex''), 16)', ct));
  WHEN 'json' THEN
    IF base NOT IN ('json', 'jsonb') THEN
      RAISE EXCEPTION 'pgredact: mask "json" needs a json or jsonb column, not %', t;
    END IF;
    v := format('pgredact_mask.mask_json(CAST(%s AS pg_catalog.jsonb), CAST(%s AS pg_catalog.jsonb), %s)',
      c, quote_literal(m::text),
      CASE WHEN (m ->> 'uses_key')::boolean THEN 'k.ipad, k.opad' ELSE 'NULL, NULL' END);
    -- Documents that hold none of the rules' keys skip the function call (a regular expression
    -- over the jsonb text, which writes every key as "key": ).
    IF m ->> 'prefilter' IS NOT NULL THEN
      v := format('CASE WHEN CAST(CAST(%s AS pg_catalog.jsonb) AS pg_catalog.text) OPERATOR(pg_catalog.~) %s THEN %s ELSE CAST(%s AS pg_catalog.jsonb) END',
        c, quote_literal(m ->> 'prefilter'), v, c);
    END IF;
    RETURN format(guard, v);
  WHEN 'year' THEN
    IF base = 'date' THEN
      RETURN format(guard, format('pg_catalog.date_trunc(''year'', CAST(%s AS pg_catalog.timestamp))', c));
    END IF;
    RETURN format(guard, format('pg_catalog.date_trunc(''year'', %s)', c));
  WHEN 'fake' THEN
    IF cat <> 'S' THEN
      RAISE EXCEPTION 'pgredact: mask "fake" needs a text column, not %', t;
    END IF;
    -- HMAC-SHA256(key, 'fake' || value); the cast to the column type truncates to its length.
    RETURN format(guard, format(
      'pgredact_mask.fake(%s, pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||) pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) pg_catalog.convert_to(pg_catalog.concat(''fake'', %s), ''UTF8''))))',
      quote_literal(m ->> 'flavour'), ct));
  WHEN 'noise' THEN
    -- HMAC-SHA256(key, 'noise' || row key || value): with per_row, the row key (sha256 of each
    -- primary key column of the policy table, from sync()) sets equal values of different rows
    -- apart; values are read in a form no session setting changes.
    v := pgredact_admin.stable_bytes(c, typ);
    IF v IS NULL THEN
      RAISE EXCEPTION 'pgredact: mask "noise" does not apply to %', t;
    END IF;
    mac := format('pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||) pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) %s))',
      concat_ws(' OPERATOR(pg_catalog.||) ', 'pg_catalog.convert_to(''noise'', ''UTF8'')', nullif(m ->> 'rowkey', ''), v));
    IF m ? 'ppm' THEN
      IF base IN ('int2', 'int4', 'int8') THEN
        lo := CASE base WHEN 'int2' THEN '-32768' WHEN 'int4' THEN '-2147483648' ELSE '-9223372036854775808' END;
        hi := CASE base WHEN 'int2' THEN '32767' WHEN 'int4' THEN '2147483647' ELSE '9223372036854775807' END;
        unit := '1';
      ELSIF base = 'numeric' THEN
        IF typmod >= 4 THEN
          num_p := ((typmod - 4) >> 16) & 65535;
          num_s := (typmod - 4) & 65535;
          IF num_s > num_p THEN num_s := NULL; END IF;
        END IF;
        IF num_s IS NOT NULL THEN
          unit := round(10::numeric ^ (-num_s), num_s)::text;
          hi := round(10::numeric ^ (num_p - num_s) - 10::numeric ^ (-num_s), num_s)::text;
          lo := '-' || hi;
        END IF;
      ELSIF base IN ('float4', 'float8') THEN
        RETURN format(guard, format('pgredact_mask.noise_float(CAST(%s AS pg_catalog.float8), %s, %s, %s)',
          c, mac, (m ->> 'ppm')::bigint, CASE base WHEN 'float4' THEN '3.4028234663852886e38' ELSE '1.7976931348623157e308' END));
      ELSE
        RAISE EXCEPTION 'pgredact: mask "noise" with a ratio needs a number column, not %', t;
      END IF;
      RETURN format(guard, format('pgredact_mask.noise_num(CAST(%s AS pg_catalog.numeric), %s, %s, %s, %s, %s)',
        c, mac, (m ->> 'ppm')::bigint,
        coalesce(format('CAST(%L AS pg_catalog.numeric)', unit), 'NULL'),
        coalesce(format('CAST(%L AS pg_catalog.numeric)', lo), 'NULL'),
        coalesce(format('CAST(%L AS pg_catalog.numeric)', hi), 'NULL')));
    END IF;
    IF base = 'date' AND (m ->> 'seconds')::bigint % 86400 = 0 THEN
      RETURN format(guard, format('pgredact_mask.noise_date(%s, %s, %s)', c, mac, (m ->> 'seconds')::bigint / 86400));
    ELSIF base = 'timestamp' THEN
      RETURN format(guard, format('pgredact_mask.noise_ts(%s, %s, %s)', c, mac, (m ->> 'seconds')::bigint));
    ELSIF base = 'timestamptz' THEN
      RETURN format(guard, format('pgredact_mask.noise_tstz(%s, %s, %s)', c, mac, (m ->> 'seconds')::bigint));
    END IF;
    RAISE EXCEPTION 'pgredact: mask "noise" with interval % does not apply to %', m ->> 'interval', t;
  WHEN 'bucket' THEN
    IF m ? 'step' THEN
      IF base IN ('float4', 'float8') THEN
        RETURN format(guard, format('pg_catalog.floor(CAST(%s AS pg_catalog.float8) / CAST(%L AS pg_catalog.float8)) * CAST(%L AS pg_catalog.float8)',
          c, m ->> 'step', m ->> 'step'));
      END IF;
      IF base NOT IN ('int2', 'int4', 'int8', 'numeric') THEN
        RAISE EXCEPTION 'pgredact: mask "bucket" with a step needs a number column, not %', t;
      END IF;
      v := format('pg_catalog.floor(CAST(%s AS pg_catalog.numeric) / CAST(%L AS pg_catalog.numeric)) * CAST(%L AS pg_catalog.numeric)',
        c, m ->> 'step', m ->> 'step');
      -- The lowest bucket of a bounded type can start below its range: it starts at the bound.
      lo := CASE base WHEN 'int2' THEN '-32768' WHEN 'int4' THEN '-2147483648' WHEN 'int8' THEN '-9223372036854775808' END;
      IF base = 'numeric' AND typmod >= 4 THEN
        num_p := ((typmod - 4) >> 16) & 65535;
        num_s := (typmod - 4) & 65535;
        IF num_s <= num_p THEN
          lo := '-' || round(10::numeric ^ (num_p - num_s) - 10::numeric ^ (-num_s), num_s)::text;
        END IF;
      END IF;
      IF lo IS NOT NULL THEN
        v := format('GREATEST(%s, CAST(%L AS pg_catalog.numeric))', v, lo);
      ELSIF base = 'numeric' THEN
        -- numeric without a scale keeps the value's own (at least the step's).
        v := format('pg_catalog.round(%s, GREATEST(pg_catalog.scale(CAST(%s AS pg_catalog.numeric)), %s))',
          v, c, coalesce(length(split_part(m ->> 'step', '.', 2)), 0));
      END IF;
      RETURN format(guard, v);
    END IF;
    -- Dates and timestamps, as timestamps (timestamptz in UTC, so TimeZone plays no part).
    ts := CASE base WHEN 'date' THEN format('CAST(%s AS pg_catalog.timestamp)', c)
                    WHEN 'timestamp' THEN c
                    WHEN 'timestamptz' THEN format('pg_catalog.timezone(''UTC'', %s)', c) END;
    IF ts IS NULL THEN
      RAISE EXCEPTION 'pgredact: mask "bucket" with an interval needs a date or timestamp column, not %', t;
    END IF;
    IF m ->> 'unit' = 'year' THEN
      v := format('pg_catalog.make_timestamp(CAST(GREATEST(1, pg_catalog.floor(pg_catalog.date_part(''year'', %1$s) / %2$s) * %2$s) AS pg_catalog.int4), 1, 1, 0, 0, 0)',
        ts, (m ->> 'n')::integer);
    ELSIF m ->> 'unit' = 'month' THEN
      v := format('pg_catalog.make_timestamp(CAST(pg_catalog.date_part(''year'', %1$s) AS pg_catalog.int4), CAST(pg_catalog.floor((pg_catalog.date_part(''month'', %1$s) - 1) / %2$s) * %2$s + 1 AS pg_catalog.int4), 1, 0, 0, 0)',
        ts, (m ->> 'n')::integer);
    ELSE
      IF base = 'date' AND (m ->> 'seconds')::bigint % 86400 <> 0 THEN
        RAISE EXCEPTION 'pgredact: mask "bucket" on a date needs whole days, not %', m ->> 'interval';
      END IF;
      -- Fixed-length buckets counted from Monday 2000-01-03 00:00 (so weeks start on Mondays).
      v := format('pg_catalog.date_bin(pg_catalog.make_interval(0, 0, 0, 0, 0, 0, %s), %s, CAST(''2000-01-03 00:00:00'' AS pg_catalog.timestamp))',
        (m ->> 'seconds')::bigint, ts);
    END IF;
    v := CASE base WHEN 'date' THEN format('CAST(%s AS pg_catalog.date)', v)
                   WHEN 'timestamp' THEN v
                   ELSE format('pg_catalog.timezone(''UTC'', %s)', v) END;
    RETURN format(guard, format('CASE WHEN pg_catalog.isfinite(%s) THEN %s ELSE %s END', c, v, c));
  ELSE
    RAISE EXCEPTION 'pgredact: unknown mask kind %', kind;
  END CASE;
END
$f$;

REVOKE ALL ON FUNCTION pgredact_admin.mask_expr(name, oid, integer, jsonb) FROM PUBLIC;

-- Everything that breaks the wall (see wall_violations.sql), for the stored policy.
CREATE OR REPLACE FUNCTION pgredact_admin.violations()
RETURNS TABLE (severity text, kind text, role text, object text, col text, privilege text, how text, fix text, auto boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  s jsonb := (SELECT p.spec FROM pgredact.policy p WHERE p.id);
  ctl name := (SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'pgredact');
BEGIN
  IF s IS NULL THEN RETURN; END IF;
  RETURN QUERY EXECUTE $violations$@VIOLATIONS@$violations$ USING s, ctl;
END
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.violations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_admin.violations() TO @CTL@;

-- Builds or updates the masking view of every protected relation: same column names, order and
-- types, masked where the policy says, owned by the control role (so relation access inside is
-- checked as that role), readable by exactly the roles that may read the relation. Drops the
-- views of relations no longer protected. Returns what it did.
CREATE OR REPLACE FUNCTION pgredact_admin.sync() RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  s jsonb := (SELECT p.spec FROM pgredact.policy p WHERE p.id);
  ctl name := (SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'pgredact');
  fp text := s ->> 'fingerprint';
  r record;
  g record;
  vs name;
  sel text;
  body text;
  only_name name;
  cur pgredact_admin.masking_views;
  built oid[] := '{}';
  failed oid[] := '{}';
  only_missing boolean;
  uses_key boolean;
  joined text;
  rowkey text;
BEGIN
  IF s IS NULL OR ctl IS NULL THEN RETURN; END IF;
  PERFORM pg_advisory_xact_lock(7320452);
  FOR r IN
    WITH RECURSIVE spec AS (SELECT s AS j), @PROTECTED@
    SELECT p.relid, p.policy_relid, t.tj, pm.cols, n.nspname, c.relname, c.relkind,
           EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = p.relid) AS has_children
    FROM prot p JOIN ptab t ON t.relid = p.policy_relid
    JOIN pmasks pm ON pm.relid = p.relid AND pm.policy_relid = p.policy_relid
    JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
    ORDER BY n.nspname, c.relname
  LOOP
    vs := CASE WHEN r.nspname = 'public' THEN 'pgredact_masked' ELSE 'pgredact_masked_' || r.nspname END;
    IF octet_length(vs) > 63 THEN
      RAISE WARNING 'pgredact: schema name % is too long for its masking schema; %.% stays refused', r.nspname, r.nspname, r.relname;
      CONTINUE;
    END IF;
    BEGIN
      -- What tells rows apart for mask "noise" with per_row: the policy table's primary key columns (by
      -- name, so its partitions and children agree), each as sha256 of its stable bytes; empty
      -- without a primary key, or when one of its columns has no stable form.
      SELECT CASE WHEN bool_and(x.b IS NOT NULL) THEN string_agg(format('pg_catalog.sha256(%s)', x.b), ' OPERATOR(pg_catalog.||) ' ORDER BY x.ord) END
        INTO rowkey
      FROM (SELECT pgredact_admin.stable_bytes('r.' || quote_ident(pa.attname), a.atttypid) AS b, k.ord
            FROM pg_index i CROSS JOIN LATERAL unnest(CAST(i.indkey AS int2[])) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = k.attnum
            JOIN pg_attribute a ON a.attrelid = r.relid AND a.attname = pa.attname AND NOT a.attisdropped
            WHERE i.indrelid = r.policy_relid AND i.indisprimary) x;
      SELECT string_agg(CASE WHEN r.cols ? a.attname
                             THEN pgredact_admin.mask_expr(a.attname, a.atttypid, a.atttypmod,
                                    CASE WHEN (r.cols -> a.attname ->> 'kind' = 'noise' AND (r.cols -> a.attname ->> 'per_row')::boolean)
                                              OR r.cols -> a.attname ? 'by_role'
                                         THEN (r.cols -> a.attname) || jsonb_build_object('rowkey', coalesce(rowkey, ''))
                                         ELSE r.cols -> a.attname END) || ' AS ' || quote_ident(a.attname)
                             ELSE 'r.' || quote_ident(a.attname) END, ', ' ORDER BY a.attnum),
             bool_or(r.cols -> a.attname ->> 'kind' = 'hash'
                     OR coalesce((r.cols -> a.attname ->> 'uses_key')::boolean, false))
        INTO sel, uses_key
      FROM pg_attribute a WHERE a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped;
      IF sel IS NULL THEN CONTINUE; END IF;
      -- The key is joined (a one-row table), only where a hash mask needs it: cheaper to plan
      -- and run than a subquery per use.
      joined := CASE WHEN uses_key THEN ' AS r LEFT JOIN pgredact.hash_key AS k ON k.id' ELSE ' AS r' END;
      body := format('SELECT %s FROM %I.%I', sel, r.nspname, r.relname) || joined;
      only_name := CASE WHEN r.has_children THEN 'pgredact$only_' || r.relid::text END;
      SELECT * INTO cur FROM pgredact_admin.masking_views m WHERE m.relid = r.relid;
      only_missing := false;
      IF only_name IS NOT NULL THEN
        only_missing := to_regclass(format('%I.%I', vs, only_name)) IS NULL;
      END IF;
      IF cur.relid IS NULL OR cur.body_md5 IS DISTINCT FROM md5(body) OR cur.only_view IS DISTINCT FROM only_name
         OR to_regclass(format('%I.%I', vs, r.relname)) IS NULL
         OR only_missing THEN
        IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = vs) THEN
          EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', vs, ctl);
          EXECUTE format('GRANT USAGE ON SCHEMA %I TO PUBLIC', vs);
        END IF;
        -- The view's owner reads the relation: the control role needs SELECT on it (a new
        -- partition does not inherit its parent's grants).
        IF NOT has_table_privilege(ctl, r.relid, 'SELECT') THEN
          EXECUTE format('GRANT SELECT ON %s TO %I', r.relid::regclass, ctl);
        END IF;
        PERFORM pgredact_admin.replace_view(vs, r.relname, body, ctl);
        IF only_name IS NOT NULL THEN
          PERFORM pgredact_admin.replace_view(vs, only_name, format('SELECT %s FROM ONLY %I.%I', sel, r.nspname, r.relname) || joined, ctl);
        END IF;
        RETURN NEXT format('masking view %I.%I built for %s', vs, r.relname, r.relid::regclass);
      END IF;
      INSERT INTO pgredact_admin.masking_views AS m (relid, view_schema, view_name, only_view, fingerprint, body_md5)
      VALUES (r.relid, vs, r.relname, only_name, coalesce(r.tj ->> 'fingerprint', fp), md5(body))
      ON CONFLICT (relid) DO UPDATE SET view_schema = EXCLUDED.view_schema, view_name = EXCLUDED.view_name,
        only_view = EXCLUDED.only_view, fingerprint = EXCLUDED.fingerprint, body_md5 = EXCLUDED.body_md5
      WHERE (m.view_schema, m.view_name, m.only_view, m.fingerprint, m.body_md5)
            IS DISTINCT FROM (EXCLUDED.view_schema, EXCLUDED.view_name, EXCLUDED.only_view, EXCLUDED.fingerprint, EXCLUDED.body_md5);
      -- Readers of the view: every role that holds SELECT on the relation or on one of its columns.
      FOR g IN
        WITH want AS (
          SELECT DISTINCT acl.grantee FROM pg_class c, aclexplode(c.relacl) acl
          WHERE c.oid = r.relid AND acl.privilege_type = 'SELECT' AND acl.grantee <> c.relowner
          UNION
          SELECT DISTINCT acl.grantee FROM pg_attribute a, aclexplode(a.attacl) acl
          WHERE a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped AND acl.privilege_type = 'SELECT'
        ), views AS (
          SELECT v.oid, v.relowner, v.relacl FROM pg_class v
          WHERE v.oid IN (to_regclass(format('%I.%I', vs, r.relname)),
                          CASE WHEN only_name IS NOT NULL THEN to_regclass(format('%I.%I', vs, only_name)) END)
        ), have AS (
          SELECT v.oid AS view, acl.grantee FROM views v, aclexplode(v.relacl) acl
          WHERE acl.privilege_type = 'SELECT' AND acl.grantee <> v.relowner
        )
        SELECT 'GRANT' AS verb, v.oid AS view, w.grantee FROM views v CROSS JOIN want w
        WHERE NOT EXISTS (SELECT 1 FROM have h WHERE h.view = v.oid AND h.grantee = w.grantee) AND w.grantee <> v.relowner
        UNION ALL
        SELECT 'REVOKE', h.view, h.grantee FROM have h WHERE NOT EXISTS (SELECT 1 FROM want w WHERE w.grantee = h.grantee)
      LOOP
        EXECUTE format('%s SELECT ON %s %s %s', g.verb, g.view::regclass,
                       CASE g.verb WHEN 'GRANT' THEN 'TO' ELSE 'FROM' END,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident((SELECT rolname FROM pg_roles WHERE oid = g.grantee)) END);
      END LOOP;
      built := built || r.relid;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'pgredact: could not build the masking view of %: %', r.relid::regclass, SQLERRM;
      failed := failed || r.relid;
    END;
  END LOOP;
  -- Views of relations that are no longer protected (or no longer exist), and of those whose
  -- view could not be built: an old view may mask less than the policy now says. A failed one
  -- keeps its entry, without fingerprint, so pgredact refuses it.
  FOR r IN SELECT m.* FROM pgredact_admin.masking_views m WHERE m.relid <> ALL (built) LOOP
    IF r.only_view IS NOT NULL THEN PERFORM pgredact_admin.drop_view(r.view_schema, r.only_view); END IF;
    PERFORM pgredact_admin.drop_view(r.view_schema, r.view_name);
    IF r.relid = ANY (failed) THEN
      UPDATE pgredact_admin.masking_views SET fingerprint = NULL, body_md5 = NULL WHERE relid = r.relid;
    ELSE
      DELETE FROM pgredact_admin.masking_views WHERE relid = r.relid;
    END IF;
    RETURN NEXT format('masking view %I.%I dropped', r.view_schema, r.view_name);
  END LOOP;
END
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.sync() FROM PUBLIC;

-- CREATE OR REPLACE VIEW, or drop and create when the columns changed; owned by the control role.
CREATE OR REPLACE FUNCTION pgredact_admin.replace_view(vs name, vn name, body text, ctl name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  BEGIN
    EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS %s', vs, vn, body);
  EXCEPTION WHEN invalid_table_definition OR feature_not_supported OR datatype_mismatch OR wrong_object_type THEN
    PERFORM pgredact_admin.drop_view(vs, vn);
    EXECUTE format('CREATE VIEW %I.%I AS %s', vs, vn, body);
  END;
  EXECUTE format('ALTER VIEW %I.%I OWNER TO %I', vs, vn, ctl);
END
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.replace_view(name, name, text, name) FROM PUBLIC;

-- Drops a view, only in a masking schema.
CREATE OR REPLACE FUNCTION pgredact_admin.drop_view(vs name, vn name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF vs = 'pgredact_masked' OR vs LIKE 'pgredact\_masked\_%' THEN
    EXECUTE format('DROP VIEW IF EXISTS %I.%I', vs, vn);
  END IF;
END
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.drop_view(name, name) FROM PUBLIC;

-- Applies every fix PostgreSQL lets a superuser make as the object's owner (table and column
-- grants become grants without the PII columns; exposing views, rules, foreign tables, security
-- definer routines and large objects are revoked from masked roles), then rebuilds the masking
-- views. Returns what it did. Called by the DDL trigger, and by pgredact when its policy changes.
CREATE OR REPLACE FUNCTION pgredact_admin.enforce() RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  f record;
  g record;
  tok text := (SELECT token FROM pgredact_admin.secret);
  prev text := current_setting('pgredact.enforcing', true);
BEGIN
  IF (SELECT p.spec FROM pgredact.policy p WHERE p.id) IS NULL THEN RETURN; END IF;
  PERFORM pg_advisory_xact_lock(7320452);
  PERFORM set_config('pgredact.enforcing', tok, true);
  -- Under enforcement = "proxy" the DBA opted out: privileges stay as they are.
  IF (SELECT p.spec ->> 'enforcement' FROM pgredact.policy p WHERE p.id) IS DISTINCT FROM 'proxy' THEN
    FOR f IN SELECT DISTINCT v.fix FROM pgredact_admin.violations() v WHERE v.severity = 'fix' AND v.auto LOOP
      EXECUTE f.fix;
      RETURN NEXT f.fix;
    END LOOP;
    -- Converted grants reach the columns added since (those that are not PII).
    FOR g IN
      WITH RECURSIVE spec AS (SELECT (SELECT p.spec FROM pgredact.policy p WHERE p.id) AS j), @PROTECTED@,
      pii AS (SELECT p.relid, k.col FROM pmasks p, jsonb_object_keys(p.cols) k(col)),
      cg AS (SELECT c.*, CASE WHEN c.grantee = 'PUBLIC' THEN 0 ELSE r.oid END AS goid
             FROM pgredact_admin.converted_grants c LEFT JOIN pg_roles r ON r.rolname = c.grantee
             WHERE c.relid IN (SELECT relid FROM prot) AND (c.grantee = 'PUBLIC' OR r.oid IS NOT NULL))
      SELECT cg.relid, cg.grantee, cg.privilege, cg.grantable,
             string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) AS cols
      FROM cg JOIN pg_attribute a ON a.attrelid = cg.relid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE NOT EXISTS (SELECT 1 FROM pii WHERE pii.relid = cg.relid AND pii.col = a.attname)
        AND NOT EXISTS (SELECT 1 FROM aclexplode(a.attacl) x WHERE x.grantee = cg.goid AND x.privilege_type = cg.privilege)
      GROUP BY cg.relid, cg.grantee, cg.privilege, cg.grantable
    LOOP
      EXECUTE format('GRANT %s (%s) ON %s TO %s%s', g.privilege, g.cols, g.relid::regclass,
                     CASE WHEN g.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(g.grantee) END,
                     CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
      RETURN NEXT format('columns %s of %s granted %s to %s (its table-level grant was converted)', g.cols, g.relid::regclass, g.privilege, g.grantee);
    END LOOP;
  END IF;
  RETURN QUERY SELECT * FROM pgredact_admin.sync();
  PERFORM set_config('pgredact.enforcing', coalesce(prev, ''), true);
END
$f$;
REVOKE ALL ON FUNCTION pgredact_admin.enforce() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact_admin.enforce() TO @CTL@;

-- The DDL watch, at the end of every DDL command, in its transaction: counts it (the catalog
-- generation pgredact reads), enforces the wall on what it changed, and wakes pgredact.
CREATE OR REPLACE FUNCTION pgredact_admin.note_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  INSERT INTO pgredact.ddl_log (at) VALUES (now());
  -- Only commands that can change who reads what (a CREATE INDEX cannot).
  IF tg_tag IN ('GRANT', 'REVOKE', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
                'DROP TABLE', 'CREATE VIEW', 'ALTER VIEW', 'CREATE MATERIALIZED VIEW',
                'ALTER MATERIALIZED VIEW', 'CREATE FUNCTION', 'ALTER FUNCTION', 'CREATE PROCEDURE',
                'ALTER PROCEDURE', 'ALTER ROUTINE', 'CREATE RULE', 'CREATE FOREIGN TABLE',
                'ALTER FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA', 'ALTER DEFAULT PRIVILEGES',
                'ALTER LARGE OBJECT', 'ALTER SCHEMA', 'CREATE SCHEMA')
     AND current_setting('pgredact.enforcing', true) IS DISTINCT FROM (SELECT token FROM pgredact_admin.secret)
     AND EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c
                 WHERE c.schema_name IS NULL OR c.schema_name NOT LIKE 'pg\_temp\_%') THEN
    PERFORM pgredact_admin.enforce();
  END IF;
  PERFORM pg_notify('pgredact_ddl', '');
END
$f$;

-- Before ALTER TABLE or DROP TABLE: drops the masking views of the relations the command names
-- (found in its text; a name too many only costs a rebuild), so their columns can change; the end
-- of the command rebuilds them. A view another object depends on is left, and PostgreSQL reports
-- the dependency as it would for any view.
CREATE OR REPLACE FUNCTION pgredact_admin.before_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  r record;
  q text := lower(current_query());
BEGIN
  IF tg_tag NOT IN ('ALTER TABLE', 'DROP TABLE') THEN RETURN; END IF;
  PERFORM set_config('pgredact.enforcing', (SELECT token FROM pgredact_admin.secret), true);
  -- The relations named in the command, and their descendants (ALTER TABLE recurses to them).
  FOR r IN
    WITH RECURSIVE named AS (
      SELECT m.relid FROM pgredact_admin.masking_views m JOIN pg_class c ON c.oid = m.relid
      WHERE strpos(q, lower(c.relname)) > 0
      UNION
      SELECT i.inhrelid FROM named n JOIN pg_inherits i ON i.inhparent = n.relid
    )
    SELECT m.* FROM pgredact_admin.masking_views m WHERE m.relid IN (SELECT relid FROM named)
  LOOP
    BEGIN
      IF r.only_view IS NOT NULL THEN PERFORM pgredact_admin.drop_view(r.view_schema, r.only_view); END IF;
      PERFORM pgredact_admin.drop_view(r.view_schema, r.view_name);
      UPDATE pgredact_admin.masking_views SET body_md5 = NULL WHERE relid = r.relid;
    EXCEPTION WHEN dependent_objects_still_exist THEN
      NULL;
    END;
  END LOOP;
  PERFORM set_config('pgredact.enforcing', '', true);
END
$f$;

REVOKE ALL ON FUNCTION pgredact_admin.note_ddl(), pgredact_admin.before_ddl() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS @DDL_TRIGGER@;
CREATE EVENT TRIGGER @DDL_TRIGGER@ ON ddl_command_end EXECUTE FUNCTION pgredact_admin.note_ddl();
ALTER EVENT TRIGGER @DDL_TRIGGER@ ENABLE ALWAYS;
DROP EVENT TRIGGER IF EXISTS @DDL_TRIGGER@_start;
CREATE EVENT TRIGGER @DDL_TRIGGER@_start ON ddl_command_start EXECUTE FUNCTION pgredact_admin.before_ddl();
ALTER EVENT TRIGGER @DDL_TRIGGER@_start ENABLE ALWAYS;
-- Earlier versions: the watch function and the hash function callable by every role.
DROP FUNCTION IF EXISTS pgredact.note_ddl();
DROP FUNCTION IF EXISTS pgredact.mask_hash(text);
