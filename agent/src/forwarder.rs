//! Batching and forwarding to dopplers.
//!
//! Sources call [`Forwarder::submit`] with envelopes and a [`Ticket`]. The batcher task cuts
//! the stream into batches of at most `flush_envelopes`, sending a partial batch
//! `flush_interval` after its first envelope. Each batch gets the next sequence number and is
//! sent by its own task (at most `max_in_flight_batches` at once) to the dopplers in turn until
//! one acknowledges it; transport failures are retried with backoff, on the next doppler.
//!
//! A [`Ticket`] completes when the last batch holding any of its envelopes is acknowledged:
//! each batch keeps a clone, and the ticket reports when its last clone is dropped. That is how
//! a source learns that everything it accepted is durable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_common::SluiceError;
use sluice_common::config::AgentConfig;
use sluice_common::tls::TlsMaterial;
use sluice_proto::v1::AgentBatch;
use sluice_proto::v1::doppler_ingress_client::DopplerIngressClient;
use sluice_proto::v2::Envelope;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::metrics::AgentMetrics;

/// Completion of one client request: resolves when every envelope it submitted is acknowledged
/// by a doppler, or with the first error that made one of its batches fail.
pub struct Ticket {
    inner: Arc<TicketInner>,
}

struct TicketInner {
    failure: Mutex<Option<tonic::Status>>,
    done: Mutex<Option<oneshot::Sender<Result<(), tonic::Status>>>>,
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(done) = self
            .done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            // The requester may have gone away; then nobody needs the answer.
            let _ = done.send(failure.map_or(Ok(()), Err));
        }
    }
}

impl Ticket {
    /// A ticket and the receiver that resolves when it completes.
    pub fn new() -> (Ticket, oneshot::Receiver<Result<(), tonic::Status>>) {
        let (done, receiver) = oneshot::channel();
        let inner = TicketInner {
            failure: Mutex::new(None),
            done: Mutex::new(Some(done)),
        };
        (
            Ticket {
                inner: Arc::new(inner),
            },
            receiver,
        )
    }

    fn fail(&self, status: &tonic::Status) {
        let mut failure = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert_with(|| status.clone());
    }
}

impl Clone for Ticket {
    fn clone(&self) -> Ticket {
        Ticket {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Envelopes handed to the batcher, with the permits that bound how many are pending.
struct Submission {
    envelopes: Vec<Envelope>,
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
}

/// A batch under way: what it carries and what completes when it is acknowledged.
struct PendingBatch {
    envelopes: Vec<Envelope>,
    tickets: Vec<Ticket>,
    permits: Vec<OwnedSemaphorePermit>,
}

impl PendingBatch {
    fn new() -> PendingBatch {
        PendingBatch {
            envelopes: Vec::new(),
            tickets: Vec::new(),
            permits: Vec::new(),
        }
    }
}

/// The forwarding half of the agent, shared by every source.
pub struct Forwarder {
    submissions: Mutex<Option<mpsc::Sender<Submission>>>,
    pending_limit: Arc<Semaphore>,
    flush_envelopes: usize,
    batcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Forwarder {
    /// Connects (lazily) to the dopplers and starts the batcher.
    pub fn start(
        config: &AgentConfig,
        agent_id: String,
        tls: &TlsMaterial,
        metrics: AgentMetrics,
    ) -> Result<Arc<Forwarder>, SluiceError> {
        let mut clients = Vec::with_capacity(config.dopplers.len());
        for address in &config.dopplers {
            let endpoint = tls
                .endpoint(address, "agent.dopplers", Duration::from_secs(5))?
                .tcp_nodelay(true);
            let channel: Channel = endpoint.connect_lazy();
            let client = DopplerIngressClient::new(channel)
                .max_encoding_message_size(config.max_message_bytes)
                .max_decoding_message_size(config.max_message_bytes);
            clients.push((address.clone(), client));
        }
        let (sender, receiver) = mpsc::channel(1_024);
        let batcher = Batcher {
            agent_id,
            next_sequence: 1,
            flush_envelopes: config.flush_envelopes,
            flush_interval: config.flush_interval,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_batches)),
            max_in_flight: u32::try_from(config.max_in_flight_batches).unwrap_or(u32::MAX),
            senders: Arc::new(DopplerSet::new(clients)),
            metrics,
        };
        let handle = tokio::spawn(batcher.run(receiver));
        Ok(Arc::new(Forwarder {
            submissions: Mutex::new(Some(sender)),
            pending_limit: Arc::new(Semaphore::new(config.max_pending_envelopes)),
            flush_envelopes: config.flush_envelopes,
            batcher: Mutex::new(Some(handle)),
        }))
    }

    /// Queues `envelopes` for forwarding under `ticket`. Waits while too many envelopes are
    /// pending (backpressure). Fails only when the agent is shutting down.
    pub async fn submit(
        &self,
        envelopes: Vec<Envelope>,
        ticket: &Ticket,
    ) -> Result<(), tonic::Status> {
        let sender = self
            .submissions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| tonic::Status::unavailable("agent is shutting down"))?;
        let mut remaining = envelopes;
        while !remaining.is_empty() {
            // Chunks no larger than a batch, so the pending limit is never asked for more
            // permits than it has and one huge request cannot starve the rest.
            let rest = if remaining.len() > self.flush_envelopes {
                remaining.split_off(self.flush_envelopes)
            } else {
                Vec::new()
            };
            let count = u32::try_from(remaining.len()).unwrap_or(u32::MAX);
            let permit = Arc::clone(&self.pending_limit)
                .acquire_many_owned(count)
                .await
                .map_err(|_| tonic::Status::unavailable("agent is shutting down"))?;
            let submission = Submission {
                envelopes: remaining,
                ticket: ticket.clone(),
                permit,
            };
            sender
                .send(submission)
                .await
                .map_err(|_| tonic::Status::unavailable("agent is shutting down"))?;
            remaining = rest;
        }
        Ok(())
    }

    /// Stops taking submissions and waits until the batcher has flushed and every batch in
    /// flight has been acknowledged or given up.
    pub async fn drain(&self) {
        self.submissions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let handle = self
            .batcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

struct DopplerSet {
    clients: Vec<(String, DopplerIngressClient<Channel>)>,
    next: AtomicUsize,
    /// Per doppler: consecutive failed sends and when it may be tried again.
    health: Vec<Mutex<DopplerHealth>>,
}

#[derive(Default)]
struct DopplerHealth {
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl DopplerSet {
    fn new(clients: Vec<(String, DopplerIngressClient<Channel>)>) -> DopplerSet {
        let health = clients
            .iter()
            .map(|_| Mutex::new(DopplerHealth::default()))
            .collect();
        DopplerSet {
            clients,
            next: AtomicUsize::new(0),
            health,
        }
    }

    fn health(&self, index: usize) -> std::sync::MutexGuard<'_, DopplerHealth> {
        self.health[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next doppler in turn that is not resting after failures; when all are, the one
    /// that may be tried soonest (and when).
    fn choose(&self) -> (usize, Option<tokio::time::Instant>) {
        let count = self.clients.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let mut soonest: Option<(usize, tokio::time::Instant)> = None;
        for step in 0..count {
            let index = (start + step) % count;
            match self.health(index).retry_at {
                Some(at) if at > now => {
                    if soonest.is_none_or(|(_, best)| at < best) {
                        soonest = Some((index, at));
                    }
                }
                _ => return (index, None),
            }
        }
        let (index, at) = soonest.unwrap_or((start % count, now));
        (index, Some(at))
    }

    /// A send failed: the doppler rests, longer after each consecutive failure (0.25 s doubling
    /// up to 5 s), and comes back into rotation after that.
    fn failed(&self, index: usize) {
        let mut health = self.health(index);
        health.failures = health.failures.saturating_add(1);
        let rest = Duration::from_millis(250)
            .saturating_mul(1 << health.failures.min(5).saturating_sub(1))
            .min(Duration::from_secs(5));
        health.retry_at = Some(tokio::time::Instant::now() + rest);
    }

    fn succeeded(&self, index: usize) {
        let mut health = self.health(index);
        if health.failures > 0 {
            debug!(doppler = %self.clients[index].0, "doppler back in rotation");
        }
        *health = DopplerHealth::default();
    }
}

struct Batcher {
    agent_id: String,
    next_sequence: u64,
    flush_envelopes: usize,
    flush_interval: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    senders: Arc<DopplerSet>,
    metrics: AgentMetrics,
}

impl Batcher {
    async fn run(mut self, mut submissions: mpsc::Receiver<Submission>) {
        let mut batch = PendingBatch::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let flush_at = deadline;
            tokio::select! {
                submission = submissions.recv() => {
                    let Some(submission) = submission else { break };
                    self.metrics.pending_envelopes.inc_by(submission.envelopes.len() as i64);
                    if batch.envelopes.is_empty() {
                        deadline = Some(tokio::time::Instant::now() + self.flush_interval);
                    }
                    let mut envelopes = submission.envelopes;
                    let mut permit = Some(submission.permit);
                    while !envelopes.is_empty() {
                        let room = self.flush_envelopes - batch.envelopes.len();
                        let rest = if envelopes.len() > room { envelopes.split_off(room) } else { Vec::new() };
                        let taken = envelopes.len();
                        batch.envelopes.append(&mut envelopes);
                        batch.tickets.push(submission.ticket.clone());
                        // Permits follow envelopes: split them where the envelopes split.
                        if let Some(mut whole) = permit.take() {
                            if rest.is_empty() {
                                batch.permits.push(whole);
                            } else if let Some(part) = whole.split(taken) {
                                batch.permits.push(part);
                                permit = Some(whole);
                            } else {
                                batch.permits.push(whole);
                            }
                        }
                        if batch.envelopes.len() >= self.flush_envelopes {
                            self.dispatch(std::mem::replace(&mut batch, PendingBatch::new())).await;
                            deadline = (!rest.is_empty()).then(|| tokio::time::Instant::now() + self.flush_interval);
                        }
                        envelopes = rest;
                    }
                }
                () = sleep_until_or_forever(flush_at) => {
                    deadline = None;
                    self.dispatch(std::mem::replace(&mut batch, PendingBatch::new())).await;
                }
            }
        }
        // The submission channel closed: the agent is stopping. Flush what is left.
        if !batch.envelopes.is_empty() {
            self.dispatch(batch).await;
        }
        // Every permit is back once every send task has finished: wait for that, so drain()
        // returns only when all batches are settled.
        let _ = self.in_flight.acquire_many(self.max_in_flight).await;
    }

    async fn dispatch(&mut self, batch: PendingBatch) {
        if batch.envelopes.is_empty() {
            return;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return;
        };
        let message = AgentBatch {
            agent_id: self.agent_id.clone(),
            sequence,
            envelopes: batch.envelopes,
        };
        let senders = Arc::clone(&self.senders);
        let metrics = self.metrics.clone();
        let tickets = batch.tickets;
        let permits = batch.permits;
        tokio::spawn(async move {
            let count = message.envelopes.len() as u64;
            match send_until_acknowledged(&senders, message, &metrics).await {
                Ok(()) => {
                    metrics.batches_acknowledged.inc();
                    metrics.envelopes_forwarded.inc_by(count);
                }
                Err(status) => {
                    metrics.batches_failed.inc();
                    for ticket in &tickets {
                        ticket.fail(&status);
                    }
                }
            }
            metrics.pending_envelopes.dec_by(count as i64);
            // Dropping the tickets completes requests; dropping permits lets more in.
            drop(tickets);
            drop(permits);
            drop(permit);
        });
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends `batch` to the dopplers in turn until one acknowledges it. Transport failures and
/// unavailable dopplers are retried with backoff; a refusal of the batch itself (invalid
/// argument) is final, since sending it again cannot help.
async fn send_until_acknowledged(
    senders: &DopplerSet,
    batch: AgentBatch,
    metrics: &AgentMetrics,
) -> Result<(), tonic::Status> {
    let mut attempt: u64 = 0;
    loop {
        // A doppler that just failed rests; another one gets the batch at once. Only when every
        // doppler rests does the send wait, until the first may be tried again.
        let (index, wait_until) = senders.choose();
        if let Some(at) = wait_until {
            tokio::time::sleep_until(at).await;
        }
        let (address, client) = &senders.clients[index];
        let mut client = client.clone();
        let mut request = tonic::Request::new(batch.clone());
        request.set_timeout(Duration::from_secs(30));
        match client.push(request).await {
            Ok(_) => {
                senders.succeeded(index);
                return Ok(());
            }
            Err(status) if is_final(&status) => {
                warn!(doppler = %address, sequence = batch.sequence, error = %status.message(), "doppler refused batch");
                return Err(status);
            }
            Err(status) => {
                attempt += 1;
                senders.failed(index);
                metrics.send_retries.inc();
                // One line per doubling of attempts keeps a long outage from flooding the log.
                if attempt.is_power_of_two() {
                    warn!(doppler = %address, sequence = batch.sequence, attempt, code = ?status.code(), error = %status.message(), "failed to send batch, retrying");
                } else {
                    debug!(doppler = %address, sequence = batch.sequence, attempt, "failed to send batch, retrying");
                }
            }
        }
    }
}

fn is_final(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    )
}
