//! The reply budget of a connection, as a type. A connection stops reading its socket
//! while [`MAX_AWAITING_REPLIES`] requests are unanswered, so TCP pushes back on a client
//! that pipelines faster than the engine answers. Every counted request (`send`,
//! `list_peers`, `list_members`, `message_status`, `retire_sessions`) travels to the engine
//! as a [`Request`] with a [`ReplySlot`]; the only way to spend the slot is
//! [`ReplySlot::answer`], which turns it into the [`Outbound::Reply`] that gives the slot
//! back when the connection writes it. A slot dropped unanswered (a bug) still returns to
//! the budget, so a connection can never be starved, and says so in the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use claudemesh_proto::frames::{
    self, BrokerFrame, ClientFrame, MessageStatusRequest, ReqId, RetireSessions, Send,
};

use super::Outbound;

/// Requests a connection may have unanswered before it stops reading its socket.
pub const MAX_AWAITING_REPLIES: usize = 1_024;

/// One connection's count of unanswered requests.
#[derive(Debug, Default)]
pub struct Budget(Arc<AtomicUsize>);

impl Budget {
    /// Whether the connection may read another frame.
    pub fn has_room(&self) -> bool {
        self.0.load(Relaxed) < MAX_AWAITING_REPLIES
    }

    /// Count one more request as awaiting its reply.
    pub fn take(&self) -> ReplySlot {
        self.0.fetch_add(1, Relaxed);
        ReplySlot(Some(self.0.clone()))
    }
}

/// The promise of exactly one reply to a counted request.
#[derive(Debug)]
#[must_use = "a counted request must be answered: spend the slot with ReplySlot::answer"]
pub struct ReplySlot(Option<Arc<AtomicUsize>>);

impl ReplySlot {
    /// The reply to queue for the connection; writing it frees the slot.
    pub fn answer(mut self, frame: BrokerFrame) -> Outbound {
        Outbound::Reply(Box::new(frame), Answered(self.0.take()))
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take() {
            budget.fetch_sub(1, Relaxed);
            tracing::error!("a request was dropped without an answer; its slot is returned");
        }
    }
}

/// A written-or-dropped reply's slot: returned to the budget when this is dropped.
#[derive(Debug)]
pub struct Answered(Option<Arc<AtomicUsize>>);

impl Drop for Answered {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take() {
            budget.fetch_sub(1, Relaxed);
        }
    }
}

/// A client frame that is answered by exactly one reply frame.
#[derive(Debug)]
pub enum Request {
    Send(Send),
    ListPeers(Option<ReqId>),
    ListMembers(Option<ReqId>),
    MessageStatus(MessageStatusRequest),
    RetireSessions(RetireSessions),
}

impl Request {
    /// The request this frame is, or the frame back when it expects no reply.
    #[allow(clippy::result_large_err)] // moved once into the engine's inbox, never stored
    pub fn from_frame(frame: ClientFrame) -> Result<Self, ClientFrame> {
        Ok(match frame {
            ClientFrame::Send(s) => Request::Send(s),
            ClientFrame::ListPeers(frames::Request { req_id }) => Request::ListPeers(req_id),
            ClientFrame::ListMembers(frames::Request { req_id }) => Request::ListMembers(req_id),
            ClientFrame::MessageStatus(r) => Request::MessageStatus(r),
            ClientFrame::RetireSessions(r) => Request::RetireSessions(r),
            other => return Err(other),
        })
    }

    pub fn req_id(&self) -> Option<&ReqId> {
        match self {
            Request::Send(s) => s.req_id.as_ref(),
            Request::ListPeers(r) | Request::ListMembers(r) => r.as_ref(),
            Request::MessageStatus(r) => r.req_id.as_ref(),
            Request::RetireSessions(r) => r.req_id.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudemesh_proto::frames::PeersList;

    #[test]
    fn a_slot_returns_when_its_reply_is_written_or_when_dropped() {
        let budget = Budget::default();
        let a = budget.take();
        let b = budget.take();
        assert_eq!(budget.0.load(Relaxed), 2);
        let reply = a.answer(BrokerFrame::PeersList(PeersList {
            peers: Vec::new(),
            req_id: None,
        }));
        assert_eq!(budget.0.load(Relaxed), 2, "queued, not yet written");
        drop(reply);
        assert_eq!(budget.0.load(Relaxed), 1);
        drop(b);
        assert_eq!(budget.0.load(Relaxed), 0);
    }
}
