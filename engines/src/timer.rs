//! Wakes tasks at an instant: what a WAGI guest asleep in `poll_oneoff` waits on, on both
//! engines. One thread for the process, started at the first sleep, holds the wakers in
//! the order they are due; a task parked on a [`Sleep`] is run again once its time came.
//! (Components' timers are `wasmtime-wasi`'s own, on its runtime thread.)

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Ready once `until` has passed. Polled before then, it leaves the context's waker with
/// the timer thread, which wakes it at `until`; dropping it takes the waker back, so the
/// thread holds one waker per live sleep at most.
#[derive(Debug)]
pub(crate) struct Sleep {
    until: Instant,
    /// Its entry in the timer thread's table, while it holds one.
    key: Option<u64>,
}

impl Sleep {
    pub(crate) fn until(until: Instant) -> Self {
        Sleep { until, key: None }
    }

    fn withdraw(&mut self) {
        if let Some(key) = self.key.take() {
            timers().lock().due.remove(&(self.until, key));
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            self.withdraw();
            return Poll::Ready(());
        }
        let timers = timers();
        let mut table = timers.lock();
        // A key that was fired is gone from the table: the waker goes back in, under a
        // new key (a poll after a wake that came from elsewhere).
        let key = match self.key {
            Some(key) if table.due.contains_key(&(self.until, key)) => key,
            _ => {
                table.next_key += 1;
                table.next_key
            }
        };
        let first = table
            .due
            .keys()
            .next()
            .is_none_or(|&(at, _)| self.until < at);
        table.due.insert((self.until, key), cx.waker().clone());
        self.key = Some(key);
        drop(table);
        if first {
            timers.changed.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.withdraw();
    }
}

struct Timers {
    table: Mutex<Table>,
    /// Signalled when an entry became the first due.
    changed: Condvar,
}

#[derive(Default)]
struct Table {
    due: BTreeMap<(Instant, u64), Waker>,
    next_key: u64,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics holding the lock but a waker's `wake`, which runs outside it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The timer thread: wakes each entry once it is due, sleeping until the first one.
    fn run(&self) {
        let mut table = self.lock();
        loop {
            let now = Instant::now();
            let later = table.due.split_off(&(now, u64::MAX));
            let fired = std::mem::replace(&mut table.due, later);
            if !fired.is_empty() {
                drop(table);
                fired.into_values().for_each(Waker::wake);
                table = self.lock();
                continue;
            }
            table = match table.due.keys().next() {
                Some(&(at, _)) => {
                    let wait = at.saturating_duration_since(now);
                    let (table, _) = self
                        .changed
                        .wait_timeout(table, wait)
                        .unwrap_or_else(|e| e.into_inner());
                    table
                }
                None => self.changed.wait(table).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

fn timers() -> &'static Timers {
    static TIMERS: OnceLock<Timers> = OnceLock::new();
    let mut started = false;
    let shared = TIMERS.get_or_init(|| {
        started = true;
        Timers {
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
        }
    });
    if started {
        std::thread::Builder::new()
            .name("frenezulo-timer".to_owned())
            .spawn(|| timers().run())
            .expect("spawning the timer thread");
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThreadWaker;
    use std::time::Duration;

    #[test]
    fn a_sleep_wakes_its_task_once_due_and_not_before() {
        let wakeup = ThreadWaker::new();
        let began = Instant::now();
        let mut sleep = std::pin::pin!(Sleep::until(began + Duration::from_millis(50)));
        let waker = wakeup.waker();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        while sleep.as_mut().poll(&mut cx).is_pending() {
            polls += 1;
            assert!(wakeup.wait(began + Duration::from_secs(60)), "never woken");
        }
        assert!(began.elapsed() >= Duration::from_millis(50));
        // Woken at its time, not polled in a loop (a spurious wake or two at most).
        assert!(polls <= 3, "{polls} polls");
        assert!(sleep.key.is_none());
    }

    #[test]
    fn a_dropped_sleep_leaves_nothing_behind() {
        let far = Instant::now() + Duration::from_secs(3600);
        let wakeup = ThreadWaker::new();
        let waker = wakeup.waker();
        let mut sleep = Box::pin(Sleep::until(far));
        assert!(
            sleep
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let key = sleep.key.expect("registered");
        assert!(timers().lock().due.contains_key(&(far, key)));
        // Polled again, it keeps its one entry.
        assert!(
            sleep
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(sleep.key, Some(key));
        drop(sleep);
        assert!(!timers().lock().due.contains_key(&(far, key)));
    }
}
