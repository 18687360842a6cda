//! The scheduler's decisions: labels, slots, priority then age, concurrency groups, the two
//! policies, rejections, agents lost, and its bounds.

use super::*;

fn agent(id: &str, labels: &[&str], slots: u32) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        slots,
        projects: None,
    }
}

fn job(id: &str, priority: u8, created_at: u64) -> Queued {
    Queued {
        job_id: id.into(),
        priority,
        created_at,
        labels: Vec::new(),
        group: None,
        pinned: None,
        project: None,
    }
}

fn pairs(a: &[Assignment]) -> Vec<(&str, &str)> {
    a.iter()
        .map(|a| (a.job_id.as_str(), a.agent.as_str()))
        .collect()
}

#[test]
fn priority_then_age_decides_who_goes_first() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 100);
    s.agent_up(agent("a", &[], 2));
    s.enqueue(job("old-low", 10, 1));
    s.enqueue(job("new-high", 200, 5));
    s.enqueue(job("old-high", 200, 2));
    let got = s.assign(10);
    assert_eq!(pairs(&got), [("old-high", "a"), ("new-high", "a")]);
    assert_eq!((s.queued(), s.running()), (1, 2));
    assert!(s.assign(10).is_empty(), "no slot left");
    s.job_done("old-high");
    assert_eq!(pairs(&s.assign(10)), [("old-low", "a")]);
}

#[test]
fn labels_must_all_be_there_and_a_job_nobody_can_take_waits_without_blocking_others() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 100);
    s.agent_up(agent("linux", &["linux", "x86"], 4));
    s.agent_up(agent("mac", &["macos"], 4));
    let mut gpu = job("gpu", 255, 1);
    gpu.labels = vec!["linux".into(), "gpu".into()];
    let mut mac = job("mac-build", 1, 2);
    mac.labels = vec!["macos".into()];
    let mut lin = job("linux-build", 1, 3);
    lin.labels = vec!["x86".into(), "linux".into()];
    s.enqueue(gpu);
    s.enqueue(mac);
    s.enqueue(lin);
    let got = s.assign(10);
    assert_eq!(
        pairs(&got),
        [("mac-build", "mac"), ("linux-build", "linux")]
    );
    assert_eq!(s.queued(), 1, "the gpu job waits for an agent with a gpu");
    s.agent_up(agent("gpu-box", &["linux", "gpu"], 1));
    assert_eq!(pairs(&s.assign(10)), [("gpu", "gpu-box")]);
}

#[test]
fn least_loaded_spreads_by_share_of_slots_and_round_robin_takes_turns() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 100);
    s.agent_up(agent("big", &[], 4));
    s.agent_up(agent("small", &[], 1));
    for i in 0..5 {
        s.enqueue(job(&format!("j{i}"), 1, i));
    }
    let got = s.assign(10);
    let on = |who: &str| got.iter().filter(|a| a.agent == who).count();
    assert_eq!((on("big"), on("small")), (4, 1), "every slot used");
    let mut r = Scheduler::new(Policy::RoundRobin, 100);
    for id in ["a", "b", "c"] {
        r.agent_up(agent(id, &[], 10));
    }
    for i in 0..6 {
        r.enqueue(job(&format!("j{i}"), 1, i));
    }
    let agents: Vec<String> = r.assign(10).into_iter().map(|a| a.agent).collect();
    assert_eq!(agents, ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn a_concurrency_group_runs_one_job_at_a_time() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 100);
    s.agent_up(agent("a", &[], 10));
    for i in 0..3 {
        let mut j = job(&format!("deploy-{i}"), 1, i);
        j.group = Some("prod".into());
        s.enqueue(j);
    }
    s.enqueue(job("other", 1, 9));
    assert_eq!(pairs(&s.assign(10)), [("deploy-0", "a"), ("other", "a")]);
    assert!(s.assign(10).is_empty());
    s.job_done("deploy-0");
    assert_eq!(pairs(&s.assign(10)), [("deploy-1", "a")]);
}

#[test]
fn a_rejected_job_goes_to_another_agent_and_a_lost_agents_jobs_come_back() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 100);
    s.agent_up(agent("a", &[], 1));
    s.enqueue(job("j", 1, 1));
    assert_eq!(pairs(&s.assign(1)), [("j", "a")]);
    s.rejected(job("j", 1, 1), "a");
    assert!(
        s.assign(1).is_empty(),
        "not back to the agent that refused it"
    );
    s.agent_up(agent("b", &[], 1));
    assert_eq!(pairs(&s.assign(1)), [("j", "b")]);
    // b is lost: its job is handed back for the control plane to queue again.
    assert_eq!(s.agent_down("b"), ["j"]);
    assert_eq!(s.running(), 0);
    assert!(s.enqueue(job("j", 1, 1)));
    s.job_done("j"); // a finished job forgets who refused it
    assert!(s.dequeue("j"));
    assert!(!s.dequeue("j"));
}

#[test]
fn the_queue_is_bounded_and_one_assign_looks_at_a_bounded_run() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 3);
    assert!(s.enqueue(job("a", 1, 1)));
    assert!(!s.enqueue(job("a", 1, 1)), "no duplicate");
    assert!(s.enqueue(job("b", 1, 2)));
    assert!(s.enqueue(job("c", 1, 3)));
    assert!(!s.enqueue(job("d", 1, 4)), "full: the store keeps the rest");
    assert_eq!(s.room(), 0);
    // More unplaceable jobs than one scan looks at, then one that fits: it waits for a
    // later scan (the scan is bounded), and the control plane's refill brings it forward.
    let mut t = Scheduler::new(Policy::LeastLoaded, SCAN + 10);
    t.agent_up(agent("a", &[], 1));
    for i in 0..SCAN {
        let mut j = job(&format!("x{i:05}"), 200, i as u64);
        j.labels = vec!["never".into()];
        t.enqueue(j);
    }
    t.enqueue(job("fits", 1, 0));
    assert!(t.assign(1).is_empty());
}

#[test]
fn a_rejection_is_forgiven_and_the_agent_asked_again() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 8);
    s.agent_up(agent("a", &[], 1));
    assert!(s.enqueue(job("j", 1, 1)));
    assert_eq!(s.assign(1).len(), 1);
    s.rejected(job("j", 1, 1), "a");
    assert!(s.assign(1).is_empty(), "the only agent refused it");
    s.forgive("j");
    assert_eq!(s.assign(1)[0].agent, "a");
}

#[test]
fn a_pinned_job_waits_for_its_agent_and_an_avoided_one_goes_elsewhere() {
    let mut s = Scheduler::new(Policy::LeastLoaded, 8);
    s.agent_up(agent("a", &[], 1));
    let mut j = job("j", 1, 1);
    j.pinned = Some("b".into());
    assert!(s.enqueue(j));
    assert!(s.assign(1).is_empty(), "only b may take it");
    s.agent_up(agent("b", &[], 1));
    assert_eq!(pairs(&s.assign(1)), [("j", "b")]);
    assert!(s.enqueue(job("k", 1, 2)));
    s.avoid("k", "a");
    assert!(s.assign(1).is_empty(), "a is avoided and b is full");
    s.forgive("k");
    assert_eq!(pairs(&s.assign(1)), [("k", "a")]);
}

#[test]
fn a_project_goes_only_to_agents_granted_it() {
    use valkyrie_protocol::security::zero_trust::Projects;
    let mut s = Scheduler::new(Policy::LeastLoaded, 8);
    let mut web = agent("web-box", &[], 4);
    web.projects = Some(Projects::Only(["web".to_owned()].into()));
    let mut none = agent("bare", &[], 4);
    none.projects = Some(Projects::Only(Default::default()));
    s.agent_up(web);
    s.agent_up(none);
    let mut j = job("j", 1, 1);
    j.project = Some("web".into());
    let mut k = job("k", 1, 2);
    k.project = Some("infra".into());
    assert!(s.enqueue(j) && s.enqueue(k));
    s.enqueue(job("free", 1, 3));
    let got = s.assign(8);
    let mut pairs: Vec<_> = pairs(&got);
    pairs.sort();
    assert_eq!(
        pairs,
        [("free", "bare"), ("j", "web-box")],
        "k waits: nobody is granted infra"
    );
}
