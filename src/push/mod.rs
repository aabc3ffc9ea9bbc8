//! The push proxy role. The platform POSTs its push request to `/push/{app}`; brandgate
//! authenticates the caller, masks the text where the app says so, adds the APNs/FCM credential
//! only it holds, delivers, and answers in the codes the platform understands (200 delivered,
//! 401 caller refused, 403 dead device token, 500 failed).
//!
//! The door is [`PushService`]: [`PushService::router`] for the listener, [`PushService::send`]
//! for everything else in the process (`brandgate push-test`, the relay), and
//! [`PushService::drain`] for shutdown. The provider clients
//! (`apns`, `fcm`) are private to this module.
//!
//! A configuration generation (apps, credentials, clients) is swapped whole on reload; requests
//! in flight finish on the generation they started with. Provider clients whose configuration
//! and credential files did not change are carried over, connections and tokens included.
//!
//! Never logged: the notification text, full device tokens, credentials.

mod apns;
mod auth;
mod dedupe;
mod fcm;
mod feedback;
mod h2pool;
mod huawei;
mod ingress;
mod metrics;
mod oauth;
mod outcome;
pub(crate) mod payload;
pub(crate) mod request;
mod retry;
mod shared_dedupe;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio_util::task::TaskTracker;

pub use feedback::RECORD_FILE as DEAD_TOKEN_FILE;
pub use metrics::PushMetrics;
pub use outcome::{Attempt, Delivery};
pub use request::{Alert, DeviceToken, Provider, PushMeta, PushRequest, TokenShape};

use crate::clock::Clock;
use crate::config::{AppConfig, Problems, PushConfig};
use crate::dispatch::{Doorbell, Handler, Verdict};
use crate::limiter::SourceLimiter;
use crate::store::outbox::OutboxItem;
use apns::{ApnsClient, ApnsLink};
use auth::CallerAuth;
use dedupe::{Claim, Dedupe};
use fcm::{FcmClient, FcmLink};
use feedback::{DeadToken, FeedbackOutbox, FeedbackSink};
use huawei::HuaweiClient;
use metrics::{DeliveryLabels, ProviderLabels, ResultLabels};
use payload::{PayloadError, Presentation};
use shared_dedupe::{Shared as SharedClaim, SharedDedupe};

/// Why a push was not attempted. Each maps to one HTTP status in `ingress`.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    #[error("app {app:?} has no {provider} provider configured")]
    NoProvider { app: String, provider: Provider },
    #[error("too many pushes in flight; retry shortly")]
    Overloaded,
    #[error("{0}")]
    InvalidToken(TokenShape),
    #[error("a concurrent attempt at this same push just failed; a retry may succeed")]
    ConcurrentAttemptFailed,
    #[error("another node is still delivering this same push; a re-send gets its outcome")]
    DeliveringElsewhere,
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// The push proxy. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct PushService {
    shared: Arc<Shared>,
}

struct Shared {
    generation: RwLock<Arc<Generation>>,
    builder: Builder,
    dedupe: Arc<Dedupe>,
    /// The claims shared with the other nodes and kept across restarts (when there is a
    /// store: [`PushService::share_dedupe`]).
    shared_dedupe: std::sync::OnceLock<Arc<SharedDedupe>>,
    /// Where dead-token records wait for the webhook (when there is a store:
    /// [`PushService::keep_feedback_in`]).
    feedback_outbox: std::sync::OnceLock<Arc<FeedbackOutbox>>,
    limiter: SourceLimiter,
    in_flight: AtomicUsize,
    /// Deliveries started for the proxy endpoint. They run detached from the request that
    /// started them (see `ingress`), so shutdown waits for them here: [`PushService::drain`].
    deliveries: TaskTracker,
    /// `app/provider` whose last push the provider refused for good, and the reason: an
    /// operator must look (shown in `/readyz`); cleared by the next delivery.
    degraded: Mutex<BTreeMap<String, String>>,
}

/// What every generation is built with.
struct Builder {
    metrics: PushMetrics,
    clock: Arc<dyn Clock>,
    record_dir: Option<PathBuf>,
}

/// One configuration's worth of apps and clients.
struct Generation {
    settings: PushConfig,
    apps: HashMap<String, Arc<App>>,
    feedback: FeedbackSink,
    /// Provider connections and tokens by credential, as this generation's apps use them.
    links: Links,
}

/// Provider connections and tokens by credential ([`apns_link_key`], [`fcm_link_key`]): apps
/// with one credential share them.
#[derive(Clone, Default)]
struct Links {
    apns: HashMap<Fingerprint, Arc<ApnsLink>>,
    fcm: HashMap<Fingerprint, Arc<FcmLink>>,
}

struct App {
    id: String,
    auth: CallerAuth,
    mask_text: Option<String>,
    mutable_content: bool,
    apns: Option<(Fingerprint, Arc<ApnsClient>)>,
    fcm: Option<(Fingerprint, Arc<FcmClient>)>,
    huawei: Option<(Fingerprint, Arc<HuaweiClient>)>,
    metrics: metrics::AppMetrics,
}

/// A digest of a provider's configuration and the content of every file it reads: equal
/// fingerprints mean the client can be carried over a reload unchanged.
type Fingerprint = [u8; 32];

impl PushService {
    /// Builds the service from the config, reading every credential. Fails with every problem.
    /// Dead tokens are recorded in `record_dir` when given. Must run inside a tokio runtime (the
    /// feedback task starts here).
    pub fn build(
        cfg: &PushConfig,
        record_dir: Option<&Path>,
        client_ca_configured: bool,
        metrics: PushMetrics,
        clock: Arc<dyn Clock>,
    ) -> Result<PushService, Problems> {
        let builder = Builder {
            metrics,
            clock: clock.clone(),
            record_dir: record_dir.map(Path::to_path_buf),
        };
        let generation = builder.generation(cfg, client_ca_configured, None)?;
        let evicted_early = builder.metrics.dedupe_evicted_early.clone();
        let shared = Shared {
            generation: RwLock::new(Arc::new(generation)),
            builder,
            dedupe: Dedupe::new(clock, evicted_early),
            shared_dedupe: std::sync::OnceLock::new(),
            feedback_outbox: std::sync::OnceLock::new(),
            limiter: SourceLimiter::default(),
            in_flight: AtomicUsize::new(0),
            deliveries: TaskTracker::new(),
            degraded: Mutex::new(BTreeMap::new()),
        };
        Ok(PushService {
            shared: Arc::new(shared),
        })
    }

    /// Replaces the configuration. On any problem nothing changes.
    pub fn reload(&self, cfg: &PushConfig, client_ca_configured: bool) -> Result<(), Problems> {
        let previous = self.generation();
        let generation =
            self.shared
                .builder
                .generation(cfg, client_ca_configured, Some(&previous))?;
        *self
            .shared
            .generation
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(generation);
        Ok(())
    }

    fn generation(&self) -> Arc<Generation> {
        self.shared
            .generation
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn metrics(&self) -> &PushMetrics {
        &self.shared.builder.metrics
    }

    /// The HTTP routes of the push proxy (`POST /push/{app}`).
    pub fn router(&self) -> axum::Router {
        ingress::router(self.clone())
    }

    /// Shares de-duplication through `store` (several nodes on one PostgreSQL, or a restart on
    /// SQLite), behind the in-memory table. Once; later calls change nothing. Inside a tokio
    /// runtime.
    pub fn share_dedupe(&self, store: crate::store::Store) {
        self.shared.shared_dedupe.get_or_init(|| {
            SharedDedupe::start(
                store,
                self.shared.builder.clock.clone(),
                self.metrics().dedupe_store_errors.clone(),
            )
        });
    }

    /// Keeps dead-token records for the webhook in the store's outbox (see `feedback`), for
    /// the daemon's dispatcher to post through [`PushService::outbox_handler`]. Once; later
    /// calls change nothing.
    pub fn keep_feedback_in(
        &self,
        store: crate::store::Store,
        data_keys: Arc<crate::store::seal::DataKeys>,
        bell: Doorbell,
    ) {
        self.shared.feedback_outbox.get_or_init(|| {
            Arc::new(FeedbackOutbox {
                store,
                data_keys,
                clock: self.shared.builder.clock.clone(),
                bell,
            })
        });
    }

    /// What posts the dead-token records kept in the outbox, for the daemon's dispatcher.
    pub fn outbox_handler(&self) -> Arc<dyn Handler> {
        Arc::new(DeadTokenRecords(self.clone()))
    }

    /// How many apps the current configuration serves.
    pub fn app_count(&self) -> usize {
        self.generation().apps.len()
    }

    /// Sends one push for `app` through the whole pipeline (masking, duplicates, retries,
    /// feedback, metrics), as the proxy endpoint does after authenticating the caller.
    pub async fn send(&self, app: &str, request: PushRequest) -> Result<Delivery, PushError> {
        let generation = self.generation();
        let Some(app) = generation.apps.get(app).cloned() else {
            return Err(PushError::UnknownApp(app.to_string()));
        };
        self.send_on(&generation, &app, request).await
    }

    /// Whether `app` is configured and delivers through `provider` (the relay checks this
    /// before it keeps a consumer's device token).
    pub fn serves(&self, app: &str, provider: Provider) -> bool {
        self.generation()
            .apps
            .get(app)
            .is_some_and(|a| match provider {
                Provider::Apns => a.apns.is_some(),
                Provider::Fcm => a.fcm.is_some(),
                Provider::Huawei => a.huawei.is_some(),
            })
    }

    /// Waits until every delivery the proxy endpoint started has finished, including those
    /// whose caller has gone. Deliveries started meanwhile are waited for too. For shutdown:
    /// the caller bounds the wait (`server.shutdown_grace`).
    pub async fn drain(&self) {
        let deliveries = &self.shared.deliveries;
        deliveries.close();
        deliveries.wait().await;
        // What the deliveries recorded for the other nodes, written before the end.
        if let Some(shared) = self.shared.shared_dedupe.get() {
            shared.drain().await;
        }
    }

    /// Deliveries the proxy endpoint started that have not finished yet.
    pub fn pending_deliveries(&self) -> usize {
        self.shared.deliveries.len()
    }

    async fn send_on(
        &self,
        generation: &Generation,
        app: &App,
        request: PushRequest,
    ) -> Result<Delivery, PushError> {
        let provider = request.provider;
        let no_provider = || PushError::NoProvider {
            app: app.id.clone(),
            provider,
        };
        match provider {
            Provider::Apns if app.apns.is_none() => return Err(no_provider()),
            Provider::Fcm if app.fcm.is_none() => return Err(no_provider()),
            Provider::Huawei if app.huawei.is_none() => return Err(no_provider()),
            Provider::Apns | Provider::Fcm | Provider::Huawei => {}
        }
        // Checked here, not left to the provider (an APNs token goes into the request path).
        // Not a dead token either (the platform may send opaque ids), so it is not recorded.
        provider
            .check_token(request.device_token.as_str())
            .map_err(PushError::InvalidToken)?;
        let presentation = Presentation {
            mask_text: app.mask_text.as_deref(),
            mutable_content: app.mutable_content,
        };
        let body = match provider {
            Provider::Apns => payload::apns_body(&request, presentation)?,
            Provider::Fcm => {
                let (android_priority, collapse) =
                    app.fcm.as_ref().map_or(("high", false), |(_, c)| {
                        (c.android_priority.as_str(), c.collapse_by_conversation)
                    });
                payload::fcm_body(&request, presentation, android_priority, collapse)?
            }
            Provider::Huawei => {
                let how = app.huawei.as_ref().map(|(_, c)| payload::HuaweiDelivery {
                    urgency: &c.urgency,
                    category: c.category.as_deref(),
                    ttl: c.ttl,
                    collapse_key: c.collapse_key,
                });
                let how = how.ok_or_else(no_provider)?;
                payload::huawei_body(&request, presentation, &how)?
            }
        };
        let body = Bytes::from(body);

        let settings = &generation.settings;
        let deadline = tokio::time::Instant::now() + settings.deadline.0;
        let dedupe_key = dedupe::key(
            &app.id,
            request.device_token.as_str(),
            request.meta.conversation_id.as_deref(),
            request.meta.sequence,
        );
        let guard = match dedupe_key {
            None => None,
            Some(k) => match self
                .shared
                .dedupe
                .claim(k, settings.dedupe_window.0, settings.dedupe_capacity)
                .await
            {
                Claim::AlreadyDelivered => return Ok(self.duplicate(app, provider, &request)),
                Claim::ConcurrentFailed => return Err(PushError::ConcurrentAttemptFailed),
                Claim::Fresh(g) => Some((k, g)),
            },
        };
        let Some(_in_flight) = InFlight::enter(self, settings.max_in_flight) else {
            self.metrics()
                .refused
                .get_or_create(&ResultLabels {
                    result: "overloaded",
                })
                .inc();
            return Err(PushError::Overloaded);
        };
        // Then the claim every node shares (the memory table above answers this node's own
        // repeats without the database).
        let shared_dedupe = self.shared.shared_dedupe.get();
        let shared_key = match (shared_dedupe, &guard) {
            // Boxed (as every await here that is large or rare): the delivery future is
            // moved whole when it is spawned, so its size is paid on every push.
            (Some(shared), Some((k, _))) => match Box::pin(shared.claim(*k, deadline)).await {
                SharedClaim::Send => Some((shared, *k)),
                SharedClaim::Unavailable => None,
                SharedClaim::Duplicate => {
                    if let Some((_, g)) = guard {
                        g.delivered();
                    }
                    return Ok(self.duplicate(app, provider, &request));
                }
                SharedClaim::StillSendingElsewhere => {
                    return Err(PushError::DeliveringElsewhere);
                }
            },
            _ => None,
        };

        let apns_id = next_apns_id();
        let collapse = request.meta.conversation_id.as_deref();
        let device = &request.device_token;
        let background = payload::is_background(&request);
        let series = app.metrics.provider(provider);
        let (latency, retries) = (&series.latency, &series.retries);
        let (last, attempts, gave_up) = retry::run(
            deadline,
            retry::RetryPolicy::default(),
            |_| {
                retries.inc();
            },
            || {
                let body = body.clone();
                let apns_id = apns_id.as_str();
                async move {
                    let started = std::time::Instant::now();
                    let answer = match (&app.apns, &app.fcm, &app.huawei, provider) {
                        (Some((_, c)), _, _, Provider::Apns) => {
                            let collapse = collapse.filter(|_| c.collapse_by_conversation);
                            c.attempt(device, body, background, collapse, apns_id).await
                        }
                        (_, Some((_, c)), _, Provider::Fcm) => c.attempt(body).await,
                        (_, _, Some((_, c)), Provider::Huawei) => {
                            Box::pin(c.attempt(device.as_str(), body)).await
                        }
                        _ => Attempt::Permanent {
                            status: None,
                            reason: "no_provider".into(),
                        },
                    };
                    latency.observe(started.elapsed().as_secs_f64());
                    answer
                }
            },
        )
        .await;

        let delivery = Delivery {
            provider,
            last,
            attempts,
            gave_up,
            duplicate: false,
        };
        // The shared mark is queued before the in-memory entry goes (an attempt that failed
        // drops it): a re-send let through afterwards queues its claim behind the mark.
        if let Some((shared, k)) = shared_key {
            if delivery.delivered() {
                shared.delivered(k, settings.dedupe_window.0);
            } else {
                shared.release(k);
            }
        }
        if let Some((_, g)) = guard
            && delivery.delivered()
        {
            g.delivered();
        }
        if let Some(dead) = self.record(app, &request.device_token, &delivery) {
            let outbox = self.shared.feedback_outbox.get().map(Arc::as_ref);
            Box::pin(generation.feedback.report(dead, outbox)).await;
        }
        Ok(delivery)
    }

    /// The answer to a repeat of a delivered push: nothing is sent.
    fn duplicate(&self, app: &App, provider: Provider, request: &PushRequest) -> Delivery {
        self.metrics().duplicates.inc();
        tracing::info!(app = %app.id, %provider, token = %request.device_token, "repeat of a delivered push: not sent again");
        Delivery {
            provider,
            last: Attempt::Delivered {
                status: 200,
                id: None,
            },
            attempts: 0,
            gave_up: None,
            duplicate: true,
        }
    }

    /// Metrics and the log line for a finished push, and the dead token to report if the
    /// provider declared it dead.
    fn record(&self, app: &App, token: &DeviceToken, d: &Delivery) -> Option<DeadToken> {
        let metrics = self.metrics();
        match &d.last {
            Attempt::Delivered { .. } => app.metrics.provider(d.provider).delivered.inc(),
            other => metrics
                .deliveries
                .get_or_create(&DeliveryLabels {
                    app: app.id.clone(),
                    provider: d.provider.as_str(),
                    outcome: other.label(),
                    reason: metrics::reason_label(other.reason()),
                })
                .inc(),
        };
        let (app_id, provider, reason, attempts) =
            (&app.id, d.provider, d.last.reason(), d.attempts);
        {
            let mut degraded = self
                .shared
                .degraded
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let key = format!("{app_id}/{provider}");
            match &d.last {
                Attempt::Delivered { .. } => {
                    degraded.remove(&key);
                }
                Attempt::Permanent { .. } => {
                    degraded.insert(key, reason.to_string());
                }
                Attempt::DeadToken { .. } | Attempt::Transient { .. } => {}
            }
        }
        match &d.last {
            Attempt::Delivered { .. } => {
                tracing::debug!(app = %app_id, %provider, %token, attempts, "push delivered");
            }
            Attempt::DeadToken { since, .. } => {
                tracing::info!(app = %app_id, %provider, %token, reason, "device token is dead");
                metrics
                    .dead_tokens
                    .get_or_create(&ProviderLabels {
                        app: app.id.clone(),
                        provider: provider.as_str(),
                    })
                    .inc();
                return Some(DeadToken::new(
                    app_id,
                    provider.as_str(),
                    token,
                    reason,
                    *since,
                ));
            }
            Attempt::Transient { status, .. } => {
                let why = d.gave_up.map_or("not retried", retry::GaveUp::describe);
                tracing::warn!(app = %app_id, %provider, %token, reason, status, attempts, "push not delivered: {why}");
            }
            Attempt::Permanent { status, .. } => {
                tracing::error!(app = %app_id, %provider, %token, reason, status, "provider refused the push: check this app's configuration");
            }
        }
        None
    }
}

impl Builder {
    /// Builds a generation from `cfg`, carrying over unchanged provider clients of `previous`.
    fn generation(
        &self,
        cfg: &PushConfig,
        client_ca_configured: bool,
        previous: Option<&Generation>,
    ) -> Result<Generation, Problems> {
        let mut problems = Problems::default();
        let feedback = FeedbackSink::build(
            &cfg.feedback,
            self.record_dir.as_deref(),
            &self.metrics,
            &mut problems,
        );
        let mut apps = HashMap::new();
        // A credential the running generation already connects with keeps its link.
        let mut links = previous.map(|p| p.links.clone()).unwrap_or_default();
        let mut used = Links::default();
        for (i, app_cfg) in cfg.apps.iter().enumerate() {
            let key = format!("push.apps[{i}]");
            let old = previous
                .and_then(|p| p.apps.get(&app_cfg.id))
                .map(Arc::as_ref);
            let app = self.app(
                &key,
                app_cfg,
                client_ca_configured,
                old,
                (&mut links, &mut used),
                &mut problems,
            );
            apps.insert(app_cfg.id.clone(), Arc::new(app));
        }
        let feedback = match feedback {
            Some(f) if problems.is_empty() => f,
            _ => return Err(problems),
        };
        Ok(Generation {
            settings: cfg.clone(),
            apps,
            feedback,
            links: used,
        })
    }

    /// `links`: the provider links that may be shared (the running generation's and this one's so
    /// far); `used`: those this generation's apps send with.
    fn app(
        &self,
        key: &str,
        cfg: &AppConfig,
        client_ca_configured: bool,
        old: Option<&App>,
        (links, used): (&mut Links, &mut Links),
        problems: &mut Problems,
    ) -> App {
        if cfg.id.is_empty()
            || cfg.id.len() > 255
            || cfg.id.contains('/')
            || cfg.id.chars().any(char::is_control)
        {
            problems.push(
                format!("{key}.id"),
                "must be 1-255 characters, without '/' or control characters",
            );
        }
        if cfg.apns.is_none() && cfg.fcm.is_none() && cfg.huawei.is_none() {
            problems.push(key, "configure apns, fcm, huawei, or several");
        }
        if let Some(mask) = &cfg.mask_text
            && (mask.is_empty() || mask.len() > 1024)
        {
            problems.push(format!("{key}.mask_text"), "must be 1-1024 bytes");
        }
        let auth = CallerAuth::build(
            &format!("{key}.auth"),
            &cfg.auth,
            client_ca_configured,
            problems,
        );
        let apns = cfg.apns.as_ref().and_then(|c| {
            let fp = fingerprint(&cfg.id, &format!("{c:?}"), apns_files(c));
            let link_key = apns_link_key(&cfg.id, c);
            if let Some((old_fp, client)) = old.and_then(|a| a.apns.as_ref())
                && *old_fp == fp
            {
                used.apns.insert(link_key, client.link());
                return Some((fp, client.clone()));
            }
            ApnsClient::build(
                &format!("{key}.apns"),
                &cfg.id,
                c,
                &self.metrics,
                self.clock.clone(),
                links.apns.get(&link_key).cloned(),
                problems,
            )
            .map(|client| {
                links.apns.insert(link_key, client.link());
                used.apns.insert(link_key, client.link());
                (fp, Arc::new(client))
            })
        });
        let fcm = cfg.fcm.as_ref().and_then(|c| {
            let files = std::iter::once(c.service_account_file.as_path())
                .chain(c.extra_trust_anchors.iter().map(PathBuf::as_path));
            let fp = fingerprint(&cfg.id, &format!("{c:?}"), files);
            let link_key = fcm_link_key(c);
            if let Some((old_fp, client)) = old.and_then(|a| a.fcm.as_ref())
                && *old_fp == fp
            {
                used.fcm.insert(link_key, client.link());
                return Some((fp, client.clone()));
            }
            FcmClient::build(
                &format!("{key}.fcm"),
                &cfg.id,
                c,
                &self.metrics,
                self.clock.clone(),
                links.fcm.get(&link_key).cloned(),
                problems,
            )
            .map(|client| {
                links.fcm.insert(link_key, client.link());
                used.fcm.insert(link_key, client.link());
                (fp, Arc::new(client))
            })
        });
        let huawei = cfg.huawei.as_ref().and_then(|c| {
            let files = std::iter::once(c.client_secret_file.as_path())
                .chain(c.extra_trust_anchors.iter().map(PathBuf::as_path));
            let fp = fingerprint(&cfg.id, &format!("{c:?}"), files);
            if let Some((old_fp, client)) = old.and_then(|a| a.huawei.as_ref())
                && *old_fp == fp
            {
                return Some((fp, client.clone()));
            }
            HuaweiClient::build(&format!("{key}.huawei"), c, self.clock.clone(), problems)
                .map(|client| (fp, Arc::new(client)))
        });
        // Each configured provider's dead tokens show from the start (a 0 an alert can read).
        let configured = [
            (apns.is_some(), Provider::Apns),
            (fcm.is_some(), Provider::Fcm),
            (huawei.is_some(), Provider::Huawei),
        ];
        for (_, provider) in configured.into_iter().filter(|(on, _)| *on) {
            let _ = self.metrics.dead_tokens.get_or_create(&ProviderLabels {
                app: cfg.id.clone(),
                provider: provider.as_str(),
            });
        }
        App {
            id: cfg.id.clone(),
            metrics: self.metrics.app(&cfg.id),
            auth,
            mask_text: cfg.mask_text.clone(),
            mutable_content: cfg.mutable_content,
            apns,
            fcm,
            huawei,
        }
    }
}

impl crate::ops::health::ReadinessCheck for PushService {
    fn name(&self) -> &'static str {
        "push"
    }

    /// Every app's credentials were loaded when its generation was built, so the proxy is ready
    /// whenever it exists; refused credentials show as `degraded`.
    fn check(&self) -> crate::ops::health::Check {
        let degraded = self
            .shared
            .degraded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        crate::ops::health::Check {
            ready: true,
            detail: serde_json::json!({
                "apps": self.app_count(),
                "degraded": degraded,
            }),
        }
    }
}

/// An `apns-id` (a UUID, echoed back by APNs for correlation): a random prefix chosen once and
/// a counter. Unique per process without a system call per push.
fn next_apns_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        *uuid::Uuid::new_v4()
            .as_bytes()
            .first_chunk()
            .unwrap_or(&[0; 8])
    });
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(prefix);
    bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A slot among the pushes in flight; released on drop.
struct InFlight<'a>(&'a PushService);

impl<'a> InFlight<'a> {
    fn enter(service: &'a PushService, limit: usize) -> Option<InFlight<'a>> {
        let shared = &service.shared;
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        shared.builder.metrics.in_flight.inc();
        Some(InFlight(service))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.shared.builder.metrics.in_flight.dec();
    }
}

fn apns_files(c: &crate::config::ApnsConfig) -> impl Iterator<Item = &Path> {
    [
        &c.token_key_file,
        &c.certificate_file,
        &c.private_key_file,
        &c.pkcs12_file,
        &c.pkcs12_password_file,
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .chain(c.extra_trust_anchors.iter().map(PathBuf::as_path))
}

/// Which APNs link an app's configuration sends with: apps with the same endpoint, token
/// credential (the key file's content, key id, team id, refresh), trust anchors (content) and
/// connections share one, whatever their files are called. A certificate credential is the
/// app's own (its expiry is published per app).
fn apns_link_key(app: &str, c: &crate::config::ApnsConfig) -> Fingerprint {
    let token_auth = c.token_key_file.is_some();
    // Which file fields are set, so the contents hashed after cannot stand for one another.
    let files_set = [
        &c.token_key_file,
        &c.certificate_file,
        &c.private_key_file,
        &c.pkcs12_file,
        &c.pkcs12_password_file,
    ]
    .map(Option::is_some);
    let settings = format!(
        "{:?} {:?} {:?} {} {:?} {} {files_set:?}",
        c.endpoint,
        c.key_id,
        c.team_id,
        c.connections,
        c.token_refresh,
        c.extra_trust_anchors.len(),
    );
    fingerprint(if token_auth { "" } else { app }, &settings, apns_files(c))
}

/// Which FCM link an app's configuration sends with: apps with the same service account
/// (content), project, endpoint, trust anchors (content) and connections share one.
fn fcm_link_key(c: &crate::config::FcmConfig) -> Fingerprint {
    let settings = format!(
        "{:?} {:?} {} {}",
        c.project_id,
        c.endpoint,
        c.connections,
        c.extra_trust_anchors.len()
    );
    let files = std::iter::once(c.service_account_file.as_path())
        .chain(c.extra_trust_anchors.iter().map(PathBuf::as_path));
    fingerprint("", &settings, files)
}

fn fingerprint<'a>(app: &str, config: &str, files: impl Iterator<Item = &'a Path>) -> Fingerprint {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(app.as_bytes());
    ctx.update(&[0]);
    ctx.update(config.as_bytes());
    for path in files {
        ctx.update(&[0]);
        match crate::secret::resolve_path(path)
            .ok()
            .and_then(|p| std::fs::read(p).ok())
        {
            Some(content) => ctx.update(&content),
            None => ctx.update(b"<unreadable>"),
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The outbox handler of dead-token records: posts them with the current configuration's
/// webhook; while none is configured, they wait.
struct DeadTokenRecords(PushService);

impl Handler for DeadTokenRecords {
    fn kind(&self) -> &'static str {
        feedback::OUTBOX_KIND
    }

    fn serves(&self) -> bool {
        self.0.shared.feedback_outbox.get().is_some() && self.0.generation().feedback.has_webhook()
    }

    fn attempt<'a>(
        &'a self,
        item: &'a OutboxItem,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>> {
        Box::pin(async move {
            let Some(outbox) = self.0.shared.feedback_outbox.get() else {
                return Verdict::Park {
                    error: "dead-token records are not kept in this daemon's store".into(),
                };
            };
            self.0.generation().feedback.attempt(item, outbox).await
        })
    }
}
