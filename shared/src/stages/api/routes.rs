//! Every route of the control API, once: its method, its path (as the OpenAPI document writes
//! it), who may call it, and the [`Route`] the API answers it with. The 404/405 answers, the
//! scope check (for keys, dashboard sessions and IAM principals alike) and the dispatch all read
//! this table, and so does the OpenAPI document (`openapi`); `Api::route` and `openapi::op`
//! each match every [`Route`] (the compiler holds them to that).

use super::keys::Scope;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nobody in particular: the document; a download link, whose token is checked instead.
    Public,
    /// An on-prem relay, by its request signature (`relay_auth`).
    Relay,
    /// An API key, a dashboard session or an IAM principal with at least this scope.
    Scope(Scope),
}

/// A route, as the API answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    OpenApi,
    Link,
    Health,
    Metrics,
    Reports,
    Report,
    ReportVersions,
    Runs,
    StartRun,
    Run,
    CancelRun,
    RerunRun,
    DownloadRun,
    RunDeliveries,
    StartReprocess,
    Reprocess,
    Intake,
    IntakeOutcomes,
    PauseIntake,
    ResumeIntake,
    PollNow,
    Quarantine,
    QuarantineFile,
    Rejects,
    DeadLetterQueues,
    DeadLetters,
    Redrive,
    DeleteDeadLetter,
    Keys,
    CreateKey,
    RevokeKey,
    Audit,
    Relays,
    CreateRelay,
    RevokeRelay,
    RelayHello,
    RelayUpload,
    RelayOutbox,
    RelayAck,
    RelayRefused,
    RelayDeferred,
}

#[derive(Debug)]
pub struct RouteDef {
    pub method: &'static str,
    /// Under `/v1`; a `{name}` segment is any one segment.
    pub path: &'static str,
    pub access: Access,
    pub route: Route,
}

const fn def(method: &'static str, path: &'static str, access: Access, route: Route) -> RouteDef {
    RouteDef {
        method,
        path,
        access,
        route,
    }
}

use Access::{Public, Relay};
const READ: Access = Access::Scope(Scope::Read);
const OPERATE: Access = Access::Scope(Scope::Operate);
const ADMIN: Access = Access::Scope(Scope::Admin);

/// The routes. Reading needs `read`, changing anything `operate`; keys, relays and the audit
/// trail are for admins.
pub const ROUTES: &[RouteDef] = &[
    def("GET", "/openapi.json", Public, Route::OpenApi),
    def("GET", "/links/{token}", Public, Route::Link),
    def("GET", "/health", READ, Route::Health),
    def("GET", "/metrics", READ, Route::Metrics),
    def("GET", "/reports", READ, Route::Reports),
    def("GET", "/reports/{report}", READ, Route::Report),
    def(
        "GET",
        "/reports/{report}/versions",
        READ,
        Route::ReportVersions,
    ),
    def("GET", "/runs", READ, Route::Runs),
    def("POST", "/runs", OPERATE, Route::StartRun),
    def("GET", "/runs/{run_id}", READ, Route::Run),
    def("POST", "/runs/{run_id}/cancel", OPERATE, Route::CancelRun),
    def("POST", "/runs/{run_id}/rerun", OPERATE, Route::RerunRun),
    def("GET", "/runs/{run_id}/download", READ, Route::DownloadRun),
    def(
        "GET",
        "/runs/{run_id}/deliveries",
        READ,
        Route::RunDeliveries,
    ),
    def("POST", "/reprocess", OPERATE, Route::StartReprocess),
    def("GET", "/reprocess/{request_id}", READ, Route::Reprocess),
    def("GET", "/intake", READ, Route::Intake),
    def("GET", "/intake/outcomes", READ, Route::IntakeOutcomes),
    def("POST", "/intake/pause", OPERATE, Route::PauseIntake),
    def("POST", "/intake/resume", OPERATE, Route::ResumeIntake),
    def("POST", "/intake/poll", OPERATE, Route::PollNow),
    def("GET", "/intake/quarantine", READ, Route::Quarantine),
    def(
        "GET",
        "/intake/quarantine/file",
        READ,
        Route::QuarantineFile,
    ),
    def("GET", "/intake/rejects", READ, Route::Rejects),
    def("GET", "/dead-letters", READ, Route::DeadLetterQueues),
    def("GET", "/dead-letters/{queue}", READ, Route::DeadLetters),
    def(
        "POST",
        "/dead-letters/{queue}/redrive",
        OPERATE,
        Route::Redrive,
    ),
    def(
        "DELETE",
        "/dead-letters/{queue}/{message_id}",
        OPERATE,
        Route::DeleteDeadLetter,
    ),
    def("GET", "/keys", ADMIN, Route::Keys),
    def("POST", "/keys", ADMIN, Route::CreateKey),
    def("DELETE", "/keys/{key_id}", ADMIN, Route::RevokeKey),
    def("GET", "/audit", ADMIN, Route::Audit),
    def("GET", "/relays", ADMIN, Route::Relays),
    def("POST", "/relays", ADMIN, Route::CreateRelay),
    def("DELETE", "/relays/{relay_id}", ADMIN, Route::RevokeRelay),
    def("GET", "/relay", Relay, Route::RelayHello),
    def("POST", "/relay/uploads", Relay, Route::RelayUpload),
    def("GET", "/relay/outbox", Relay, Route::RelayOutbox),
    def("POST", "/relay/outbox/ack", Relay, Route::RelayAck),
    def("POST", "/relay/outbox/refused", Relay, Route::RelayRefused),
    def(
        "POST",
        "/relay/outbox/deferred",
        Relay,
        Route::RelayDeferred,
    ),
];

impl RouteDef {
    pub fn matches(&self, segments: &[&str]) -> bool {
        let mut pattern = self.path.split('/').filter(|p| !p.is_empty());
        let mut given = segments.iter();
        loop {
            match (pattern.next(), given.next()) {
                (None, None) => return true,
                (Some(p), Some(s)) if p.starts_with('{') || p == *s => {}
                _ => return false,
            }
        }
    }

    /// The scope a key needs (`None`: no key is asked for).
    pub fn scope(&self) -> Option<Scope> {
        match self.access {
            Access::Scope(s) => Some(s),
            Access::Public | Access::Relay => None,
        }
    }
}

/// The routes whose path is `segments` (under `/v1`), one per method.
pub fn matching<'a>(segments: &'a [&str]) -> impl Iterator<Item = &'static RouteDef> + 'a {
    ROUTES.iter().filter(move |r| r.matches(segments))
}

/// The route `method` `segments` (under `/v1`) names; else the methods its path takes (empty:
/// no such path).
pub fn find(method: &str, segments: &[&str]) -> Result<&'static RouteDef, Vec<&'static str>> {
    let mut allowed = Vec::new();
    for r in matching(segments) {
        if r.method == method {
            return Ok(r);
        }
        allowed.push(r.method);
    }
    Err(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_finds_its_route_or_the_methods_it_takes() {
        let r = find("POST", &["runs", "r-1", "rerun"]).unwrap();
        assert_eq!(
            (r.route, r.scope()),
            (Route::RerunRun, Some(Scope::Operate))
        );
        assert_eq!(find("GET", &["keys"]).unwrap().scope(), Some(Scope::Admin));
        assert_eq!(find("GET", &["links", "t"]).unwrap().access, Access::Public);
        assert_eq!(find("PUT", &["runs"]).unwrap_err(), ["GET", "POST"]);
        assert!(
            find("GET", &["runs", "a", "b", "c"])
                .unwrap_err()
                .is_empty()
        );
        assert!(find("GET", &[]).unwrap_err().is_empty());
    }

    #[test]
    fn each_method_and_path_is_declared_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
                assert_ne!(a.route, b.route, "{} {} and {}", a.method, a.path, b.path);
            }
        }
    }
}
