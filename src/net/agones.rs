//! `serve` under Agones, the game-server orchestrator for Kubernetes (the `agones` feature,
//! `[agones] enabled` or `serve --agones`): the server tells its SDK sidecar it is `Ready`
//! once the endpoint listens, pings `Health` only while the simulation thread is ticking (a
//! stalled tick stops the pings, so Agones replaces the process), keeps the GameServer's
//! player and session counters, follows an allocation's template annotation (the next
//! rotation session is of that template), and calls `Shutdown` after the graceful drain.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::AgonesSection;
use super::metrics::Metrics;
use super::sim::ToSim;

/// Why the SDK server could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgonesError {
    /// The SDK server did not answer (it is the GameServer pod's sidecar; outside Agones,
    /// `AGONES_SDK_GRPC_HOST` and `AGONES_SDK_GRPC_PORT` must point at one).
    #[error("cannot reach the Agones SDK server: {0}")]
    Connect(String),
    /// A call was refused.
    #[error("Agones SDK {call}: {message}")]
    Call {
        /// Which call.
        call: &'static str,
        /// What the SDK server said.
        message: String,
    },
}

fn call_error(call: &'static str) -> impl Fn(agones::errors::Error) -> AgonesError {
    move |e| AgonesError::Call {
        call,
        message: match e {
            agones::errors::Error::Rpc(status) => status.message().to_owned(),
            e => e.to_string(),
        },
    }
}

/// The server's link to its Agones sidecar, and the tasks that keep it informed.
pub struct Agones {
    sdk: agones::Sdk,
    tasks: Vec<JoinHandle<()>>,
}

impl Agones {
    /// Connects to the SDK server (within its 30 s handshake).
    ///
    /// # Errors
    /// [`AgonesError::Connect`] when it does not answer.
    pub async fn connect() -> Result<Self, AgonesError> {
        let sdk = agones::Sdk::new_with_host(None, None, None)
            .await
            .map_err(|e| AgonesError::Connect(e.to_string()))?;
        Ok(Self {
            sdk,
            tasks: Vec::new(),
        })
    }

    /// Marks the GameServer `Ready`, then starts the health pings, the counters and the
    /// allocation watch.
    ///
    /// # Errors
    /// [`AgonesError::Call`] when `Ready` is refused.
    pub async fn ready(
        &mut self,
        config: &AgonesSection,
        metrics: Metrics,
        to_sim: mpsc::Sender<ToSim>,
    ) -> Result<(), AgonesError> {
        self.sdk.ready().await.map_err(call_error("Ready"))?;
        tracing::info!("agones: ready");
        let every = Duration::from_millis(config.health_every_ms);
        self.tasks.push(tokio::spawn(health(
            self.sdk.health_check(),
            metrics.clone(),
            every,
        )));
        self.tasks.push(tokio::spawn(counters(
            self.sdk.clone(),
            config.clone(),
            metrics,
        )));
        self.tasks.push(tokio::spawn(allocations(
            self.sdk.clone(),
            config.template_annotation.clone(),
            to_sim,
        )));
        Ok(())
    }

    /// Stops the pings and tells Agones the server is done (after the drain: every session
    /// archived), so it deletes the GameServer.
    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        match self.sdk.shutdown().await.map_err(call_error("Shutdown")) {
            Ok(()) => tracing::info!("agones: shutdown"),
            Err(e) => tracing::warn!(error = %e, "agones: shutdown not delivered"),
        }
    }
}

/// Pings every `every` while the simulation thread ticks: the tick histogram's count must
/// have moved since the last ping. A stalled thread stops the pings until it ticks again.
async fn health(pings: mpsc::Sender<()>, metrics: Metrics, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks = || metrics.tick_duration_seconds.get_sample_count();
    // The first tick of an interval is at once: the first ping is one period after the count.
    interval.tick().await;
    let mut last = ticks();
    let mut stalled = false;
    loop {
        interval.tick().await;
        let now = ticks();
        if now == last {
            if !stalled {
                tracing::warn!("agones: the simulation thread is not ticking: no health pings");
            }
            stalled = true;
            continue;
        }
        if stalled {
            tracing::info!("agones: ticking again: health pings resume");
            stalled = false;
        }
        last = now;
        if pings.send(()).await.is_err() {
            tracing::warn!("agones: the health stream ended");
            return;
        }
    }
}

/// Sets the player and session counters once a second when they changed.
async fn counters(sdk: agones::Sdk, config: AgonesSection, metrics: Metrics) {
    let mut beta = sdk.beta().clone();
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: [Option<i64>; 2] = [None, None];
    let mut warned = [false; 2];
    loop {
        interval.tick().await;
        let now = [metrics.connected_players.get(), metrics.sessions.get()];
        let names = [&config.players_counter, &config.sessions_counter];
        for i in 0..2 {
            if names[i].is_empty() || sent[i] == Some(now[i]) {
                continue;
            }
            match beta.set_counter_count(names[i], now[i]).await {
                Ok(()) => sent[i] = Some(now[i]),
                Err(e) => {
                    if !warned[i] {
                        let e = call_error("UpdateCounter")(e);
                        tracing::warn!(counter = %names[i], error = %e, "agones: counter not updated (is it declared in the fleet's counters?)");
                        warned[i] = true;
                    }
                }
            }
        }
    }
}

/// Watches the GameServer: when it becomes `Allocated` with the template annotation, the
/// next rotation session is of that template.
async fn allocations(mut sdk: agones::Sdk, annotation: String, to_sim: mpsc::Sender<ToSim>) {
    let mut stream = match sdk.watch_gameserver().await {
        Ok(s) => s,
        Err(e) => {
            let e = call_error("WatchGameServer")(e);
            tracing::warn!(error = %e, "agones: allocations are not followed");
            return;
        }
    };
    let mut allocated = false;
    loop {
        let gs = match stream.message().await {
            Ok(Some(gs)) => gs,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e.message(), "agones: the GameServer watch ended");
                return;
            }
        };
        let state = gs.status.as_ref().map_or("", |s| s.state.as_str());
        let now_allocated = state == "Allocated";
        if now_allocated && !allocated {
            let template = gs
                .object_meta
                .as_ref()
                .and_then(|m| m.annotations.get(&annotation))
                .cloned();
            tracing::info!(
                template = template.as_deref().unwrap_or(""),
                "agones: allocated"
            );
            if let Some(template) = template
                && to_sim.send(ToSim::NextTemplate { template }).await.is_err()
            {
                return;
            }
        }
        allocated = now_allocated;
    }
}
