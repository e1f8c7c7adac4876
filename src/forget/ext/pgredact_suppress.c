/*
 * pgredact_suppress: the compiled front of pgredact's forget-suppression triggers.
 *
 * Without it, every policy table with a subject has a BEFORE ROW trigger calling a PL/pgSQL
 * function that looks the row's customer up in pgredact.forget_list with one SPI query per
 * row (about 8 us a row, five times the cost of calling a PL/pgSQL function that does
 * nothing). With it, the trigger calls pgredact_suppress.suppress(), which:
 *
 *   1. takes the row's subject, converts it to text exactly as the PL/pgSQL function does
 *      (the CAST to text the SQL would use, lower() for case-insensitive IDs);
 *   2. looks it up in a per-backend cache of the forget list: a sorted array of 64-bit
 *      fingerprints (raw IDs: a hash of the ID text; IDs that are PII: the first 8 bytes of the
 *      keyed hash, computed here from pgredact.hash_key's pads);
 *   3. returns the row untouched when the fingerprint is absent, and otherwise calls the
 *      PL/pgSQL function (named by the trigger's first argument), which makes the exact check
 *      and resets the PII. A fingerprint collision only costs that call.
 *
 * The cache never says "not listed" for a listed customer:
 *   - it is loaded with a fresh snapshot (the latest committed list, plus the transaction's own
 *     changes), as the control role (the list's owner), with search_path = pg_catalog;
 *   - a statement trigger on pgredact.forget_list and pgredact.hash_key (list_changed below)
 *     sends a relcache invalidation of the table with every change; PostgreSQL delivers it to
 *     every backend when the change commits (and undoes it locally on abort), and each row
 *     processes pending invalidations before it trusts the cache, so a row written after the
 *     commit sees the new list, as the PL/pgSQL lookup (a new snapshot per row) did;
 *   - when that statement trigger is missing or not ENABLE ALWAYS, the cache is not used and
 *     every row goes to the PL/pgSQL function (pgredact check reports it, the next forget job
 *     or admin server start reinstalls it);
 *   - any surprise (a subject type without a cast to text, a cast with extra arguments) also
 *     sends every row to the PL/pgSQL function.
 *
 * Trust: the extension is `trusted`, so the control role installs it. Both functions are
 * trigger functions (PostgreSQL refuses to call them from SQL); EXECUTE is granted only to the
 * role that installs the extension; and the row function refuses to run unless that role (or a
 * superuser) owns pgredact.forget_list and the PL/pgSQL function it calls. So nobody can use it
 * to reach the list or pgredact's functions without already owning them.
 *
 * Memory: 8 bytes per forget-list entry (16 where raw IDs are kept) per backend that writes
 * to a policy table, freed and reloaded after each change of the list.
 */
#include "postgres.h"

/* SHA-256 with a copyable context (the HMAC pads are absorbed once per load, not per row);
 * pg_config.h sets OPENSSL_API_COMPAT, so these calls are not flagged deprecated. */
#include <openssl/sha.h>

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/parse_coerce.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(pgredact_suppress_row);
PG_FUNCTION_INFO_V1(pgredact_suppress_list_changed);

#define CONTROL_SCHEMA "pgredact"
#define SHA256_BLOCK 64

/* The per-backend cache of the forget list. */
typedef struct ListCache
{
	bool		valid;			/* loaded, and no invalidation since */
	bool		usable;			/* the invalidation trigger is in place */
	Oid			list_relid;		/* pgredact.forget_list */
	Oid			key_relid;		/* pgredact.hash_key */
	Oid			owner;			/* owner of pgredact.forget_list */
	uint64		generation;		/* bumped by every invalidation */
	uint64	   *raw;			/* sorted fingerprints of subject_id */
	int			nraw;
	uint64	   *keyed;			/* sorted first 8 bytes of subject_hash */
	int			nkeyed;
	bool		have_key;
	SHA256_CTX	inner;			/* SHA-256 state after the key's inner pad */
	SHA256_CTX	outer;			/* ... and after its outer pad */
} ListCache;

static ListCache cache;
static bool callback_registered = false;

/* What one trigger needs, set up once per statement (kept in the FmgrInfo's fn_extra). */
typedef struct RowSetup
{
	AttrNumber	attnum;			/* the subject column in this relation */
	bool		keyed;			/* look up by keyed hash (IDs that are PII) */
	bool		fold_case;		/* lower() the ID text */
	char	   *token_prefix;	/* rows whose ID starts with it always go to PL/pgSQL */
	int			token_prefix_len;
	CoercionPathType path;		/* how the subject becomes text */
	FmgrInfo	cast;			/* cast function or output function */
	Oid			collation;
	bool		usable;			/* the subject can be converted here */
	FmgrInfo	target;			/* the PL/pgSQL suppression function */
} RowSetup;

static void
list_invalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cache.list_relid || relid == cache.key_relid)
	{
		cache.valid = false;
		cache.generation++;
	}
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

static bool
contains(const uint64 *set, int n, uint64 v)
{
	return n > 0 && bsearch(&v, set, n, sizeof(uint64), cmp_u64) != NULL;
}

static uint64
first8(const uint8 *b)
{
	uint64		v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | b[i];
	return v;
}

/* The first 8 bytes of HMAC-SHA256(key, utf8(id)), as pgredact.hmac_hex computes it. */
static uint64
keyed_fingerprint(text *id)
{
	int			len = VARSIZE_ANY_EXHDR(id);
	char	   *utf8 = pg_server_to_any(VARDATA_ANY(id), len, PG_UTF8);
	size_t		ulen = utf8 == VARDATA_ANY(id) ? (size_t) len : strlen(utf8);
	uint8		inner[SHA256_DIGEST_LENGTH];
	uint8		outer[SHA256_DIGEST_LENGTH];
	SHA256_CTX	c = cache.inner;

	SHA256_Update(&c, utf8, ulen);
	SHA256_Final(inner, &c);
	c = cache.outer;
	SHA256_Update(&c, inner, sizeof(inner));
	SHA256_Final(outer, &c);
	return first8(outer);
}

static uint64
raw_fingerprint(const char *s, int len)
{
	return hash_bytes_extended((const unsigned char *) s, len, 0);
}

/* Runs one query of the load, returning its tuples (SPI_tuptable). */
static void
load_query(const char *sql, Snapshot snap)
{
	SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);

	if (plan == NULL)
		elog(ERROR, "pgredact_suppress: preparing \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (SPI_execute_snapshot(plan, NULL, NULL, snap, InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "pgredact_suppress: running \"%s\" failed", sql);
	SPI_freeplan(plan);
}

static uint64 *
collect(int *n, bool raw)
{
	uint64	   *out;
	int			count = 0;

	out = MemoryContextAlloc(TopMemoryContext, sizeof(uint64) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		if (isnull)
			continue;
		if (raw)
		{
			text	   *t = DatumGetTextPP(d);

			out[count++] = raw_fingerprint(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
		else
		{
			bytea	   *b = DatumGetByteaPP(d);

			if (VARSIZE_ANY_EXHDR(b) < 8)
				continue;
			out[count++] = first8((const uint8 *) VARDATA_ANY(b));
		}
	}
	qsort(out, count, sizeof(uint64), cmp_u64);
	*n = count;
	return out;
}

/* Loads the list (as its owner, with search_path = pg_catalog and a fresh snapshot). */
static void
load_cache_as_owner(void)
{
	Snapshot	snap;
	int			nest;
	bool		isnull;
	Oid			extowner;

	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "pgredact_suppress: SPI_connect failed");
	snap = RegisterSnapshot(GetLatestSnapshot());

	load_query("SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t "
			   "WHERE t.tgfoid OPERATOR(pg_catalog.=) 'pgredact_suppress.list_changed()'::pg_catalog.regprocedure "
			   "AND t.tgenabled OPERATOR(pg_catalog.=) 'A' "
			   "AND t.tgrelid OPERATOR(pg_catalog.=) ANY (ARRAY['pgredact.forget_list'::pg_catalog.regclass, "
			   "'pgredact.hash_key'::pg_catalog.regclass])", snap);
	cache.usable = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) == 2;

	/* The extension must belong to the list's owner or a superuser. */
	load_query("SELECT e.extowner FROM pg_catalog.pg_extension e "
			   "WHERE e.extname OPERATOR(pg_catalog.=) 'pgredact_suppress'", snap);
	if (SPI_processed != 1)
		elog(ERROR, "pgredact_suppress: the extension is not installed in this database");
	extowner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (extowner != cache.owner && !superuser_arg(extowner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("pgredact_suppress belongs to role \"%s\", not to the owner of pgredact.forget_list",
						GetUserNameFromId(extowner, false)),
				 errhint("DROP EXTENSION pgredact_suppress CASCADE; pgredact's control role installs it again.")));

	if (cache.usable)
	{
		load_query("SELECT f.subject_id FROM pgredact.forget_list f WHERE f.subject_id IS NOT NULL", snap);
		cache.raw = collect(&cache.nraw, true);
		load_query("SELECT pg_catalog.substr(f.subject_hash, 1, 8) FROM pgredact.forget_list f", snap);
		cache.keyed = collect(&cache.nkeyed, false);
		load_query("SELECT k.ipad, k.opad FROM pgredact.hash_key k", snap);
		cache.have_key = false;
		if (SPI_processed == 1)
		{
			bool		n1,
						n2;
			bytea	   *ipad = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &n1));
			bytea	   *opad = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &n2));

			if (!n1 && !n2 && VARSIZE_ANY_EXHDR(ipad) == SHA256_BLOCK && VARSIZE_ANY_EXHDR(opad) == SHA256_BLOCK)
			{
				SHA256_Init(&cache.inner);
				SHA256_Update(&cache.inner, VARDATA_ANY(ipad), SHA256_BLOCK);
				SHA256_Init(&cache.outer);
				SHA256_Update(&cache.outer, VARDATA_ANY(opad), SHA256_BLOCK);
				cache.have_key = true;
			}
		}
	}
	UnregisterSnapshot(snap);
	SPI_finish();
	AtEOXact_GUC(true, nest);
}

/* Makes the cache current: pending invalidations first, then a reload if one arrived. */
static void
refresh_cache(void)
{
	Oid			save_userid;
	int			save_sec;
	Oid			nsp;
	uint64		generation;

	AcceptInvalidationMessages();
	if (cache.valid)
		return;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(list_invalidated, (Datum) 0);
		callback_registered = true;
	}
	if (cache.raw)
		pfree(cache.raw);
	if (cache.keyed)
		pfree(cache.keyed);
	cache.raw = cache.keyed = NULL;
	cache.nraw = cache.nkeyed = 0;
	cache.usable = false;
	cache.have_key = false;

	nsp = get_namespace_oid(CONTROL_SCHEMA, true);
	cache.list_relid = OidIsValid(nsp) ? get_relname_relid("forget_list", nsp) : InvalidOid;
	cache.key_relid = OidIsValid(nsp) ? get_relname_relid("hash_key", nsp) : InvalidOid;
	if (!OidIsValid(cache.list_relid) || !OidIsValid(cache.key_relid))
	{
		/*
		 * No list (dropped): every row goes to the PL/pgSQL function, and the next row looks
		 * again (an invalidation of a table created later would not match list_relid).
		 */
		return;
	}
	{
		HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(cache.list_relid));

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "pgredact_suppress: cache lookup failed for relation %u", cache.list_relid);
		cache.owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);
	}
	generation = cache.generation;
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(cache.owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		load_cache_as_owner();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	/* An invalidation that arrived while loading: use what was read for this row only. */
	cache.valid = (generation == cache.generation);
}

static RowSetup *
setup_row(FunctionCallInfo fcinfo, TriggerData *td)
{
	Trigger    *tg = td->tg_trigger;
	Relation	rel = td->tg_relation;
	RowSetup   *st;
	MemoryContext cxt = fcinfo->flinfo->fn_mcxt;
	Oid			nsp,
				fn,
				typid,
				castfn = InvalidOid;
	HeapTuple	tup;
	Form_pg_proc proc;
	Form_pg_attribute att;

	if (tg->tgnargs != 5)
		elog(ERROR, "pgredact_suppress: trigger %s has %d arguments, expected 5", tg->tgname, tg->tgnargs);
	st = MemoryContextAllocZero(cxt, sizeof(RowSetup));

	/* The PL/pgSQL function: pgredact.<arg 0>(), owned by the list's owner. */
	nsp = get_namespace_oid(CONTROL_SCHEMA, false);
	fn = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum(tg->tgargs[0]),
						 PointerGetDatum(buildoidvector(NULL, 0)), ObjectIdGetDatum(nsp));
	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("pgredact_suppress: function %s.%s() does not exist", CONTROL_SCHEMA, tg->tgargs[0]),
				 errhint("The next forget job or admin server start reinstalls pgredact's suppression.")));
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "pgredact_suppress: cache lookup failed for function %u", fn);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	{
		Oid			owner = proc->proowner;
		Oid			rettype = proc->prorettype;
		Oid			listowner;
		Oid			listrel = get_relname_relid("forget_list", nsp);
		HeapTuple	ctup;

		ReleaseSysCache(tup);
		if (!OidIsValid(listrel))
			elog(ERROR, "pgredact_suppress: pgredact.forget_list does not exist");
		ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(listrel));
		if (!HeapTupleIsValid(ctup))
			elog(ERROR, "pgredact_suppress: cache lookup failed for relation %u", listrel);
		listowner = ((Form_pg_class) GETSTRUCT(ctup))->relowner;
		ReleaseSysCache(ctup);
		if (rettype != TRIGGEROID || owner != listowner)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("pgredact_suppress: %s.%s() is not a trigger function of the owner of pgredact.forget_list",
							CONTROL_SCHEMA, tg->tgargs[0])));
	}
	fmgr_info_cxt(fn, &st->target, cxt);

	st->attnum = get_attnum(RelationGetRelid(rel), tg->tgargs[1]);
	if (st->attnum == InvalidAttrNumber || st->attnum < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("pgredact_suppress: column \"%s\" of %s does not exist", tg->tgargs[1], RelationGetRelationName(rel))));
	if (strcmp(tg->tgargs[2], "keyed") == 0)
		st->keyed = true;
	else if (strcmp(tg->tgargs[2], "raw") != 0)
		elog(ERROR, "pgredact_suppress: unknown lookup \"%s\"", tg->tgargs[2]);
	st->fold_case = strcmp(tg->tgargs[3], "fold") == 0;
	st->token_prefix = MemoryContextStrdup(cxt, tg->tgargs[4]);
	st->token_prefix_len = strlen(st->token_prefix);

	/* How CAST(subject AS text) converts it. */
	att = TupleDescAttr(RelationGetDescr(rel), st->attnum - 1);
	typid = att->atttypid;
	st->collation = OidIsValid(att->attcollation) ? att->attcollation : DEFAULT_COLLATION_OID;
	st->path = find_coercion_pathway(TEXTOID, typid, COERCION_EXPLICIT, &castfn);
	st->usable = true;
	switch (st->path)
	{
		case COERCION_PATH_RELABELTYPE:
			break;
		case COERCION_PATH_FUNC:
			if (get_func_nargs(castfn) != 1)
				st->usable = false;
			else
				fmgr_info_cxt(castfn, &st->cast, cxt);
			break;
		case COERCION_PATH_COERCEVIAIO:
			{
				Oid			out;
				bool		varlena;

				getTypeOutputInfo(getBaseType(typid), &out, &varlena);
				fmgr_info_cxt(out, &st->cast, cxt);
				break;
			}
		default:
			st->usable = false;
	}
	fcinfo->flinfo->fn_extra = st;
	return st;
}

static text *
subject_text(RowSetup *st, Datum v)
{
	text	   *t;

	switch (st->path)
	{
		case COERCION_PATH_RELABELTYPE:
			t = DatumGetTextPP(v);
			break;
		case COERCION_PATH_FUNC:
			t = DatumGetTextPP(FunctionCall1Coll(&st->cast, st->collation, v));
			break;
		default:
			t = cstring_to_text(OutputFunctionCall(&st->cast, v));
	}
	if (st->fold_case)
		t = DatumGetTextPP(DirectFunctionCall1Coll(lower, st->collation, PointerGetDatum(t)));
	return t;
}

static Datum
call_target(FunctionCallInfo fcinfo, RowSetup *st)
{
	LOCAL_FCINFO(inner, 0);
	Datum		result;

	InitFunctionCallInfoData(*inner, &st->target, 0, InvalidOid, fcinfo->context, NULL);
	result = FunctionCallInvoke(inner);
	fcinfo->isnull = inner->isnull;
	return result;
}

Datum
pgredact_suppress_row(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	RowSetup   *st;
	HeapTuple	row;
	Datum		v;
	bool		isnull;
	text	   *id;
	bool		listed;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "pgredact_suppress.suppress() must be called as a trigger");
	if (!TRIGGER_FIRED_BEFORE(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)))
		elog(ERROR, "pgredact_suppress.suppress() must be a BEFORE INSERT OR UPDATE row trigger");
	row = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;

	st = (RowSetup *) fcinfo->flinfo->fn_extra;
	if (st == NULL)
		st = setup_row(fcinfo, td);

	v = heap_getattr(row, st->attnum, RelationGetDescr(td->tg_relation), &isnull);
	if (isnull)
		return PointerGetDatum(row);	/* as the PL/pgSQL function: no subject, no lookup */
	if (!st->usable)
		return call_target(fcinfo, st);
	id = subject_text(st, v);
	if (st->token_prefix_len > 0 && VARSIZE_ANY_EXHDR(id) >= st->token_prefix_len &&
		memcmp(VARDATA_ANY(id), st->token_prefix, st->token_prefix_len) == 0)
		return call_target(fcinfo, st);

	refresh_cache();
	if (!cache.usable || (st->keyed && !cache.have_key))
		return call_target(fcinfo, st);
	if (st->keyed)
		listed = contains(cache.keyed, cache.nkeyed, keyed_fingerprint(id));
	else
		listed = contains(cache.raw, cache.nraw, raw_fingerprint(VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id)));
	if (listed)
		return call_target(fcinfo, st);
	return PointerGetDatum(row);
}

Datum
pgredact_suppress_list_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "pgredact_suppress.list_changed() must be called as a trigger");
	/* Every session's cache drops when this transaction commits (and this one's at once). */
	CacheInvalidateRelcache(td->tg_relation);
	return PointerGetDatum(NULL);
}
