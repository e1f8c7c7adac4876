//! `POST /v1/customers/remove-pii`: parsing a request, the checks before a job, creating it.

use super::*;

pub(super) fn too_many(n: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "too many customer IDs: {n} in one request, the limit is {MAX_IDS}; split the request into several"
        ),
    )
}

#[derive(Deserialize, Default)]
pub(super) struct DbQuery {
    pub(super) database: Option<String>,
}

/// Query parameters of `POST /v1/customers/remove-pii` (a CSV body has no other place for them;
/// JSON members win over them).
#[derive(Deserialize, Default)]
pub(super) struct SubmitQuery {
    pub(super) database: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) regulation: Option<String>,
    pub(super) deadline: Option<String>,
    pub(super) callback_url: Option<String>,
}

/// A JSON member that must be a string when present.
pub(super) fn json_str(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("\"{key}\" must be a string"))),
    }
}

/// The IDs of a request, not yet validated against the subject types.
pub(super) enum RawIds {
    Json(Vec<csv::RawId>),
    Csv(Bytes),
}

/// A request as parsed from its query, headers and body (JSON members win over the query).
pub(super) struct Submission {
    pub(super) database: Option<String>,
    pub(super) fields: requests::Fields,
    pub(super) callback_url: Option<String>,
    pub(super) requester: Option<String>,
    pub(super) raw: RawIds,
}

pub(super) async fn remove_pii(
    State(state): State<AdminState>,
    Query(q): Query<SubmitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let Submission {
        database,
        fields,
        callback_url,
        requester,
        raw,
    } = parse_submission(q, &headers, body)?;
    let mut info = requests::request_info(&fields)?;
    if let Some(url) = callback_url {
        check_callback_url(&state, &url)?;
        info.callback_url = Some(url);
    }
    let policy = state.policy(database.as_deref())?;
    let mut session = state.session(policy).await?;
    let list = checked_ids(&session, raw)?;
    let origin = Origin {
        requester: requester
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "api".to_string()),
        source: "api".to_string(),
    };
    check_deadline(&session, &info).await?;
    // A repeated request id returns its job, before anything is planned.
    if let Some(answer) = repeated_request(&session, &mut info, &list.ids).await? {
        return Ok(answer);
    }
    // Planned now: a blocked request is answered here, and no job holds its IDs.
    let plan = session
        .plan(&list.ids)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if plan.has_blockers() {
        return Ok(blocked(&plan));
    }
    let job = match session
        .submit_request(&origin, &list, state.batch_size, Some(&plan), &info)
        .await
        .map_err(internal_error)?
    {
        forget::jobs::Created::New(id) => id,
        forget::jobs::Created::Existing(id, hash) => {
            return existing_job(&session, &info, id, hash).await
        }
    };
    state.wake.notify_one();
    let db = session.spec.database.clone();
    let st = session.status(job).await.map_err(internal_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "job_id": job,
            "database": db,
            "state": "queued",
            "ids": list.ids.len(),
            "duplicates": list.duplicates,
            "external_id": info.external_id,
            "regulation": info.regulation,
            "deadline": st.and_then(|s| s.deadline),
            "callback_url": info.callback_url,
            "status_url": format!("/v1/jobs/{job}?database={db}"),
        })),
    )
        .into_response())
}

/// A request's IDs, checked against the subject type: at most [`MAX_IDS`] (duplicates
/// included), and at least one.
pub(super) fn checked_ids(session: &Session, raw: RawIds) -> Result<csv::IdList, ApiError> {
    let list = match raw {
        RawIds::Json(ids) => csv::from_raw(&ids, session.spec.id_kind)
            .map_err(|e| ApiError::bad(format!("{e}; nothing was changed")))?,
        RawIds::Csv(bytes) => session
            .parse_csv(&bytes)
            .map_err(|e| ApiError::bad(format!("CSV body: {e}; nothing was changed")))?,
    };
    let total = list.ids.len() + list.duplicates;
    if total > MAX_IDS {
        return Err(too_many(total));
    }
    if list.ids.is_empty() {
        return Err(ApiError::bad("no customer IDs in the request".to_string()));
    }
    Ok(list)
}

/// A 500 for a failure of the control session.
pub(super) fn internal_error(e: forget::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The answer to a request body that could not be read.
pub(super) fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes; the limit is {MAX_IDS} customer IDs a request"),
        )
    } else {
        ApiError::new(e.status(), format!("cannot read the request body: {e}"))
    }
}

/// Reads a request's fields and IDs from its query, headers and body (CSV or JSON, by content
/// type).
pub(super) fn parse_submission(
    q: SubmitQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Submission, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let mut sub = Submission {
        database: q.database,
        fields: requests::Fields {
            external_id: q.external_id,
            regulation: q.regulation,
            deadline: q.deadline,
        },
        callback_url: q.callback_url,
        requester: headers
            .get("x-requester")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        raw: RawIds::Json(Vec::new()),
    };
    sub.raw = if ctype.starts_with("text/csv") || ctype.starts_with("text/plain") {
        let fields = csv::csv_fields(&body)
            .map_err(|e| ApiError::bad(format!("CSV body: {e}; nothing was changed")))?;
        // A header line may be among the fields: one more than the limit is decided after parsing.
        if fields.len() > MAX_IDS + 1 {
            return Err(too_many(fields.len()));
        }
        RawIds::Csv(body)
    } else if ctype.starts_with("application/json") {
        RawIds::Json(parse_json_body(&body, &mut sub)?)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {ctype:?}: use application/json or text/csv"),
        ));
    };
    Ok(sub)
}

/// Reads a JSON request body: its members override the fields of `sub`; returns its
/// `customer_ids`.
pub(super) fn parse_json_body(
    body: &[u8],
    sub: &mut Submission,
) -> Result<Vec<csv::RawId>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::bad("JSON body must be an object: {\"customer_ids\": [...]}".to_string())
    })?;
    if let Some(d) = obj.get("database") {
        sub.database = Some(
            d.as_str()
                .ok_or_else(|| ApiError::bad("\"database\" must be a string".to_string()))?
                .to_string(),
        );
    }
    for (key, slot) in [
        ("external_id", &mut sub.fields.external_id),
        ("regulation", &mut sub.fields.regulation),
        ("deadline", &mut sub.fields.deadline),
    ] {
        if let Some(v) = json_str(obj, key)? {
            *slot = Some(v);
        }
    }
    if let Some(u) = json_str(obj, "callback_url")? {
        sub.callback_url = Some(u);
    }
    if let Some(r) = obj.get("requester") {
        sub.requester = Some(
            r.as_str()
                .ok_or_else(|| ApiError::bad("\"requester\" must be a string".to_string()))?
                .to_string(),
        );
    }
    let arr = obj
        .get("customer_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::bad("missing \"customer_ids\": an array of integers or strings".to_string())
        })?;
    if arr.len() > MAX_IDS {
        return Err(too_many(arr.len()));
    }
    let mut ids = Vec::with_capacity(arr.len());
    for (i, x) in arr.iter().enumerate() {
        ids.push(match x {
            Value::Number(n) => csv::RawId::Int(n.as_i64().ok_or_else(|| {
                ApiError::bad(format!("customer_ids[{i}]: {n} is not an integer ID"))
            })?),
            Value::String(s) => csv::RawId::Text(s.clone()),
            other => {
                return Err(ApiError::bad(format!(
                    "customer_ids[{i}]: expected an integer or a string, got {other}"
                )))
            }
        });
    }
    Ok(ids)
}

/// Checks a request's callback URL, and that callbacks can be signed.
pub(super) fn check_callback_url(state: &AdminState, url: &str) -> Result<(), ApiError> {
    callback::parse_url(url).map_err(|e| ApiError::bad(e.to_string()))?;
    if state.callback.is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "callbacks are signed with a key: set the environment variable {} ([admin] callback_key_env) \
                 or the receipt key ({}); nothing was created",
                state.callback_key_env, state.receipt_key_env
            ),
        ));
    }
    Ok(())
}

/// Checks a request's deadline literal with PostgreSQL.
pub(super) async fn check_deadline(
    session: &Session,
    info: &forget::jobs::RequestInfo,
) -> Result<(), ApiError> {
    if let Some(d) = &info.deadline {
        if let Err(e) = session
            .client
            .query_one("SELECT CAST($1 AS text)::timestamptz", &[d])
            .await
        {
            return Err(ApiError::bad(format!(
                "\"deadline\" {d:?}: {}",
                forget::db_error(&e)
            )));
        }
    }
    Ok(())
}

/// For a request with an `external_id`: records the hash of its IDs in `info` and, when a job
/// has that request id already, the answer for it.
pub(super) async fn repeated_request(
    session: &Session,
    info: &mut forget::jobs::RequestInfo,
    ids: &[String],
) -> Result<Option<Response>, ApiError> {
    let Some(ext) = &info.external_id else {
        return Ok(None);
    };
    let hash: String = session
        .client
        .query_one(
            "SELECT pgredact.hmac_hex(pg_catalog.string_agg(v, pg_catalog.chr(10) ORDER BY v COLLATE \"C\")) \
             FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) v",
            &[&ids],
        )
        .await
        .map_err(|e| internal_error(e.into()))?
        .get(0);
    let existing = session
        .client
        .query_opt(
            "SELECT id, request_hash FROM pgredact.forget_jobs WHERE external_id = $1",
            &[ext],
        )
        .await
        .map_err(|e| internal_error(e.into()))?;
    info.request_hash = Some(hash);
    match existing {
        Some(row) => Ok(Some(
            existing_job(session, info, row.get(0), row.get(1)).await?,
        )),
        None => Ok(None),
    }
}

/// The answer to a request whose `external_id` names a job already: 200 with that job when the
/// IDs are the same, 409 when they differ (nothing is created either way).
pub(super) async fn existing_job(
    session: &Session,
    info: &forget::jobs::RequestInfo,
    id: i64,
    hash: Option<String>,
) -> Result<Response, ApiError> {
    let ext = info.external_id.as_deref().unwrap_or_default();
    if hash != info.request_hash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "external_id {ext:?} already names job {id}, with other customer IDs: nothing was created; \
                 use a new external_id for a new request"
            ),
        ));
    }
    let st = session
        .status(id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("job {id} vanished")))?;
    let db = session.spec.database.clone();
    Ok((
        StatusCode::OK,
        Json(json!({
            "job_id": id,
            "database": db,
            "state": st.state,
            "ids": st.ids_total,
            "duplicates": st.ids_duplicate,
            "external_id": st.external_id,
            "regulation": st.regulation,
            "deadline": st.deadline,
            "existing": true,
            "status_url": format!("/v1/jobs/{id}?database={db}"),
        })),
    )
        .into_response())
}

/// 422: the plan is blocked; nothing was changed and no job was created.
pub(super) fn blocked(plan: &forget::Plan) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": format!(
                "the request is blocked: nothing was changed and no job was created; fix the blockers and send it again: {}",
                plan.blockers.join("; ")
            ),
            "blockers": plan.blockers,
            "plan": plan,
        })),
    )
        .into_response()
}
