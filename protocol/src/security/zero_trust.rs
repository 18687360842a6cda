//! `zero_trust`: mutual authentication (the noise_xk, mtls or post_quantum handshake, see
//! [`ZeroTrust`]) plus authorisation of every application frame: which identity may send which
//! message types. The policy denies by default; a denied frame is answered with ERROR 701 on its
//! stream and correlation id, is not delivered, and surfaces as [`Event::Denied`] so the node can
//! audit it.
//!
//! Policy text, one rule per line (`#` starts a comment):
//!
//! ```text
//! # identity                                                              message types              [projects]
//! noise:8aea84ee3d9395c3965ffb83abd17df2268bf37cce66c3054fc474c083e98944  JOB_*,LOG_ENTRY,STREAM_*   projects=web,infra
//! *                                                                       HEALTH_CHECK,METRICS_REPORT
//! ```
//!
//! An identity is matched exactly, or `*` for anyone authenticated; a type pattern is a type
//! name, a prefix ending in `*`, or `*`. The optional third column grants job projects
//! (`projects=NAME,...` or `projects=*`): a control plane gives a job of a project only to
//! agents whose identity is granted it ([`Policy::projects`]).
//!
//! [`Event::Denied`]: crate::Event::Denied

use std::sync::Arc;

use super::{HandshakeProvider, SecurityHandshake};
use crate::Side;
use crate::frame::MessageType;
use crate::message::SecurityMode;

/// One rule: an identity (or `*`) and the message types it may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The authenticated identity (`noise:<hex>`), or `*`.
    pub identity: String,
    /// Type names, `PREFIX*` patterns, or `*`.
    pub types: Vec<String>,
    /// Job projects granted (`*`: all); empty: none.
    pub projects: Vec<String>,
}

/// The job projects an identity is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    /// Every project.
    All,
    /// These (maybe none).
    Only(std::collections::BTreeSet<String>),
}

impl Projects {
    /// Whether `project` is granted.
    pub fn grants(&self, project: &str) -> bool {
        match self {
            Projects::All => true,
            Projects::Only(set) => set.contains(project),
        }
    }
}

/// A policy line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}: {reason}")]
pub struct PolicyError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Who may send what. Empty: nothing is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The rules; a frame is allowed when any rule allows it.
    pub rules: Vec<Rule>,
}

fn type_matches(pattern: &str, t: MessageType) -> bool {
    let name = t.name();
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

impl Policy {
    /// Parse the policy text described in the module documentation.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: &str| PolicyError {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let mut it = line.split_whitespace();
            let (Some(identity), Some(types), third, None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(err(
                    "expected `IDENTITY TYPE[,TYPE...] [projects=NAME,...]`",
                ));
            };
            let projects: Vec<String> = match third {
                None => Vec::new(),
                Some(p) => match p.strip_prefix("projects=") {
                    Some(list) if !list.is_empty() => list.split(',').map(str::to_owned).collect(),
                    _ => return Err(err("the third column is `projects=NAME[,NAME...]`")),
                },
            };
            let types: Vec<String> = types.split(',').map(str::to_owned).collect();
            for t in &types {
                let known = t == "*" || MessageType::ALL.iter().any(|m| type_matches(t, *m));
                if !known {
                    return Err(err(&format!("{t} matches no message type")));
                }
            }
            rules.push(Rule {
                identity: identity.to_owned(),
                types,
                projects,
            });
        }
        Ok(Policy { rules })
    }

    /// The job projects `identity` is granted (the union of the rules that match it).
    pub fn projects(&self, identity: Option<&str>) -> Projects {
        let mut set = std::collections::BTreeSet::new();
        let Some(id) = identity else {
            return Projects::Only(set);
        };
        for r in self
            .rules
            .iter()
            .filter(|r| r.identity == "*" || r.identity == id)
        {
            for p in &r.projects {
                if p == "*" {
                    return Projects::All;
                }
                set.insert(p.clone());
            }
        }
        Projects::Only(set)
    }

    /// Whether `identity` may send `t`.
    pub fn allows(&self, identity: Option<&str>, t: MessageType) -> bool {
        let Some(id) = identity else {
            return false;
        };
        self.rules.iter().any(|r| {
            (r.identity == "*" || r.identity == id)
                && r.types.iter().any(|p| p == "*" || type_matches(p, t))
        })
    }
}

/// The `zero_trust` mode: a mutually authenticating handshake (noise_xk, mtls or
/// post_quantum) under the `zero_trust` name, plus the policy the connection enforces after it
/// (set [`crate::Config::policy`]). Identities in the policy are those the inner mode
/// produces: `noise:<hex>`, `x509:<name>` or `pq:<fingerprint>`.
#[derive(Clone)]
pub struct ZeroTrust {
    /// The authenticating handshake.
    pub inner: Arc<dyn HandshakeProvider>,
}

impl ZeroTrust {
    /// Zero trust over `inner`'s authentication.
    pub fn over(inner: impl HandshakeProvider + 'static) -> ZeroTrust {
        ZeroTrust {
            inner: Arc::new(inner),
        }
    }
}

impl std::fmt::Debug for ZeroTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroTrust")
            .field("inner", &self.inner.mode())
            .finish()
    }
}

impl HandshakeProvider for ZeroTrust {
    fn mode(&self) -> SecurityMode {
        SecurityMode::ZeroTrust
    }

    fn new_handshake(&self, side: Side) -> Box<dyn SecurityHandshake> {
        self.inner.new_handshake(side)
    }
}

/// A shared policy.
pub type SharedPolicy = Arc<Policy>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_granted_per_identity() {
        let p = Policy::parse(
            "x509:a JOB_* projects=web,infra\nx509:b JOB_* projects=*\n* HEALTH_CHECK projects=docs\nx509:c JOB_*\n",
        )
        .unwrap();
        let a = p.projects(Some("x509:a"));
        assert!(a.grants("web") && a.grants("infra") && a.grants("docs") && !a.grants("ops"));
        assert_eq!(p.projects(Some("x509:b")), Projects::All);
        let c = p.projects(Some("x509:c"));
        assert!(c.grants("docs") && !c.grants("web"), "only what * grants");
        assert!(!p.projects(None).grants("docs"), "no identity, no project");
        assert!(Policy::parse("x509:a JOB_* web").is_err());
        assert!(Policy::parse("x509:a JOB_* projects=").is_err());
    }

    #[test]
    fn parses_and_matches() {
        let p = Policy::parse("# comment\nnoise:aa JOB_*,LOG_ENTRY\n* HEALTH_CHECK # anyone\n")
            .unwrap();
        assert!(p.allows(Some("noise:aa"), MessageType::JobRequest));
        assert!(!p.allows(Some("noise:bb"), MessageType::JobRequest));
        assert!(p.allows(Some("noise:bb"), MessageType::HealthCheck));
        assert!(!p.allows(None, MessageType::HealthCheck));
        assert!(Policy::parse("x NOT_A_TYPE").is_err());
        assert!(Policy::parse("only-one-field").is_err());
        assert!(!Policy::default().allows(Some("noise:aa"), MessageType::JobRequest));
    }
}
