//! Whether a socket's receive is armed: the pure state machine behind back-pressure on
//! input. The shard submits what it answers (a cancel, an arm); nothing here touches the ring.
//!
//! A connection whose outbound queues are full stops decoding and asks its transport to
//! stop reading ([`valkyrie_protocol::Connection::wants_input`]). The shard then cancels the
//! armed receive (the multishot receive, or the multishot poll in poll-then-receive mode):
//! the bytes stay in the kernel's socket buffer and TCP flow control slows the peer. Data that
//! completes before the cancel lands is still taken. Once the connection wants input again,
//! the receive is armed again, at once if the cancel has ended, or on its final completion.
//!
//! A lighter stop needs no cancel: a multishot receive with a per-turn byte limit ends by
//! itself, and while a turn's worth of output already waits behind the send in flight
//! (`backed_up`) it is not armed again until that send is done ([`Recv::Rested`]). So a peer
//! that pipelines deeper than its own reading drains is read as fast as it reads, without
//! its input being copied aside to wait.

/// The receive of one socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    /// Armed: data is delivered as it arrives.
    Armed,
    /// Its cancel is submitted; on its final completion it is armed again when `resume`.
    Cancelling {
        /// The connection wanted input again before the cancel ended.
        resume: bool,
    },
    /// Not armed: input is held back (back-pressure) and waits in the kernel.
    Paused,
    /// Not armed: it ended by itself while output waited behind a send in flight; armed again
    /// once the output has gone.
    Rested,
    /// Not armed, for good: the peer ended its side (or the socket failed).
    Ended,
}

/// What the shard submits after a change of [`Recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvAction {
    /// Nothing.
    None,
    /// Cancel the armed receive.
    Cancel,
    /// Arm the receive.
    Arm,
}

impl Recv {
    /// Whether the receive delivers data now (one-shot receives in poll mode are issued only
    /// then).
    pub(crate) fn is_armed(self) -> bool {
        self == Recv::Armed
    }

    /// The connection does (`wants`) or does not want input, with (`backed_up`) or without
    /// a turn's worth of output waiting behind a send in flight: what to submit.
    pub(crate) fn want(&mut self, wants: bool, backed_up: bool) -> RecvAction {
        match (*self, wants) {
            (Recv::Armed, false) => {
                *self = Recv::Cancelling { resume: false };
                RecvAction::Cancel
            }
            (Recv::Cancelling { .. }, resume) => {
                *self = Recv::Cancelling { resume };
                RecvAction::None
            }
            (Recv::Paused, true) => {
                *self = Recv::Armed;
                RecvAction::Arm
            }
            (Recv::Rested, false) => {
                *self = Recv::Paused;
                RecvAction::None
            }
            (Recv::Rested, true) if !backed_up => {
                *self = Recv::Armed;
                RecvAction::Arm
            }
            (Recv::Armed, true)
            | (Recv::Paused, false)
            | (Recv::Rested, true)
            | (Recv::Ended, _) => RecvAction::None,
        }
    }

    /// The armed receive posted its final completion (it ended by itself, ran out of
    /// buffers, or was cancelled): whether to arm it again now. One that ended by itself
    /// while output is `backed_up` rests until the output has gone.
    pub(crate) fn ended(&mut self, backed_up: bool) -> bool {
        match *self {
            Recv::Armed if backed_up => {
                *self = Recv::Rested;
                false
            }
            Recv::Armed => true,
            Recv::Cancelling { resume: true } => {
                *self = Recv::Armed;
                true
            }
            Recv::Cancelling { resume: false } => {
                *self = Recv::Paused;
                false
            }
            Recv::Paused | Recv::Rested => {
                debug_assert!(false, "a receive ended that was not armed");
                false
            }
            Recv::Ended => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_input_cancels_once_and_pauses_on_the_final_completion() {
        let mut r = Recv::Armed;
        assert_eq!(r.want(false, false), RecvAction::Cancel);
        assert_eq!(
            r.want(false, false),
            RecvAction::None,
            "one cancel per pause"
        );
        assert!(!r.is_armed());
        assert!(!r.ended(false));
        assert_eq!(r, Recv::Paused);
        assert_eq!(r.want(false, false), RecvAction::None);
        assert_eq!(r.want(true, false), RecvAction::Arm);
        assert!(r.is_armed());
    }

    #[test]
    fn wanting_input_again_during_the_cancel_rearms_on_its_completion() {
        let mut r = Recv::Armed;
        assert_eq!(r.want(false, false), RecvAction::Cancel);
        assert_eq!(r.want(true, false), RecvAction::None, "not armed twice");
        assert!(r.ended(false), "armed again when the cancel ends");
        assert_eq!(r, Recv::Armed);
        assert_eq!(r.want(false, false), RecvAction::Cancel);
        assert_eq!(r.want(true, false), RecvAction::None);
        assert_eq!(r.want(false, false), RecvAction::None);
        assert!(!r.ended(false), "the last wish counts");
    }

    #[test]
    fn an_armed_receive_that_ends_by_itself_is_armed_again() {
        let mut r = Recv::Armed;
        assert_eq!(r.want(true, false), RecvAction::None);
        assert!(r.ended(false));
        assert_eq!(r, Recv::Armed);
    }

    #[test]
    fn a_receive_that_ends_while_output_waits_rests_until_it_has_gone() {
        let mut r = Recv::Armed;
        assert!(!r.ended(true), "not armed again while output waits");
        assert_eq!(r, Recv::Rested);
        assert!(!r.is_armed());
        assert_eq!(r.want(true, true), RecvAction::None, "still waiting");
        assert_eq!(r.want(true, false), RecvAction::Arm, "the output has gone");
        assert!(r.is_armed());
        // Held back while resting: nothing to cancel; resumed as any pause.
        assert!(!r.ended(true));
        assert_eq!(r.want(false, true), RecvAction::None);
        assert_eq!(r, Recv::Paused);
        assert_eq!(r.want(true, true), RecvAction::Arm);
    }
}
