//! The control plane's state machine: how a change to the registry travels from whoever
//! asked (a management call, or another node through the shared store) to every serving
//! thread, and in which order.
//!
//! It owns the rules of sequencing, once: how many modules are prepared at once (a caller
//! past that gets [`Outcome::Busy`], another node's change waits its turn, the newest per
//! service), which revision a shared write expects (the caller's `If-Match`, else the one
//! this node knows), that a caller's change is applied here only once the shared store took
//! it, that another node's change is applied only if it is newer than what this node has
//! (checked when it arrives and again when its module is ready), that a removal overtakes a
//! change of the same service still waiting, that nothing is written while the shared store
//! is unavailable. What a change contains (an entry, a compiled module, why one was refused)
//! is opaque to it: the driver names those types through [`Payloads`].
//!
//! The rules about a service's contents live beside it, as pure checks the driver's registry
//! asks before it hands a change in and when it composes a prepared change: who owns a name
//! or a route and whether a stored service is served ([`catalog`]), and the ceilings every
//! limit is held to, whoever sets it ([`crate::ceiling`]).
//!
//! # The polling contract
//!
//! Like [`crate::Server`], it does no I/O and keeps no clock (nothing here waits on time: the
//! drivers' own timeouts, on a fetch or a NATS write, end in an input):
//!
//! 1. Call [`Control::handle`] with an [`Input`]: a caller's change, another node's change,
//!    the shared store coming or going, or the answer to an earlier output.
//! 2. After every `handle`, drain [`Control::poll_output`] until `None`, and carry out each
//!    [`Output`] in order. Every [`Output::Prepare`] is answered by one
//!    [`Input::Prepared`], every [`Output::Write`] by one [`Input::Written`] (a write that
//!    could not even be sent is answered at once, with its error), every [`Output::Apply`]
//!    by one [`Input::Applied`], each with the output's [`Ticket`]. An answer may be handed
//!    in from inside the loop that drains the outputs. An `Apply` is answered before any
//!    other input (applying is the driver's own synchronous work: a durable write and a
//!    publication), so two changes of one service are never applied out of order.
//! 3. Every caller gets exactly one [`Output::Reply`]; every change of another node that is
//!    taken in ends in exactly one [`Output::Remote`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use thiserror::Error;

use crate::ServiceName;

pub mod catalog;
#[cfg(test)]
mod tests;

/// The types a driver carries through the control plane; the control plane only moves them.
pub trait Payloads {
    /// Names a caller, to answer them.
    type Caller;
    /// What to fetch and compile for a new module (a URL, uploaded bytes, a shared entry).
    type Job;
    /// A change ready to be written and applied: a service's entry, with its module.
    type Ready: Clone;
    /// Why a module could not be prepared, or a prepared change was refused.
    type Refusal;
    /// Why a write to the shared store failed.
    type WriteError;
    /// What applying a change on this node gave.
    type Applied;
    /// Why applying a change on this node failed.
    type ApplyError;
}

/// Names one change in flight, from its first output to its last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// What the control plane runs with.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Whether this node writes its changes to a shared store (a cluster) before applying.
    pub shared: bool,
    /// Modules prepared at once, callers' and other nodes' together.
    pub max_preparing: usize,
}

/// A change a caller asks for.
#[non_exhaustive]
pub enum Ask<T: Payloads> {
    /// A new module: prepared first, then written and applied.
    Prepare(T::Job),
    /// A change that needs no new module (new settings for the module it has).
    Put(T::Ready),
    /// Remove the service.
    Remove,
}

/// Another node's change, as the shared store shows it.
#[non_exhaustive]
pub enum RemoteChange<T: Payloads> {
    /// The service's entry at this revision, its module to be prepared here.
    Put(T::Job),
    /// The service was removed at this revision.
    Remove,
}

/// A change on its way to the shared store and the serving threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<R> {
    /// The service as it is to be.
    Put(R),
    /// The service removed.
    Remove,
}

/// What the control plane takes.
#[non_exhaustive]
pub enum Input<T: Payloads> {
    /// The shared store can be written to, or not (without one, ignored).
    Shared {
        /// Whether it can.
        available: bool,
    },
    /// A caller asks for a change to `name`.
    Call {
        /// Who asked.
        caller: T::Caller,
        /// The service.
        name: ServiceName,
        /// The revision the caller says it changes (`If-Match`).
        if_match: Option<u64>,
        /// What it asks.
        ask: Ask<T>,
    },
    /// The shared store shows another node's change (or this node's own, coming back).
    Remote {
        /// The service.
        name: ServiceName,
        /// The change's revision in the shared store.
        revision: u64,
        /// The change.
        change: RemoteChange<T>,
    },
    /// An [`Output::Prepare`] is done.
    Prepared {
        /// Its ticket.
        ticket: Ticket,
        /// The change, ready, or why not.
        result: Result<T::Ready, T::Refusal>,
    },
    /// An [`Output::Write`] is done.
    Written {
        /// Its ticket.
        ticket: Ticket,
        /// The revision the shared store gave the change, or why it was not written.
        result: Result<u64, T::WriteError>,
    },
    /// An [`Output::Apply`] is done.
    Applied {
        /// Its ticket.
        ticket: Ticket,
        /// What it gave, or why it failed.
        result: Result<T::Applied, T::ApplyError>,
    },
}

/// What the control plane asks of its driver.
#[non_exhaustive]
pub enum Output<T: Payloads> {
    /// Fetch and compile a module, and compose the change; answer with [`Input::Prepared`].
    Prepare {
        /// Names the answer.
        ticket: Ticket,
        /// The service.
        name: ServiceName,
        /// What to prepare.
        job: T::Job,
    },
    /// Write a change to the shared store if the service's revision there is still
    /// `expected` (`None`: only if the service is not there); answer with [`Input::Written`].
    Write {
        /// Names the answer.
        ticket: Ticket,
        /// The service.
        name: ServiceName,
        /// The change.
        change: Change<T::Ready>,
        /// The revision the writer saw.
        expected: Option<u64>,
    },
    /// Apply a change on this node: store it durably, publish it to the serving threads;
    /// answer with [`Input::Applied`].
    Apply {
        /// Names the answer.
        ticket: Ticket,
        /// The service.
        name: ServiceName,
        /// The change.
        change: Change<T::Ready>,
        /// Its revision in the shared store (`None` without one).
        revision: Option<u64>,
    },
    /// Answer a caller.
    Reply {
        /// Who asked.
        caller: T::Caller,
        /// The service.
        name: ServiceName,
        /// How it ended.
        outcome: Outcome<T>,
    },
    /// How another node's change ended here.
    Remote {
        /// The service.
        name: ServiceName,
        /// The change's revision.
        revision: u64,
        /// How it ended.
        outcome: Outcome<T>,
    },
}

/// How a change ended.
#[non_exhaustive]
pub enum Outcome<T: Payloads> {
    /// Applied on this node.
    Done(T::Applied),
    /// Nothing applied: this node has, or is about to prepare, a newer change of the
    /// service (for another node's change, the same revision counts as newer). A caller's
    /// change that ends so is in the shared store, already replaced there.
    Superseded {
        /// The newest revision this node has.
        current: u64,
    },
    /// Too many modules being prepared; the caller may retry shortly.
    Busy,
    /// The shared store is unavailable: nothing was written.
    Unavailable,
    /// The module could not be prepared, or the prepared change was refused.
    Refused(T::Refusal),
    /// The shared store did not take the write.
    WriteFailed(T::WriteError),
    /// Applying the change on this node failed.
    ApplyFailed(T::ApplyError),
}

/// An input that breaks the polling contract (a driver's bug).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The ticket names no change in flight.
    #[error("ticket {0:?} names no change in flight")]
    UnknownTicket(Ticket),
    /// An [`Output::Apply`] is unanswered: it must be answered before any other input.
    #[error("ticket {0:?} must be answered with Applied first")]
    ApplyUnanswered(Ticket),
    /// The ticket's change waits for another answer.
    #[error("ticket {ticket:?} waits for {waits}, not {got}")]
    WrongAnswer {
        /// The ticket.
        ticket: Ticket,
        /// The answer it waits for.
        waits: &'static str,
        /// The answer given.
        got: &'static str,
    },
}

/// What this node has of a service, as far as revisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The revision of the change it last applied (`None`: a change made without a shared
    /// store).
    pub revision: Option<u64>,
    /// Whether it serves the service (`false`: it applied a removal at `revision`).
    pub present: bool,
}

/// Who a change in flight is for.
enum Source<C> {
    Caller { caller: C, if_match: Option<u64> },
    Remote { revision: u64 },
}

/// Where a change in flight is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Preparing,
    Writing,
    Applying,
}

impl Step {
    fn answer(self) -> &'static str {
        match self {
            Step::Preparing => "Prepared",
            Step::Writing => "Written",
            Step::Applying => "Applied",
        }
    }
}

struct Flight<T: Payloads> {
    name: ServiceName,
    source: Source<T::Caller>,
    step: Step,
    /// A write's change, kept to apply once written.
    change: Option<Change<T::Ready>>,
    /// The revision being applied.
    revision: Option<u64>,
    /// Whether the change being applied is a removal.
    removes: bool,
}

/// Another node's change, before its turn to be prepared.
struct Waiting<T: Payloads> {
    name: ServiceName,
    revision: u64,
    job: T::Job,
}

/// The control plane of one node. See the [module docs](self) for the contract.
pub struct Control<T: Payloads> {
    config: ControlConfig,
    /// Whether the shared store can be written (always, without one).
    available: bool,
    known: BTreeMap<ServiceName, Known>,
    flights: HashMap<Ticket, Flight<T>>,
    preparing: usize,
    /// Other nodes' changes waiting for a preparing slot: one per service, the newest.
    waiting: VecDeque<Waiting<T>>,
    next_ticket: u64,
    /// The change being applied: answered before anything else happens, so two changes of
    /// a service are never applied out of order.
    applying: Option<Ticket>,
    outputs: VecDeque<Output<T>>,
}

impl<T: Payloads> Control<T> {
    /// A control plane that knows the services this node has stored, with their revisions.
    /// With a shared store, it starts unavailable until [`Input::Shared`] says otherwise.
    pub fn new(
        config: ControlConfig,
        known: impl IntoIterator<Item = (ServiceName, Known)>,
    ) -> Self {
        Control {
            available: !config.shared,
            config,
            known: known.into_iter().collect(),
            flights: HashMap::new(),
            preparing: 0,
            waiting: VecDeque::new(),
            next_ticket: 0,
            applying: None,
            outputs: VecDeque::new(),
        }
    }

    /// Whether a caller's change may be taken now (the shared store, if any, is available).
    pub fn writable(&self) -> bool {
        self.available
    }

    /// What this node has of `name`.
    pub fn known(&self, name: &ServiceName) -> Option<Known> {
        self.known.get(name).copied()
    }

    /// Modules being prepared now.
    pub fn preparing(&self) -> usize {
        self.preparing
    }

    /// Other nodes' changes waiting for a preparing slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Changes in flight (preparing, writing or applying).
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.outputs.pop_front()
    }

    /// Takes one input; its outputs follow from [`Control::poll_output`].
    pub fn handle(&mut self, input: Input<T>) -> Result<(), ContractError> {
        if let Some(ticket) = self.applying
            && !matches!(&input, Input::Applied { ticket: t, .. } if *t == ticket)
        {
            return Err(ContractError::ApplyUnanswered(ticket));
        }
        match input {
            Input::Shared { available } => {
                self.available = available || !self.config.shared;
            }
            Input::Call {
                caller,
                name,
                if_match,
                ask,
            } => self.on_call(caller, name, if_match, ask),
            Input::Remote {
                name,
                revision,
                change,
            } => self.on_remote(name, revision, change),
            Input::Prepared { ticket, result } => {
                let flight = self.take(ticket, Step::Preparing, "Prepared")?;
                self.preparing -= 1;
                self.on_prepared(flight, result);
                self.start_waiting();
            }
            Input::Written { ticket, result } => {
                let flight = self.take(ticket, Step::Writing, "Written")?;
                self.on_written(flight, result);
            }
            Input::Applied { ticket, result } => {
                let flight = self.take(ticket, Step::Applying, "Applied")?;
                self.applying = None;
                self.on_applied(flight, result);
            }
        }
        Ok(())
    }

    fn take(
        &mut self,
        ticket: Ticket,
        step: Step,
        got: &'static str,
    ) -> Result<Flight<T>, ContractError> {
        match self.flights.get(&ticket) {
            None => Err(ContractError::UnknownTicket(ticket)),
            Some(f) if f.step != step => Err(ContractError::WrongAnswer {
                ticket,
                waits: f.step.answer(),
                got,
            }),
            Some(_) => Ok(self.flights.remove(&ticket).expect("just seen")),
        }
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    fn reply(&mut self, source: Source<T::Caller>, name: ServiceName, outcome: Outcome<T>) {
        self.outputs.push_back(match source {
            Source::Caller { caller, .. } => Output::Reply {
                caller,
                name,
                outcome,
            },
            Source::Remote { revision } => Output::Remote {
                name,
                revision,
                outcome,
            },
        });
    }

    /// The revision of the last change of `name` this node applied, a removal included.
    fn revision(&self, name: &ServiceName) -> Option<u64> {
        self.known.get(name).and_then(|k| k.revision)
    }

    /// What a shared write expects when the caller names no revision: the one this node
    /// serves (`None`: it serves none, or one from before the shared store).
    fn expected(&self, name: &ServiceName) -> Option<u64> {
        self.known
            .get(name)
            .filter(|k| k.present)
            .and_then(|k| k.revision)
    }

    fn on_call(
        &mut self,
        caller: T::Caller,
        name: ServiceName,
        if_match: Option<u64>,
        ask: Ask<T>,
    ) {
        let source = Source::Caller { caller, if_match };
        if !self.available {
            return self.reply(source, name, Outcome::Unavailable);
        }
        match ask {
            Ask::Prepare(job) => {
                if self.preparing >= self.config.max_preparing {
                    return self.reply(source, name, Outcome::Busy);
                }
                self.prepare(name, source, job);
            }
            Ask::Put(ready) => self.write(name, source, Change::Put(ready)),
            Ask::Remove => self.write(name, source, Change::Remove),
        }
    }

    fn prepare(&mut self, name: ServiceName, source: Source<T::Caller>, job: T::Job) {
        let ticket = self.ticket();
        self.preparing += 1;
        self.flights.insert(
            ticket,
            Flight {
                name: name.clone(),
                source,
                step: Step::Preparing,
                change: None,
                revision: None,
                removes: false,
            },
        );
        self.outputs
            .push_back(Output::Prepare { ticket, name, job });
    }

    /// A caller's change, ready: written to the shared store first, if there is one.
    fn write(&mut self, name: ServiceName, source: Source<T::Caller>, change: Change<T::Ready>) {
        let Source::Caller { if_match, .. } = &source else {
            unreachable!("only callers write");
        };
        let expected = if_match.or_else(|| self.expected(&name));
        // A service stored before this node had a shared store is not in it: removed here.
        let unshared_removal = matches!(change, Change::Remove) && expected.is_none();
        if !self.config.shared || unshared_removal {
            return self.apply(name, source, change, None);
        }
        let ticket = self.ticket();
        self.flights.insert(
            ticket,
            Flight {
                name: name.clone(),
                source,
                step: Step::Writing,
                change: Some(change.clone()),
                revision: None,
                removes: false,
            },
        );
        self.outputs.push_back(Output::Write {
            ticket,
            name,
            change,
            expected,
        });
    }

    fn apply(
        &mut self,
        name: ServiceName,
        source: Source<T::Caller>,
        change: Change<T::Ready>,
        revision: Option<u64>,
    ) {
        let ticket = self.ticket();
        debug_assert!(self.applying.is_none(), "one apply per input");
        self.applying = Some(ticket);
        self.flights.insert(
            ticket,
            Flight {
                name: name.clone(),
                source,
                step: Step::Applying,
                change: None,
                revision,
                removes: matches!(change, Change::Remove),
            },
        );
        self.outputs.push_back(Output::Apply {
            ticket,
            name,
            change,
            revision,
        });
    }

    /// Whether this node has `name` at `revision` or newer.
    fn has_newer(&self, name: &ServiceName, revision: u64) -> Option<u64> {
        self.revision(name).filter(|&known| known >= revision)
    }

    fn on_remote(&mut self, name: ServiceName, revision: u64, change: RemoteChange<T>) {
        let source = Source::Remote { revision };
        if let Some(current) = self.has_newer(&name, revision) {
            return self.reply(source, name, Outcome::Superseded { current });
        }
        match change {
            RemoteChange::Put(job) => {
                if self.preparing < self.config.max_preparing {
                    return self.prepare(name, source, job);
                }
                if let Some(i) = self.waiting.iter().position(|w| w.name == name) {
                    let older = self.waiting.remove(i).expect("just found");
                    let current = revision.max(older.revision);
                    let source = Source::Remote {
                        revision: older.revision.min(revision),
                    };
                    self.reply(source, name.clone(), Outcome::Superseded { current });
                    if older.revision > revision {
                        // Out of order: the newer one keeps its place.
                        self.waiting.insert(i, older);
                        return;
                    }
                }
                self.waiting.push_back(Waiting {
                    name,
                    revision,
                    job,
                });
            }
            RemoteChange::Remove => {
                // A change still waiting to be prepared is older than its removal.
                if let Some(i) = self
                    .waiting
                    .iter()
                    .position(|w| w.name == name && w.revision < revision)
                {
                    let older = self.waiting.remove(i).expect("just found");
                    self.reply(
                        Source::Remote {
                            revision: older.revision,
                        },
                        name.clone(),
                        Outcome::Superseded { current: revision },
                    );
                }
                if self.known.get(&name).is_some_and(|k| k.present) {
                    self.apply(name, source, Change::Remove, Some(revision));
                } else {
                    // Nothing to remove: remember the removal, so an older change that
                    // arrives late is not applied.
                    self.known.insert(
                        name,
                        Known {
                            revision: Some(revision),
                            present: false,
                        },
                    );
                }
            }
        }
    }

    fn start_waiting(&mut self) {
        while self.preparing < self.config.max_preparing
            && let Some(w) = self.waiting.pop_front()
        {
            let source = Source::Remote {
                revision: w.revision,
            };
            match self.has_newer(&w.name, w.revision) {
                Some(current) => self.reply(source, w.name, Outcome::Superseded { current }),
                None => self.prepare(w.name, source, w.job),
            }
        }
    }

    fn on_prepared(&mut self, flight: Flight<T>, result: Result<T::Ready, T::Refusal>) {
        let Flight { name, source, .. } = flight;
        let ready = match result {
            Ok(ready) => ready,
            Err(refusal) => return self.reply(source, name, Outcome::Refused(refusal)),
        };
        match source {
            Source::Caller { .. } => self.write(name, source, Change::Put(ready)),
            Source::Remote { revision } => match self.has_newer(&name, revision) {
                // A newer change was applied while this one was prepared.
                Some(current) => self.reply(source, name, Outcome::Superseded { current }),
                None => self.apply(name, source, Change::Put(ready), Some(revision)),
            },
        }
    }

    fn on_written(&mut self, flight: Flight<T>, result: Result<u64, T::WriteError>) {
        let Flight {
            name,
            source,
            change,
            ..
        } = flight;
        let change = change.expect("a write keeps its change");
        match result {
            Err(e) => self.reply(source, name, Outcome::WriteFailed(e)),
            // Another node's newer change came through the store first: this one is in the
            // store's history, and applying it would take this node back.
            Ok(revision) => match self.revision(&name).filter(|&k| k > revision) {
                Some(current) => self.reply(source, name, Outcome::Superseded { current }),
                None => self.apply(name, source, change, Some(revision)),
            },
        }
    }

    fn on_applied(&mut self, flight: Flight<T>, result: Result<T::Applied, T::ApplyError>) {
        let Flight {
            name,
            source,
            revision,
            removes,
            ..
        } = flight;
        match result {
            Err(e) => self.reply(source, name, Outcome::ApplyFailed(e)),
            Ok(applied) => {
                // A change made here only (no revision) keeps the revision this node knew:
                // what it knows never goes back, or a late older change could be applied.
                let revision = revision.or_else(|| self.revision(&name));
                let present = !removes;
                self.known.insert(name.clone(), Known { revision, present });
                self.reply(source, name, Outcome::Done(applied));
            }
        }
    }
}
