//! Connecting to PostgreSQL the way a control plane must: a partition shows in seconds, not in
//! the kernel's minutes (connect timeout, TCP keepalives, `tcp_user_timeout`), and a node cut
//! off in the middle of a transaction does not hold its rows' locks for long (the server ends
//! idle transactions; nobody waits on a lock for ever).

use std::time::Duration;

use postgres::{Client, Config, NoTls};

/// How long a connection may take to be made, and data sent to the database may go
/// unacknowledged, before the connection counts as broken (a partition shows in seconds,
/// not in the kernel's minutes).
pub(crate) const NET_TIMEOUT: Duration = Duration::from_secs(3);

/// Connect to the database `config` names, with [`NET_TIMEOUT`] and TCP keepalives.
pub(crate) fn connect(config: &Config) -> Result<Client, postgres::Error> {
    let mut config = config.clone();
    config
        .connect_timeout(NET_TIMEOUT)
        .tcp_user_timeout(NET_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(2))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        // A node cut off mid-transaction must not hold its rows' locks for long: the server
        // ends such a session, and nobody waits on a lock for ever.
        // The server probes the node too, and ends the session of one that vanished (~11 s):
        // its locks, the node id's among them, go with it.
        .options(
            "-c idle_in_transaction_session_timeout=5000 -c lock_timeout=5000 \
             -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
        );
    config.connect(NoTls)
}
