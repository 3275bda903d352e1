//! A cloneable shutdown signal: every long-running task holds a [`Shutdown`] and returns when
//! it fires, after finishing (or handing back) the work it holds.

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// The receiving side: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    /// A new trigger and its first receiver.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// Tells every receiver to shut down.
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }

    /// Another receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once shutdown is requested (or the trigger is gone).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped, which also means "stop".
        let _ = self.receiver.wait_for(|requested| *requested).await;
    }
}
