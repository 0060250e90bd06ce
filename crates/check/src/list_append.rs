//! A serializability checker for list-append transactions, after Elle (Kingsbury & Alvaro,
//! "Elle: Inferring Isolation Anomalies from Experimental Observations", VLDB 2020).
//!
//! Each transaction appends unique values to lists and reads whole lists. Because every value
//! is appended once and lists only grow, a read of a list reveals the order of every append
//! before it, and the longest read of each list gives its *version order*. From that order the
//! checker infers dependencies between transactions:
//!
//! - **ww**: T1 appended the element right before T2's element in a list;
//! - **wr**: T2 read a list whose last element T1 appended;
//! - **rw**: T1 read a list whose last element is `x` (or read it empty), and T2 appended the
//!   element right after `x` (the list's first element).
//!
//! A serializable history has an acyclic dependency graph: a cycle (found with Tarjan's strongly
//! connected components) is an anomaly (G0 with ww edges only, G1c with ww/wr, G2 with rw). It
//! also finds the direct anomalies Elle reports without cycles: a read that is not a prefix of
//! the version order (*incompatible order*), a value read or present that no transaction appended
//! (*garbage*), a value appended by a transaction that was told it aborted (*G1a*, aborted read),
//! and an element appended twice (*duplicate*).
//!
//! Transactions whose outcome the client never learned may or may not have committed: they
//! take part when one of their values was observed, and are left out otherwise.

use std::collections::{BTreeMap, HashMap};

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Appended this (unique) value to the list.
    Append(Vec<u8>, u64),
    /// Read the whole list: None when the read's result is unknown.
    Read(Vec<u8>, Option<Vec<u64>>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Committed,
    /// Told it did not happen (an aborted EXEC, an error that guarantees nothing ran).
    Aborted,
    /// Never learned.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Txn {
    pub ops: Vec<Op>,
    pub outcome: Outcome,
}

/// What the check found; empty when the history is serializable.
#[derive(Debug, Default)]
pub struct Report {
    pub anomalies: Vec<String>,
    /// Transactions and dependency edges examined (for the test's summary line).
    pub transactions: usize,
    pub edges: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// Checks `history`. `finals` are reads of every list after the run (as the last transaction
/// would read them): they fix each list's version order when the run's own reads are shorter.
pub fn check(history: &[Txn], finals: &BTreeMap<Vec<u8>, Vec<u64>>) -> Report {
    let mut report = Report::default();
    // Who appended what.
    let mut appender: HashMap<(Vec<u8>, u64), usize> = HashMap::new();
    for (t, txn) in history.iter().enumerate() {
        for op in &txn.ops {
            if let Op::Append(k, v) = op {
                if appender.insert((k.clone(), *v), t).is_some() {
                    report
                        .anomalies
                        .push(format!("value {v} appended twice to {}", show(k)));
                }
            }
        }
    }
    // Version order: the longest observation of each list; every other must be its prefix.
    let mut observed: BTreeMap<Vec<u8>, Vec<&Vec<u64>>> = BTreeMap::new();
    for txn in history.iter().filter(|t| t.outcome != Outcome::Aborted) {
        for op in &txn.ops {
            if let Op::Read(k, Some(list)) = op {
                observed.entry(k.clone()).or_default().push(list);
            }
        }
    }
    for (k, list) in finals {
        observed.entry(k.clone()).or_default().push(list);
    }
    let mut order: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for (k, lists) in &observed {
        let longest = lists.iter().max_by_key(|l| l.len()).expect("one at least");
        for l in lists {
            if !longest.starts_with(l) {
                report.anomalies.push(format!(
                    "incompatible order on {}: {l:?} is not a prefix of {longest:?}",
                    show(k)
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for v in longest.iter() {
            if !seen.insert(*v) {
                report
                    .anomalies
                    .push(format!("{} holds {v} twice: {longest:?}", show(k)));
            }
        }
        // Every value any observation holds (a read that is not a prefix may hold others).
        let mut values: Vec<u64> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        values.sort_unstable();
        values.dedup();
        for v in values {
            match appender.get(&(k.clone(), v)) {
                None => report
                    .anomalies
                    .push(format!("{} holds {v}, which nobody appended", show(k))),
                Some(&t) if history[t].outcome == Outcome::Aborted => {
                    report.anomalies.push(format!(
                        "{} holds {v}, appended by a transaction told it aborted (G1a)",
                        show(k)
                    ))
                }
                _ => {}
            }
        }
        order.insert(k.clone(), (*longest).clone());
    }
    // Which transactions take part: committed ones, and unknown ones seen to have happened.
    let happened = |t: usize| match history[t].outcome {
        Outcome::Committed => true,
        Outcome::Aborted => false,
        Outcome::Unknown => history[t].ops.iter().any(|op| match op {
            Op::Append(k, v) => order.get(k).is_some_and(|l| l.contains(v)),
            Op::Read(..) => false,
        }),
    };
    let included: Vec<bool> = (0..history.len()).map(happened).collect();
    report.transactions = included.iter().filter(|&&b| b).count();
    // Edges.
    let mut edges: Vec<Vec<(usize, &'static str)>> = vec![Vec::new(); history.len()];
    let add = |from: usize, to: usize, kind: &'static str, edges: &mut Vec<Vec<_>>| {
        if from != to && included[from] && included[to] {
            edges[from].push((to, kind));
        }
    };
    for (k, list) in &order {
        for pair in list.windows(2) {
            if let (Some(&a), Some(&b)) = (
                appender.get(&(k.clone(), pair[0])),
                appender.get(&(k.clone(), pair[1])),
            ) {
                add(a, b, "ww", &mut edges);
            }
        }
    }
    for (t, txn) in history.iter().enumerate() {
        if !included[t] {
            continue;
        }
        for op in &txn.ops {
            let Op::Read(k, Some(list)) = op else {
                continue;
            };
            let Some(full) = order.get(k) else { continue };
            // wr: the last element's appender (not this transaction itself).
            if let Some(last) = list.last() {
                if let Some(&w) = appender.get(&(k.clone(), *last)) {
                    add(w, t, "wr", &mut edges);
                }
            }
            // rw: whoever appended the next element after what was read.
            if let Some(next) = full.get(list.len()) {
                if let Some(&w) = appender.get(&(k.clone(), *next)) {
                    add(t, w, "rw", &mut edges);
                }
            }
        }
    }
    report.edges = edges.iter().map(Vec::len).sum();
    for cycle in cycles(&edges) {
        let kinds: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let kind = edges[w[0]]
                    .iter()
                    .find(|(to, _)| *to == w[1])
                    .map_or("?", |(_, k)| k);
                format!("T{} -{kind}-> T{}", w[0], w[1])
            })
            .collect();
        let class = if kinds.iter().any(|k| k.contains("-rw->")) {
            "G2"
        } else if kinds.iter().any(|k| k.contains("-wr->")) {
            "G1c"
        } else {
            "G0"
        };
        let shown: Vec<String> = cycle
            .iter()
            .take(cycle.len() - 1)
            .map(|&t| format!("T{t} = {:?}", history[t].ops))
            .collect();
        report.anomalies.push(format!(
            "{class} cycle: {}; {}",
            kinds.join(", "),
            shown.join("; ")
        ));
    }
    report
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// One cycle (as a closed path) per strongly connected component of more than one node, by
/// Tarjan's algorithm (iterative: histories are long).
fn cycles(edges: &[Vec<(usize, &'static str)>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut components = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut at)) = work.last_mut() {
            if *at == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&(w, _)) = edges[v].get(*at) {
                *at += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                loop {
                    let w = stack.pop().expect("on the stack");
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    components.push(component);
                }
            }
        }
    }
    components.into_iter().map(|c| path_in(edges, &c)).collect()
}

/// A closed path through part of a strongly connected component (breadth-first from its first
/// node back to it, inside the component).
fn path_in(edges: &[Vec<(usize, &'static str)>], component: &[usize]) -> Vec<usize> {
    let inside: std::collections::HashSet<usize> = component.iter().copied().collect();
    let start = component[0];
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &(w, _) in &edges[v] {
            if !inside.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![start, v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start, start]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ops: Vec<Op>) -> Txn {
        Txn {
            ops,
            outcome: Outcome::Committed,
        }
    }
    fn app(k: &str, v: u64) -> Op {
        Op::Append(k.as_bytes().to_vec(), v)
    }
    fn read(k: &str, l: &[u64]) -> Op {
        Op::Read(k.as_bytes().to_vec(), Some(l.to_vec()))
    }

    #[test]
    fn a_serial_history_passes() {
        let h = vec![
            t(vec![app("x", 1), app("y", 1)]),
            t(vec![read("x", &[1]), app("y", 2)]),
            t(vec![read("y", &[1, 2]), app("x", 2)]),
        ];
        let r = check(&h, &BTreeMap::new());
        assert!(r.is_ok(), "{:?}", r.anomalies);
        assert_eq!(r.transactions, 3);
    }

    #[test]
    fn write_skew_is_a_g2_cycle() {
        // Each reads the other's list empty and appends to its own: no serial order explains it.
        let h = vec![
            t(vec![read("x", &[]), app("y", 1)]),
            t(vec![read("y", &[]), app("x", 1)]),
        ];
        let finals = BTreeMap::from([(b"x".to_vec(), vec![1]), (b"y".to_vec(), vec![1])]);
        let r = check(&h, &finals);
        assert!(
            r.anomalies.iter().any(|a| a.starts_with("G2 cycle")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn a_torn_read_is_a_cycle() {
        // T1 appends to x and y at once; T2 sees T1's x but not its y.
        let h = vec![
            t(vec![app("x", 1), app("y", 1)]),
            t(vec![read("x", &[1]), read("y", &[])]),
        ];
        let finals = BTreeMap::from([(b"y".to_vec(), vec![1])]);
        let r = check(&h, &finals);
        assert!(
            r.anomalies.iter().any(|a| a.starts_with("G2 cycle")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn direct_anomalies_are_found() {
        let aborted = Txn {
            ops: vec![app("x", 9)],
            outcome: Outcome::Aborted,
        };
        let h = vec![
            t(vec![app("x", 1)]),
            aborted,
            t(vec![read("x", &[1, 9])]),
            t(vec![read("x", &[2])]),
        ];
        let r = check(&h, &BTreeMap::new());
        let all = r.anomalies.join("\n");
        assert!(all.contains("G1a"), "{all}");
        assert!(all.contains("not a prefix"), "{all}");
        assert!(all.contains("nobody appended"), "{all}");
    }

    #[test]
    fn an_unknown_transaction_counts_only_when_seen() {
        let unknown = |v| Txn {
            ops: vec![app("x", v)],
            outcome: Outcome::Unknown,
        };
        let h = vec![t(vec![app("x", 1)]), unknown(2), unknown(3)];
        let finals = BTreeMap::from([(b"x".to_vec(), vec![1, 2])]);
        let r = check(&h, &finals);
        assert!(r.is_ok(), "{:?}", r.anomalies);
        assert_eq!(r.transactions, 2);
    }
}
