//! The verdict: contract §5's four rules, in order, with thresholds from the
//! policy files. Pure, so every boundary is unit-tested.
//!
//! Each rule uses strict comparisons exactly as the contract writes them
//! (`regression > 0.05`, `success_rate < 0.70`, ...). `reasons` names the rule
//! that decided and the numbers it compared, so a reader can check the call.

use crate::config::Thresholds;
use crate::contract::{Metrics, Reason, Recommendation};

/// Applies the rules and explains the outcome.
pub fn verdict(m: &Metrics, t: &Thresholds) -> (Recommendation, Vec<Reason>) {
    let mut rollback = Vec::new();
    if m.regression > t.rollback_regression {
        rollback.push(Reason::of_rule(
            1,
            format_args!(
                "rollback: regression {} > {}",
                num(m.regression),
                num(t.rollback_regression)
            ),
        ));
    }
    if m.success_rate < t.rollback_success_rate {
        rollback.push(Reason::of_rule(
            1,
            format_args!(
                "rollback: success_rate {} < {}",
                num(m.success_rate),
                num(t.rollback_success_rate)
            ),
        ));
    }
    if !rollback.is_empty() {
        return (Recommendation::Rollback, rollback);
    }
    if m.llm_reduction > t.merge_llm_reduction && m.regression < t.merge_regression {
        let says = format_args!(
            "merge: llm_reduction {} > {} and regression {} < {}",
            num(m.llm_reduction),
            num(t.merge_llm_reduction),
            num(m.regression),
            num(t.merge_regression)
        );
        return (Recommendation::Merge, vec![Reason::of_rule(2, says)]);
    }
    if m.success_rate > t.merge_success_rate {
        let says = format_args!(
            "merge: success_rate {} > {}",
            num(m.success_rate),
            num(t.merge_success_rate)
        );
        return (Recommendation::Merge, vec![Reason::of_rule(2, says)]);
    }
    if m.success_rate > t.adapt_success_rate && m.regression < t.adapt_regression {
        let says = format_args!(
            "merge_with_adaptations: success_rate {} > {} and regression {} < {}",
            num(m.success_rate),
            num(t.adapt_success_rate),
            num(m.regression),
            num(t.adapt_regression)
        );
        return (
            Recommendation::MergeWithAdaptations,
            vec![Reason::of_rule(3, says)],
        );
    }
    let says = format_args!(
        "rollback: no merge rule held (success_rate {}, regression {}, llm_reduction {})",
        num(m.success_rate),
        num(m.regression),
        num(m.llm_reduction)
    );
    (Recommendation::Rollback, vec![Reason::of_rule(4, says)])
}

/// Numbers in reasons: up to 4 decimals, trailing zeros dropped.
fn num(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use crate::contract::RiskLevel;

    fn thresholds() -> Thresholds {
        Config::from_layers("/h".into(), None, &Env::default())
            .unwrap()
            .thresholds
            .for_risk(RiskLevel::High)
    }

    fn m(success_rate: f64, regression: f64, llm_reduction: f64) -> Metrics {
        Metrics {
            success_rate,
            regression,
            llm_reduction,
            ..Default::default()
        }
    }

    #[test]
    fn rules_in_order() {
        let t = thresholds();
        let cases = [
            (m(1.0, 0.06, 0.9), Recommendation::Rollback),
            (m(0.69, 0.0, 0.9), Recommendation::Rollback),
            (m(0.80, 0.02, 0.31), Recommendation::Merge),
            (m(0.96, 0.04, 0.0), Recommendation::Merge),
            (m(0.95, 0.02, 0.38), Recommendation::Merge),
            (m(0.95, 0.04, 0.0), Recommendation::MergeWithAdaptations),
            (m(0.90, 0.0, 0.0), Recommendation::Rollback),
            (m(0.80, 0.0, 0.30), Recommendation::Rollback),
        ];
        for (metrics, want) in cases {
            assert_eq!(verdict(&metrics, &t).0, want, "{metrics:?}");
        }
    }

    #[test]
    fn boundaries_are_strict() {
        let t = thresholds();
        // regression exactly 0.05 is not > 0.05; success 0.95 is not > 0.95.
        assert_eq!(verdict(&m(0.95, 0.05, 0.0), &t).0, Recommendation::Rollback);
        assert_eq!(verdict(&m(0.70, 0.0, 0.0), &t).0, Recommendation::Rollback);
        assert_eq!(verdict(&m(0.951, 0.0, 0.0), &t).0, Recommendation::Merge);
    }

    #[test]
    fn reasons_name_rule_and_numbers() {
        let (_, reasons) = verdict(&m(0.95, 0.02, 0.0), &thresholds());
        assert_eq!(reasons[0].rule, 3);
        assert_eq!(
            reasons[0].text,
            "rule 3 merge_with_adaptations: success_rate 0.95 > 0.9 and regression 0.02 < 0.05"
        );
        let (_, reasons) = verdict(&m(0.5, 0.2, 0.0), &thresholds());
        assert_eq!(reasons.len(), 2);
    }
}
