//! Creating links: one (`POST /api/v1/links`, with an alias or a key from
//! the pool, replayed safely under an `Idempotency-Key`) or a batch, each
//! item answered in order.

use edgelink_core::link::now;
use edgelink_core::net::{json as json_response, Body};

use super::*;

impl Api {
    /// Checks a creation request; the link it describes, minus its code.
    pub(super) fn validate(
        &self,
        req: &CreateLink,
        created_at: OffsetDateTime,
    ) -> Result<Link, ApiError> {
        let target = self.policy.target(&req.url)?;
        let expires_at =
            self.policy
                .expiry(req.expires_at.as_deref(), req.ttl_seconds, created_at)?;
        let redirect = self.policy.redirect(req.redirect)?;
        if let Some(alias) = &req.alias {
            self.policy.alias(alias)?;
        }
        Ok(Link {
            code: String::new(),
            target,
            redirect,
            created_at,
            expires_at,
            disabled: false,
        })
    }

    pub(super) async fn create(
        &self,
        req: CreateLink,
        idem: Option<Idem<'_>>,
    ) -> Result<Response<Body>, ApiError> {
        let Link {
            target,
            redirect,
            created_at,
            expires_at,
            ..
        } = self.validate(&req, now())?;
        let build = |code: &str| Link {
            code: code.to_owned(),
            target: target.clone(),
            redirect,
            created_at,
            expires_at,
            disabled: false,
        };
        for _ in 0..KEY_ATTEMPTS {
            let (code, from_pool) = match &req.alias {
                Some(a) => (a.clone(), false),
                None => (self.key().await?, true),
            };
            // An Idempotency-Key is bound to its code before the link is
            // written, so concurrent retries agree on one link.
            if let Some(idem) = &idem {
                if let Some(earlier) = self
                    .store
                    .bind(idem.api_key_id, idem.key, idem.request, &code)
                    .await?
                {
                    if from_pool {
                        self.leaser.give_back(code);
                    }
                    if earlier.request != idem.request {
                        return Err(ApiError::invalid(
                            "idempotency_key_reused",
                            "this Idempotency-Key was used for a different request",
                        ));
                    }
                    return self.replay(build(&earlier.code), earlier.age_secs).await;
                }
            }
            let link = build(&code);
            let report = match self.links.insert_links(std::slice::from_ref(&link)).await {
                Ok(r) => r,
                Err(e) => {
                    self.undo(idem.as_ref(), code, from_pool).await;
                    return Err(e.into());
                }
            };
            if report.inserted == 1 {
                self.write_through(&link).await;
                return Ok(self.created(&link));
            }
            if let Some(idem) = &idem {
                let _ = self.store.unbind(idem.api_key_id, idem.key).await;
            }
            if !from_pool {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "alias_taken",
                    format!("{code:?} is taken"),
                ));
            }
            // A pool key already spelled by an alias or an import: it stays
            // used; take the next one.
            tracing::info!(code, "pool key already taken; using the next one");
        }
        Err(ApiError::unavailable(
            "could not find a free key; try again",
        ))
    }

    /// The link an earlier request with the same Idempotency-Key created.
    /// While that request may still be running it is the only one that
    /// writes the link (a retry that wrote it too would make the first one
    /// see its code taken and move on to another: two links for one key),
    /// so a retry gets 503 until the link is there. Only a binding older
    /// than [`ORPHANED_AFTER_SECS`], whose request must have died between
    /// binding and writing, is completed by the retry.
    pub(super) async fn replay(
        &self,
        wanted: Link,
        age_secs: i64,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(link) = self.links.find(&wanted.code).await? {
            return Ok(self.created(&link));
        }
        if age_secs < ORPHANED_AFTER_SECS {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_progress",
                    "an earlier request with this Idempotency-Key is still being processed",
                )
            });
        }
        let report = self
            .links
            .insert_links(std::slice::from_ref(&wanted))
            .await?;
        if report.inserted == 1 {
            self.write_through(&wanted).await;
            return Ok(self.created(&wanted));
        }
        match self.links.find(&wanted.code).await? {
            Some(link) => Ok(self.created(&link)),
            None => Err(ApiError::not_found()),
        }
    }

    /// After a failed insert, whose outcome is unknown (a timeout may
    /// come after the commit).
    pub(super) async fn undo(&self, idem: Option<&Idem<'_>>, code: String, from_pool: bool) {
        if idem.is_some() {
            // Keep the binding and its code: if the insert did commit, a
            // retry finds that link; if not, a retry completes it once the
            // binding is orphaned. Unbinding here could give one key two
            // links.
            return;
        }
        if from_pool {
            // Even if the insert did commit, reusing the key is safe:
            // inserts never overwrite, so its next use finds it taken and
            // moves on to another key.
            self.leaser.give_back(code);
        }
    }

    pub(super) async fn key(&self) -> Result<String, ApiError> {
        self.leaser.next(KEY_WAIT).await.map_err(|_| ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_exhausted",
                "no short codes are free right now; the key pool is being refilled",
            )
        })
    }

    pub(super) async fn write_through(&self, link: &Link) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.put(link).await {
                tracing::debug!(error = %e, code = %link.code, "write-through to the shared cache failed");
            }
        }
    }

    /// Up to `origin.max_batch_links` creations, written in one transaction; each item
    /// gets its own result (201 with the link, or its error), in order.
    pub(super) async fn batch(&self, items: Vec<CreateLink>) -> Result<Response<Body>, ApiError> {
        let created_at = now();
        let mut results: Vec<Option<Value>> = vec![None; items.len()];
        let mut pending: Vec<(usize, Link, bool)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut link = match self.validate(item, created_at) {
                Ok(l) => l,
                Err(e) => {
                    results[i] = Some(item_error(i, &e));
                    continue;
                }
            };
            let from_pool = item.alias.is_none();
            link.code = match &item.alias {
                Some(a) => a.clone(),
                None => match self.key().await {
                    Ok(k) => k,
                    Err(e) => {
                        results[i] = Some(item_error(i, &e));
                        continue;
                    }
                },
            };
            pending.push((i, link, from_pool));
        }
        let links: Vec<Link> = pending.iter().map(|(_, l, _)| l.clone()).collect();
        let report = match self.links.insert_links(&links).await {
            Ok(r) => r,
            Err(e) => {
                for (_, link, from_pool) in pending {
                    if from_pool {
                        self.leaser.give_back(link.code);
                    }
                }
                return Err(e.into());
            }
        };
        let taken: std::collections::HashSet<usize> = report.existing.into_iter().collect();
        for (j, (i, link, from_pool)) in pending.into_iter().enumerate() {
            results[i] = Some(if !taken.contains(&j) {
                self.write_through(&link).await;
                json!({ "index": i, "status": 201, "link": self.view(&link) })
            } else if from_pool {
                // A pool key already spelled by an alias or import: this
                // one item goes through the single-link path's retries.
                match self.create(items[i].clone(), None).await {
                    Ok(resp) => json!({ "index": i, "status": 201, "link": body_json(resp).await }),
                    Err(e) => item_error(i, &e),
                }
            } else {
                let e = ApiError::new(
                    StatusCode::CONFLICT,
                    "alias_taken",
                    format!("{:?} is taken", link.code),
                );
                item_error(i, &e)
            });
        }
        let results: Vec<Value> = results
            .into_iter()
            .map(|r| r.unwrap_or(Value::Null))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "results": results }),
        ))
    }
}

/// An `Idempotency-Key` of one API key, and the digest of its request.
pub(super) struct Idem<'a> {
    pub(super) api_key_id: i64,
    pub(super) key: &'a str,
    pub(super) request: [u8; 32],
}

/// `POST /api/v1/links/batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchCreate {
    pub(super) links: Vec<CreateLink>,
}

pub(super) fn item_error(index: usize, e: &ApiError) -> Value {
    json!({
        "index": index,
        "status": e.status.as_u16(),
        "error": { "code": e.code, "message": e.message },
    })
}

pub(super) async fn body_json(resp: Response<Body>) -> Value {
    // Our own answers are buffers; reading them cannot fail.
    match resp.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The `Idempotency-Key` header, 1..=255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1..=255 visible ASCII characters",
                )
            }),
    }
}

/// What makes two requests "the same" for an Idempotency-Key.
pub(super) fn request_digest(method: &Method, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}
