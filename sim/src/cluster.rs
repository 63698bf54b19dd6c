//! Several nodes' control planes (the real `frenezulo_core::control::Control`) against a
//! modelled shared store, in virtual time: the NATS key-value bucket with revisions that
//! count up across keys, compare-and-set writes, a watch per node that delivers changes in
//! order and late, store outages, a node cut off from the store, node restarts, and a
//! writer outside the nodes that stores entries no node accepts.
//!
//! Invariants, checked as the run goes and at its end: no node applies a change the store
//! never had at that revision, nor goes back a revision; a refused module is applied
//! nowhere; every caller is answered once (unless its node restarted first); at most
//! `max_preparing` modules are prepared at once; a change acknowledged to a caller is in
//! the store's history; once the store heals and the run drains, every node serves what the
//! store holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use frenezulo_core::ServiceName;
use frenezulo_core::control::{
    Ask, Change, Control, ControlConfig, Input, Known, Outcome, Output, Payloads, RemoteChange,
    Ticket,
};

use crate::model::Violation;
use crate::rng::Rng;

/// What a run of the cluster model takes.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Services changed (the same few names, so changes meet).
    pub services: usize,
    /// Seconds of changes; then faults heal and the run drains.
    pub duration_s: f64,
    /// Changes asked per second, all nodes together.
    pub change_rate: f64,
    /// Writes per second by a writer outside the nodes.
    pub foreign_rate: f64,
    /// Share of modules no node accepts.
    pub refused_share: f64,
    /// Mean time to fetch and compile a module, ms.
    pub prepare_ms: f64,
    /// Mean one-way delay between a node and the store, ms.
    pub store_ms: f64,
    /// Store outages per second, and their mean length in seconds.
    pub outage_rate: f64,
    /// Mean outage length, s.
    pub outage_s: f64,
    /// A node cut off from the store, per second, and for how long on average.
    pub partition_rate: f64,
    /// Mean partition length, s.
    pub partition_s: f64,
    /// Node restarts per second, and how long a node is down on average.
    pub restart_rate: f64,
    /// Mean time down, s.
    pub restart_s: f64,
    /// Modules prepared at once per node.
    pub max_preparing: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            seed: 1,
            nodes: 3,
            services: 4,
            duration_s: 60.0,
            change_rate: 5.0,
            foreign_rate: 0.2,
            refused_share: 0.1,
            prepare_ms: 200.0,
            store_ms: 5.0,
            outage_rate: 0.0,
            outage_s: 3.0,
            partition_rate: 0.0,
            partition_s: 3.0,
            restart_rate: 0.0,
            restart_s: 2.0,
            max_preparing: 4,
        }
    }
}

/// What a run counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOutcome {
    /// Changes callers asked for.
    pub asked: u64,
    /// Answered done.
    pub done: u64,
    /// Answered with a conflict (the store's compare-and-set, or overtaken).
    pub conflicts: u64,
    /// Answered busy or unavailable (503).
    pub unavailable: u64,
    /// Answered refused (the module).
    pub refused: u64,
    /// Callers whose node restarted before it answered.
    pub lost_callers: u64,
    /// Other nodes' changes applied.
    pub remote_applied: u64,
    /// Other nodes' changes refused here.
    pub remote_refused: u64,
    /// Revisions in the store at the end.
    pub store_revisions: u64,
    /// Virtual ms from the end of changes and faults until the last node caught up.
    pub converge_ms: u64,
}

/// The model's payloads: a value stands for a module and its settings.
struct Model;

impl Payloads for Model {
    type Caller = u64;
    type Job = Value;
    type Ready = Value;
    type Refusal = Value;
    type WriteError = WriteFailure;
    type Applied = ();
    type ApplyError = ();
}

/// A module: `refused` ones fail to prepare on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Value {
    id: u64,
    refused: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFailure {
    Conflict,
    Unavailable,
}

/// The shared store.
#[derive(Default)]
struct Store {
    revision: u64,
    /// Each key's last revision and value (`None`: removed).
    current: BTreeMap<ServiceName, (u64, Option<Value>)>,
    history: BTreeMap<u64, (ServiceName, Option<Value>)>,
}

impl Store {
    fn write(
        &mut self,
        key: &ServiceName,
        value: Option<Value>,
        expected: Option<u64>,
    ) -> Result<u64, WriteFailure> {
        let now = self.current.get(key).and_then(|&(r, v)| v.map(|_| r));
        if now != expected {
            return Err(WriteFailure::Conflict);
        }
        self.revision += 1;
        self.current.insert(key.clone(), (self.revision, value));
        self.history.insert(self.revision, (key.clone(), value));
        Ok(self.revision)
    }
}

/// Something due at a virtual time.
enum Event {
    Call {
        node: usize,
    },
    Foreign,
    Prepared {
        node: usize,
        life: u64,
        ticket: Ticket,
        job: Value,
    },
    /// A write reaches the store.
    WriteArrives {
        node: usize,
        life: u64,
        ticket: Ticket,
        name: ServiceName,
        value: Option<Value>,
        expected: Option<u64>,
    },
    /// The store's answer reaches the node.
    Written {
        node: usize,
        life: u64,
        ticket: Ticket,
        result: Result<u64, WriteFailure>,
    },
    /// The node's watch has its next change.
    Watch {
        node: usize,
        life: u64,
    },
    Outage {
        up: bool,
    },
    Partition {
        node: usize,
        cut: bool,
    },
    Restart {
        node: usize,
    },
    Up {
        node: usize,
    },
}

struct Node {
    control: Control<Model>,
    /// Bumped at each restart: answers meant for an earlier life are dropped.
    life: u64,
    down: bool,
    cut: bool,
    /// What the node serves (its durable copy): revision and value, `None` removed.
    applied: BTreeMap<ServiceName, (Option<u64>, Option<Value>)>,
    watch: VecDeque<(ServiceName, u64, Option<Value>)>,
    callers: BTreeSet<u64>,
}

impl Node {
    fn new(
        config: &ClusterConfig,
        applied: BTreeMap<ServiceName, (Option<u64>, Option<Value>)>,
        life: u64,
    ) -> Self {
        let known = applied.iter().map(|(n, &(revision, value))| {
            let known = Known {
                revision,
                present: value.is_some(),
            };
            (n.clone(), known)
        });
        let control = Control::new(
            ControlConfig {
                shared: true,
                max_preparing: config.max_preparing,
            },
            known,
        );
        Node {
            control,
            life,
            down: false,
            cut: false,
            applied,
            watch: VecDeque::new(),
            callers: BTreeSet::new(),
        }
    }
}

struct Sim<'a> {
    config: &'a ClusterConfig,
    now_us: u64,
    /// Due events by (time, sequence): always advance to the earliest.
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    store: Store,
    store_up: bool,
    nodes: Vec<Node>,
    names: Vec<ServiceName>,
    next_id: u64,
    next_caller: u64,
    /// Changes still being made (false once the run drains).
    live: bool,
    acknowledged: Vec<(ServiceName, u64, Option<Value>)>,
    outcome: ClusterOutcome,
    rng: Rng,
    faults: Rng,
    delays: Rng,
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(Violation(format!($($msg)*)));
        }
    };
}

impl Sim<'_> {
    fn at(&mut self, delay_s: f64, event: Event) {
        self.seq += 1;
        let due = self.now_us + (delay_s * 1e6).max(0.0) as u64;
        self.events.insert((due, self.seq), event);
    }

    fn delay(&mut self, mean_ms: f64) -> f64 {
        self.delays.exponential(mean_ms / 1e3)
    }

    fn value(&mut self) -> Value {
        self.next_id += 1;
        Value {
            id: self.next_id,
            refused: self.rng.chance(self.config.refused_share),
        }
    }

    fn reachable(&self, node: usize) -> bool {
        self.store_up && !self.nodes[node].cut && !self.nodes[node].down
    }

    /// Tells a node whether it can reach the store, when that changed.
    fn sync(&mut self, node: usize) -> Result<(), Violation> {
        let available = self.reachable(node);
        if !self.nodes[node].down && self.nodes[node].control.writable() != available {
            self.handle(node, Input::Shared { available })?;
        }
        Ok(())
    }

    fn handle(&mut self, node: usize, input: Input<Model>) -> Result<(), Violation> {
        let n = &mut self.nodes[node];
        if let Err(e) = n.control.handle(input) {
            return Err(Violation(format!("node {node}: contract broken: {e}")));
        }
        self.drain(node)
    }

    fn drain(&mut self, node: usize) -> Result<(), Violation> {
        while let Some(output) = self.nodes[node].control.poll_output() {
            let life = self.nodes[node].life;
            check!(
                self.nodes[node].control.preparing() <= self.config.max_preparing,
                "node {node} prepares {} at once",
                self.nodes[node].control.preparing()
            );
            match output {
                Output::Prepare { ticket, job, .. } => {
                    let d = self.delay(self.config.prepare_ms);
                    self.at(
                        d,
                        Event::Prepared {
                            node,
                            life,
                            ticket,
                            job,
                        },
                    );
                }
                Output::Write {
                    ticket,
                    name,
                    change,
                    expected,
                } => {
                    let value = match change {
                        Change::Put(v) => Some(v),
                        Change::Remove => None,
                    };
                    let d = self.delay(self.config.store_ms);
                    self.at(
                        d,
                        Event::WriteArrives {
                            node,
                            life,
                            ticket,
                            name,
                            value,
                            expected,
                        },
                    );
                }
                Output::Apply {
                    ticket,
                    name,
                    change,
                    revision,
                } => {
                    let value = match change {
                        Change::Put(v) => Some(v),
                        Change::Remove => None,
                    };
                    check!(
                        !value.is_some_and(|v| v.refused),
                        "node {node} applied a refused module to {name}"
                    );
                    if let Some(r) = revision {
                        check!(
                            self.store.history.get(&r) == Some(&(name.clone(), value)),
                            "node {node} applied {name} at revision {r}, which the store never had"
                        );
                        let before = self.nodes[node].applied.get(&name).and_then(|a| a.0);
                        check!(
                            before <= Some(r),
                            "node {node} took {name} back from {before:?} to {r}"
                        );
                    }
                    // Like the registry: a change made here only keeps the revision stored.
                    let applied = &mut self.nodes[node].applied;
                    let revision = revision.or_else(|| applied.get(&name).and_then(|a| a.0));
                    applied.insert(name, (revision, value));
                    let n = &mut self.nodes[node];
                    if let Err(e) = n.control.handle(Input::Applied {
                        ticket,
                        result: Ok(()),
                    }) {
                        return Err(Violation(format!("node {node}: contract broken: {e}")));
                    }
                }
                Output::Reply {
                    caller,
                    name,
                    outcome,
                } => {
                    check!(
                        self.nodes[node].callers.remove(&caller),
                        "node {node} answered caller {caller} twice"
                    );
                    match outcome {
                        Outcome::Done(()) => {
                            self.outcome.done += 1;
                            if let Some(&(Some(r), value)) = self.nodes[node].applied.get(&name) {
                                self.acknowledged.push((name, r, value));
                            }
                        }
                        Outcome::Superseded { .. }
                        | Outcome::WriteFailed(WriteFailure::Conflict) => {
                            self.outcome.conflicts += 1
                        }
                        Outcome::Refused(_) => self.outcome.refused += 1,
                        _ => self.outcome.unavailable += 1,
                    }
                }
                Output::Remote { outcome, .. } => match outcome {
                    Outcome::Done(()) => self.outcome.remote_applied += 1,
                    Outcome::Refused(_) => self.outcome.remote_refused += 1,
                    _ => {}
                },
                _ => return Err(Violation("an output the model does not know".to_owned())),
            }
        }
        Ok(())
    }

    /// A change in the store reaches every node's watch, in order.
    fn publish(&mut self, revision: u64) {
        let (name, value) = self.store.history[&revision].clone();
        for node in 0..self.nodes.len() {
            let n = &mut self.nodes[node];
            n.watch.push_back((name.clone(), revision, value));
            if n.watch.len() == 1 && !n.down {
                let life = n.life;
                let d = self.delay(self.config.store_ms);
                self.at(d, Event::Watch { node, life });
            }
        }
    }

    fn step(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Call { node } => {
                if self.live {
                    let rate = self.config.change_rate / self.config.nodes as f64;
                    let d = self.rng.exponential(1.0 / rate);
                    self.at(d, Event::Call { node });
                }
                if self.nodes[node].down {
                    return Ok(());
                }
                let name = self.names[self.rng.below(self.names.len())].clone();
                let roll = self.rng.unit();
                let ask = if roll < 0.7 {
                    Ask::Prepare(self.value())
                } else if roll < 0.85 {
                    // New settings for the module it has: accepted, nothing to prepare.
                    let mut v = self.value();
                    v.refused = false;
                    Ask::Put(v)
                } else {
                    Ask::Remove
                };
                // Now and then a caller names a revision it read long ago.
                let if_match = self.rng.chance(0.1).then_some(self.store.revision / 2);
                let caller = self.next_caller;
                self.next_caller += 1;
                self.outcome.asked += 1;
                self.nodes[node].callers.insert(caller);
                self.handle(
                    node,
                    Input::Call {
                        caller,
                        name,
                        if_match,
                        ask,
                    },
                )?;
            }
            Event::Foreign => {
                if self.live {
                    let d = self.rng.exponential(1.0 / self.config.foreign_rate);
                    self.at(d, Event::Foreign);
                }
                if self.store_up {
                    let name = self.names[self.rng.below(self.names.len())].clone();
                    let value = self.rng.chance(0.8).then(|| self.value());
                    let expected = self
                        .store
                        .current
                        .get(&name)
                        .and_then(|&(r, v)| v.map(|_| r));
                    let revision = self
                        .store
                        .write(&name, value, expected)
                        .expect("it read first");
                    self.publish(revision);
                }
            }
            Event::Prepared {
                node,
                life,
                ticket,
                job,
            } => {
                if self.nodes[node].life == life {
                    let result = if job.refused { Err(job) } else { Ok(job) };
                    self.handle(node, Input::Prepared { ticket, result })?;
                }
            }
            Event::WriteArrives {
                node,
                life,
                ticket,
                name,
                value,
                expected,
            } => {
                // A write that reached the store lands even if its node restarts meanwhile.
                let result = if self.store_up && !self.nodes[node].cut {
                    self.store.write(&name, value, expected)
                } else {
                    Err(WriteFailure::Unavailable)
                };
                if let Ok(revision) = result {
                    self.publish(revision);
                }
                let d = self.delay(self.config.store_ms);
                self.at(
                    d,
                    Event::Written {
                        node,
                        life,
                        ticket,
                        result,
                    },
                );
            }
            Event::Written {
                node,
                life,
                ticket,
                result,
            } => {
                if self.nodes[node].life == life {
                    self.handle(node, Input::Written { ticket, result })?;
                }
            }
            Event::Watch { node, life } => {
                if self.nodes[node].life != life || self.nodes[node].down {
                    return Ok(());
                }
                if !self.reachable(node) {
                    // The watch resumes once the node reaches the store again.
                    self.at(0.5, Event::Watch { node, life });
                    return Ok(());
                }
                let Some((name, revision, value)) = self.nodes[node].watch.pop_front() else {
                    return Ok(());
                };
                if !self.nodes[node].watch.is_empty() {
                    let d = self.delay(self.config.store_ms);
                    self.at(d, Event::Watch { node, life });
                }
                let change = match value {
                    Some(v) => RemoteChange::Put(v),
                    None => RemoteChange::Remove,
                };
                self.handle(
                    node,
                    Input::Remote {
                        name,
                        revision,
                        change,
                    },
                )?;
            }
            Event::Outage { up } => {
                self.store_up = up;
                if self.live && !up {
                    let d = self.faults.exponential(self.config.outage_s);
                    self.at(d, Event::Outage { up: true });
                } else if self.live && self.config.outage_rate > 0.0 {
                    let d = self.faults.exponential(1.0 / self.config.outage_rate);
                    self.at(d, Event::Outage { up: false });
                }
                for node in 0..self.nodes.len() {
                    self.sync(node)?;
                }
            }
            Event::Partition { node, cut } => {
                self.nodes[node].cut = cut;
                if self.live && cut {
                    let d = self.faults.exponential(self.config.partition_s);
                    self.at(d, Event::Partition { node, cut: false });
                } else if self.live {
                    let rate = self.config.partition_rate / self.config.nodes as f64;
                    let d = self.faults.exponential(1.0 / rate);
                    self.at(d, Event::Partition { node, cut: true });
                }
                self.sync(node)?;
            }
            Event::Restart { node } => {
                // In-flight work and callers die with the process; what it applied is on disk.
                let n = &mut self.nodes[node];
                self.outcome.lost_callers += n.callers.len() as u64;
                let applied = std::mem::take(&mut n.applied);
                let life = n.life + 1;
                self.nodes[node] = Node::new(self.config, applied, life);
                self.nodes[node].down = true;
                let d = self.faults.exponential(self.config.restart_s);
                self.at(d, Event::Up { node });
            }
            Event::Up { node } => {
                let n = &mut self.nodes[node];
                n.down = false;
                // A watch from the start sees each key's last change.
                n.watch = self
                    .store
                    .current
                    .iter()
                    .map(|(k, &(r, v))| (k.clone(), r, v))
                    .collect();
                let life = n.life;
                self.at(0.0, Event::Watch { node, life });
                self.sync(node)?;
                if self.live {
                    let rate = self.config.restart_rate / self.config.nodes as f64;
                    let d = self.faults.exponential(1.0 / rate);
                    self.at(d, Event::Restart { node });
                }
            }
        }
        Ok(())
    }

    /// Stops changes and faults: the store comes back, every node is reachable and up.
    fn heal(&mut self) -> Result<(), Violation> {
        self.live = false;
        self.events.retain(|_, e| {
            !matches!(
                e,
                Event::Call { .. }
                    | Event::Foreign
                    | Event::Outage { .. }
                    | Event::Partition { .. }
                    | Event::Restart { .. }
            )
        });
        self.store_up = true;
        for node in 0..self.nodes.len() {
            self.nodes[node].cut = false;
            self.sync(node)?;
        }
        Ok(())
    }

    fn check_end(&self) -> Result<(), Violation> {
        for (i, node) in self.nodes.iter().enumerate() {
            check!(
                node.callers.is_empty(),
                "node {i} never answered callers {:?}",
                node.callers
            );
            check!(
                node.control.in_flight() == 0,
                "node {i} still has {} changes in flight",
                node.control.in_flight()
            );
            for (name, &(revision, value)) in &self.store.current {
                if value.is_some_and(|v| v.refused) {
                    continue;
                }
                let served = node.applied.get(name).copied().unwrap_or((None, None));
                let converged = match value {
                    Some(_) => served == (Some(revision), value),
                    None => served.1.is_none(),
                };
                check!(
                    converged,
                    "node {i} serves {name} as {served:?}; the store holds {value:?} at {revision}"
                );
            }
        }
        for (name, revision, value) in &self.acknowledged {
            check!(
                self.store.history.get(revision) == Some(&(name.clone(), *value)),
                "{name} acknowledged at revision {revision} is not in the store"
            );
        }
        Ok(())
    }
}

/// Runs the cluster model once.
pub fn run(config: &ClusterConfig) -> Result<ClusterOutcome, Violation> {
    let root = Rng::new(config.seed);
    let mut sim = Sim {
        config,
        now_us: 0,
        events: BTreeMap::new(),
        seq: 0,
        store: Store::default(),
        store_up: true,
        nodes: (0..config.nodes)
            .map(|_| Node::new(config, BTreeMap::new(), 0))
            .collect(),
        names: (0..config.services)
            .map(|i| ServiceName::new(&format!("svc{i}")).expect("a valid name"))
            .collect(),
        next_id: 0,
        next_caller: 0,
        live: true,
        acknowledged: Vec::new(),
        outcome: ClusterOutcome::default(),
        rng: root.fork("changes"),
        faults: root.fork("faults"),
        delays: root.fork("delays"),
    };
    for node in 0..config.nodes {
        sim.sync(node)?;
        sim.at(0.0, Event::Call { node });
        if config.partition_rate > 0.0 {
            let d = sim
                .faults
                .exponential(config.nodes as f64 / config.partition_rate);
            sim.at(d, Event::Partition { node, cut: true });
        }
        if config.restart_rate > 0.0 {
            let d = sim
                .faults
                .exponential(config.nodes as f64 / config.restart_rate);
            sim.at(d, Event::Restart { node });
        }
    }
    if config.foreign_rate > 0.0 {
        sim.at(0.0, Event::Foreign);
    }
    if config.outage_rate > 0.0 {
        let d = sim.faults.exponential(1.0 / config.outage_rate);
        sim.at(d, Event::Outage { up: false });
    }
    let end_us = (config.duration_s * 1e6) as u64;
    let mut healed_at = None;
    // Bounded: after the heal only answers and watch deliveries remain, each finite.
    let mut steps: u64 = 0;
    while let Some(((due, _), event)) = sim.events.pop_first() {
        steps += 1;
        check!(steps < 50_000_000, "the run does not drain");
        if healed_at.is_none() && due >= end_us {
            sim.now_us = end_us;
            sim.heal()?;
            healed_at = Some(end_us);
            if matches!(
                event,
                Event::Call { .. }
                    | Event::Foreign
                    | Event::Outage { .. }
                    | Event::Partition { .. }
                    | Event::Restart { .. }
            ) {
                continue;
            }
        }
        sim.now_us = due;
        sim.step(event)?;
    }
    if healed_at.is_none() {
        sim.now_us = sim.now_us.max(end_us);
        sim.heal()?;
        healed_at = Some(sim.now_us);
        while let Some(((due, _), event)) = sim.events.pop_first() {
            sim.now_us = due;
            sim.step(event)?;
        }
    }
    sim.check_end()?;
    sim.outcome.store_revisions = sim.store.revision;
    sim.outcome.converge_ms = sim.now_us.saturating_sub(healed_at.unwrap_or(0)) / 1000;
    Ok(sim.outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calm_cluster_converges_and_acknowledges_most_changes() {
        let outcome = run(&ClusterConfig::default()).unwrap();
        assert!(outcome.asked > 200, "{outcome:?}");
        assert!(
            outcome.done > 0 && outcome.remote_applied > 0,
            "{outcome:?}"
        );
        assert_eq!(outcome.lost_callers, 0);
        // Busy (all preparing slots taken by other nodes' changes) now and then, no more.
        assert!(outcome.unavailable * 20 < outcome.asked, "{outcome:?}");
    }

    #[test]
    fn the_same_seed_runs_the_same() {
        let config = ClusterConfig {
            outage_rate: 0.05,
            partition_rate: 0.05,
            restart_rate: 0.05,
            duration_s: 30.0,
            ..ClusterConfig::default()
        };
        assert_eq!(run(&config).unwrap(), run(&config).unwrap());
        let other = ClusterConfig {
            seed: 2,
            ..config.clone()
        };
        assert_ne!(run(&config).unwrap(), run(&other).unwrap());
    }
}
