//! Whether a socket's receive is armed: the pure state machine behind back-pressure on
//! input. The shard submits what it answers (a cancel, an arm); nothing here touches the ring.
//!
//! A connection whose outbound queues are full stops decoding and asks its transport to
//! stop reading ([`valkyrie_protocol::Connection::wants_input`]). The shard then cancels the
//! armed receive (the multishot receive, or the multishot poll in poll-then-receive mode):
//! the bytes stay in the kernel's socket buffer and TCP flow control slows the peer. Data that
//! completes before the cancel lands is still taken. Once the connection wants input again,
//! the receive is armed again, at once if the cancel has ended, or on its final completion.

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
    /// Not armed: input waits in the kernel.
    Paused,
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

    /// The connection does (`true`) or does not want input: what to submit.
    pub(crate) fn want(&mut self, wants: bool) -> RecvAction {
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
            (Recv::Armed, true) | (Recv::Paused, false) => RecvAction::None,
        }
    }

    /// The armed receive posted its final completion (it ended by itself, ran out of
    /// buffers, or was cancelled): whether to arm it again.
    pub(crate) fn ended(&mut self) -> bool {
        match *self {
            Recv::Armed => true,
            Recv::Cancelling { resume: true } => {
                *self = Recv::Armed;
                true
            }
            Recv::Cancelling { resume: false } => {
                *self = Recv::Paused;
                false
            }
            Recv::Paused => {
                debug_assert!(false, "a receive ended that was not armed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_input_cancels_once_and_pauses_on_the_final_completion() {
        let mut r = Recv::Armed;
        assert_eq!(r.want(false), RecvAction::Cancel);
        assert_eq!(r.want(false), RecvAction::None, "one cancel per pause");
        assert!(!r.is_armed());
        assert!(!r.ended());
        assert_eq!(r, Recv::Paused);
        assert_eq!(r.want(false), RecvAction::None);
        assert_eq!(r.want(true), RecvAction::Arm);
        assert!(r.is_armed());
    }

    #[test]
    fn wanting_input_again_during_the_cancel_rearms_on_its_completion() {
        let mut r = Recv::Armed;
        assert_eq!(r.want(false), RecvAction::Cancel);
        assert_eq!(r.want(true), RecvAction::None, "not armed twice");
        assert!(r.ended(), "armed again when the cancel ends");
        assert_eq!(r, Recv::Armed);
        assert_eq!(r.want(false), RecvAction::Cancel);
        assert_eq!(r.want(true), RecvAction::None);
        assert_eq!(r.want(false), RecvAction::None);
        assert!(!r.ended(), "the last wish counts");
    }

    #[test]
    fn an_armed_receive_that_ends_by_itself_is_armed_again() {
        let mut r = Recv::Armed;
        assert_eq!(r.want(true), RecvAction::None);
        assert!(r.ended());
        assert_eq!(r, Recv::Armed);
    }
}
