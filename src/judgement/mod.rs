//! Judgement: from two parsed test reports and the sandbox's resource
//! figures to the contract's metrics and a recommendation.
//!
//! Owns the arithmetic of §5 ([`metrics`]: success rate, regression,
//! performance delta, which tests regressed) and the verdict rules
//! ([`policy`]: the seed's four rules with thresholds from the policy file).
//! Pure functions only: nothing here touches Docker, git, the store or NATS,
//! so every rule is unit-tested on hand-made reports.

pub mod metrics;
pub mod policy;
