//! Faults the emulator injects: scripted rules for exact tests, random rates for soak runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The emulated endpoints, each with its own faults and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    List,
    Create,
    Retrieve,
    Modify,
    Archive,
    /// `GET /organization/audit_logs`.
    AuditLogs,
    /// `GET /organization/costs`.
    Costs,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::List,
        Endpoint::Create,
        Endpoint::Retrieve,
        Endpoint::Modify,
        Endpoint::Archive,
        Endpoint::AuditLogs,
        Endpoint::Costs,
    ];

    pub(super) fn slot(self) -> usize {
        self as usize
    }
}

/// One way a call can go wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// 429 with `retry-after-ms` and `retry-after`.
    TooManyRequests { retry_after_ms: u64 },
    /// An error status, 5xx usually.
    ServerError { status: u16 },
    /// No answer until long after any sane client timeout.
    Hang,
    /// The connection closes without an answer.
    Drop,
    /// The call takes effect, then the caller sees the given failure instead of the answer.
    LostResponse { then: LostAs },
    /// List (and the audit log): the `after` cursor is ignored, so the first page comes back again.
    IgnoreCursor,
    /// List and costs only: an empty page that claims `has_more` (costs: with no `next_page`).
    EmptyPageWithMore,
    /// List only: 429 with the given header texts sent verbatim, however absurd.
    TooManyRequestsRaw {
        #[serde(default)]
        retry_after: Option<String>,
        #[serde(default)]
        retry_after_ms: Option<String>,
    },
}

/// How a lost response shows itself to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostAs {
    ServerError,
    Drop,
    Hang,
}

/// A scripted fault: lets `skip` matching calls through, then fires `times` times (forever if unset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub endpoint: Endpoint,
    #[serde(default)]
    pub skip: u32,
    #[serde(default)]
    pub times: Option<u32>,
    pub fault: Fault,
}

/// Random faults for one endpoint, each a probability per call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultRates {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub too_many_requests: f64,
    #[serde(default)]
    pub retry_after_ms: u64,
    #[serde(default)]
    pub server_error: f64,
    #[serde(default)]
    pub hang: f64,
    #[serde(default)]
    pub drop: f64,
    #[serde(default)]
    pub lost_response: f64,
}

/// All faults in force, consulted once per call.
pub struct FaultPlan {
    rules: Vec<FaultRule>,
    rates: [FaultRates; Endpoint::ALL.len()],
    rng: fastrand::Rng,
}

impl FaultPlan {
    pub fn new(seed: u64) -> FaultPlan {
        FaultPlan {
            rules: Vec::new(),
            rates: Default::default(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Adds a rule after the existing ones.
    pub fn push(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    /// Removes every rule and rate.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.rates = Default::default();
    }

    /// Sets the random faults of one endpoint.
    pub fn set_rates(&mut self, endpoint: Endpoint, rates: FaultRates) {
        self.rates[endpoint.slot()] = rates;
    }

    /// The latency and fault, if any, for the next call to `endpoint`.
    pub fn decide(&mut self, endpoint: Endpoint) -> (Duration, Option<Fault>) {
        let rates = self.rates[endpoint.slot()].clone();
        let latency = Duration::from_millis(rates.latency_ms);
        for rule in self.rules.iter_mut().filter(|r| r.endpoint == endpoint) {
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            match &mut rule.times {
                Some(0) => continue,
                Some(left) => *left -= 1,
                None => {}
            }
            return (latency, Some(rule.fault.clone()));
        }
        let roll = self.rng.f64();
        let mut threshold = 0.0;
        let candidates = [
            (
                rates.too_many_requests,
                Fault::TooManyRequests {
                    retry_after_ms: rates.retry_after_ms,
                },
            ),
            (rates.server_error, Fault::ServerError { status: 500 }),
            (rates.hang, Fault::Hang),
            (rates.drop, Fault::Drop),
            (
                rates.lost_response,
                Fault::LostResponse {
                    then: LostAs::ServerError,
                },
            ),
        ];
        for (probability, fault) in candidates {
            threshold += probability;
            if roll < threshold {
                return (latency, Some(fault));
            }
        }
        (latency, None)
    }
}
