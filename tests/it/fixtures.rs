//! Access to the real scanner fixtures copied into `tests/fixtures/` (see its SOURCES.md).

use std::path::PathBuf;

use firebreak::finding::{Finding, ParserChoice, parse_input};

/// Path of a fixture file below `tests/fixtures/findings`.
pub fn path(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/findings"
    ))
    .join(rel)
}

/// Bytes of a fixture.
pub fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(path(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Parses a fixture (auto-detect) and returns its findings; fails the test on any rejection.
pub fn findings(rel: &str) -> Vec<Finding> {
    let report = parse_input(rel, &bytes(rel), ParserChoice::Auto);
    assert!(report.rejected.is_empty(), "{rel}: {:?}", report.rejected);
    report.findings
}

/// The single finding of a fixture.
pub fn finding(rel: &str) -> Finding {
    let mut all = findings(rel);
    assert_eq!(all.len(), 1, "{rel} holds {} findings", all.len());
    all.remove(0)
}

/// Falco: `Terminal shell in container`, Critical, pod default/kubecon.
pub const FALCO_SHELL: &str = "falco/terminal-shell-in-container.json";
/// Falco: `Contact K8S API Server From Container`, Notice, pod openfaas-fn/falco-pod-delete-….
pub const FALCO_K8S_API: &str = "falco/contact-k8s-api-server-from-container.json";
/// GuardDuty (EventBridge): `UnauthorizedAccess:IAMUser/TorIPCaller` on an access key.
pub const GD_TOR_IAM: &str = "guardduty/eventbridge-guardduty-finding-iam-toripcaller.json";
/// GuardDuty (GetFindings): `Trojan:EC2/DropPoint!DNS`, high.
pub const GD_TROJAN: &str = "guardduty/getfindings-trojan-droppoint-dns.json";
