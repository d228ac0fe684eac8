//! Tests of the checkpoint store: the advance rule against a model, and the file on disk.

use super::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("checkpoint-test-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TestDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self) -> PathBuf {
        self.0.join(FILE_NAME)
    }

    fn temp(&self) -> PathBuf {
        self.0.join(TEMP_FILE_NAME)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TestDir) -> CheckpointStore {
    CheckpointStore::open(dir.path()).unwrap()
}

/// What the checkpoint file holds, read without the directory lock (which the store under
/// test holds).
fn on_disk(dir: &TestDir) -> BTreeMap<String, i64> {
    match fs::read(dir.file()) {
        Ok(bytes) => decode(&bytes)
            .unwrap()
            .into_iter()
            .map(|(channel, e)| (channel, e.replay_id))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = TestDir::new("locked");
    let store = open(&dir);
    let err = CheckpointStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another bridge uses this state directory")
    );
    drop(store);
    open(&dir);
}

/// Begins and acks one message, so the channel's checkpoint is `replay_id`.
fn advance(store: &mut CheckpointStore, channel: &str, replay_id: i64) {
    let ticket = store.begin(channel, replay_id);
    store.ack(ticket);
    assert_eq!(store.get(channel), Some(replay_id));
}

fn file_json(dir: &TestDir) -> Value {
    serde_json::from_slice(&fs::read(dir.file()).unwrap()).unwrap()
}

/// One step of an ordered-advance script: `Begin` issues ticket number `n` (counting from
/// 0 across channels), `Ack(n)` / `Abandon(n)` completes it.
#[derive(Debug, Clone, Copy)]
enum Step {
    Begin(&'static str, i64),
    Ack(usize),
    Abandon(usize),
}
use Step::{Abandon, Ack, Begin};

/// The checkpoint a channel must have: the id of the last message of the longest prefix
/// of its begun messages that are all done (the obvious, slow model).
fn model(begun: &[(&str, i64, bool)], channel: &str) -> Option<i64> {
    begun
        .iter()
        .filter(|(c, _, _)| *c == channel)
        .take_while(|(_, _, done)| *done)
        .last()
        .map(|(_, id, _)| *id)
}

/// Runs `steps` on an in-memory store, checking after every step that each channel's
/// checkpoint is what the model says (so never an id in flight or after one in flight).
fn run_script(steps: &[Step]) -> CheckpointStore {
    let dir = TestDir::new("script");
    let mut store = open(&dir);
    let mut tickets: Vec<Option<Ticket>> = Vec::new();
    let mut begun: Vec<(&str, i64, bool)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let before = store.all();
        let advanced = match *step {
            Begin(channel, id) => {
                tickets.push(Some(store.begin(channel, id)));
                begun.push((channel, id, false));
                None
            }
            Ack(n) | Abandon(n) => {
                let ticket = tickets[n].take().expect("each ticket completes once");
                begun[n].2 = true;
                match step {
                    Ack(_) => store.ack(ticket),
                    _ => store.abandon(ticket),
                }
            }
        };
        for channel in ["a", "b", "c"] {
            assert_eq!(
                store.get(channel),
                model(&begun, channel),
                "step {i} {step:?} channel {channel} in {steps:?}"
            );
        }
        // An `Advance` is returned exactly when a checkpoint changed, and names it.
        let after = store.all();
        match advanced {
            Some(a) => {
                assert_eq!(after.get(&*a.channel), Some(&a.replay_id), "step {i}");
                assert_ne!(before.get(&*a.channel), Some(&a.replay_id), "step {i}");
            }
            None => assert_eq!(before, after, "step {i} {step:?}"),
        }
    }
    store
}

#[test]
fn the_checkpoint_advances_only_over_a_contiguous_prefix_of_done_messages() {
    /// (case, steps, final checkpoints)
    type Case = (&'static str, Vec<Step>, Vec<(&'static str, i64)>);
    let table: Vec<Case> = vec![
        ("nothing begun", vec![], vec![]),
        ("begun, not acked", vec![Begin("a", 10)], vec![]),
        ("one acked", vec![Begin("a", 10), Ack(0)], vec![("a", 10)]),
        (
            "in order",
            vec![Begin("a", 10), Begin("a", 20), Ack(0), Ack(1)],
            vec![("a", 20)],
        ),
        (
            "a later ack waits for the earlier message",
            vec![Begin("a", 10), Begin("a", 20), Ack(1)],
            vec![],
        ),
        (
            "then both pass at once",
            vec![Begin("a", 10), Begin("a", 20), Ack(1), Ack(0)],
            vec![("a", 20)],
        ),
        (
            "a hole in the middle holds the rest back",
            vec![
                Begin("a", 10),
                Begin("a", 20),
                Begin("a", 30),
                Begin("a", 40),
                Ack(0),
                Ack(2),
                Ack(3),
            ],
            vec![("a", 10)],
        ),
        (
            "abandoned counts as done",
            vec![Begin("a", 10), Begin("a", 20), Abandon(0), Ack(1)],
            vec![("a", 20)],
        ),
        (
            "the last message abandoned",
            vec![Begin("a", 10), Begin("a", 20), Ack(0), Abandon(1)],
            vec![("a", 20)],
        ),
        (
            "channels do not hold each other back",
            vec![
                Begin("a", 10),
                Begin("b", 5),
                Begin("a", 11),
                Ack(1),
                Ack(2),
            ],
            vec![("b", 5)],
        ),
        (
            "interleaved channels",
            vec![
                Begin("a", 100),
                Begin("b", 7),
                Begin("a", 140),
                Begin("b", 9),
                Begin("c", 1),
                Ack(3),
                Ack(0),
                Ack(4),
                Ack(1),
            ],
            vec![("a", 100), ("b", 9), ("c", 1)],
        ),
        (
            "ids are opaque: receive order wins over numeric order",
            vec![Begin("a", 500), Begin("a", 20), Ack(1), Ack(0)],
            vec![("a", 20)],
        ),
        (
            "a redelivered older event moves the checkpoint back",
            vec![Begin("a", 10), Ack(0), Begin("a", 9), Ack(1)],
            vec![("a", 9)],
        ),
        (
            "the same id again is not a change",
            vec![Begin("a", 10), Ack(0), Begin("a", 10), Ack(1)],
            vec![("a", 10)],
        ),
        (
            "begun after an ack, acked out of order",
            vec![
                Begin("a", 1),
                Ack(0),
                Begin("a", 2),
                Begin("a", 3),
                Ack(2),
                Ack(1),
            ],
            vec![("a", 3)],
        ),
    ];
    for (case, steps, expected) in table {
        let store = run_script(&steps);
        let expected: BTreeMap<String, i64> = expected
            .into_iter()
            .map(|(c, id)| (c.to_owned(), id))
            .collect();
        assert_eq!(store.all(), expected, "{case}");
    }
}

/// Every permutation of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            out.push(p);
        }
    }
    out
}

#[test]
fn every_ack_order_of_five_messages_matches_the_model() {
    let ids = [3, 17, 18, 40, 41];
    for order in permutations(ids.len()) {
        let mut steps: Vec<Step> = ids.iter().map(|&id| Begin("a", id)).collect();
        steps.extend(order.iter().map(|&n| Ack(n)));
        let store = run_script(&steps);
        assert_eq!(store.get("a"), Some(41), "{order:?}");
        assert_eq!(store.in_flight("a"), 0, "{order:?}");
    }
}

#[test]
fn every_interleaving_of_two_channels_matches_the_model() {
    // Tickets 0..3 on "a", 3..6 on "b"; begins interleaved, acks in every order, some
    // abandoned.
    let begins = [
        Begin("a", 1),
        Begin("b", 901),
        Begin("a", 2),
        Begin("b", 950),
        Begin("b", 951),
        Begin("a", 7),
    ];
    for order in permutations(begins.len()) {
        let mut steps = begins.to_vec();
        steps.extend(
            order
                .iter()
                .map(|&n| if n % 2 == 0 { Ack(n) } else { Abandon(n) }),
        );
        let store = run_script(&steps);
        assert_eq!(
            store.all(),
            BTreeMap::from([("a".to_owned(), 7), ("b".to_owned(), 951)]),
            "{order:?}"
        );
    }
}

#[test]
fn in_flight_counts_messages_the_checkpoint_has_not_passed() {
    let dir = TestDir::new("in-flight");
    let mut store = open(&dir);
    let first = store.begin("a", 1);
    let second = store.begin("a", 2);
    assert_eq!(store.in_flight("a"), 2);
    assert_eq!(store.ack(second), None);
    assert_eq!(store.in_flight("a"), 2, "done, but behind the first");
    assert_eq!(
        store.ack(first),
        Some(Advance {
            channel: Arc::from("a"),
            replay_id: 2
        })
    );
    assert_eq!(store.in_flight("a"), 0);
    assert_eq!(store.in_flight("never"), 0);
}

#[test]
fn checkpoints_survive_a_reopen() {
    let dir = TestDir::new("round-trip");
    let mut store = open(&dir);
    advance(&mut store, "/event/Order__e", 4711);
    advance(&mut store, "/data/AccountChangeEvent", 12);
    advance(&mut store, "/event/Order__e", 4790);
    store.flush().unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.all(),
        BTreeMap::from([
            ("/data/AccountChangeEvent".to_owned(), 12),
            ("/event/Order__e".to_owned(), 4790),
        ])
    );
    assert!(!store.dirty());
}

#[test]
fn the_file_has_the_documented_format() {
    let dir = TestDir::new("format");
    let mut store = open(&dir);
    advance(&mut store, "/event/Foo", 4711);
    store.flush().unwrap();
    let json = file_json(&dir);
    assert_eq!(json["version"], json!(1));
    assert_eq!(json["channels"]["/event/Foo"]["replay_id"], json!(4711));
    let updated = json["channels"]["/event/Foo"]["updated"].as_str().unwrap();
    let updated: u64 = updated.parse().unwrap();
    assert!(updated.abs_diff(unix_now()) < 60, "{updated}");
    assert_eq!(json.as_object().unwrap().len(), 2);
}

#[test]
fn a_hand_written_file_loads() {
    let dir = TestDir::new("hand-written");
    fs::create_dir_all(dir.path()).unwrap();
    let text = r#"{"version":1,"channels":{
        "/event/Foo":{"replay_id":4711,"updated":"1718000000"},
        "/event/Bar":{"replay_id":-2,"updated":1718000001},
        "/event/Baz":{"replay_id":9}}}"#;
    fs::write(dir.file(), text).unwrap();
    let store = open(&dir);
    assert_eq!(store.get("/event/Foo"), Some(4711));
    assert_eq!(store.get("/event/Bar"), Some(-2));
    assert_eq!(store.get("/event/Baz"), Some(9));
}

#[test]
fn channel_keys_are_stored_exactly_as_given() {
    let dir = TestDir::new("keys");
    let mut store = open(&dir);
    let channels = [
        "/topic/Orders?Status=Open",
        "/topic/Orders",
        "/event/Trailing/",
        "/event/ümlaut \"quoted\" \\ back\tslash",
        "",
    ];
    for (n, channel) in channels.iter().enumerate() {
        advance(&mut store, channel, n as i64);
    }
    store.flush().unwrap();
    drop(store);
    let store = open(&dir);
    let expected: BTreeMap<String, i64> = channels
        .iter()
        .enumerate()
        .map(|(n, c)| ((*c).to_owned(), n as i64))
        .collect();
    assert_eq!(store.all(), expected);
    assert_eq!(store.get("/topic/Orders?Status=Closed"), None);
}

#[test]
fn a_missing_directory_is_created_private() {
    let dir = TestDir::new("create");
    let nested = dir.path().join("state").join("bridge");
    let mut store = CheckpointStore::open(&nested).unwrap();
    assert!(nested.is_dir());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&nested).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    assert_eq!(store.all(), BTreeMap::new());
    assert!(!nested.join(FILE_NAME).exists(), "opening writes nothing");
    advance(&mut store, "/event/Foo", 1);
    store.flush().unwrap();
    assert!(nested.join(FILE_NAME).is_file());
}

#[test]
fn a_corrupt_file_is_refused_with_its_path_and_the_problem() {
    // (content, part of the error)
    let table = [
        ("", "empty"),
        ("  \n", "empty"),
        ("not json", "line 1 column"),
        (r#"{"version":1,"channels":{"/a":{"replay_id":4"#, "EOF"),
        (r#"{"channels":{}}"#, "version"),
        (r#"{"version":2,"channels":{}}"#, "unsupported version 2"),
        (r#"{"version":"1","channels":{}}"#, "line 1 column"),
        (r#"{"version":1}"#, "channels"),
        (r#"{"version":1,"channels":[]}"#, "line 1 column"),
        (r#"{"version":1,"channels":{"/a":{}}}"#, "replay_id"),
        (
            r#"{"version":1,"channels":{"/a":{"replay_id":"4711"}}}"#,
            "line 1",
        ),
        (
            r#"{"version":1,"channels":{"/a":{"replay_id":4.5}}}"#,
            "line 1",
        ),
        (
            r#"{"version":1,"channels":{"/a":{"replayId":4711}}}"#,
            "replayId",
        ),
        (r#"{"version":1,"channels":{},"extra":true}"#, "extra"),
        (
            r#"{"version":1,"channels":{"/a":{"replay_id":1,"updated":"yesterday"}}}"#,
            "updated",
        ),
        ("[1]", "line 1"),
    ];
    for (content, expected) in table {
        let dir = TestDir::new("corrupt");
        fs::create_dir_all(dir.path()).unwrap();
        fs::write(dir.file(), content).unwrap();
        let error = CheckpointStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&error, CheckpointError::Corrupt { path, .. } if *path == dir.file()),
            "{content:?}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(FILE_NAME), "{content:?}: {message}");
        assert!(message.contains(expected), "{content:?}: {message}");
        assert_eq!(
            fs::read_to_string(dir.file()).unwrap(),
            content,
            "a refused file is left alone"
        );
    }
}

#[test]
fn an_unreadable_file_is_an_error() {
    let dir = TestDir::new("unreadable");
    fs::create_dir_all(dir.file()).unwrap();
    let error = CheckpointStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(&error, CheckpointError::Read { path, .. } if *path == dir.file()),
        "{error:?}"
    );
}

#[test]
fn a_directory_that_is_a_file_is_an_error() {
    let dir = TestDir::new("not-a-dir");
    fs::create_dir_all(dir.path()).unwrap();
    let path = dir.path().join("state");
    fs::write(&path, "").unwrap();
    let error = CheckpointStore::open(&path).unwrap_err();
    assert!(
        matches!(&error, CheckpointError::Dir { path: p, .. } if *p == path),
        "{error:?}"
    );
}

#[test]
fn a_leftover_temp_file_is_ignored_and_removed() {
    let dir = TestDir::new("leftover");
    let mut store = open(&dir);
    advance(&mut store, "/event/Foo", 10);
    store.flush().unwrap();
    drop(store);
    // A flush killed before its rename: a half-written temporary file.
    fs::write(
        dir.temp(),
        r#"{"version":1,"channels":{"/event/Foo":{"repl"#,
    )
    .unwrap();
    let store = open(&dir);
    assert_eq!(store.get("/event/Foo"), Some(10));
    assert!(!dir.temp().exists());
}

#[test]
fn a_failed_write_leaves_the_old_file_intact_and_the_store_dirty() {
    let dir = TestDir::new("atomic");
    let mut store = open(&dir);
    advance(&mut store, "/event/Foo", 10);
    store.flush().unwrap();
    let before = fs::read(dir.file()).unwrap();
    // The temporary file cannot be created: its path is a directory.
    fs::create_dir(dir.temp()).unwrap();
    advance(&mut store, "/event/Foo", 11);
    let error = store.flush().unwrap_err();
    assert!(
        matches!(&error, CheckpointError::Write { path, .. } if *path == dir.temp()),
        "{error:?}"
    );
    assert!(error.to_string().contains(TEMP_FILE_NAME), "{error}");
    assert_eq!(fs::read(dir.file()).unwrap(), before);
    assert!(store.dirty(), "the failed flush is retried later");
    assert!(dir.temp().is_dir(), "a directory is never removed");
    // Once the obstacle is gone the next flush succeeds.
    fs::remove_dir(dir.temp()).unwrap();
    store.flush().unwrap();
    assert!(!store.dirty());
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(11));
}

#[test]
fn flush_writes_only_when_dirty() {
    let dir = TestDir::new("dirty");
    let mut store = open(&dir);
    assert!(!store.dirty());
    store.flush().unwrap();
    assert!(!dir.file().exists(), "a clean store writes nothing");
    let ticket = store.begin("/event/Foo", 1);
    assert!(!store.dirty(), "begun is not a change");
    store.ack(ticket);
    assert!(store.dirty());
    store.flush().unwrap();
    assert!(!store.dirty());
    // A second flush does not write: the removed file stays removed.
    fs::remove_file(dir.file()).unwrap();
    store.flush().unwrap();
    assert!(!dir.file().exists());
    // An ack that does not move the checkpoint is not a change either.
    let first = store.begin("/event/Foo", 2);
    let second = store.begin("/event/Foo", 3);
    store.ack(second);
    assert!(!store.dirty());
    store.ack(first);
    assert!(store.dirty());
    assert_eq!(store.remove("/event/Foo"), Some(3));
    assert!(store.dirty(), "a removal is a change");
    assert_eq!(store.remove("/event/Foo"), None);
}

#[test]
fn flush_if_due_writes_at_most_once_per_interval() {
    let dir = TestDir::new("due");
    let mut store = open(&dir);
    let interval = Duration::from_secs(1);
    let t0 = Instant::now();
    assert!(!store.flush_if_due(t0, interval).unwrap(), "clean");
    advance(&mut store, "/event/Foo", 1);
    assert!(
        store.flush_if_due(t0, interval).unwrap(),
        "the first is due"
    );
    advance(&mut store, "/event/Foo", 2);
    let half = t0 + interval / 2;
    assert!(!store.flush_if_due(half, interval).unwrap(), "too soon");
    assert!(store.dirty());
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(1));
    assert!(store.flush_if_due(t0 + interval, interval).unwrap());
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(2));
    // A failed attempt counts too: no retry on every call while the disk is unhappy.
    fs::create_dir(dir.temp()).unwrap();
    advance(&mut store, "/event/Foo", 3);
    let t2 = t0 + 2 * interval;
    assert!(store.flush_if_due(t2, interval).is_err());
    assert!(!store.flush_if_due(t2 + interval / 2, interval).unwrap());
    fs::remove_dir(dir.temp()).unwrap();
    assert!(store.flush_if_due(t2 + interval, interval).unwrap());
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(3));
}

#[test]
fn a_snapshot_written_outside_the_store_marks_only_what_it_holds() {
    let dir = TestDir::new("snapshot");
    let mut store = open(&dir);
    assert!(store.snapshot().is_none());
    advance(&mut store, "/event/Foo", 1);
    let snapshot = store.snapshot().unwrap();
    // An advance while the snapshot is being written.
    advance(&mut store, "/event/Foo", 2);
    snapshot.write().unwrap();
    store.flushed(snapshot);
    assert!(store.dirty(), "the later advance is not on disk yet");
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(1));
    store.flush().unwrap();
    assert!(!store.dirty());
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(2));
}

#[test]
fn checkpoints_are_visible_before_they_are_flushed() {
    let dir = TestDir::new("memory");
    let mut store = open(&dir);
    advance(&mut store, "/event/Foo", 7);
    assert_eq!(store.all(), BTreeMap::from([("/event/Foo".to_owned(), 7)]));
    drop(store);
    assert_eq!(
        on_disk(&dir).get("/event/Foo").copied(),
        None,
        "never flushed"
    );
}

/// Issue 14, item 13: a symlink planted at the temporary path is not followed (its target
/// keeps its content; before, the flush wrote the checkpoints through it), and the files
/// written are mode 0600.
#[cfg(unix)]
#[test]
fn a_symlink_at_the_temporary_path_is_not_followed_and_files_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("symlink");
    let mut store = open(&dir);
    let target = dir.path().join("victim");
    fs::write(&target, "precious").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&target, dir.temp()).unwrap();
    advance(&mut store, "/event/Foo", 10);
    store.flush().unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o644,
        "the link's target keeps its mode"
    );
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(10));
    let file = fs::symlink_metadata(dir.file()).unwrap();
    assert!(file.file_type().is_file(), "the checkpoint file is no link");
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    assert!(fs::symlink_metadata(dir.temp()).is_err(), "renamed away");

    // The same with a dangling link (a write through it would create its target).
    let dangling = dir.path().join("created-through-the-link");
    std::os::unix::fs::symlink(&dangling, dir.temp()).unwrap();
    advance(&mut store, "/event/Foo", 11);
    store.flush().unwrap();
    assert!(!dangling.exists(), "nothing was created through the link");
    assert_eq!(on_disk(&dir).get("/event/Foo").copied(), Some(11));
    assert_eq!(
        fs::metadata(dir.file()).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Issue 14, item 2: however many channels the store is given, it keeps at most
/// `MAX_CHECKPOINTS` (it used to keep one per channel name for ever).
#[test]
fn the_store_stays_bounded_however_many_channels_it_is_given() {
    let dir = TestDir::new("bounded");
    let mut store = open(&dir);
    for n in 0..MAX_CHECKPOINTS + 500 {
        advance(&mut store, &format!("/event/E{n}"), n as i64);
    }
    assert_eq!(store.all().len(), MAX_CHECKPOINTS);
    let last = format!("/event/E{}", MAX_CHECKPOINTS + 499);
    assert_eq!(store.get(&last), Some((MAX_CHECKPOINTS + 499) as i64));
    store.flush().unwrap();
    assert_eq!(on_disk(&dir).len(), MAX_CHECKPOINTS);
}

/// A file written before checkpoints were keyed by subscription (one entry per delivered
/// channel, possibly thousands under a wildcard route) still loads in full; `prune` then
/// forgets the least recently advanced entries of channels nothing subscribes to, down to the
/// bound, and never a subscribed one.
#[test]
fn an_old_file_keyed_by_delivered_channels_loads_and_is_pruned_to_the_bound() {
    let dir = TestDir::new("migrate");
    fs::create_dir_all(dir.path()).unwrap();
    let mut channels = serde_json::Map::new();
    for n in 0..1500u64 {
        channels.insert(
            format!("/event/E{n}"),
            json!({"replay_id": n, "updated": (n + 10).to_string()}),
        );
    }
    channels.insert(
        "/event/Subscribed".to_owned(),
        json!({"replay_id": 7, "updated": "1"}),
    );
    let text = json!({"version": 1, "channels": channels}).to_string();
    fs::write(dir.file(), text).unwrap();
    let mut store = open(&dir);
    assert_eq!(store.len(), 1501, "the old file loads in full");
    let keep = BTreeSet::from(["/event/Subscribed".to_owned()]);
    let forgotten = store.prune(&keep, MAX_CHECKPOINTS);
    assert_eq!(forgotten.len(), 501);
    assert!(
        forgotten.iter().all(|c| c != "/event/Subscribed"),
        "a subscribed channel is kept although it is the oldest"
    );
    assert_eq!(store.get("/event/E0"), None, "the oldest go first");
    assert_eq!(store.get("/event/E1499"), Some(1499));
    assert_eq!(store.get("/event/Subscribed"), Some(7));
    assert_eq!(store.len(), MAX_CHECKPOINTS);
    assert!(store.dirty());
    store.flush().unwrap();
    assert_eq!(on_disk(&dir).len(), MAX_CHECKPOINTS);
    assert!(store.prune(&keep, MAX_CHECKPOINTS).is_empty());
}
