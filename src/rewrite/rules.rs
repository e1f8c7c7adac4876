//! Fixed lists: built-in functions a masked session may not call, settings it may change,
//! keyword-functions that are not in pg_proc.

/// Built-in functions that run SQL given as text, read whole relations by name, read files or
/// large objects, or change settings: refused for masked sessions.
pub const DENIED_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "schema_to_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "database_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "set_config",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalmapdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir",
    "lo_import",
    "lo_export",
    "lo_get",
    "lo_put",
    "lo_open",
    "lo_close",
    "loread",
    "lowrite",
    "lo_from_bytea",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "lo_truncate",
    "lo_truncate64",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_mcv_list_items",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_fetch",
    "dblink_send_query",
    "dblink_get_result",
    "pg_stat_statements",
    "xpath_table",
    "crosstab",
    "connectby",
];

/// SQL keywords that look like function calls but are not in pg_proc.
pub const KEYWORD_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "system_user",
    "row",
    "array",
    "grouping",
    "xmlconcat",
    "xmlelement",
    "xmlforest",
    "xmlpi",
    "xmlroot",
    "xmlparse",
    "xmlserialize",
    "xmlexists",
    "normalize",
    "collation",
];

pub fn is_system_schema(s: &str) -> bool {
    s == "pg_catalog" || s == "information_schema"
}

/// Settings a masked session may change with SET/RESET. Identity, search_path, encoding and
/// quoting rules stay fixed because the rewriter's reading of SQL depends on them.
pub fn setting_allowed(name: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "application_name",
        "client_min_messages",
        "datestyle",
        "intervalstyle",
        "timezone",
        "time zone",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "extra_float_digits",
        "bytea_output",
        "work_mem",
        "maintenance_work_mem",
        "temp_buffers",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "default_transaction_deferrable",
        "transaction_isolation",
        "transaction_read_only",
        "jit",
        "plan_cache_mode",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "xmlbinary",
        "xmloption",
        "default_text_search_config",
        "synchronous_commit",
        "escape_string_warning",
        // pg_dump's: heap order from block 0, quoting of identifiers, and row_security = off,
        // which makes a query fail where row-level security would filter (it never bypasses it).
        "synchronize_seqscans",
        "quote_all_identifiers",
        "row_security",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
    ];
    // Planner switches and costs (enable_*, *_page_cost, cpu_*, join order limits...) are not
    // here: with them a masked session could force a scan of an index over a PII column and read
    // rows in the order of its raw values.
    let n = name.to_ascii_lowercase();
    ALLOWED.contains(&n.as_str())
}

/// Settings that are allowed only with one value because the rewriter depends on it.
pub fn pinned_setting(name: &str) -> Option<&'static [&'static str]> {
    match name.to_ascii_lowercase().as_str() {
        "client_encoding" | "names" => Some(&["utf8", "unicode", "utf-8"]),
        "standard_conforming_strings" => Some(&["on", "true"]),
        _ => None,
    }
}
