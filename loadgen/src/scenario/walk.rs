//! One walk over a journey's step tree, for everything that looks at its requests: the engine
//! running a journey, preflight's plan, the request counts of `validate` and of the automatic
//! controls, the compiler's checks. Loops are walked through, never yielded.

use std::time::Duration;

use super::{GrpcCall, Request, Step};

/// What a journey does at one point of a walk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Action<'a> {
    /// Send this request.
    Request(&'a Request),
    /// Make this gRPC call.
    Grpc(&'a GrpcCall),
    /// Wait this long.
    Think(Duration),
}

/// What every step that sends something (an HTTP request or a gRPC call) has: where it is
/// counted, and what preflight expects of its answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent<'a> {
    /// Index into [`Scenario::step_names`](super::Scenario::step_names).
    pub stat: usize,
    /// Services the answer's `synthetic-traffic-path` must name.
    pub expect_path: &'a [String],
    /// Guards the answer's `synthetic-traffic-guards` must name.
    pub expect_guards: &'a [String],
}

/// One request or think of a walk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Visit<'a> {
    /// What it does.
    pub action: Action<'a>,
    /// How many times it runs per run of the journey: the product of the counts of the loops
    /// around it (saturating) in a [`steps`] walk; always 1 in a [`run_order`] walk, which
    /// yields it once per run.
    pub runs: u64,
}

impl<'a> Visit<'a> {
    /// The HTTP request, if this is one.
    #[cfg(test)]
    fn request(&self) -> Option<&'a Request> {
        match self.action {
            Action::Request(r) => Some(r),
            Action::Grpc(_) | Action::Think(_) => None,
        }
    }

    /// What this step sends, if it sends something (an HTTP request or a gRPC call): the
    /// walkers that count or plan requests use this, so they see both kinds.
    pub(crate) fn sent(&self) -> Option<Sent<'a>> {
        match self.action {
            Action::Request(r) => {
                Some(Sent { stat: r.stat, expect_path: &r.expect_path, expect_guards: &r.expect_guards })
            }
            Action::Grpc(g) => {
                Some(Sent { stat: g.stat, expect_path: &g.expect_path, expect_guards: &g.expect_guards })
            }
            Action::Think(_) => None,
        }
    }
}

/// A depth-first walk over steps; see [`steps`] and [`run_order`].
#[derive(Clone, Debug)]
pub(crate) struct Walk<'a> {
    /// The level being walked; the levels around it wait in `outer`. Kept apart so a journey
    /// without loops walks without allocating.
    current: Frame<'a>,
    outer: Vec<Frame<'a>>,
    /// Repeat each loop's steps `count` times instead of visiting them once.
    unroll: bool,
    /// Visits yielded so far: a pass over a loop that yielded none yields none again.
    yielded: u64,
}

#[derive(Clone, Debug)]
struct Frame<'a> {
    steps: &'a [Step],
    next: usize,
    /// Passes over `steps` still to make after this one (unrolled walks).
    again: u32,
    /// How many times each of `steps` runs per journey (written-order walks).
    runs: u64,
    /// `Walk::yielded` when this pass over `steps` began.
    mark: u64,
}

/// Every request and think of `steps` once, in written order, with how many times it runs per
/// journey. Loops of 0 are walked too (their steps have `runs == 0`): what is written is checked
/// and prepared even if it never runs.
pub(crate) fn steps(steps: &[Step]) -> Walk<'_> {
    Walk {
        current: Frame { steps, next: 0, again: 0, runs: 1, mark: 0 },
        outer: Vec::new(),
        unroll: false,
        yielded: 0,
    }
}

/// Every request and think of `steps` in the order a journey runs them: each loop's steps
/// `count` times over.
pub(crate) fn run_order(steps: &[Step]) -> Walk<'_> {
    Walk {
        current: Frame { steps, next: 0, again: 0, runs: 1, mark: 0 },
        outer: Vec::new(),
        unroll: true,
        yielded: 0,
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = Visit<'a>;

    fn next(&mut self) -> Option<Visit<'a>> {
        loop {
            let Some(step) = self.current.steps.get(self.current.next) else {
                // A pass that yielded nothing (loops of nothing, however deep) would yield
                // nothing again: skipping the other passes keeps a huge count from spinning.
                if self.current.again > 0 && self.yielded != self.current.mark {
                    self.current.again -= 1;
                    self.current.next = 0;
                    self.current.mark = self.yielded;
                } else {
                    self.current = self.outer.pop()?;
                }
                continue;
            };
            self.current.next += 1;
            let runs = self.current.runs;
            let action = match step {
                Step::Request(r) => Action::Request(r),
                Step::Grpc(g) => Action::Grpc(g),
                Step::Think(d) => Action::Think(*d),
                Step::Loop { count: 0, .. } if self.unroll => continue,
                Step::Loop { count, steps } => {
                    let inner = if self.unroll {
                        Frame { steps, next: 0, again: count - 1, runs: 1, mark: self.yielded }
                    } else {
                        let runs = runs.saturating_mul(u64::from(*count));
                        Frame { steps, next: 0, again: 0, runs, mark: self.yielded }
                    };
                    self.outer.push(std::mem::replace(&mut self.current, inner));
                    continue;
                }
            };
            self.yielded = self.yielded.wrapping_add(1);
            return Some(Visit { action, runs });
        }
    }
}

/// Every step of `steps` that is not a loop, once, in written order, to change it (loops of 0
/// included).
fn leaves_mut(steps: &mut [Step]) -> impl Iterator<Item = &mut Step> {
    let mut stack = vec![steps.iter_mut()];
    std::iter::from_fn(move || {
        loop {
            let step = match stack.last_mut()?.next() {
                Some(step) => step,
                None => {
                    stack.pop();
                    continue;
                }
            };
            match step {
                Step::Loop { steps, .. } => stack.push(steps.iter_mut()),
                leaf => return Some(leaf),
            }
        }
    })
}

/// Every request of `steps` once, in written order, to change it (loops of 0 included).
pub(crate) fn requests_mut(steps: &mut [Step]) -> impl Iterator<Item = &mut Request> {
    leaves_mut(steps).filter_map(|s| match s {
        Step::Request(r) => Some(&mut **r),
        _ => None,
    })
}

/// Every gRPC call of `steps` once, in written order, to change it (loops of 0 included).
pub(crate) fn grpc_mut(steps: &mut [Step]) -> impl Iterator<Item = &mut GrpcCall> {
    leaves_mut(steps).filter_map(|s| match s {
        Step::Grpc(g) => Some(&mut **g),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scenario::{Phase, Scenario};

    #[test]
    fn as_written_and_as_run() {
        let s = Scenario::single_request(
            "http://127.0.0.1:8080/".parse().unwrap(),
            http::Method::GET,
            Phase::Pause { duration: Duration::from_secs(1) },
        );
        let get = s.journeys[0].steps[0].clone();
        // get, then three times (think, get)
        let tree = vec![
            get.clone(),
            Step::Loop { count: 3, steps: vec![Step::Think(Duration::from_millis(5)), get] },
        ];
        // As written: each step once, with how many times it runs per journey.
        let runs: Vec<u64> = steps(&tree).filter(|v| v.request().is_some()).map(|v| v.runs).collect();
        assert_eq!(runs, [1, 3]);
        // As run: loops unrolled.
        assert_eq!(run_order(&tree).filter(|v| v.request().is_some()).count(), 4);
    }

    /// A request step whose `stat` tells it apart.
    fn req(stat: usize) -> Step {
        let s = Scenario::single_request(
            http::Uri::from_static("http://127.0.0.1/"),
            http::Method::GET,
            Phase::Pause { duration: Duration::from_secs(1) },
        );
        let Some(Step::Request(r)) = s.journeys[0].steps.first() else { unreachable!("one request") };
        let mut r = r.clone();
        r.stat = stat;
        Step::Request(r)
    }

    fn think(ms: u64) -> Step {
        Step::Think(Duration::from_millis(ms))
    }

    /// What a walk yields, as text: `r3` a request with stat 3 (times its runs when not 1),
    /// `t5` a think of 5 ms.
    fn show(walk: Walk<'_>) -> Vec<String> {
        walk.map(|v| {
            let a = match v.action {
                Action::Request(r) => format!("r{}", r.stat),
                Action::Grpc(g) => format!("g{}", g.stat),
                Action::Think(d) => format!("t{}", d.as_millis()),
            };
            if v.runs == 1 { a } else { format!("{a}x{}", v.runs) }
        })
        .collect()
    }

    /// The recursive walkers this walk replaced, as the reference.
    fn unrolled_by_recursion(steps: &[Step], out: &mut Vec<String>) {
        for s in steps {
            match s {
                Step::Request(r) => out.push(format!("r{}", r.stat)),
                Step::Grpc(g) => out.push(format!("g{}", g.stat)),
                Step::Think(d) => out.push(format!("t{}", d.as_millis())),
                Step::Loop { count, steps } => {
                    for _ in 0..*count {
                        unrolled_by_recursion(steps, out);
                    }
                }
            }
        }
    }

    fn requests_by_recursion(steps: &[Step]) -> f64 {
        steps
            .iter()
            .map(|s| match s {
                Step::Request(_) | Step::Grpc(_) => 1.0,
                Step::Think(_) => 0.0,
                Step::Loop { count, steps } => f64::from(*count) * requests_by_recursion(steps),
            })
            .sum()
    }

    fn tree() -> Vec<Step> {
        vec![
            req(0),
            Step::Loop {
                count: 2,
                steps: vec![think(5), req(1), Step::Loop { count: 3, steps: vec![req(2)] }],
            },
            Step::Loop { count: 0, steps: vec![req(3)] },
            Step::Loop { count: 4, steps: vec![] },
            req(4),
        ]
    }

    #[test]
    fn written_order_visits_each_step_once_with_its_runs() {
        assert_eq!(show(steps(&tree())), ["r0", "t5x2", "r1x2", "r2x6", "r3x0", "r4"]);
    }

    #[test]
    fn run_order_unrolls_loops() {
        assert_eq!(
            show(run_order(&tree())),
            ["r0", "t5", "r1", "r2", "r2", "r2", "t5", "r1", "r2", "r2", "r2", "r4"]
        );
    }

    #[test]
    fn requests_mut_reaches_every_request() {
        let mut t = tree();
        for (i, r) in requests_mut(&mut t).enumerate() {
            r.stat = 10 + i;
        }
        assert_eq!(show(steps(&t)), ["r10", "t5x2", "r11x2", "r12x6", "r13x0", "r14"]);
    }

    #[test]
    fn a_huge_loop_of_nothing_is_skipped() {
        let nothing = Step::Loop { count: u32::MAX, steps: vec![] };
        let t = vec![
            Step::Loop {
                count: u32::MAX,
                steps: vec![nothing.clone(), Step::Loop { count: 0, steps: vec![req(1)] }],
            },
            req(0),
        ];
        assert_eq!(show(run_order(&t)), ["r0"]);
    }

    fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let leaf = prop_oneof![(0usize..5).prop_map(req), (0u64..3).prop_map(think)];
        let step = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                (0usize..5).prop_map(req),
                (0u32..4, prop::collection::vec(inner, 0..4))
                    .prop_map(|(count, steps)| Step::Loop { count, steps }),
            ]
        });
        prop::collection::vec(step, 0..5)
    }

    proptest! {
        #[test]
        fn walks_agree_with_the_recursive_walkers(t in arb_steps()) {
            let mut expected = Vec::new();
            unrolled_by_recursion(&t, &mut expected);
            prop_assert_eq!(show(run_order(&t)), expected.clone());
            let requests: u64 = steps(&t).filter(|v| v.sent().is_some()).map(|v| v.runs).sum();
            prop_assert_eq!(requests as f64, requests_by_recursion(&t));
            prop_assert_eq!(
                requests as usize,
                expected.iter().filter(|a| a.starts_with('r') || a.starts_with('g')).count()
            );
        }
    }
}
