//! Intrusion detection: per-source-address counts of authentication failures and malformed
//! frames; an address over the limit is throttled, then banned for a while (ERROR 702). The
//! table is bounded. Every address has a home shard (by hash) that counts its failures, whatever
//! shard they happen on, and tells every shard when it bans the address; a ban is in force on
//! all shards within a mesh hop (microseconds).
//!
//! Trusted addresses (loopback by default, and whatever `GuardConfig::trusted` lists) are never
//! counted, throttled or banned: one local process sending malformed frames must not lock
//! every local client out (fail2ban's `ignoreip = 127.0.0.1/8 ::1` default). Empty the list to
//! guard loopback too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use ipnet::IpNet;

/// The addresses trusted by default: IPv4 and IPv6 loopback.
pub fn default_trusted() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| n.parse().expect("loopback networks parse"))
        .collect()
}

/// Limits of the intrusion detector.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Failures are counted over this window (the count restarts after it).
    pub window: Duration,
    /// From this many failures in a window, an address may open at most one connection per
    /// `throttle_interval`; the others are refused with 702.
    pub throttle_after: u32,
    /// Spacing of connections from a throttled address.
    pub throttle_interval: Duration,
    /// At this many failures in a window the address is banned.
    pub ban_after: u32,
    /// How long a ban lasts.
    pub ban_for: Duration,
    /// Addresses tracked per shard at most; past it, addresses without a ban that have been
    /// quiet longest are forgotten first.
    pub max_addresses: usize,
    /// Networks whose addresses are never counted, throttled or banned (default: loopback;
    /// an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub trusted: Vec<IpNet>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            window: Duration::from_secs(60),
            throttle_after: 5,
            throttle_interval: Duration::from_secs(1),
            ban_after: 10,
            ban_for: Duration::from_secs(300),
            max_addresses: 100_000,
            trusted: default_trusted(),
        }
    }
}

/// What to do with a new connection from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allow,
    /// Refuse it (702): the address is throttled; it may try again after this long.
    Throttled(Duration),
    /// Refuse it (702): the address is banned for this much longer.
    Banned(Duration),
}

/// What a counted failure changed for its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escalation {
    /// Counted; nothing changed.
    Counted,
    /// The address is trusted: not counted.
    Trusted,
    /// This failure starts throttling the address for (at most) this long: the rest of the
    /// counting window.
    Throttled(Duration),
    /// This failure bans the address until then.
    Banned(Instant),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    last_seen: Instant,
    last_allowed: Option<Instant>,
    banned_until: Option<Instant>,
}

/// One shard's table.
#[derive(Debug)]
pub(crate) struct Guard {
    cfg: GuardConfig,
    table: HashMap<IpAddr, Entry>,
}

impl Guard {
    pub(crate) fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            table: HashMap::new(),
        }
    }

    /// Replace the trusted list (a reload); counts and bans stay.
    pub(crate) fn set_trusted(&mut self, trusted: Vec<IpNet>) {
        self.cfg.trusted = trusted;
    }

    /// Whether `ip` is on the trusted list.
    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cfg.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Decide on a new connection from `ip`.
    pub(crate) fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.is_trusted(ip) {
            return Verdict::Allow;
        }
        let cfg = &self.cfg;
        let Some(e) = self.table.get_mut(&ip) else {
            return Verdict::Allow;
        };
        e.last_seen = now;
        if let Some(until) = e.banned_until {
            if now < until {
                return Verdict::Banned(until - now);
            }
            // The ban is over: start clean.
            e.banned_until = None;
            e.failures = 0;
            e.window_start = now;
        }
        if now.duration_since(e.window_start) >= cfg.window {
            e.failures = 0;
            e.window_start = now;
        }
        if e.failures >= cfg.throttle_after {
            if let Some(last) = e.last_allowed {
                let next = last + cfg.throttle_interval;
                if now < next {
                    return Verdict::Throttled(next - now);
                }
            }
            e.last_allowed = Some(now);
        }
        Verdict::Allow
    }

    /// Count a failure (an authentication failure or a malformed frame) from `ip`, and say
    /// whether it starts throttling or a ban.
    pub(crate) fn failure(&mut self, ip: IpAddr, now: Instant) -> Escalation {
        if self.is_trusted(ip) {
            return Escalation::Trusted;
        }
        let (window, throttle_after, ban_after, ban_for) = (
            self.cfg.window,
            self.cfg.throttle_after,
            self.cfg.ban_after,
            self.cfg.ban_for,
        );
        let Some(e) = self.track(ip, now) else {
            return Escalation::Counted;
        };
        e.last_seen = now;
        if e.banned_until.is_some_and(|u| now < u) {
            return Escalation::Counted;
        }
        if now.duration_since(e.window_start) >= window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= ban_after {
            let until = now + ban_for;
            e.banned_until = Some(until);
            return Escalation::Banned(until);
        }
        if e.failures == throttle_after {
            return Escalation::Throttled((e.window_start + window).saturating_duration_since(now));
        }
        Escalation::Counted
    }

    /// The entry of `ip`, created (making room first) if it is new; `None` when the table is
    /// full of active bans.
    fn track(&mut self, ip: IpAddr, now: Instant) -> Option<&mut Entry> {
        if !self.table.contains_key(&ip) && !self.make_room(now) {
            return None;
        }
        Some(self.table.entry(ip).or_insert(Entry {
            failures: 0,
            window_start: now,
            last_seen: now,
            last_allowed: None,
            banned_until: None,
        }))
    }

    /// Apply a ban decided by another shard.
    pub(crate) fn ban(&mut self, ip: IpAddr, until: Instant, now: Instant) {
        if self.is_trusted(ip) {
            return;
        }
        let Some(e) = self.track(ip, now) else {
            return;
        };
        e.banned_until = Some(e.banned_until.map_or(until, |u| u.max(until)));
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Free a slot if the table is full: drop entries whose window and ban are over, then
    /// the quietest unbanned one. False when every entry is an active ban.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.table.len() < self.cfg.max_addresses {
            return true;
        }
        let window = self.cfg.window;
        self.table.retain(|_, e| {
            e.banned_until.is_some_and(|u| now < u) || now.duration_since(e.window_start) < window
        });
        if self.table.len() < self.cfg.max_addresses {
            return true;
        }
        let victim = self
            .table
            .iter()
            .filter(|(_, e)| e.banned_until.is_none_or(|u| now >= u))
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(ip, _)| *ip);
        match victim {
            Some(ip) => {
                self.table.remove(&ip);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            window: Duration::from_secs(10),
            throttle_after: 2,
            throttle_interval: Duration::from_secs(1),
            ban_after: 4,
            ban_for: Duration::from_secs(30),
            max_addresses: 3,
            trusted: Vec::new(),
        }
    }

    #[test]
    fn throttles_then_bans_then_forgives() {
        let mut g = Guard::new(cfg());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        assert_eq!(g.check(ip, t), Verdict::Allow);
        assert_eq!(g.failure(ip, t), Escalation::Counted);
        assert_eq!(
            g.failure(ip, t),
            Escalation::Throttled(Duration::from_secs(10)),
            "the second failure throttles for the rest of the window"
        );
        // Throttled: one connection per second.
        assert_eq!(g.check(ip, t), Verdict::Allow);
        assert!(matches!(g.check(ip, t), Verdict::Throttled(_)));
        assert_eq!(g.check(ip, t + Duration::from_secs(1)), Verdict::Allow);
        g.failure(ip, t);
        assert!(
            matches!(g.failure(ip, t), Escalation::Banned(_)),
            "the fourth failure bans"
        );
        assert!(matches!(
            g.check(ip, t + Duration::from_secs(29)),
            Verdict::Banned(_)
        ));
        assert_eq!(g.check(ip, t + Duration::from_secs(31)), Verdict::Allow);
        // Other addresses are unaffected.
        assert_eq!(g.check("10.0.0.2".parse().unwrap(), t), Verdict::Allow);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_bans() {
        let mut g = Guard::new(cfg());
        let t = Instant::now();
        let banned: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..4 {
            g.failure(banned, t);
        }
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            g.failure(ip, t + Duration::from_millis(u64::from(i)));
            assert!(g.len() <= 3);
        }
        assert!(matches!(g.check(banned, t), Verdict::Banned(_)));
    }

    #[test]
    fn trusted_networks_are_never_counted_throttled_or_banned() {
        let mut g = Guard::new(GuardConfig {
            trusted: default_trusted(),
            ..cfg()
        });
        let t = Instant::now();
        for ip in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            for _ in 0..10 {
                assert_eq!(g.failure(ip, t), Escalation::Trusted, "{ip}");
            }
            g.ban(ip, t + Duration::from_secs(60), t);
            assert_eq!(g.check(ip, t), Verdict::Allow, "{ip}");
        }
        assert_eq!(g.len(), 0, "nothing tracked for trusted addresses");
        let outsider: IpAddr = "10.1.1.1".parse().unwrap();
        for _ in 0..4 {
            g.failure(outsider, t);
        }
        assert!(matches!(g.check(outsider, t), Verdict::Banned(_)));
        // With the list emptied, loopback is guarded like any other address.
        let mut open = Guard::new(cfg());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..4 {
            open.failure(lo, t);
        }
        assert!(matches!(open.check(lo, t), Verdict::Banned(_)));
    }
}
