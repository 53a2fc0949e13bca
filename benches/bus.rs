//! Event bus benchmarks, each beside a raw `tokio::sync::broadcast` channel in the same run:
//!
//! - `bus/publish/*`: the cost of publishing one event with one subscriber (the bus picks the
//!   kind's channel and counts; raw is `Sender::send` of the same `Arc` payload).
//! - `bus/fanout/*/{1,4,8}`: 10,000 events published and handled by 1, 4 and 8 handlers on a
//!   two-worker runtime, until every handler has seen every event: through the
//!   `HandlerRegistry` (one task per handler, `async_trait` dispatch, the handler context),
//!   and raw (one task per receiver looping on `recv`). Throughput is events published.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use apexsim::events::{
    Event, EventBus, EventHandler, EventKind, HandlerContext, HandlerRegistry, UploadOutcome,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::{Notify, broadcast};

const EVENTS: u64 = 10_000;

fn event() -> Event {
    Event::LapUploadSucceeded(Arc::new(UploadOutcome {
        entry: 1,
        lap_id: uuid::Uuid::nil(),
        session: uuid::Uuid::nil(),
        car: 0,
        lap: 1,
        attempts: 1,
        error: None,
        will_retry: false,
    }))
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("bus/publish");
    g.throughput(Throughput::Elements(1));
    let ev = event();
    g.bench_function("bus", |b| {
        let bus = EventBus::new(1024);
        let _rx = bus.subscribe(EventKind::LapUploadSucceeded);
        b.iter(|| bus.publish(black_box(ev.clone())));
    });
    g.bench_function("raw_broadcast", |b| {
        let (tx, _rx) = broadcast::channel::<Event>(1024);
        b.iter(|| {
            let _ = tx.send(black_box(ev.clone()));
        });
    });
    g.finish();
}

/// Counts what it sees (as the raw receivers do, on its own counter) and wakes the bench
/// when every handler has seen every event.
struct Count {
    seen: AtomicU64,
    finished: Arc<AtomicU64>,
    handlers: u64,
    done: Arc<Notify>,
}

#[async_trait::async_trait]
impl EventHandler for Count {
    fn name(&self) -> &'static str {
        "count"
    }
    fn kinds(&self) -> &[EventKind] {
        &[EventKind::LapUploadSucceeded]
    }
    async fn handle(&self, event: Event, _ctx: &HandlerContext) {
        black_box(&event);
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == EVENTS
            && self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.handlers
        {
            self.done.notify_one();
        }
    }
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("bus/fanout");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(20);
    let ev = event();
    for handlers in [1u64, 4, 8] {
        g.bench_with_input(BenchmarkId::new("bus", handlers), &handlers, |b, &k| {
            b.to_async(&runtime).iter(|| {
                let ev = ev.clone();
                async move {
                    let bus = EventBus::new(EVENTS as usize);
                    let mut registry = HandlerRegistry::new(bus.clone());
                    let finished = Arc::new(AtomicU64::new(0));
                    let done = Arc::new(Notify::new());
                    for _ in 0..k {
                        registry.register(Arc::new(Count {
                            seen: AtomicU64::new(0),
                            finished: finished.clone(),
                            handlers: k,
                            done: done.clone(),
                        }));
                    }
                    for _ in 0..EVENTS {
                        bus.publish(ev.clone());
                    }
                    done.notified().await;
                    registry.shutdown().await;
                }
            });
        });
        g.bench_with_input(
            BenchmarkId::new("raw_broadcast", handlers),
            &handlers,
            |b, &k| {
                b.to_async(&runtime).iter(|| {
                    let ev = ev.clone();
                    async move {
                        let (tx, _) = broadcast::channel::<Event>(EVENTS as usize);
                        let tasks: Vec<_> = (0..k)
                            .map(|_| {
                                let mut rx = tx.subscribe();
                                tokio::spawn(async move {
                                    let mut n = 0;
                                    while n < EVENTS {
                                        if let Ok(e) = rx.recv().await {
                                            black_box(&e);
                                            n += 1;
                                        }
                                    }
                                })
                            })
                            .collect();
                        for _ in 0..EVENTS {
                            let _ = tx.send(ev.clone());
                        }
                        for t in tasks {
                            let _ = t.await;
                        }
                    }
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, publish, fanout);
criterion_main!(benches);
