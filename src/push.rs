//! `refresh --pushgateway`: after the run, its metrics go to a Prometheus
//! Pushgateway, for the CronJob deployment, where nothing stays up to be
//! scraped.
//!
//! The body holds the log tables' state of the views after the run (the same
//! per-view families `run` serves) and what this process did; the scheduler's
//! families are not in it. It replaces (HTTP PUT) the group
//! `job="mv-refresher"` plus the grouping labels of `--pushgateway-label`, so
//! every push of one CronJob overwrites the last. A push that fails is the
//! caller's warning, never its exit code.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::catalog;
use crate::cycle::Refresher;
use crate::error::Error;
use crate::metrics::{self, Metrics};
use crate::outcome::Cycle;
use crate::registry::ViewSpec;

/// The `job` label of every push.
pub const JOB: &str = "mv-refresher";

/// The longest a push may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The labels of the pushed series themselves: a grouping label of the same
/// name would give every view one value, and the Pushgateway refuses the
/// duplicates.
const SERIES_LABELS: [&str; 4] = ["view", "status", "version", "le"];

/// How much of a refusing Pushgateway's answer an error quotes.
const ANSWER_LIMIT: usize = 500;

/// What a path segment may not hold unescaped (RFC 3986 pchar, strictly).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// A grouping label, `NAME=VALUE` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupingLabel {
    pub name: String,
    pub value: String,
}

impl FromStr for GroupingLabel {
    type Err = String;

    /// Parses `NAME=VALUE`; the name as Prometheus allows label names
    /// (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed), not `job`, which is
    /// always `mv-refresher`, and none the series have. The value may be
    /// anything, empty too.
    fn from_str(text: &str) -> Result<Self, String> {
        let Some((name, value)) = text.split_once('=') else {
            return Err(format!(
                "grouping label {text:?} is not NAME=VALUE (like instance=nightly)"
            ));
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "grouping label name {name:?} is not a Prometheus label name \
                 (letters, digits and _, not starting with a digit)"
            ));
        }
        if name.starts_with("__") {
            return Err(format!(
                "grouping label name {name:?}: names starting with __ are reserved by Prometheus"
            ));
        }
        if name == "job" {
            return Err(format!(
                "grouping label {text:?}: the job label is always {JOB:?}"
            ));
        }
        if SERIES_LABELS.contains(&name) {
            return Err(format!(
                "grouping label name {name:?} is a label of the pushed series ({})",
                SERIES_LABELS.join(", ")
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Grouping labels as one value gives them: `NAME=VALUE` pairs separated by
/// commas, where `\,` is a comma in a value and `\\` a backslash (any other
/// backslash is itself). `MV_REFRESHER_PUSHGATEWAY_LABELS` holds such a list;
/// so may each `--pushgateway-label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupingLabels(pub Vec<GroupingLabel>);

impl FromStr for GroupingLabels {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        split_escaped(text)
            .iter()
            .map(|label| label.parse())
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Splits `text` at the commas that `\` does not escape, unescaping `\,` and
/// `\\`.
fn split_escaped(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("never empty");
        match c {
            '\\' => match chars.next_if(|&next| next == ',' || next == '\\') {
                Some(escaped) => part.push(escaped),
                None => part.push('\\'),
            },
            ',' => parts.push(String::new()),
            c => part.push(c),
        }
    }
    parts
}

impl GroupingLabel {
    /// The label as two path segments: `/name/value`, or
    /// `/name@base64/<url-safe base64>` for a value that is empty or holds a
    /// `/` (the Pushgateway's own rule).
    fn path(&self) -> String {
        if self.value.is_empty() {
            format!("/{}@base64/=", self.name)
        } else if self.value.contains('/') {
            let encoded = base64::engine::general_purpose::URL_SAFE.encode(&self.value);
            format!("/{}@base64/{encoded}", self.name)
        } else {
            format!(
                "/{}/{}",
                self.name,
                utf8_percent_encode(&self.value, SEGMENT)
            )
        }
    }
}

/// Where to push: a Pushgateway's URL and the group's labels.
#[derive(Clone)]
pub struct Pushgateway {
    /// The group's URL: `<base>/metrics/job/mv-refresher[/<name>/<value>]...`.
    url: String,
}

impl fmt::Debug for Pushgateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pushgateway({})", self)
    }
}

impl fmt::Display for Pushgateway {
    /// The group's URL, without a password it may hold.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hide_password(&self.url))
    }
}

impl Pushgateway {
    /// Checks `base` (an `http://` or `https://` URL; a password in it is sent
    /// as basic authentication and shown nowhere) and `labels` (each name once),
    /// so a bad invocation is known before anything runs.
    pub fn new(base: &str, labels: &[GroupingLabel]) -> Result<Self, String> {
        let shown = hide_password(base);
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| format!("--pushgateway {shown:?} is not an http:// or https:// URL"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("--pushgateway {shown:?} names no host"));
        }
        if base.contains(['?', '#']) {
            return Err(format!(
                "--pushgateway {shown:?}: give the Pushgateway's base URL, without a query or fragment"
            ));
        }
        let mut url = format!("{}/metrics/job/{JOB}", base.trim_end_matches('/'));
        for (i, label) in labels.iter().enumerate() {
            if labels[..i].iter().any(|l| l.name == label.name) {
                return Err(format!(
                    "grouping label {:?} is given more than once",
                    label.name
                ));
            }
            url.push_str(&label.path());
        }
        Ok(Self { url })
    }

    /// PUTs `body` (the text format) to the group, replacing what it held.
    pub async fn push(&self, body: String) -> Result<(), PushError> {
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || put(&url, body))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
            .map_err(|reason| PushError {
                url: self.to_string(),
                reason,
            })
    }
}

/// A push that did not go through.
#[derive(Debug, thiserror::Error)]
#[error("cannot push the metrics to {url}: {reason}")]
pub struct PushError {
    /// The group's URL, without a password.
    pub url: String,
    pub reason: String,
}

/// The blocking PUT, within [`TIMEOUT`].
fn put(url: &str, body: String) -> Result<(), String> {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("mv-refresher/", env!("CARGO_PKG_VERSION")));
    if url.starts_with("https://") {
        config = config.tls_config(tls_config()?);
    }
    let agent: ureq::Agent = config.build().into();
    let mut response = agent
        .put(url)
        .header("Content-Type", metrics::CONTENT_TYPE)
        .send(body)
        .map_err(|err| err.to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let answer = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    let answer: String = answer
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(ANSWER_LIMIT)
        .collect();
    Err(format!("HTTP {status}: {answer}")
        .trim_end_matches(": ")
        .to_owned())
}

/// TLS as for the database: rustls with ring, and the system's root
/// certificates (where a cluster's own CA is installed; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` point elsewhere).
fn tls_config() -> Result<ureq::tls::TlsConfig, String> {
    let found = rustls_native_certs::load_native_certs();
    let roots: Vec<ureq::tls::Certificate<'static>> = found
        .certs
        .iter()
        .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
        .collect();
    if roots.is_empty() {
        return Err("https: no certificates in the system's store \
                    (install ca-certificates, or set SSL_CERT_FILE)"
            .into());
    }
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .build())
}

/// `url` with the password of its user information, if any, replaced by `***`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            if user_info.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// The body of a push after `cycle`: the log tables' state of the registry's views and of those the cycle refreshed, and what
/// this process did. Reads the log tables on one of the refresher's
/// connections.
pub async fn body(
    refresher: &Refresher,
    registry_views: &[ViewSpec],
    cycle: &Cycle,
) -> Result<String, Error> {
    let metrics = Metrics::new(refresher.in_progress.clone());
    metrics.observe_run(cycle);
    let client = refresher.target.connect(&refresher.pool).await?;
    let db_err = |context| Error::in_context(context, &refresher.target);
    let (not_here, registry): (Vec<_>, Vec<_>) = catalog::registry_names(&*client, registry_views)
        .await
        .map_err(db_err("looking up the registry views"))?
        .into_iter()
        .partition(|name| name.not_here);
    let mut names: Vec<String> = registry.iter().map(|r| r.qualified.clone()).collect();
    for outcome in &cycle.outcomes {
        let skipped_here = not_here.iter().any(|n| n.qualified == outcome.view_name);
        if !names.contains(&outcome.view_name) && !skipped_here {
            names.push(outcome.view_name.clone());
        }
    }
    let mut states = refresher
        .log
        .view_states(&*client, &names)
        .await
        .map_err(db_err("reading the refresh log"))?;
    // In the order of `names`, which starts with the registry's.
    for (state, name) in states.iter_mut().zip(&registry) {
        state.unrefreshable = name.unrefreshable;
    }
    metrics.set_views(&states);
    Ok(metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> Result<GroupingLabel, String> {
        text.parse()
    }

    fn url(labels: &[&str]) -> Result<String, String> {
        let labels: Vec<GroupingLabel> = labels.iter().map(|l| label(l).unwrap()).collect();
        Pushgateway::new("http://pgw:9091/", &labels).map(|p| p.url)
    }

    #[test]
    fn a_label_is_name_equals_value() {
        assert_eq!(
            label("instance=nightly").unwrap(),
            GroupingLabel {
                name: "instance".into(),
                value: "nightly".into()
            }
        );
        assert_eq!(label("_a1=x=y").unwrap().value, "x=y");
        assert_eq!(label("env=").unwrap().value, "");
        assert!(label("instance").unwrap_err().contains("NAME=VALUE"));
    }

    #[test]
    fn a_list_of_labels_splits_at_unescaped_commas() {
        let labels = |text: &str| {
            text.parse::<GroupingLabels>().map(|l| {
                l.0.into_iter()
                    .map(|l| (l.name, l.value))
                    .collect::<Vec<_>>()
            })
        };
        let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        assert_eq!(
            labels("database=platform,instance=nightly").unwrap(),
            [pair("database", "platform"), pair("instance", "nightly")]
        );
        assert_eq!(
            labels(r"team=a\,b,path=c:\\d\,,raw=\n").unwrap(),
            [
                pair("team", "a,b"),
                pair("path", r"c:\d,"),
                pair("raw", r"\n")
            ]
        );
        assert_eq!(labels(r"x=ends\").unwrap(), [pair("x", r"ends\")]);
        assert!(labels("a=1,,b=2").unwrap_err().contains("NAME=VALUE"));
        assert!(labels(r"a=1\\,b").unwrap_err().contains(r#""b""#));
    }

    #[test]
    fn label_names_follow_prometheus_and_job_is_ours() {
        for bad in ["1a=x", "=x", "a-b=x", "é=x", "a b=x"] {
            let err = label(bad).unwrap_err();
            assert!(err.contains("not a Prometheus label name"), "{bad}: {err}");
        }
        assert!(label("__name__=x").unwrap_err().contains("reserved"));
        assert!(
            label("job=other")
                .unwrap_err()
                .contains("always \"mv-refresher\"")
        );
        assert!(
            label("view=x")
                .unwrap_err()
                .contains("label of the pushed series")
        );
    }

    #[test]
    fn the_group_url_escapes_values_and_uses_base64_where_it_must() {
        assert_eq!(
            url(&[]).unwrap(),
            "http://pgw:9091/metrics/job/mv-refresher"
        );
        assert_eq!(
            url(&["instance=nightly", "cluster=eu 1"]).unwrap(),
            "http://pgw:9091/metrics/job/mv-refresher/instance/nightly/cluster/eu%201"
        );
        // The Pushgateway's own examples.
        assert_eq!(
            url(&["path=/var/tmp"]).unwrap(),
            "http://pgw:9091/metrics/job/mv-refresher/path@base64/L3Zhci90bXA="
        );
        assert_eq!(
            url(&["empty="]).unwrap(),
            "http://pgw:9091/metrics/job/mv-refresher/empty@base64/="
        );
        assert!(url(&["a=1", "a=2"]).unwrap_err().contains("more than once"));
    }

    #[test]
    fn the_url_must_be_http_and_its_password_is_never_shown() {
        for bad in ["pgw:9091", "ftp://pgw", "http://", "http://pgw/?x=1"] {
            assert!(Pushgateway::new(bad, &[]).is_err(), "{bad}");
        }
        let gateway = Pushgateway::new("https://me:S3cret@pgw:9091", &[]).unwrap();
        let shown = format!("{gateway} {gateway:?}");
        assert!(!shown.contains("S3cret"), "{shown}");
        assert!(shown.contains("https://me:***@pgw:9091/metrics/job/mv-refresher"));
        let err = Pushgateway::new("htp://me:S3cret@pgw", &[]).unwrap_err();
        assert!(!err.contains("S3cret"), "{err}");
    }

    #[tokio::test]
    async fn a_push_nothing_answers_names_the_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gateway = Pushgateway::new(&format!("http://{closed}"), &[]).unwrap();
        let err = gateway.push("x 1\n".into()).await.unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot push the metrics to http://{closed}/metrics/job/mv-refresher: "
            )),
            "{err}"
        );
    }
}
