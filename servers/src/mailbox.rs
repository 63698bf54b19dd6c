//! How a pool or a side thread hands results to another thread without knowing that
//! thread's message type: the receiver gives out a [`Mailbox`] that wraps each item in its
//! own message (and wakes itself). The compile and outbound pools, the registry and the
//! NATS thread deliver through one, so they sit below the serving loop and the management
//! thread in the module graph instead of importing them.

use std::sync::Arc;

/// Delivers items of type `T` to one receiver; cheap to clone.
pub struct Mailbox<T>(Arc<dyn Fn(T) -> bool + Send + Sync>);

impl<T> Mailbox<T> {
    /// A mailbox that delivers with `deliver`, which says whether the receiver took the
    /// item (not if its queue is full, or it is gone).
    pub fn new(deliver: impl Fn(T) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(deliver))
    }

    /// Delivers `item`; false if the receiver could not take it (the item is dropped).
    pub fn send(&self, item: T) -> bool {
        (self.0)(item)
    }
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_reach_the_receiver_or_are_refused() {
        let (tx, rx) = std::sync::mpsc::sync_channel::<u32>(1);
        let mailbox = Mailbox::new(move |n| tx.try_send(n).is_ok());
        let copy = mailbox.clone();
        assert!(mailbox.send(1));
        assert!(!copy.send(2), "full");
        assert_eq!(rx.recv(), Ok(1));
        drop(rx);
        assert!(!mailbox.send(3), "gone");
    }
}
