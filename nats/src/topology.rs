//! The JetStream topology: three streams and every actor's durable pull
//! consumers, provisioned idempotently.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use falcon_schemas::subject::{STREAM_CMD, STREAM_DLQ, STREAM_EVT};

use crate::Error;

/// Settings shared by the three streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// How long each stream keeps its messages (retention by limits, so
    /// replay stays possible): FALCON_CMD, FALCON_EVT, FALCON_DLQ. Default
    /// 7 days each.
    pub max_age: [Duration; 3],
    /// JetStream drops a message whose `Nats-Msg-Id` it saw within this
    /// window. Default 2 minutes (the contract's minimum).
    pub duplicate_window: Duration,
    /// Replicas per stream: 1 on one server, 3 on a cluster.
    pub replicas: usize,
    /// Most bytes each stream keeps: FALCON_CMD, FALCON_EVT, FALCON_DLQ.
    /// A full stream refuses new messages (discard `new`) rather than drop
    /// history an actor has not read: publishers see the refusal and retry,
    /// and `falcon doctor` and the metrics show the stream near full.
    pub max_bytes: [i64; 3],
    /// Partitions of FALCON_EVT (see [`partition_transform`]).
    pub partitions: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_age: [Duration::from_secs(7 * 24 * 3600); 3],
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            max_bytes: [1 << 30, 4 << 30, 256 << 20],
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

/// Partitions of the event stream unless configured: one (see
/// docs/BENCHMARKS.md, "Partitions and several processes": on sagas that
/// share hot wallets, more partitions only cut batches smaller).
pub const DEFAULT_PARTITIONS: u32 = 1;

/// The most partitions a stream may have.
pub const MAX_PARTITIONS: u32 = 64;

/// The subject transform that partitions FALCON_EVT: an event published on
/// `falcon.evt.<aggregate>.<event>.<key>` is stored as
/// `falcon.evt.<aggregate>.<event>.<key>.<p>`, `p` = `partition(n, key)`
/// (FNV-1a of the key modulo `n`, [`falcon_schemas::subject::partition_of`]);
/// the key is the saga id (or the wallet id of a wallet-only event), so one
/// saga's events are in one partition, in the order published.
///
/// Commands are not partitioned: the broker sees only a command's
/// principal, not its ids (they are in its body), and a client may rely on
/// its commands being handled in the order stored (`wallet.open`, then a
/// treasury's `wallet.deposit` to it). Each actor reads them through one
/// consumer; there is one command per saga.
pub fn partition_transform(prefix: &str, n: u32) -> stream::SubjectTransform {
    stream::SubjectTransform {
        source: format!("{prefix}.*.*.*"),
        destination: format!(
            "{prefix}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{partition({n},3)}}}}"
        ),
    }
}

/// The consumer name an actor declares, from a partition's durable name:
/// `wallet-evt-3` → `wallet-evt` (a name without a partition suffix comes
/// back as it is). The inbox keys what a consumer processed by it, so that
/// an effect stays once-only whatever the partitioning.
pub fn declared_name(durable: &str) -> &str {
    match durable.rsplit_once('-') {
        Some((name, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => durable,
    }
}

/// The specs on FALCON_EVT once per partition: `<name>-<p>` reading its
/// filters' messages of partition `p` (`<filter>.<p>`), partition by
/// partition, after the others (commands: unpartitioned) as they are.
pub fn partitioned(specs: &[ConsumerSpec], n: u32) -> Vec<ConsumerSpec> {
    for spec in specs {
        assert_eq!(
            declared_name(&spec.name),
            spec.name,
            "a declared consumer name must not end in -<digits>"
        );
    }
    let (events, others): (Vec<&ConsumerSpec>, Vec<&ConsumerSpec>) =
        specs.iter().partition(|s| s.stream == STREAM_EVT);
    let whole = others.into_iter().cloned();
    whole
        .chain((0..n.max(1)).flat_map(move |p| {
            events.clone().into_iter().map(move |spec| ConsumerSpec {
                name: format!("{}-{p}", spec.name),
                filter_subjects: spec
                    .filter_subjects
                    .iter()
                    .map(|f| partition_filter(f, p))
                    .collect(),
                partition: Some(p),
                ..spec.clone()
            })
        }))
        .collect()
}

/// A filter on published subjects as the filter on partition `p`'s stored
/// ones: `falcon.evt.wallet.funds_reserved.*` →
/// `falcon.evt.wallet.funds_reserved.*.p`; a `>` filter is spelled out to
/// the published depth first (`falcon.cmd.wallet.>` →
/// `falcon.cmd.wallet.*.*.p`).
fn partition_filter(filter: &str, p: u32) -> String {
    // Published subjects are <prefix(2)>.<a>.<b>.<key>: 5 tokens.
    const DEPTH: usize = 5;
    match filter.strip_suffix(".>") {
        Some(head) => {
            let have = head.split('.').count();
            let wild = DEPTH.saturating_sub(have).max(1);
            format!("{head}{}.{p}", ".*".repeat(wild))
        }
        None => format!("{filter}.{p}"),
    }
}

/// A durable pull consumer an actor reads through.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// Durable name, e.g. `payment-evt`.
    pub name: String,
    pub stream: &'static str,
    pub filter_subjects: Vec<String>,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Deliveries before JetStream gives up on a message.
    pub max_deliver: i64,
    /// Messages delivered but not yet acked, at most.
    pub max_ack_pending: i64,
    /// The partition it reads ([`partitioned`]); `None` for a spec as an
    /// actor declares it, over every partition.
    pub partition: Option<u32>,
    /// How long the server keeps a process pinned as this consumer's one
    /// reader once it stops pulling ([`OWNER_GROUP`]): the longest a dead
    /// owner's partition waits for a survivor.
    pub owner_timeout: Duration,
}

/// The priority group every durable is read through. Its policy is
/// `pinned_client`: the server delivers a consumer's messages to one pull
/// client at a time, the pinned one, and pins another only when that one
/// has not pulled for [`ConsumerSpec::owner_timeout`] or is unpinned
/// (docs/DESIGN.md, "One owner per partition").
pub const OWNER_GROUP: &str = "owner";

/// What `apply` did to one stream or consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        })
    }
}

/// One line of `falcon streams apply`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `stream` or `consumer`.
    pub kind: &'static str,
    /// Stream name, or `STREAM/consumer`.
    pub name: String,
    pub action: Action,
}

/// The three streams with their subjects.
pub fn stream_configs(settings: &StreamSettings) -> Vec<stream::Config> {
    [
        (STREAM_CMD, "falcon.cmd.>", "commands from clients"),
        (
            STREAM_EVT,
            "falcon.evt.>",
            "domain events: the sagas' source of truth",
        ),
        (
            STREAM_DLQ,
            "falcon.dlq.>",
            "messages an actor could not process, with why",
        ),
    ]
    .into_iter()
    .zip(settings.max_bytes.into_iter().zip(settings.max_age))
    .map(
        |((name, subject, description), (max_bytes, max_age))| stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            subject_transform: (name == STREAM_EVT).then(|| {
                partition_transform(subject.trim_end_matches(".>"), settings.partitions.max(1))
            }),
            description: Some(description.to_owned()),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            allow_direct: true,
            max_bytes,
            discard: stream::DiscardPolicy::New,
            // Commands and events are the record: no identity may delete or
            // purge them through the API (dead letters may be purged once
            // handled).
            deny_delete: name != STREAM_DLQ,
            deny_purge: name != STREAM_DLQ,
            ..Default::default()
        },
    )
    .collect()
}

fn consumer_config(spec: &ConsumerSpec) -> consumer::pull::Config {
    let (filter_subject, filter_subjects) = match spec.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    consumer::pull::Config {
        durable_name: Some(spec.name.clone()),
        description: Some(format!("FalconPay {}", spec.name)),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        filter_subject,
        filter_subjects,
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![OWNER_GROUP.to_owned()],
        priority_timeout: spec.owner_timeout,
        ..Default::default()
    }
}

fn same_stream(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.subject_transform == want.subject_transform
        && have.retention == want.retention
        && have.storage == want.storage
        && have.max_age == want.max_age
        && have.duplicate_window == want.duplicate_window
        && have.num_replicas == want.num_replicas
        && have.allow_direct == want.allow_direct
        && have.description == want.description
        && have.max_bytes == want.max_bytes
        && have.discard == want.discard
        && have.deny_delete == want.deny_delete
        && have.deny_purge == want.deny_purge
}

fn filters(filter_subject: &str, filter_subjects: &[String]) -> Vec<String> {
    let mut all: Vec<String> = filter_subjects.to_vec();
    if !filter_subject.is_empty() {
        all.push(filter_subject.to_owned());
    }
    all.sort();
    all
}

fn same_consumer(have: &consumer::Config, want: &consumer::pull::Config) -> bool {
    filters(&have.filter_subject, &have.filter_subjects)
        == filters(&want.filter_subject, &want.filter_subjects)
        && have.ack_wait == want.ack_wait
        && have.max_deliver == want.max_deliver
        && have.max_ack_pending == want.max_ack_pending
        && have.ack_policy == want.ack_policy
        && have.priority_policy == want.priority_policy
        && have.priority_groups == want.priority_groups
        && have.priority_timeout == want.priority_timeout
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(js)
        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Creates or updates the streams and the consumers; running it again
/// changes nothing and reports every item `Unchanged`.
pub async fn apply(
    js: &jetstream::Context,
    settings: &StreamSettings,
    consumers: &[ConsumerSpec],
) -> Result<Vec<Change>, Error> {
    let mut changes = Vec::new();
    for want in stream_configs(settings) {
        let action = match js.get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| Error::topology("reading stream", &want.name, e))?;
                if same_stream(&info.config, &want) {
                    Action::Unchanged
                } else {
                    js.update_stream(&want)
                        .await
                        .map_err(|e| Error::topology("updating stream", &want.name, e))?;
                    Action::Updated
                }
            }
            Err(e) if is_not_found(&e) => {
                js.create_stream(want.clone())
                    .await
                    .map_err(|e| Error::topology("creating stream", &want.name, e))?;
                Action::Created
            }
            Err(e) => return Err(Error::topology("reading stream", &want.name, e)),
        };
        changes.push(Change {
            kind: "stream",
            name: want.name.clone(),
            action,
        });
    }
    for spec in consumers {
        let name = format!("{}/{}", spec.stream, spec.name);
        let stream = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| Error::topology("reading stream", spec.stream, e))?;
        let want = consumer_config(spec);
        let action = match stream.consumer_info(&spec.name).await {
            Ok(info) if same_consumer(&info.config, &want) => Action::Unchanged,
            Ok(_) => {
                stream
                    .create_consumer(want)
                    .await
                    .map_err(|e| Error::topology("updating consumer", &name, e))?;
                Action::Updated
            }
            Err(_) => {
                stream
                    .create_consumer(want)
                    .await
                    .map_err(|e| Error::topology("creating consumer", &name, e))?;
                Action::Created
            }
        };
        changes.push(Change {
            kind: "consumer",
            name,
            action,
        });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, filters: &[&str]) -> ConsumerSpec {
        ConsumerSpec {
            name: name.into(),
            stream: if filters[0].starts_with("falcon.cmd") {
                STREAM_CMD
            } else {
                STREAM_EVT
            },
            filter_subjects: filters.iter().map(|f| (*f).to_owned()).collect(),
            ack_wait: Duration::from_secs(1),
            max_deliver: 1,
            max_ack_pending: 1,
            partition: None,
            owner_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn each_partition_reads_its_own_stored_subjects() {
        let specs = [
            spec("w-cmd", &["falcon.cmd.wallet.>"]),
            spec("w-evt", &["falcon.evt.payment.requested.*"]),
        ];
        let parts = partitioned(&specs, 2);
        let names: Vec<&str> = parts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["w-cmd", "w-evt-0", "w-evt-1"]);
        assert_eq!(parts[0].filter_subjects, ["falcon.cmd.wallet.>"]);
        assert_eq!(parts[0].partition, None);
        assert_eq!(
            parts[1].filter_subjects,
            ["falcon.evt.payment.requested.*.0"]
        );
        assert_eq!(parts[2].partition, Some(1));
        for p in &parts {
            assert_eq!(declared_name(&p.name), &p.name[..5]);
        }
        assert_eq!(declared_name("payment-view"), "payment-view");
        assert_eq!(declared_name("a-"), "a-");
    }

    #[test]
    fn the_transform_appends_the_partition_of_the_key() {
        let t = partition_transform("falcon.evt", 8);
        assert_eq!(t.source, "falcon.evt.*.*.*");
        assert_eq!(
            t.destination,
            "falcon.evt.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{partition(8,3)}}"
        );
    }
}
