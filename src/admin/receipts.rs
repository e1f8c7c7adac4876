//! `GET .../receipt`: the signed receipts of jobs and customers.

use super::*;

/// `GET /v1/jobs/{id}/receipt`: the signed receipt of a done forget job.
pub(super) async fn job_receipt(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let key = state.receipt_key()?;
    let id = job_id(&id)?;
    let policy = state.policy(q.database.as_deref())?;
    let session = state.connection(policy).await?;
    let receipt = job_receipt_doc(&session.client, id).await?;
    signed_response(&key, receipt)
}

/// `GET /v1/customers/{id}/receipt`: the receipt of the job that forgot this customer, with the
/// customer's keyed hash and the time the customer joined the forget list.
pub(super) async fn customer_receipt(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let key = state.receipt_key()?;
    let policy = state.policy(q.database.as_deref())?;
    let session = state.session(policy).await?;
    let canonical = canonical_id(&session, &id)?;
    let row = session
        .client
        .query_opt(
            "SELECT pg_catalog.encode(l.subject_hash, 'hex'), \
                    to_char(l.forgotten_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), l.job_id \
             FROM pgredact.forget_list l WHERE l.subject_hash = pg_catalog.decode(pgredact.hmac_hex($1), 'hex')",
            &[&canonical],
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, forget::db_error(&e)))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this customer is not on the forget list: no receipt".to_string(),
            )
        })?;
    let job: Option<i64> = row.get(2);
    let job = job.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this customer's forget list entry names no job: no receipt".to_string(),
        )
    })?;
    let mut receipt = job_receipt_doc(&session.client, job).await?;
    if let Value::Object(m) = &mut receipt {
        m.insert("kind".into(), json!("customer"));
        m.insert(
            "subject".into(),
            json!({
                "keyed_hash": row.get::<_, String>(0),
                "forgotten_at": row.get::<_, String>(1),
            }),
        );
    }
    signed_response(&key, receipt)
}

impl AdminState {
    pub(super) fn receipt_key(&self) -> Result<Arc<Vec<u8>>, ApiError> {
        self.receipt_key.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "receipts are signed with a key: set the environment variable {} ([admin] receipt_key_env)",
                    self.receipt_key_env
                ),
            )
        })
    }
}

/// The unsigned receipt of job `id`: 404 when there is none, 409 unless it is a done forget job.
pub(super) async fn job_receipt_doc(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<Value, ApiError> {
    let st = forget::jobs::status(client, id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    if st.kind != "forget" || st.state != forget::jobs::DONE {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} ({}) is {}: a receipt is issued for a forget job that ended done (verified)",
                st.kind, st.state
            ),
        ));
    }
    // Every table the job covered: those it changed and those verification re-queried.
    let mut tables = serde_json::Map::new();
    if let Some(Value::Object(left)) = st
        .verification
        .as_ref()
        .and_then(|v| v.get("rows_with_pii_left"))
    {
        for t in left.keys() {
            tables.insert(t.clone(), json!(0));
        }
    }
    for (t, n) in &st.rows_changed {
        tables.insert(t.clone(), n.clone());
    }
    let issued: String = client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
            &[],
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, forget::db_error(&e)))?
        .get(0);
    Ok(json!({
        "type": "pgredact.erasure_receipt",
        "version": 1,
        "kind": "job",
        "issued_at": issued,
        "database": st.database,
        "job_id": st.job_id,
        "external_id": st.external_id,
        "regulation": st.regulation,
        "requester": st.requester,
        "received_at": st.created_at,
        "deadline": st.deadline,
        "deadline_met": st.deadline_met,
        "pii_removed_at": st.finished_at,
        "customers": {
            "requested": st.ids_total,
            "anonymized_by_this_job": st.ids_forgotten,
            "already_forgotten": st.ids_already_forgotten,
            "without_rows": st.ids_unknown,
        },
        "rows_changed_per_table": tables,
        "verification": st.verification,
        "warnings": st.warnings,
        "suppression": "the customers' keyed hashes are on the forget list: later writes of their PII to these tables are blanked by triggers",
    }))
}

pub(super) fn signed_response(key: &[u8], receipt: Value) -> Result<Response, ApiError> {
    let (doc, sig) = receipt::signed(key, receipt)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut r = Json(doc).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&sig) {
        r.headers_mut().insert("x-pgredact-signature", v);
    }
    Ok(r)
}
