//! The ramp and arrival maths: how many journeys a phase asks for, and when.
//!
//! A load phase ramps its arrival rate linearly from `r0` to `r1` journeys per second over `t`
//! seconds. The scenario model ([`Scenario::planned_rate_at`](crate::scenario::Scenario::planned_rate_at),
//! [`Scenario::planned_duration`](crate::scenario::Scenario::planned_duration)) and the engine's
//! scheduler both use these functions, so what the plan says and what the run sends cannot drift
//! apart.

use std::time::Duration;

use crate::scenario::{MAX_ARRIVAL_RATE, Phase};

/// The rate (journeys/s) `x` seconds into a phase ramping from `r0` to `r1` over `t` seconds.
pub(crate) fn rate_at(x: f64, r0: f64, r1: f64, t: f64) -> f64 {
    if t <= 0.0 { r0 } else { r0 + (r1 - r0) * (x / t).clamp(0.0, 1.0) }
}

/// Seconds from `x` until `need` more journeys are due in such a phase, if that happens before
/// it ends.
pub(crate) fn seconds_until(x: f64, need: f64, r0: f64, r1: f64, t: f64) -> Option<f64> {
    let k = if t > 0.0 { (r1 - r0) / (2.0 * t) } else { 0.0 };
    let r = rate_at(x, r0, r1, t);
    let dt = if k.abs() < 1e-12 {
        if r <= 0.0 {
            return None;
        }
        need / r
    } else {
        // r·d + k·d² = need, where r is the rate at x.
        let disc = r * r + 4.0 * k * need;
        if disc < 0.0 {
            return None;
        }
        (-r + disc.sqrt()) / (2.0 * k)
    };
    (dt.is_finite() && dt >= 0.0 && x + dt <= t + 1e-9 * t.max(1.0)).then_some(dt)
}

/// Journeys due between `a` and `b` seconds into such a phase (the rate's integral).
pub(crate) fn arrivals_between(a: f64, b: f64, r0: f64, r1: f64, t: f64) -> f64 {
    if b <= a || t <= 0.0 {
        return 0.0;
    }
    let n = |x: f64| r0 * x + (r1 - r0) * x * x / (2.0 * t);
    (n(b.min(t)) - n(a.min(t))).max(0.0)
}

/// Takes the whole arrivals out of `credit`. The credit is a sum of pieces (one per wake-up of
/// the arrival loop), so 5 arrivals in a second can add up to 4.999999999999999 at the phase's
/// end, and the last arrival would be lost: within a rounding error of a whole arrival counts
/// as it.
pub(crate) fn take_whole(credit: &mut f64) -> u64 {
    let whole = (*credit + 1e-9).floor().max(0.0);
    *credit = (*credit - whole).max(0.0);
    whole as u64
}

/// A written rate the scheduler can count exactly: 0 to [`MAX_ARRIVAL_RATE`] (NaN: 0). A
/// scenario file cannot ask for more; a phase built in code is held to it here.
pub(crate) fn clamp_rate(rate: f64) -> f64 {
    if rate > 0.0 { rate.min(MAX_ARRIVAL_RATE) } else { 0.0 }
}

/// The total length of `phases`.
pub(crate) fn planned_duration(phases: &[Phase]) -> Duration {
    // Saturating: a phase built in code may be "until stopped" (`Duration::MAX`).
    phases.iter().map(Phase::duration).fold(Duration::ZERO, Duration::saturating_add)
}

/// The written arrival rate (journeys/s) `elapsed` into a run of `phases`, and the phase's
/// index (`None` after the last phase). Closed-model and pause phases have rate 0.
pub(crate) fn planned_rate_at(phases: &[Phase], elapsed: Duration) -> (f64, Option<usize>) {
    let mut start = Duration::ZERO;
    for (i, p) in phases.iter().enumerate() {
        let end = start + p.duration();
        if elapsed < end {
            let x = (elapsed - start).as_secs_f64();
            return match p {
                Phase::Load { rate, ramp_to, .. } => {
                    (rate_at(x, *rate, *ramp_to, p.duration().as_secs_f64()), Some(i))
                }
                _ => (0.0, Some(i)),
            };
        }
        start = end;
    }
    (0.0, None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_whole_arrival_short_by_a_rounding_error_is_taken() {
        // Wake-ups of the arrival loop over a 1 s phase at 5/s (times found by a search): with
        // a plain floor the pieces make 4 whole arrivals and 0.9999999999999998 left at the end.
        let wakes = [
            0.0,
            0.02065552718963659,
            0.023170243854374162,
            0.07406193499957914,
            0.10476783409087498,
            0.3436021383024037,
            0.42624009112762795,
            0.432469433749579,
            0.47402111711708705,
            0.6256280957010675,
            0.6645434097928273,
            0.7076705663069865,
            0.952197558029905,
            1.0,
        ];
        let (mut credit, mut taken) = (0.0f64, 0u64);
        for w in wakes.windows(2) {
            credit += super::arrivals_between(w[0], w[1], 5.0, 5.0, 1.0);
            taken += super::take_whole(&mut credit);
        }
        assert_eq!(taken, 5, "left: {credit}");
        let mut half = 2.5;
        assert_eq!(super::take_whole(&mut half), 2);
        assert_eq!(half, 0.5);
    }

    use super::*;

    #[test]
    fn arrival_math_is_consistent() {
        for (r0, r1, t) in [(5.0, 5.0, 10.0), (0.0, 200.0, 4.0), (50.0, 5.0, 10.0), (1.0, 3.0, 2.0)] {
            let total = arrivals_between(0.0, t, r0, r1, t);
            assert!((total - (r0 + r1) / 2.0 * t).abs() < 1e-9);
            // Walking arrival by arrival lands on the same count.
            let (mut x, mut n) = (0.0, 0u32);
            while let Some(dt) = seconds_until(x, 1.0, r0, r1, t) {
                assert!((arrivals_between(x, x + dt, r0, r1, t) - 1.0).abs() < 1e-6);
                x += dt;
                n += 1;
            }
            assert_eq!(f64::from(n), total.floor(), "{r0}->{r1} over {t}s");
        }
        assert_eq!(seconds_until(0.0, 1.0, 0.0, 0.0, 5.0), None);
        assert!((rate_at(2.0, 0.0, 200.0, 4.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_ramp_and_a_steady_rate() {
        // 0 → 200 journeys/s over 4 s: 100/s half-way, 400 journeys in all.
        assert!((rate_at(2.0, 0.0, 200.0, 4.0) - 100.0).abs() < 1e-9);
        assert!((arrivals_between(0.0, 4.0, 0.0, 200.0, 4.0) - 400.0).abs() < 1e-9);
        // At a steady 10/s the next journey is due 0.1 s later.
        assert!((seconds_until(0.0, 1.0, 10.0, 10.0, 5.0).unwrap_or(f64::NAN) - 0.1).abs() < 1e-9);
    }
}
