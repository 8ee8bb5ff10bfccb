//! The API calls of one unit: each waits for the request budget and reports its answer to the
//! pacer, the outage detector and the metrics.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::api::{CallError, CallMeta, ConversationView};
use super::execute::Stop;
use super::outcome::FailedAttempt;
use super::resolve::Target;
use super::{outage, Inner};
use crate::genesys::Failure;
use crate::queue::Priority;

/// API calls for one unit: each waits for the request budget (except the ones already paid
/// for) and reports its response to the pacer and the metrics.
pub(super) struct Calls<'a> {
    pub(super) inner: &'a Inner,
    lane: Priority,
    /// Requests already holding a token: the executor's first, and the bodies of a large update
    /// paid for before the first of them leaves.
    prepaid: u32,
}

impl<'a> Calls<'a> {
    /// Calls for a unit of `lane`; with `prepaid`, the first call already holds a token.
    pub(super) fn new(inner: &'a Inner, lane: Priority, prepaid: bool) -> Calls<'a> {
        Calls {
            inner,
            lane,
            prepaid: u32::from(prepaid),
        }
    }

    async fn before(&mut self) {
        if self.prepaid > 0 {
            self.prepaid -= 1;
            return;
        }
        self.inner.pacer.acquire(self.lane).await;
    }

    /// Waits until the next `requests` calls hold a token each, so they can leave back to back:
    /// the bodies of one update never wait for the budget between each other (a stop in such a
    /// wait would leave the update sent halfway).
    pub(super) async fn prepay(&mut self, requests: u32) {
        while self.prepaid < requests {
            self.inner.pacer.acquire(self.lane).await;
            self.prepaid += 1;
        }
    }

    async fn after(&self, status: Option<u16>, meta: Option<&CallMeta>, error: Option<&CallError>) {
        let label = status.map_or_else(|| "transport_error".to_owned(), |s| s.to_string());
        let meta = meta.or(error.map(|e| &e.meta));
        self.inner
            .metrics
            .record_api_response(&label, meta.map(|m| m.elapsed));
        if let Some(meta) = meta {
            let retry_after = error.and_then(|e| e.retry_after);
            self.inner
                .pacer
                .observe(status.unwrap_or(0), meta.rate_limit.as_ref(), retry_after)
                .await;
        }
    }

    pub(super) async fn conversation(&mut self, id: Uuid) -> Result<ConversationView, CallError> {
        self.before().await;
        let result = self.inner.api.conversation(id).await;
        self.report(&result, Some(id)).await;
        result.map(|(view, _)| view)
    }

    pub(super) async fn find_by_tag(&mut self, tag: &str) -> Result<Vec<Uuid>, CallError> {
        self.before().await;
        let result = self.inner.api.find_by_tag(tag).await;
        self.report(&result, None).await;
        result.map(|(ids, _)| ids)
    }

    /// The attributes PATCH: waits for the request budget, then confirms the lease (the wait
    /// may have been long), then sends. `bodies` counts this body and those of the unit that
    /// follow it; `first` says whether it is the unit's first (see [`Inner::may_send`]).
    pub(super) async fn patch(
        &mut self,
        lease: Uuid,
        target: Target,
        attributes: &Map<String, Value>,
        (bodies, first): (u32, bool),
    ) -> Result<(), Stop> {
        self.before().await;
        self.inner.may_send(lease, bodies, first).await?;
        let result = self
            .inner
            .api
            .patch(target.conversation_id, target.participant_id, attributes)
            .await
            .map(|meta| ((), meta));
        self.report(&result, Some(target.conversation_id)).await;
        result
            .map(|_| ())
            .map_err(|error| FailedAttempt::from_call(error).with_target(target).into())
    }

    async fn report<T>(
        &self,
        result: &Result<(T, CallMeta), CallError>,
        conversation: Option<Uuid>,
    ) {
        match result {
            Ok((_, meta)) => {
                self.after(Some(meta.status), Some(meta), None).await;
                outage::answered(self.inner, conversation);
            }
            Err(error) => {
                self.after(error.status, None, Some(error)).await;
                match error.failure {
                    Failure::Transient => self.inner.outage.record(conversation, true),
                    Failure::Outage => {}
                    _ => outage::answered(self.inner, conversation),
                }
            }
        }
        self.inner
            .metrics
            .set_token_renewals(self.inner.api.token_renewals());
    }
}
