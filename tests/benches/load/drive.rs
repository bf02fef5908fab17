//! The load generators: request loops (keep-alive or a new connection per request)
//! and back-to-back SSE streams, each measured over one window after a warm-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use egress_proxy_tests::upstream::Upstream;
use tokio::task::JoinSet;

/// A kind of load.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// This many HTTP/1.1 connections, each reused for request after request.
    KeepAlive { connections: usize },
    /// The same over plain HTTP: through a proxy, absolute-form requests
    /// (`GET http://host:port/path`), no tunnel.
    PlainKeepAlive { connections: usize },
    /// This many requests in flight, each on a connection of its own.
    NewConnection { concurrency: usize },
    /// One SSE stream of this many events after another: event 0 alone (the time to
    /// it is the latency), then the upstream is let go and sends the rest at once.
    Sse { events: u32 },
    /// This many keep-alive HTTP/1.1 connections, each POSTing a JSON body of this
    /// many bytes, request after request; through the proxy, to a route whose policy
    /// reads the whole body (`need-body`, then `decide-body`).
    InspectedPost { connections: usize, bytes: usize },
}

impl Load {
    /// A short name for `LOAD_ONLY`: `keep-alive-N`, `plain-keep-alive-N`,
    /// `new-connection`, `sse`, `inspected-post`.
    pub fn id(&self) -> String {
        match self {
            Self::KeepAlive { connections } => format!("keep-alive-{connections}"),
            Self::PlainKeepAlive { connections } => format!("plain-keep-alive-{connections}"),
            Self::NewConnection { .. } => "new-connection".to_owned(),
            Self::Sse { .. } => "sse".to_owned(),
            Self::InspectedPost { .. } => "inspected-post".to_owned(),
        }
    }
}

/// How long to warm up and how long to measure.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// CPU use at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// The proxy's CPU ticks, when there is a proxy.
    pub proxy_ticks: Option<u64>,
    /// This process's CPU ticks (load generator and upstream).
    pub bench_ticks: u64,
    /// Every process's CPU ticks.
    pub system_ticks: u64,
}

/// What one measured window saw.
#[derive(Debug)]
pub struct Run {
    /// Requests (SSE: events) completed in the window.
    pub units: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// Request latency (SSE: time to the first event), µs, sorted.
    pub latencies_us: Vec<u32>,
    /// Failed requests or streams, warm-up included.
    pub errors: u64,
    pub first_error: Option<String>,
    pub proxy_ticks: Option<u64>,
    pub bench_ticks: u64,
    /// CPU ticks of every other process: noise from whatever else the machine runs.
    pub other_ticks: u64,
}

impl Run {
    fn new(
        units: u64,
        mut latencies_us: Vec<u32>,
        errors: Errors,
        start: Sample,
        end: Sample,
    ) -> Self {
        latencies_us.sort_unstable();
        let proxy_ticks = end.proxy_ticks.zip(start.proxy_ticks).map(|(e, s)| e - s);
        let bench_ticks = end.bench_ticks - start.bench_ticks;
        let ours = bench_ticks + proxy_ticks.unwrap_or(0);
        Self {
            units,
            elapsed: end.at - start.at,
            latencies_us,
            errors: errors.count,
            first_error: errors.first,
            proxy_ticks,
            bench_ticks,
            other_ticks: (end.system_ticks - start.system_ticks).saturating_sub(ours),
        }
    }

    /// Units per second.
    pub fn rate(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the latencies (0 ≤ q ≤ 1), µs.
    pub fn latency_us(&self, q: f64) -> u32 {
        let Some(last) = self.latencies_us.len().checked_sub(1) else {
            return 0;
        };
        let index = ((q * self.latencies_us.len() as f64) as usize).min(last);
        self.latencies_us[index]
    }
}

/// Runs `load` against `url` (on `upstream`) with `client`; `sample` is taken at
/// the window's start and end.
pub async fn measure(
    load: Load,
    client: &reqwest::Client,
    upstream: &Upstream,
    url: &str,
    window: Window,
    sample: &impl Fn() -> Sample,
) -> Run {
    match load {
        Load::KeepAlive { connections: n }
        | Load::PlainKeepAlive { connections: n }
        | Load::NewConnection { concurrency: n } => {
            requests(n, client, url, None, window, sample).await
        }
        Load::InspectedPost { connections, bytes } => {
            requests(
                connections,
                client,
                url,
                Some(json_body(bytes)),
                window,
                sample,
            )
            .await
        }
        Load::Sse { events } => {
            let sse = Sse {
                events,
                client,
                upstream,
                url,
            };
            sse.measure(window, sample).await
        }
    }
}

#[derive(Debug, Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, error: impl ToString) {
        self.count += 1;
        self.first.get_or_insert_with(|| error.to_string());
    }

    fn merge(&mut self, other: Self) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// A JSON document of about `bytes` bytes: an array of small objects.
fn json_body(bytes: usize) -> bytes::Bytes {
    let mut text = String::from("[");
    let mut i = 0;
    while text.len() + 40 < bytes {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("{{\"id\":{i},\"name\":\"item-{i:08}\"}}"));
        i += 1;
    }
    text.push(']');
    text.into()
}

/// `concurrency` loops of GET `url` (POST `body`, if given), from the warm-up until
/// the window ends.
async fn requests(
    concurrency: usize,
    client: &reqwest::Client,
    url: &str,
    body: Option<bytes::Bytes>,
    window: Window,
    sample: &impl Fn() -> Sample,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let url: Arc<str> = url.into();
    let mut loops = JoinSet::new();
    for _ in 0..concurrency {
        loops.spawn(request_loop(
            client.clone(),
            Arc::clone(&url),
            body.clone(),
            Arc::clone(&stop),
        ));
    }
    tokio::time::sleep(window.warmup).await;
    let start = sample();
    tokio::time::sleep(window.measure).await;
    let end = sample();
    stop.store(true, Ordering::Relaxed);

    let mut latencies_us = Vec::new();
    let mut errors = Errors::default();
    while let Some(done) = loops.join_next().await {
        let (log, loop_errors) = done.expect("a request loop panicked");
        errors.merge(loop_errors);
        let in_window = log
            .into_iter()
            .filter(|(at, _)| (start.at..end.at).contains(at));
        latencies_us.extend(in_window.map(|(_, latency)| latency));
    }
    Run::new(latencies_us.len() as u64, latencies_us, errors, start, end)
}

/// GETs `url` (POSTs `body`) until `stop`; returns (completion time, latency µs) of
/// each success.
async fn request_loop(
    client: reqwest::Client,
    url: Arc<str>,
    body: Option<bytes::Bytes>,
    stop: Arc<AtomicBool>,
) -> (Vec<(Instant, u32)>, Errors) {
    let mut log = Vec::new();
    let mut errors = Errors::default();
    while !stop.load(Ordering::Relaxed) {
        let begun = Instant::now();
        match send(&client, &url, body.clone()).await {
            Ok(()) => {
                let done = Instant::now();
                log.push((done, micros(done - begun)));
            }
            Err(error) => {
                errors.add(error);
                // Do not spin if something is persistently wrong.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (log, errors)
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    body: Option<bytes::Bytes>,
) -> reqwest::Result<()> {
    let request = match body {
        Some(body) => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
        None => client.get(url),
    };
    let response = request.send().await?.error_for_status()?;
    response.bytes().await?;
    Ok(())
}

/// SSE streams of `events` events from `url`, one after another.
struct Sse<'a> {
    events: u32,
    client: &'a reqwest::Client,
    upstream: &'a Upstream,
    url: &'a str,
}

impl Sse<'_> {
    /// Warm-up streams, then streams until the window is over (the window ends with
    /// the last stream).
    async fn measure(&self, window: Window, sample: &impl Fn() -> Sample) -> Run {
        let mut errors = Errors::default();
        let warm_until = Instant::now() + window.warmup;
        while Instant::now() < warm_until {
            if let Err(error) = self.stream().await {
                errors.add(error);
            }
        }
        let start = sample();
        let mut first_event_us = Vec::new();
        let mut received = 0;
        while start.at.elapsed() < window.measure {
            match self.stream().await {
                Ok(first_event) => {
                    first_event_us.push(micros(first_event));
                    received += u64::from(self.events);
                }
                Err(error) => errors.add(error),
            }
        }
        let end = sample();
        Run::new(received, first_event_us, errors, start, end)
    }

    /// One stream, read to its end; returns the time to its first event.
    async fn stream(&self) -> Result<Duration, String> {
        let begun = Instant::now();
        let mut response = self
            .client
            .get(self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?;
        let mut first_event = None;
        let mut seen = 0_u32;
        let mut previous = 0_u8;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            // Every event ends with a blank line, and nothing else contains one.
            for &byte in chunk.iter() {
                if byte == b'\n' && previous == b'\n' {
                    seen += 1;
                }
                previous = byte;
            }
            if seen > 0 && first_event.is_none() {
                first_event = Some(begun.elapsed());
                // The upstream holds every event after the first until released.
                self.upstream.release_sse(self.events as usize - 1);
            }
        }
        match first_event {
            Some(first_event) if seen == self.events => Ok(first_event),
            _ => Err(format!(
                "SSE stream ended after {seen} of {} events",
                self.events
            )),
        }
    }
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}
