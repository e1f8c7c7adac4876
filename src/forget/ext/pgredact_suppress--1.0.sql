-- pgredact_suppress 1.0: see pgredact_suppress.c.
\echo Use "CREATE EXTENSION pgredact_suppress" to load this file. \quit

-- BEFORE ROW trigger of each policy table with a subject: answers "not on the forget list"
-- from a per-backend cache and calls pgredact's PL/pgSQL suppression function only for rows
-- whose customer may be listed.
CREATE FUNCTION @extschema@.suppress() RETURNS trigger
AS 'MODULE_PATHNAME', 'pgredact_suppress_row' LANGUAGE C;
-- Statement trigger of pgredact.forget_list and pgredact.hash_key: every change invalidates
-- the caches of all sessions when it commits.
CREATE FUNCTION @extschema@.list_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'pgredact_suppress_list_changed' LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@.suppress() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.list_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.suppress() TO @extowner@;
GRANT EXECUTE ON FUNCTION @extschema@.list_changed() TO @extowner@;
