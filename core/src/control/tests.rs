use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

/// Values stand for modules: a multiple of 5 is one no node accepts.
struct Model;

impl Payloads for Model {
    type Caller = u32;
    type Job = u32;
    type Ready = u32;
    type Refusal = u32;
    type WriteError = WriteFailure;
    type Applied = ();
    type ApplyError = ();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFailure {
    Conflict,
    Unavailable,
}

fn refused(value: u32) -> bool {
    value.is_multiple_of(5)
}

fn name(n: &str) -> ServiceName {
    ServiceName::new(n).unwrap()
}

fn control(shared: bool, max_preparing: usize) -> Control<Model> {
    let mut c = Control::new(
        ControlConfig {
            shared,
            max_preparing,
        },
        [],
    );
    c.handle(Input::Shared { available: true }).unwrap();
    c
}

fn outputs(c: &mut Control<Model>) -> Vec<Output<Model>> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn only(c: &mut Control<Model>) -> Output<Model> {
    let mut all = outputs(c);
    assert_eq!(all.len(), 1, "one output");
    all.pop().unwrap()
}

fn call(
    c: &mut Control<Model>,
    caller: u32,
    service: &str,
    if_match: Option<u64>,
    ask: Ask<Model>,
) {
    c.handle(Input::Call {
        caller,
        name: name(service),
        if_match,
        ask,
    })
    .unwrap();
}

fn remote(c: &mut Control<Model>, service: &str, revision: u64, change: RemoteChange<Model>) {
    c.handle(Input::Remote {
        name: name(service),
        revision,
        change,
    })
    .unwrap();
}

#[test]
fn without_a_shared_store_a_change_is_prepared_then_applied() {
    let mut c = control(false, 2);
    call(&mut c, 1, "shop", None, Ask::Prepare(7));
    let Output::Prepare { ticket, job: 7, .. } = only(&mut c) else {
        panic!("prepare first");
    };
    c.handle(Input::Prepared {
        ticket,
        result: Ok(7),
    })
    .unwrap();
    let Output::Apply {
        ticket,
        change: Change::Put(7),
        revision: None,
        ..
    } = only(&mut c)
    else {
        panic!("then apply, with no revision");
    };
    c.handle(Input::Applied {
        ticket,
        result: Ok(()),
    })
    .unwrap();
    assert!(matches!(
        only(&mut c),
        Output::Reply {
            caller: 1,
            outcome: Outcome::Done(()),
            ..
        }
    ));
    assert_eq!(
        c.known(&name("shop")),
        Some(Known {
            revision: None,
            present: true
        })
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn callers_past_the_preparing_slots_are_told_busy_and_refusals_free_a_slot() {
    let mut c = control(false, 1);
    call(&mut c, 1, "a", None, Ask::Prepare(1));
    let Output::Prepare { ticket, .. } = only(&mut c) else {
        panic!()
    };
    call(&mut c, 2, "b", None, Ask::Prepare(2));
    assert!(matches!(
        only(&mut c),
        Output::Reply {
            caller: 2,
            outcome: Outcome::Busy,
            ..
        }
    ));
    c.handle(Input::Prepared {
        ticket,
        result: Err(9),
    })
    .unwrap();
    assert!(matches!(
        only(&mut c),
        Output::Reply {
            caller: 1,
            outcome: Outcome::Refused(9),
            ..
        }
    ));
    call(&mut c, 3, "b", None, Ask::Prepare(2));
    assert!(matches!(only(&mut c), Output::Prepare { .. }));
}

#[test]
fn a_shared_write_expects_if_match_else_the_known_revision_and_waits_for_the_store() {
    let mut c = Control::<Model>::new(
        ControlConfig {
            shared: true,
            max_preparing: 2,
        },
        [(
            name("shop"),
            Known {
                revision: Some(4),
                present: true,
            },
        )],
    );
    assert!(!c.writable(), "unavailable until told");
    call(&mut c, 1, "shop", None, Ask::Put(3));
    assert!(matches!(
        only(&mut c),
        Output::Reply {
            outcome: Outcome::Unavailable,
            ..
        }
    ));
    c.handle(Input::Shared { available: true }).unwrap();
    call(&mut c, 2, "shop", None, Ask::Put(3));
    let Output::Write {
        ticket,
        expected: Some(4),
        change: Change::Put(3),
        ..
    } = only(&mut c)
    else {
        panic!("expects the known revision");
    };
    call(&mut c, 3, "shop", Some(2), Ask::Remove);
    let Output::Write {
        ticket: stale,
        expected: Some(2),
        change: Change::Remove,
        ..
    } = only(&mut c)
    else {
        panic!("expects the caller's If-Match");
    };
    c.handle(Input::Written {
        ticket: stale,
        result: Err(WriteFailure::Conflict),
    })
    .unwrap();
    assert!(matches!(
        only(&mut c),
        Output::Reply {
            caller: 3,
            outcome: Outcome::WriteFailed(WriteFailure::Conflict),
            ..
        }
    ));
    assert_eq!(c.known(&name("shop")).unwrap().revision, Some(4));
    c.handle(Input::Written {
        ticket,
        result: Ok(9),
    })
    .unwrap();
    let Output::Apply {
        ticket,
        revision: Some(9),
        ..
    } = only(&mut c)
    else {
        panic!("applied once written");
    };
    c.handle(Input::Applied {
        ticket,
        result: Ok(()),
    })
    .unwrap();
    assert!(matches!(only(&mut c), Output::Reply { caller: 2, .. }));
    assert_eq!(c.known(&name("shop")).unwrap().revision, Some(9));
}

#[test]
fn a_service_from_before_the_shared_store_is_removed_here_only() {
    let mut c = Control::<Model>::new(
        ControlConfig {
            shared: true,
            max_preparing: 2,
        },
        [(
            name("old"),
            Known {
                revision: None,
                present: true,
            },
        )],
    );
    c.handle(Input::Shared { available: true }).unwrap();
    call(&mut c, 1, "old", None, Ask::Remove);
    assert!(matches!(
        only(&mut c),
        Output::Apply {
            change: Change::Remove,
            revision: None,
            ..
        }
    ));
}

#[test]
fn another_nodes_change_is_applied_only_while_it_is_the_newest() {
    let mut c = control(true, 1);
    remote(&mut c, "s", 5, RemoteChange::Put(1));
    let Output::Prepare { ticket: t5, .. } = only(&mut c) else {
        panic!()
    };
    // No slot: they wait, the newest per service only.
    remote(&mut c, "s", 6, RemoteChange::Put(2));
    remote(&mut c, "s", 8, RemoteChange::Put(3));
    assert!(matches!(
        only(&mut c),
        Output::Remote {
            revision: 6,
            outcome: Outcome::Superseded { current: 8 },
            ..
        }
    ));
    remote(&mut c, "s", 7, RemoteChange::Put(4));
    assert!(matches!(
        only(&mut c),
        Output::Remote {
            revision: 7,
            outcome: Outcome::Superseded { current: 8 },
            ..
        }
    ));
    assert_eq!(c.waiting(), 1);
    c.handle(Input::Prepared {
        ticket: t5,
        result: Ok(1),
    })
    .unwrap();
    let all = outputs(&mut c);
    let [
        Output::Apply {
            ticket: a5,
            revision: Some(5),
            ..
        },
        Output::Prepare { ticket: t8, .. },
    ] = &all[..]
    else {
        panic!("5 applied, 8 prepared")
    };
    c.handle(Input::Applied {
        ticket: *a5,
        result: Ok(()),
    })
    .unwrap();
    outputs(&mut c);
    // A removal newer than what is being prepared: the prepared one is stale by then.
    remote(&mut c, "s", 9, RemoteChange::Remove);
    let Output::Apply {
        ticket: removal,
        change: Change::Remove,
        ..
    } = only(&mut c)
    else {
        panic!()
    };
    c.handle(Input::Applied {
        ticket: removal,
        result: Ok(()),
    })
    .unwrap();
    outputs(&mut c);
    c.handle(Input::Prepared {
        ticket: *t8,
        result: Ok(3),
    })
    .unwrap();
    assert!(matches!(
        only(&mut c),
        Output::Remote {
            revision: 8,
            outcome: Outcome::Superseded { current: 9 },
            ..
        }
    ));
    assert_eq!(
        c.known(&name("s")),
        Some(Known {
            revision: Some(9),
            present: false
        })
    );
    // Late news from before the removal changes nothing.
    remote(&mut c, "s", 7, RemoteChange::Put(4));
    assert!(matches!(
        only(&mut c),
        Output::Remote {
            outcome: Outcome::Superseded { .. },
            ..
        }
    ));
}

#[test]
fn an_own_write_overtaken_by_a_newer_one_is_not_applied() {
    let mut c = control(true, 2);
    call(&mut c, 1, "s", None, Ask::Put(1));
    let Output::Write { ticket, .. } = only(&mut c) else {
        panic!()
    };
    remote(&mut c, "s", 4, RemoteChange::Put(2));
    let Output::Prepare { ticket: p, .. } = only(&mut c) else {
        panic!()
    };
    c.handle(Input::Prepared {
        ticket: p,
        result: Ok(2),
    })
    .unwrap();
    let Output::Apply { ticket: a, .. } = only(&mut c) else {
        panic!()
    };
    c.handle(Input::Applied {
        ticket: a,
        result: Ok(()),
    })
    .unwrap();
    outputs(&mut c);
    c.handle(Input::Written {
        ticket,
        result: Ok(3),
    })
    .unwrap();
    assert!(matches!(
        only(&mut c),
        Output::Reply {
            caller: 1,
            outcome: Outcome::Superseded { current: 4 },
            ..
        }
    ));
}

#[test]
fn answers_out_of_turn_are_refused() {
    let mut c = control(false, 2);
    assert_eq!(
        c.handle(Input::Written {
            ticket: Ticket(42),
            result: Ok(1)
        }),
        Err(ContractError::UnknownTicket(Ticket(42)))
    );
    call(&mut c, 1, "s", None, Ask::Put(1));
    let Output::Apply { ticket, .. } = only(&mut c) else {
        panic!()
    };
    assert_eq!(
        c.handle(Input::Shared { available: true }),
        Err(ContractError::ApplyUnanswered(ticket))
    );
    assert!(matches!(
        c.handle(Input::Prepared {
            ticket,
            result: Ok(1)
        }),
        Err(ContractError::ApplyUnanswered(_))
    ));
    c.handle(Input::Applied {
        ticket,
        result: Ok(()),
    })
    .unwrap();
    outputs(&mut c);
    call(&mut c, 2, "t", None, Ask::Prepare(1));
    let Output::Prepare {
        ticket: prepare, ..
    } = only(&mut c)
    else {
        panic!()
    };
    assert_eq!(
        c.handle(Input::Written {
            ticket: prepare,
            result: Ok(1)
        }),
        Err(ContractError::WrongAnswer {
            ticket: prepare,
            waits: "Prepared",
            got: "Written"
        })
    );
}

// A cluster of nodes against a modelled shared store: callers on every node, another
// writer that bypasses the nodes' checks, outages, restarts, answers in any order.

const NAMES: [&str; 3] = ["a", "b", "c"];
const MAX_PREPARING: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Call {
        node: usize,
        name: usize,
        value: Option<u32>,
        stale_if_match: bool,
    },
    /// A writer outside the nodes (a newer node, or anyone with NATS credentials).
    Foreign {
        name: usize,
        value: Option<u32>,
    },
    Prepare {
        node: usize,
        pick: usize,
    },
    /// The store takes (or refuses) a write; its answer is delivered later.
    Write {
        node: usize,
        pick: usize,
    },
    Written {
        node: usize,
        pick: usize,
    },
    Deliver {
        node: usize,
    },
    Outage {
        node: usize,
        available: bool,
    },
    Restart {
        node: usize,
    },
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    let node = 0..nodes;
    let name = 0..NAMES.len();
    let value = prop_oneof![3 => (1u32..40).prop_map(Some), 1 => Just(None)];
    prop_oneof![
        4 => (node.clone(), name.clone(), value.clone(), any::<bool>()).prop_map(
            |(node, name, value, stale_if_match)| Op::Call { node, name, value, stale_if_match }
        ),
        1 => (name, value).prop_map(|(name, value)| Op::Foreign { name, value }),
        4 => (node.clone(), 0..4usize).prop_map(|(node, pick)| Op::Prepare { node, pick }),
        4 => (node.clone(), 0..4usize).prop_map(|(node, pick)| Op::Write { node, pick }),
        4 => (node.clone(), 0..4usize).prop_map(|(node, pick)| Op::Written { node, pick }),
        5 => node.clone().prop_map(|node| Op::Deliver { node }),
        1 => (node.clone(), any::<bool>()).prop_map(|(node, available)| Op::Outage { node, available }),
        1 => node.prop_map(|node| Op::Restart { node }),
    ]
}

/// The shared store: revisions count up across every key, as a NATS stream's do.
#[derive(Default)]
struct Store {
    revision: u64,
    /// Each key's last revision and value (`None`: removed).
    current: BTreeMap<String, (u64, Option<u32>)>,
    /// Every revision ever written.
    history: BTreeMap<u64, (String, Option<u32>)>,
}

impl Store {
    /// Compare-and-set: `expected` is the key's revision, `None` if absent or removed.
    fn write(
        &mut self,
        key: &str,
        value: Option<u32>,
        expected: Option<u64>,
    ) -> Result<u64, WriteFailure> {
        let now = self.current.get(key).and_then(|&(r, v)| v.map(|_| r));
        if now != expected {
            return Err(WriteFailure::Conflict);
        }
        self.revision += 1;
        self.current.insert(key.to_owned(), (self.revision, value));
        self.history.insert(self.revision, (key.to_owned(), value));
        Ok(self.revision)
    }
}

struct Node {
    control: Control<Model>,
    /// What the node serves: each service's revision and value (`None`: removed).
    applied: BTreeMap<ServiceName, (Option<u64>, Option<u32>)>,
    prepares: Vec<(Ticket, u32)>,
    writes: Vec<(Ticket, ServiceName, Change<u32>, Option<u64>)>,
    /// Writes the store has answered, the answer not yet delivered.
    written: Vec<(Ticket, Result<u64, WriteFailure>)>,
    /// The store's changes, in order, not yet seen by this node.
    watch: VecDeque<(String, u64, Option<u32>)>,
    callers: BTreeSet<u32>,
    available: bool,
}

impl Node {
    fn start(applied: BTreeMap<ServiceName, (Option<u64>, Option<u32>)>, store: &Store) -> Self {
        let known = applied.iter().map(|(n, &(revision, value))| {
            (
                n.clone(),
                Known {
                    revision,
                    present: value.is_some(),
                },
            )
        });
        let control = Control::new(
            ControlConfig {
                shared: true,
                max_preparing: MAX_PREPARING,
            },
            known,
        );
        // A watch from the start sees each key's last change.
        let watch = store
            .current
            .iter()
            .map(|(k, &(r, v))| (k.clone(), r, v))
            .collect();
        Node {
            control,
            applied,
            prepares: Vec::new(),
            writes: Vec::new(),
            written: Vec::new(),
            watch,
            callers: BTreeSet::new(),
            available: false,
        }
    }
}

struct Cluster {
    store: Store,
    nodes: Vec<Node>,
    next_caller: u32,
    /// Callers answered `Done`: the service, its revision and value.
    acknowledged: Vec<(String, u64, Option<u32>)>,
}

impl Cluster {
    fn handle(&mut self, node: usize, input: Input<Model>) {
        self.nodes[node]
            .control
            .handle(input)
            .expect("contract kept");
        self.drain(node);
    }

    fn drain(&mut self, i: usize) {
        while let Some(output) = self.nodes[i].control.poll_output() {
            let node = &mut self.nodes[i];
            assert!(node.control.preparing() <= MAX_PREPARING);
            match output {
                Output::Prepare { ticket, job, .. } => node.prepares.push((ticket, job)),
                Output::Write {
                    ticket,
                    name,
                    change,
                    expected,
                } => node.writes.push((ticket, name, change, expected)),
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
                    assert!(!value.is_some_and(refused), "a refused module applied");
                    if let Some(r) = revision {
                        assert_eq!(
                            self.store.history.get(&r),
                            Some(&(name.to_string(), value)),
                            "applied what the store never had at that revision"
                        );
                        let before = node.applied.get(&name).and_then(|a| a.0);
                        assert!(before <= Some(r), "{name} went back from {before:?} to {r}");
                    }
                    // Like the registry: a change made here only keeps the revision stored.
                    let revision = revision.or_else(|| node.applied.get(&name).and_then(|a| a.0));
                    node.applied.insert(name, (revision, value));
                    node.control
                        .handle(Input::Applied {
                            ticket,
                            result: Ok(()),
                        })
                        .expect("contract kept");
                }
                Output::Reply {
                    caller,
                    name,
                    outcome,
                } => {
                    assert!(
                        node.callers.remove(&caller),
                        "caller {caller} answered twice"
                    );
                    // A removal of a service from before the store is made here only.
                    if let Outcome::Done(()) = outcome
                        && let Some(&(Some(revision), value)) = node.applied.get(&name)
                    {
                        self.acknowledged.push((name.to_string(), revision, value));
                    }
                }
                Output::Remote { .. } => {}
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Call {
                node,
                name,
                value,
                stale_if_match,
            } => {
                let caller = self.next_caller;
                self.next_caller += 1;
                self.nodes[node].callers.insert(caller);
                let name = self::name(NAMES[name]);
                let if_match = stale_if_match.then_some(self.store.revision / 2);
                let ask = match value {
                    // New settings for a module it has: nothing to prepare.
                    Some(v) if v.is_multiple_of(3) && !refused(v) => Ask::Put(v),
                    Some(v) => Ask::Prepare(v),
                    None => Ask::Remove,
                };
                self.handle(
                    node,
                    Input::Call {
                        caller,
                        name,
                        if_match,
                        ask,
                    },
                );
            }
            Op::Foreign { name, value } => {
                let key = NAMES[name];
                let expected = self.store.current.get(key).and_then(|&(r, v)| v.map(|_| r));
                let revision = self.store.write(key, value, expected).unwrap();
                for n in &mut self.nodes {
                    n.watch.push_back((key.to_owned(), revision, value));
                }
            }
            Op::Prepare { node, pick } => {
                let n = &mut self.nodes[node];
                if n.prepares.is_empty() {
                    return;
                }
                let (ticket, job) = n.prepares.remove(pick % n.prepares.len());
                let result = if refused(job) { Err(job) } else { Ok(job) };
                self.handle(node, Input::Prepared { ticket, result });
            }
            Op::Write { node, pick } => {
                let n = &mut self.nodes[node];
                if n.writes.is_empty() {
                    return;
                }
                let (ticket, name, change, expected) = n.writes.remove(pick % n.writes.len());
                let result = if !n.available {
                    Err(WriteFailure::Unavailable)
                } else {
                    let value = match change {
                        Change::Put(v) => Some(v),
                        Change::Remove => None,
                    };
                    self.store.write(name.as_str(), value, expected)
                };
                if let Ok(revision) = result {
                    let (key, value) = self.store.history[&revision].clone();
                    for n in &mut self.nodes {
                        n.watch.push_back((key.clone(), revision, value));
                    }
                }
                self.nodes[node].written.push((ticket, result));
            }
            Op::Written { node, pick } => {
                let n = &mut self.nodes[node];
                if n.written.is_empty() {
                    return;
                }
                let (ticket, result) = n.written.remove(pick % n.written.len());
                self.handle(node, Input::Written { ticket, result });
            }
            Op::Deliver { node } => {
                let Some((key, revision, value)) = self.nodes[node].watch.pop_front() else {
                    return;
                };
                let change = match value {
                    Some(v) => RemoteChange::Put(v),
                    None => RemoteChange::Remove,
                };
                self.handle(
                    node,
                    Input::Remote {
                        name: name(&key),
                        revision,
                        change,
                    },
                );
            }
            Op::Outage { node, available } => {
                self.nodes[node].available = available;
                self.handle(node, Input::Shared { available });
            }
            Op::Restart { node } => {
                let applied = std::mem::take(&mut self.nodes[node].applied);
                self.nodes[node] = Node::start(applied, &self.store);
                self.handle(node, Input::Shared { available: true });
                self.nodes[node].available = true;
            }
        }
    }

    /// Heals every outage and answers everything, in order, until nothing is left.
    fn settle(&mut self) {
        for node in 0..self.nodes.len() {
            self.run(Op::Outage {
                node,
                available: true,
            });
        }
        loop {
            let mut progress = false;
            for node in 0..self.nodes.len() {
                let n = &self.nodes[node];
                let op = if !n.prepares.is_empty() {
                    Op::Prepare { node, pick: 0 }
                } else if !n.writes.is_empty() {
                    Op::Write { node, pick: 0 }
                } else if !n.written.is_empty() {
                    Op::Written { node, pick: 0 }
                } else if !n.watch.is_empty() {
                    Op::Deliver { node }
                } else {
                    continue;
                };
                self.run(op);
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// No acknowledged write is lost, no node applies what the store never had or goes
    /// back a revision, a refused module is applied nowhere, every caller is answered once,
    /// and once the store heals every node serves what the store holds.
    #[test]
    fn nodes_converge_on_the_shared_store(nodes in 1usize..4, ops in proptest::collection::vec(op(3), 0..120)) {
        let mut cluster = Cluster {
            store: Store::default(),
            nodes: Vec::new(),
            next_caller: 0,
            acknowledged: Vec::new(),
        };
        for _ in 0..nodes {
            let mut node = Node::start(BTreeMap::new(), &cluster.store);
            node.control.handle(Input::Shared { available: true }).unwrap();
            node.available = true;
            cluster.nodes.push(node);
        }
        for op in ops {
            let op = match op {
                Op::Call { node, .. } | Op::Prepare { node, .. } | Op::Write { node, .. }
                | Op::Written { node, .. } | Op::Deliver { node } | Op::Outage { node, .. } | Op::Restart { node }
                    if node >= nodes => continue,
                op => op,
            };
            cluster.run(op);
        }
        cluster.settle();
        for (i, node) in cluster.nodes.iter().enumerate() {
            prop_assert!(node.callers.is_empty(), "node {i} left callers unanswered: {:?}", node.callers);
            prop_assert_eq!(node.control.in_flight(), 0);
            for (key, &(revision, value)) in &cluster.store.current {
                if value.is_some_and(refused) {
                    continue;
                }
                let served = node.applied.get(&name(key)).copied().unwrap_or((None, None));
                let expected = if value.is_some() { (Some(revision), value) } else { (served.0, None) };
                prop_assert_eq!(served, expected, "node {} on {}", i, key);
            }
        }
        for (key, revision, value) in &cluster.acknowledged {
            let kept = cluster.store.history.get(revision);
            prop_assert_eq!(kept, Some(&(key.clone(), *value)), "acknowledged {} at {}", key, revision);
        }
    }
}

#[test]
fn a_change_made_here_only_does_not_forget_a_removal_seen_from_the_store() {
    let mut c = control(true, 2);
    remote(&mut c, "s", 5, RemoteChange::Put(1));
    let Output::Prepare { ticket, .. } = only(&mut c) else {
        panic!()
    };
    remote(&mut c, "s", 6, RemoteChange::Remove);
    assert!(outputs(&mut c).is_empty(), "nothing served yet: remembered");
    // A removal this node makes on its own (nothing in the store to expect).
    call(&mut c, 1, "s", None, Ask::Remove);
    let Output::Apply {
        ticket: removal,
        revision: None,
        ..
    } = only(&mut c)
    else {
        panic!()
    };
    c.handle(Input::Applied {
        ticket: removal,
        result: Ok(()),
    })
    .unwrap();
    outputs(&mut c);
    assert_eq!(c.known(&name("s")).unwrap().revision, Some(6));
    c.handle(Input::Prepared {
        ticket,
        result: Ok(1),
    })
    .unwrap();
    assert!(matches!(
        only(&mut c),
        Output::Remote {
            revision: 5,
            outcome: Outcome::Superseded { current: 6 },
            ..
        }
    ));
}
