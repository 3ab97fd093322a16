//! Reading and managing links: change, list (with a cursor) and the
//! per-day click stats.

use edgelink_core::link::now;
use edgelink_core::net::{json as json_response, Body};
use edgelink_core::store::{LinkPatch, MAX_LIST, MAX_STATS_DAYS};

use super::*;

impl Api {
    pub(super) async fn update(
        &self,
        code: &str,
        req: UpdateLink,
    ) -> Result<Response<Body>, ApiError> {
        let target = req
            .url
            .as_deref()
            .map(|u| self.policy.target(u))
            .transpose()?;
        let expires_at = match (&req.expires_at, req.ttl_seconds) {
            (Some(None), None) => Some(None),
            (None, None) => None,
            (e, ttl) => Some(self.policy.expiry(
                e.as_ref().and_then(|e| e.as_deref()),
                ttl,
                now(),
            )?),
        };
        let redirect = req
            .redirect
            .map(|r| self.policy.redirect(Some(r)))
            .transpose()?;
        let patch = LinkPatch {
            target,
            redirect,
            expires_at,
            disabled: req.disabled,
        };
        let link = self
            .links
            .update(code, &patch)
            .await?
            .ok_or_else(ApiError::not_found)?;
        self.invalidator.invalidate(code).await;
        Ok(json_response(StatusCode::OK, &self.view(&link)))
    }

    pub(super) async fn list(&self, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let mut cursor = None;
        let mut limit = 100u32;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "cursor" => cursor = Some(v.into_owned()),
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_LIST).contains(l))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "invalid_limit",
                                format!("limit must be 1..={MAX_LIST}"),
                            )
                        })?;
                }
                other => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!("unknown query parameter {other:?}"),
                    ))
                }
            }
        }
        let links = self.links.list(cursor.as_deref(), limit).await?;
        let next = (links.len() == limit as usize)
            .then(|| links.last().map(|l| l.code.clone()))
            .flatten();
        let items: Vec<Value> = links.iter().map(|l| self.view(l)).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "links": items, "next_cursor": next }),
        ))
    }

    /// Click counts of a link: totals and a daily series (every day of the
    /// range, zeros included), human and bot. `from`/`to` are UTC dates,
    /// inclusive; by default the last 30 days up to today.
    pub(super) async fn stats(
        &self,
        code: &str,
        query: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let date = |v: &str, name: &str| {
            time::Date::parse(v, DATE)
                .ok()
                .filter(|d| (1970..=9999).contains(&d.year()))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_date",
                        format!("{name} must be a date, YYYY-MM-DD, from 1970 on"),
                    )
                })
        };
        let mut to = time::OffsetDateTime::now_utc().date();
        let mut from = None;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "from" => from = Some(date(&v, "from")?),
                "to" => to = date(&v, "to")?,
                other => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!("unknown query parameter {other:?}"),
                    ))
                }
            }
        }
        // `to` may be any date the format reads, year -9999 included: no
        // arithmetic on it may overflow.
        let from = from.or_else(|| to.checked_sub(time::Duration::days(29)));
        let days = from.map_or(0, |from| (to - from).whole_days() + 1);
        let Some(from) = from.filter(|_| (1..=MAX_STATS_DAYS).contains(&days)) else {
            return Err(ApiError::invalid(
                "invalid_range",
                format!("from must not be after to, and the range at most {MAX_STATS_DAYS} days"),
            ));
        };
        if self.links.find(code).await?.is_none() {
            return Err(ApiError::not_found());
        }
        let counted = self.links.clicks(code, from, to).await?;
        let mut by_day = counted.iter().peekable();
        let (mut human, mut bot) = (0u64, 0u64);
        let mut daily = Vec::with_capacity(usize::try_from(days).unwrap_or(0));
        let mut day = from;
        while day <= to {
            let (h, b) = match by_day.next_if(|c| c.day == day) {
                Some(c) => (c.human, c.bot),
                None => (0, 0),
            };
            human += h;
            bot += b;
            daily.push(json!({
                "date": day.format(DATE).unwrap_or_default(),
                "clicks": h + b,
                "human": h,
                "bot": b,
            }));
            let Some(next) = day.next_day() else { break };
            day = next;
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "code": code,
                "from": from.format(DATE).unwrap_or_default(),
                "to": to.format(DATE).unwrap_or_default(),
                "total": { "clicks": human + bot, "human": human, "bot": bot },
                "daily": daily,
            }),
        ))
    }
}
