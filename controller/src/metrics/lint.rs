//! Lint of the replicated state: `palisade_lint_findings{check}` (every check, 0 when it
//! found nothing, so a dashboard sees the series before the first finding), the revision
//! linted and the time the last lint took.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use palisade_policy::lint::{Check, Finding};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabel {
    check: &'static str,
}

pub struct Lint {
    findings: Family<CheckLabel, Gauge>,
    seconds: Gauge<f64, AtomicU64>,
    revision: Gauge,
}

impl Lint {
    pub fn register(registry: &mut Registry) -> Lint {
        let lint = Lint {
            findings: Family::default(),
            seconds: Gauge::default(),
            revision: Gauge::default(),
        };
        for c in Check::ALL {
            let _ = lint
                .findings
                .get_or_create(&CheckLabel { check: c.as_str() });
        }
        registry.register(
            "lint_findings",
            "Valid objects that are probably wrong (palisadectl rejected lists them), by check, at palisade_lint_revision",
            lint.findings.clone(),
        );
        registry.register(
            "lint_revision",
            "The revision the lint findings are of",
            lint.revision.clone(),
        );
        registry.register(
            "lint_duration_seconds",
            "Time the last lint of the replicated state took",
            lint.seconds.clone(),
        );
        lint
    }
}

impl super::Metrics {
    pub fn lint(&self, revision: u64, findings: &[Finding], took: Duration) {
        let lint = &self.0.lint;
        for c in Check::ALL {
            let n = findings.iter().filter(|f| f.check == c).count();
            lint.findings
                .get_or_create(&CheckLabel { check: c.as_str() })
                .set(n as i64);
        }
        lint.revision.set(revision as i64);
        lint.seconds.set(took.as_secs_f64());
    }
}
