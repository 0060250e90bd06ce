//! The log storage contract raft-rs relies on, checked against the raft-engine backend,
//! including what a restart and a crash leave behind.

use cairn_replication::{LogEngine, StorageFault};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage, StorageError};
use raft_engine::LogBatch;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    e.set_data(format!("entry {index} of term {term}").into_bytes().into());
    e
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

/// Stages, writes and commits one group's Ready parts.
fn persist(
    engine: &LogEngine,
    group: &cairn_replication::GroupStorage,
    snap: Option<&Snapshot>,
    ents: &[Entry],
    hs: Option<&HardState>,
) {
    let mut batch = LogBatch::default();
    let staged = group.stage(&mut batch, snap, ents, hs).expect("stage");
    engine.write(&mut batch).expect("write");
    group.commit(staged);
}

fn read(g: &cairn_replication::GroupStorage, low: u64, high: u64) -> raft::Result<Vec<Entry>> {
    g.entries(low, high, None, GetEntriesContext::empty(false))
}

#[test]
fn a_new_group_is_empty_as_raft_expects() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(1).unwrap();
    assert_eq!(g.first_index().unwrap(), 1);
    assert_eq!(g.last_index().unwrap(), 0);
    assert_eq!(g.term(0).unwrap(), 0);
    assert!(read(&g, 1, 1).unwrap().is_empty());
    assert_eq!(g.initial_state().unwrap().hard_state, HardState::default());
}

#[test]
fn entries_terms_and_size_limits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(7).unwrap();
    persist(&engine, &g, None, &entries(1..=10, 2), None);
    assert_eq!(g.last_index().unwrap(), 10);
    assert_eq!(read(&g, 3, 6).unwrap(), entries(3..=5, 2));
    assert_eq!(g.term(10).unwrap(), 2);
    assert!(matches!(
        g.term(11),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    // max_size 0 still returns one entry; a size fitting two returns two.
    let one = g
        .entries(1, 11, Some(0), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(one.len(), 1);
    let size = protobuf::Message::compute_size(&entry(1, 2)) as u64;
    let two = g
        .entries(1, 11, Some(size * 2), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(two.len(), 2);
}

#[test]
fn a_new_leaders_entries_replace_a_conflicting_tail() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(1).unwrap();
    persist(&engine, &g, None, &entries(1..=10, 1), None);
    persist(&engine, &g, None, &entries(6..=7, 3), None);
    assert_eq!(g.last_index().unwrap(), 7, "the old tail 8..=10 is gone");
    assert_eq!(g.term(5).unwrap(), 1);
    assert_eq!(g.term(6).unwrap(), 3);
    assert_eq!(
        read(&g, 5, 8).unwrap(),
        vec![entry(5, 1), entry(6, 3), entry(7, 3)]
    );
}

#[test]
fn holes_and_rewrites_below_the_log_are_refused_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(1).unwrap();
    persist(&engine, &g, None, &entries(1..=5, 1), None);
    let mut batch = LogBatch::default();
    let hole = g.stage(&mut batch, None, &entries(8..=9, 1), None);
    assert!(
        matches!(hole, Err(StorageFault::BadAppend { index: 8, .. })),
        "{hole:?}"
    );
    g.compact(3, &engine).unwrap();
    let below = g.stage(&mut LogBatch::default(), None, &entries(2..=3, 2), None);
    assert!(
        matches!(below, Err(StorageFault::BadAppend { index: 2, .. })),
        "{below:?}"
    );
    assert_eq!(g.last_index().unwrap(), 5);
}

#[test]
fn staged_writes_are_invisible_until_committed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(1).unwrap();
    let mut batch = LogBatch::default();
    let hs = HardState {
        term: 4,
        vote: 2,
        commit: 0,
        ..Default::default()
    };
    let staged = g
        .stage(&mut batch, None, &entries(1..=3, 4), Some(&hs))
        .unwrap();
    assert_eq!(
        g.last_index().unwrap(),
        0,
        "not on disk yet, so raft must not see it"
    );
    engine.write(&mut batch).unwrap();
    g.commit(staged);
    assert_eq!(g.last_index().unwrap(), 3);
    assert_eq!(g.initial_state().unwrap().hard_state, hs);
}

#[test]
fn one_batch_one_fsync_for_many_groups_and_everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LogEngine::open(dir.path()).unwrap();
        let groups: Vec<_> = (1..=20).map(|id| engine.group(id).unwrap()).collect();
        let mut batch = LogBatch::default();
        let mut staged = Vec::new();
        for g in &groups {
            let hs = HardState {
                term: g.id(),
                vote: 1,
                commit: 2,
                ..Default::default()
            };
            staged.push(
                g.stage(&mut batch, None, &entries(1..=3, g.id()), Some(&hs))
                    .unwrap(),
            );
        }
        engine.write(&mut batch).unwrap();
        for (g, s) in groups.iter().zip(staged) {
            g.commit(s);
        }
        let mut batch = LogBatch::default();
        let mut s = groups[0].stage(&mut batch, None, &[], None).unwrap();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        groups[0].stage_conf_state(&mut batch, &cs, &mut s).unwrap();
        engine.write(&mut batch).unwrap();
        groups[0].commit(s);
    }
    let engine = LogEngine::open(dir.path()).unwrap();
    let mut ids = engine.groups();
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    for id in 1..=20 {
        let g = engine.group(id).unwrap();
        assert_eq!(g.last_index().unwrap(), 3, "group {id}");
        assert_eq!(read(&g, 1, 4).unwrap(), entries(1..=3, id));
        let state = g.initial_state().unwrap();
        assert_eq!(state.hard_state.term, id);
        assert_eq!(state.hard_state.commit, 2);
    }
    assert_eq!(
        engine
            .group(1)
            .unwrap()
            .initial_state()
            .unwrap()
            .conf_state
            .voters,
        vec![1, 2, 3]
    );
}

#[test]
fn compaction_keeps_the_term_before_the_first_entry_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LogEngine::open(dir.path()).unwrap();
        let g = engine.group(1).unwrap();
        persist(&engine, &g, None, &entries(1..=5, 1), None);
        persist(&engine, &g, None, &entries(6..=10, 2), None);
        g.compact(6, &engine).unwrap();
        assert_eq!(g.first_index().unwrap(), 7);
        assert_eq!(g.term(6).unwrap(), 2);
        assert!(matches!(
            g.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            read(&g, 5, 8),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(1).unwrap();
    assert_eq!(g.first_index().unwrap(), 7);
    assert_eq!(g.last_index().unwrap(), 10);
    assert_eq!(g.term(6).unwrap(), 2);
    assert_eq!(read(&g, 7, 11).unwrap(), entries(7..=10, 2));
}

#[test]
fn an_installed_snapshot_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LogEngine::open(dir.path()).unwrap();
        let g = engine.group(3).unwrap();
        persist(&engine, &g, None, &entries(1..=5, 1), None);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 100;
        snap.mut_metadata().term = 7;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        let hs = HardState {
            term: 7,
            vote: 0,
            commit: 100,
            ..Default::default()
        };
        persist(&engine, &g, Some(&snap), &[], Some(&hs));
        assert_eq!(g.first_index().unwrap(), 101);
        assert_eq!(g.last_index().unwrap(), 100);
        assert_eq!(g.term(100).unwrap(), 7);
        persist(&engine, &g, None, &entries(101..=102, 7), None);
    }
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(3).unwrap();
    assert_eq!(
        (g.first_index().unwrap(), g.last_index().unwrap()),
        (101, 102)
    );
    assert_eq!(g.term(100).unwrap(), 7);
    assert_eq!(g.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    assert_eq!(read(&g, 101, 103).unwrap(), entries(101..=102, 7));
}

/// The crash a power cut leaves: the newest log file ends mid-write. Recovery must keep a
/// prefix of what was written, whole entries only, never garbage.
#[test]
fn a_torn_tail_is_dropped_never_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LogEngine::open(dir.path()).unwrap();
        let g = engine.group(1).unwrap();
        for round in 0..20u64 {
            persist(
                &engine,
                &g,
                None,
                &entries(round * 10 + 1..=round * 10 + 10, 1),
                None,
            );
        }
    }
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .max()
        .expect("a log file");
    for cut in [7u64, 100, 333] {
        let len = std::fs::metadata(&newest).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .unwrap();
        f.set_len(len.saturating_sub(cut)).unwrap();
        let engine = LogEngine::open(dir.path()).expect("recovery opens a torn log");
        let g = engine.group(1).unwrap();
        let last = g.last_index().unwrap();
        assert!((100..200).contains(&last), "cut {cut}: last index {last}");
        assert_eq!(
            read(&g, 1, last + 1).unwrap(),
            entries(1..=last, 1),
            "cut {cut}: a clean prefix"
        );
    }
}

#[test]
fn an_installed_snapshot_and_its_data_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 50;
    snap.mut_metadata().term = 3;
    snap.set_data(b"state machine bytes".to_vec().into());
    {
        let engine = LogEngine::open(dir.path()).unwrap();
        let g = engine.group(9).unwrap();
        persist(&engine, &g, None, &entries(1..=5, 1), None);
        persist(&engine, &g, Some(&snap), &[], None);
        assert_eq!(
            g.latest_snapshot().map(|s| s.get_metadata().index),
            Some(50)
        );
    }
    let engine = LogEngine::open(dir.path()).unwrap();
    let g = engine.group(9).unwrap();
    let got = g
        .latest_snapshot()
        .expect("the installed snapshot is durable");
    assert_eq!(got.get_metadata().index, 50);
    assert_eq!(got.get_data(), b"state machine bytes");
}
