//! Checkers for what clients saw.
//!
//! [`linearizable`] decides whether a history of concurrent operations could have happened on
//! one copy of the data, one operation at a time, each taking effect between its call and its
//! return (Herlihy & Wing). The search is Wing & Gong's, with Lowe's memoization of (operations
//! linearized, state) pairs, as in porcupine. Histories are split per key first (a register
//! per key is linearizable iff each key's sub-history is), which keeps searches small.
//!
//! Operations whose outcome the client never learned (timeout, connection lost, leader
//! changed) are *indeterminate*: they may have taken effect at any time after their call, or
//! never. They are modeled as returning at the end of time with an unknown output.

use std::collections::{BTreeMap, HashSet};

pub mod list_append;
pub mod seeded;

/// A sequential specification: what one operation does to the state, and whether the output
/// the client saw is possible.
pub trait Model {
    type State: Clone + Eq + std::hash::Hash;
    type Input;
    type Output;

    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. Returns the next state if `output` (None: unknown) is what
    /// the operation could have returned from `state`, or None if it could not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// Which independent object (key) it touched.
    pub key: Vec<u8>,
    pub input: I,
    /// None when the client never learned the outcome.
    pub output: Option<O>,
    /// When the call was made and when the reply arrived (None: never), on one clock.
    pub call: u64,
    pub ret: Option<u64>,
}

/// The verdict for a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The first key whose sub-history has no linearization.
    Violation {
        key: Vec<u8>,
    },
}

/// Checks a whole history, key by key.
pub fn linearizable<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    type Ops<'a, M> = Vec<&'a Operation<<M as Model>::Input, <M as Model>::Output>>;
    let mut by_key: BTreeMap<&[u8], Ops<M>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_one(model, &ops) {
            return Verdict::Violation { key: key.to_vec() };
        }
    }
    Verdict::Linearizable
}

/// A call or return event in the doubly linked list the search edits.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: the index of its return event.
    partner: usize,
}

const HEAD: usize = 0;
const NONE: usize = usize::MAX;

fn check_one<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>]) -> bool {
    // Events sorted by time; at equal times calls come first (touching intervals overlap).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // events[0] is the list head; event k+1 is order[k].
    let mut events = vec![Event {
        op: NONE,
        is_call: false,
        prev: NONE,
        next: 1,
        partner: NONE,
    }];
    let mut ret_of = vec![NONE; ops.len()];
    for (k, &(_, is_call, op)) in order.iter().enumerate() {
        let idx = k + 1;
        events.push(Event {
            op,
            is_call,
            prev: idx - 1,
            next: if k + 1 < order.len() { idx + 1 } else { NONE },
            partner: NONE,
        });
        if !is_call {
            ret_of[op] = idx;
        }
    }
    if order.is_empty() {
        events[HEAD].next = NONE;
    }
    for e in events.iter_mut().skip(1) {
        if e.is_call {
            e.partner = ret_of[e.op];
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut entry = events[HEAD].next;
    while events[HEAD].next != NONE {
        if entry == NONE {
            // Every remaining call was tried from here: backtrack.
            let Some((call, previous)) = calls.pop() else {
                return false;
            };
            state = previous;
            let op = events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut events, call);
            entry = events[call].next;
            continue;
        }
        let e = events[entry];
        if e.is_call {
            let op = ops[e.op];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut next_lin = linearized.clone();
                next_lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((next_lin.clone(), next_state.clone())) {
                    calls.push((entry, state));
                    state = next_state;
                    linearized = next_lin;
                    lift(&mut events, entry);
                    entry = events[HEAD].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // A return whose call was not linearized yet: nothing can move past it. Backtrack.
            let Some((call, previous)) = calls.pop() else {
                return false;
            };
            state = previous;
            let op = events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut events, call);
            entry = events[call].next;
        }
    }
    true
}

/// Removes a call and its return from the list.
fn lift(events: &mut [Event], call: usize) {
    let ret = events[call].partner;
    for idx in [call, ret] {
        let (p, n) = (events[idx].prev, events[idx].next);
        events[p].next = n;
        if n != NONE {
            events[n].prev = p;
        }
    }
}

/// Puts a call and its return back (in reverse order of removal).
fn unlift(events: &mut [Event], call: usize) {
    let ret = events[call].partner;
    for idx in [ret, call] {
        let (p, n) = (events[idx].prev, events[idx].next);
        events[p].next = idx;
        if n != NONE {
            events[n].prev = idx;
        }
    }
}

/// A register per key with GET, SET and compare-and-set (what WATCH/MULTI/EXEC gives a client).
pub struct Register;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    Get,
    Set(Option<Vec<u8>>),
    /// Set to `new` if the value is `expected`.
    Cas {
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    Value(Option<Vec<u8>>),
    Ok,
    /// CAS did not apply.
    Failed,
}

impl Model for Register {
    type State = Option<Vec<u8>>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Self::State> {
        match (input, output) {
            (RegisterInput::Get, None) => Some(state.clone()),
            (RegisterInput::Get, Some(RegisterOutput::Value(v))) => {
                (v == state).then(|| state.clone())
            }
            (RegisterInput::Set(v), None | Some(RegisterOutput::Ok)) => Some(v.clone()),
            (RegisterInput::Cas { expected, new }, None) => Some(if expected == state {
                new.clone()
            } else {
                state.clone()
            }),
            (RegisterInput::Cas { expected, new }, Some(RegisterOutput::Ok)) => {
                (expected == state).then(|| new.clone())
            }
            (RegisterInput::Cas { expected, .. }, Some(RegisterOutput::Failed)) => {
                (expected != state).then(|| state.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<RegisterInput, RegisterOutput>;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    fn set(val: &str, call: u64, ret: u64) -> Op {
        Op {
            key: b"k".to_vec(),
            input: RegisterInput::Set(v(val)),
            output: Some(RegisterOutput::Ok),
            call,
            ret: Some(ret),
        }
    }

    fn get(seen: Option<&str>, call: u64, ret: u64) -> Op {
        Op {
            key: b"k".to_vec(),
            input: RegisterInput::Get,
            output: Some(RegisterOutput::Value(seen.and_then(v))),
            call,
            ret: Some(ret),
        }
    }

    fn check(h: &[Op]) -> Verdict {
        linearizable(&Register, h)
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        assert_eq!(
            check(&[set("a", 0, 1), get(Some("a"), 2, 3)]),
            Verdict::Linearizable
        );
        // A read overlapping a write may see either value.
        assert_eq!(
            check(&[
                set("a", 0, 1),
                set("b", 2, 10),
                get(Some("a"), 3, 4),
                get(Some("b"), 5, 6)
            ]),
            Verdict::Linearizable
        );
        assert_eq!(check(&[]), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [set("a", 0, 1), set("b", 2, 3), get(Some("a"), 4, 5)];
        assert_eq!(check(&h), Verdict::Violation { key: b"k".to_vec() });
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Write b overlaps both reads, but once a read saw b, a later read cannot see a.
        let h = [
            set("a", 0, 1),
            set("b", 2, 20),
            get(Some("b"), 3, 4),
            get(Some("a"), 5, 6),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn lost_updates_through_cas_are_caught() {
        // Two CAS from a to different values both claim success: impossible.
        let cas = |new: &str, call, ret| Op {
            key: b"k".to_vec(),
            input: RegisterInput::Cas {
                expected: v("a"),
                new: v(new),
            },
            output: Some(RegisterOutput::Ok),
            call,
            ret: Some(ret),
        };
        let h = [set("a", 0, 1), cas("b", 2, 5), cas("c", 3, 6)];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_have_happened() {
        let lost = Op {
            key: b"k".to_vec(),
            input: RegisterInput::Set(v("x")),
            output: None,
            call: 2,
            ret: None,
        };
        // Later observed: it happened.
        assert_eq!(
            check(&[set("a", 0, 1), lost.clone(), get(Some("x"), 10, 11)]),
            Verdict::Linearizable
        );
        // Never observed: it did not (or not yet).
        assert_eq!(
            check(&[set("a", 0, 1), lost.clone(), get(Some("a"), 10, 11)]),
            Verdict::Linearizable
        );
        // But it cannot be seen before it was called.
        let early = get(Some("x"), 0, 1);
        assert!(matches!(
            check(&[early, Op { call: 5, ..lost }]),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![set("a", 0, 1), get(Some("a"), 2, 3)];
        h.push(Op {
            key: b"other".to_vec(),
            ..set("z", 0, 1)
        });
        h.push(Op {
            key: b"other".to_vec(),
            ..get(Some("y"), 2, 3)
        });
        assert_eq!(
            check(&h),
            Verdict::Violation {
                key: b"other".to_vec()
            }
        );
    }

    /// Histories made by really executing operations one at a time (each at an instant inside
    /// its random interval) are always linearizable; changing one read's result almost always
    /// makes them not.
    #[test]
    fn generated_histories() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut caught = 0;
        for _round in 0..300 {
            let mut state: Option<Vec<u8>> = None;
            let mut h: Vec<Op> = Vec::new();
            let mut reads = Vec::new();
            for i in 0..24u64 {
                let at = i * 10 + 5;
                let call = at - next() % 30.min(at);
                let ret = at + next() % 30;
                let op = match next() % 3 {
                    0 => {
                        let val = v(&format!("v{}", next() % 4));
                        state = val.clone();
                        Op {
                            key: b"k".to_vec(),
                            input: RegisterInput::Set(val),
                            output: Some(RegisterOutput::Ok),
                            call,
                            ret: Some(ret),
                        }
                    }
                    1 => {
                        reads.push(h.len());
                        Op {
                            key: b"k".to_vec(),
                            input: RegisterInput::Get,
                            output: Some(RegisterOutput::Value(state.clone())),
                            call,
                            ret: Some(ret),
                        }
                    }
                    _ => {
                        let expected = v(&format!("v{}", next() % 4));
                        let new = v(&format!("v{}", next() % 4));
                        let ok = expected == state;
                        if ok {
                            state = new.clone();
                        }
                        let output = if ok {
                            RegisterOutput::Ok
                        } else {
                            RegisterOutput::Failed
                        };
                        Op {
                            key: b"k".to_vec(),
                            input: RegisterInput::Cas { expected, new },
                            output: Some(output),
                            call,
                            ret: Some(ret),
                        }
                    }
                };
                h.push(op);
            }
            assert_eq!(
                check(&h),
                Verdict::Linearizable,
                "a real execution must check"
            );
            if let Some(&r) = reads.first() {
                h[r].output = Some(RegisterOutput::Value(v("never-written")));
                if check(&h) != Verdict::Linearizable {
                    caught += 1;
                }
            }
        }
        assert!(
            caught > 250,
            "a read of a never-written value was caught only {caught} times"
        );
    }
}
