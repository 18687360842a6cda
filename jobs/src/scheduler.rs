//! The scheduler, sans-IO like the protocol crate: events in (agents come and go, jobs are
//! queued, end, are rejected), assignments out ([`Scheduler::assign`]). It decides; the
//! control plane makes each decision durable (`Change::Assign`) before it sends a JOB_REQUEST.
//!
//! A queued job goes to a connected agent that has every label it asks for, a free slot, and
//! has not rejected it; jobs of one concurrency group run one at a time; the queue is taken by
//! priority (higher first), then age, then id. Among the agents that fit, [`Policy`] picks:
//! the least loaded (running ÷ slots), or the next in turn.
//!
//! Bounds: the scheduler holds at most `capacity` queued jobs (the store holds the rest: when
//! [`Scheduler::room`] says so, the control plane loads more with `Store::queued`), and one
//! [`Scheduler::assign`] looks at most at [`SCAN`] queued jobs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Queued jobs one `assign` call looks at, at most (jobs nobody can take yet are skipped, and
/// a long run of them must not make dispatch slow).
pub const SCAN: usize = 1024;

/// How an agent is chosen among those that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The agent with the smallest share of its slots in use (ties: by id).
    #[default]
    LeastLoaded,
    /// Agents in turn, by id.
    RoundRobin,
}

/// An agent as it announced itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Its id (`--id`).
    pub id: String,
    /// Its labels.
    pub labels: BTreeSet<String>,
    /// Jobs it runs at once.
    pub slots: u32,
    /// The projects whose jobs it may run (none: no policy, any job).
    pub projects: Option<valkyrie_protocol::security::zero_trust::Projects>,
}

/// A queued job, as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its id.
    pub job_id: String,
    /// 0–255, higher first.
    pub priority: u8,
    /// When it was submitted (it goes before younger jobs of its priority).
    pub created_at: u64,
    /// Labels its agent must have.
    pub labels: Vec<String>,
    /// Its concurrency group.
    pub group: Option<String>,
    /// The only agent it may go to (a migration's target).
    pub pinned: Option<String>,
    /// Its project (agents must be granted it).
    pub project: Option<String>,
}

/// A decision: run `job_id` on `agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The job.
    pub job_id: String,
    /// The agent.
    pub agent: String,
}

/// The queue's order: priority (higher first), then age, then id.
type Key = (std::cmp::Reverse<u8>, u64, String);

#[derive(Debug)]
struct Agent {
    info: AgentInfo,
    running: HashSet<String>,
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    capacity: usize,
    queue: BTreeMap<Key, Queued>,
    /// Where each queued job is in `queue`.
    keys: HashMap<String, Key>,
    agents: BTreeMap<String, Agent>,
    /// Which agent runs each assigned job, and the job's group.
    assigned: HashMap<String, (String, Option<String>)>,
    /// Groups with a job assigned.
    busy_groups: HashSet<String>,
    /// Agents that rejected a job (it goes to another).
    rejected: HashMap<String, HashSet<String>>,
    /// The round-robin turn: the last agent given a job.
    turn: Option<String>,
}

impl Scheduler {
    /// A scheduler choosing by `policy`, holding at most `capacity` queued jobs.
    pub fn new(policy: Policy, capacity: usize) -> Scheduler {
        Scheduler {
            policy,
            capacity: capacity.max(1),
            queue: BTreeMap::new(),
            keys: HashMap::new(),
            agents: BTreeMap::new(),
            assigned: HashMap::new(),
            busy_groups: HashSet::new(),
            rejected: HashMap::new(),
            turn: None,
        }
    }

    /// Queued jobs it may still take (the control plane loads that many from the store).
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.queue.len())
    }

    /// Queued jobs held.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Jobs assigned and not ended.
    pub fn running(&self) -> usize {
        self.assigned.len()
    }

    /// Queue `job` (false when full, or already queued or assigned: nothing changes).
    pub fn enqueue(&mut self, job: Queued) -> bool {
        if self.queue.len() >= self.capacity
            || self.keys.contains_key(&job.job_id)
            || self.assigned.contains_key(&job.job_id)
        {
            return false;
        }
        let key = (
            std::cmp::Reverse(job.priority),
            job.created_at,
            job.job_id.clone(),
        );
        self.keys.insert(job.job_id.clone(), key.clone());
        self.queue.insert(key, job);
        true
    }

    /// Take `job_id` out of the queue (cancelled, paused while queued). Whether it was there.
    pub fn dequeue(&mut self, job_id: &str) -> bool {
        match self.keys.remove(job_id) {
            Some(key) => self.queue.remove(&key).is_some(),
            None => false,
        }
    }

    /// An agent connected (or announced itself again: its labels and slots are replaced,
    /// the jobs it runs kept). A new agent takes on the jobs [`Scheduler::restore`] gave it.
    pub fn agent_up(&mut self, info: AgentInfo) {
        match self.agents.get_mut(&info.id) {
            Some(a) => a.info = info,
            None => {
                let running = self
                    .assigned
                    .iter()
                    .filter(|(_, (agent, _))| *agent == info.id)
                    .map(|(job, _)| job.clone())
                    .collect();
                self.agents.insert(info.id.clone(), Agent { info, running });
            }
        }
    }

    /// A job the store says is on `agent` (found when the control plane starts again): held
    /// as assigned there, its slot and group taken, until it ends or the agent is lost.
    pub fn restore(&mut self, job: Queued, agent: &str) {
        self.dequeue(&job.job_id);
        if let Some(g) = &job.group {
            self.busy_groups.insert(g.clone());
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.running.insert(job.job_id.clone());
        }
        self.assigned
            .insert(job.job_id, (agent.to_owned(), job.group));
    }

    /// The agents it knows, by id: each with the jobs it runs.
    pub fn agents(&self) -> impl Iterator<Item = (&AgentInfo, usize)> {
        self.agents.values().map(|a| (&a.info, a.running.len()))
    }

    /// The agent `job_id` is assigned to.
    pub fn agent_of(&self, job_id: &str) -> Option<&str> {
        self.assigned.get(job_id).map(|(a, _)| a.as_str())
    }

    /// An agent is gone (its lease expired): the jobs it was running, which the control
    /// plane ends as lost and queues again.
    pub fn agent_down(&mut self, id: &str) -> Vec<String> {
        let Some(agent) = self.agents.remove(id) else {
            return Vec::new();
        };
        let mut jobs: Vec<String> = agent.running.into_iter().collect();
        jobs.sort();
        for job in &jobs {
            self.release(job);
        }
        jobs
    }

    /// A job assigned earlier has ended (or was taken back): its slot and group are free.
    pub fn job_done(&mut self, job_id: &str) {
        if let Some((agent, _)) = self.assigned.get(job_id).cloned() {
            if let Some(a) = self.agents.get_mut(&agent) {
                a.running.remove(job_id);
            }
            self.release(job_id);
        }
        self.rejected.remove(job_id);
    }

    /// The agent refused the job (JOB_REJECT): it is queued again and goes to another agent.
    pub fn rejected(&mut self, job: Queued, agent: &str) {
        let id = job.job_id.clone();
        if let Some(a) = self.agents.get_mut(agent) {
            a.running.remove(&id);
        }
        self.release(&id);
        self.rejected
            .entry(id)
            .or_default()
            .insert(agent.to_owned());
        self.enqueue(job);
    }

    /// Keep `job_id` from `agent` as if it had rejected it (a migration away from it), until
    /// [`Scheduler::forgive`].
    pub fn avoid(&mut self, job_id: &str, agent: &str) {
        self.rejected
            .entry(job_id.to_owned())
            .or_default()
            .insert(agent.to_owned());
    }

    /// Let agents that rejected `job_id` be asked again (what made them refuse may have
    /// passed: a slot taken only for a moment).
    pub fn forgive(&mut self, job_id: &str) {
        self.rejected.remove(job_id);
    }

    fn release(&mut self, job_id: &str) {
        if let Some((_, group)) = self.assigned.remove(job_id)
            && let Some(g) = group
        {
            self.busy_groups.remove(&g);
        }
    }

    /// Decide up to `max` assignments now. Each is recorded as running on its agent (the
    /// caller makes it durable, then sends it; if that fails, `job_done` and `enqueue`).
    pub fn assign(&mut self, max: usize) -> Vec<Assignment> {
        let mut out = Vec::new();
        let mut taken = Vec::new();
        let mut groups_now: HashSet<String> = HashSet::new();
        // Slots free on all agents: nothing to scan for when there are none.
        let mut free: u64 = self
            .agents
            .values()
            .map(|a| u64::from(a.info.slots).saturating_sub(a.running.len() as u64))
            .sum();
        for (key, job) in self.queue.iter().take(SCAN) {
            if out.len() >= max || free == 0 {
                break;
            }
            if let Some(g) = &job.group
                && (self.busy_groups.contains(g) || groups_now.contains(g))
            {
                continue;
            }
            let Some(agent) = self.choose(job) else {
                continue;
            };
            if let Some(g) = &job.group {
                groups_now.insert(g.clone());
            }
            if let Some(a) = self.agents.get_mut(&agent) {
                a.running.insert(job.job_id.clone());
            }
            free -= 1;
            self.turn = Some(agent.clone());
            out.push(Assignment {
                job_id: job.job_id.clone(),
                agent,
            });
            taken.push((key.clone(), job.group.clone()));
        }
        for ((key, group), a) in taken.into_iter().zip(&out) {
            self.queue.remove(&key);
            self.keys.remove(&a.job_id);
            if let Some(g) = &group {
                self.busy_groups.insert(g.clone());
            }
            self.assigned
                .insert(a.job_id.clone(), (a.agent.clone(), group));
        }
        out
    }

    /// The agent for `job`, by the policy, among those that fit.
    fn choose(&self, job: &Queued) -> Option<String> {
        let refused = self.rejected.get(&job.job_id);
        let fits = |a: &&Agent| {
            (a.running.len() as u64) < u64::from(a.info.slots)
                && job.pinned.as_ref().is_none_or(|p| *p == a.info.id)
                && match (&job.project, &a.info.projects) {
                    (Some(p), Some(granted)) => granted.grants(p),
                    _ => true,
                }
                && job.labels.iter().all(|l| a.info.labels.contains(l))
                && refused.is_none_or(|r| !r.contains(&a.info.id))
        };
        match self.policy {
            Policy::LeastLoaded => self
                .agents
                .values()
                .filter(fits)
                .min_by(|a, b| {
                    // running_a / slots_a < running_b / slots_b, without division.
                    let la = a.running.len() as u64 * u64::from(b.info.slots);
                    let lb = b.running.len() as u64 * u64::from(a.info.slots);
                    la.cmp(&lb).then_with(|| a.info.id.cmp(&b.info.id))
                })
                .map(|a| a.info.id.clone()),
            Policy::RoundRobin => {
                let after = self.turn.as_deref().unwrap_or("");
                self.agents
                    .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .map(|(_, a)| a)
                    .chain(self.agents.values())
                    .find(fits)
                    .map(|a| a.info.id.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests;
