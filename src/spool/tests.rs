use super::*;

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;

/// A directory under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "bmb-spool-{label}-{}-{n}-{}",
            std::process::id(),
            nanos_now()
        ));
        Scratch(path)
    }
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry {i:06} {}", "x".repeat((i % 50) as usize)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn appends_get_consecutive_numbers_and_read_back_in_order() {
    let dir = Scratch::new("order");
    runtime().block_on(async {
        let spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let queue = spool.queue("b2m").unwrap();
        let first = queue.append((0..3).map(entry).collect()).await.unwrap();
        let second = queue.append((3..5).map(entry).collect()).await.unwrap();
        assert_eq!(first, [1, 2, 3]);
        assert_eq!(second, [4, 5]);
        let read = queue.read_from(0, 10).unwrap();
        let seqs: Vec<u64> = read.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        for (i, e) in read.iter().enumerate() {
            assert_eq!(e.data, entry(i as u64));
        }
        assert_eq!(queue.read_from(4, 1).unwrap()[0].seq, 4);
        assert!(queue.read_from(6, 10).unwrap().is_empty());
        let stats = queue.stats();
        assert_eq!(stats.entries, 5);
        let logical: u64 = (0..5).map(|i| entry(i).len() as u64).sum();
        assert_eq!(stats.written_bytes, logical);
        assert_eq!(stats.bytes, logical + 5 * ENTRY_OVERHEAD);
        assert_eq!(spool.used_bytes(), stats.bytes);
        assert!(stats.oldest.is_some());
        assert_eq!(stats.commits, 2);
        queue.close().await;
        assert_eq!(spool.used_bytes(), 0);
        assert!(matches!(
            queue.append(vec![entry(9)]).await,
            Err(SpoolError::Closed)
        ));
        assert!(matches!(queue.read_from(0, 1), Err(SpoolError::Closed)));
        queue.close().await;
    });
}

#[test]
fn numbers_continue_after_reopening_even_when_emptied() {
    let dir = Scratch::new("reopen");
    let rt = runtime();
    rt.block_on(async {
        let spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let queue = spool.queue("q").unwrap();
        assert_eq!(
            queue.append((0..4).map(entry).collect()).await.unwrap(),
            [1, 2, 3, 4]
        );
        queue.close().await;

        let queue = spool.queue("q").unwrap();
        assert_eq!(queue.stats().entries, 4);
        assert_eq!(queue.append(vec![entry(4)]).await.unwrap(), [5]);
        for seq in 1..=5 {
            queue.remove(seq);
        }
        queue.close().await;

        let queue = spool.queue("q").unwrap();
        assert_eq!(queue.stats().entries, 0);
        assert_eq!(queue.append(vec![entry(5)]).await.unwrap(), [6]);
        queue.close().await;
    });
}

#[test]
fn concurrent_appends_share_commits_and_are_all_durable() {
    let dir = Scratch::new("group");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spool = Spool::open(&dir.0, 1 << 24).unwrap();
        let queue = spool.queue("q").unwrap();
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let queue = queue.clone();
                tokio::spawn(async move { (i, queue.append(vec![entry(i), entry(i)]).await) })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            let (i, seqs) = task.await.unwrap();
            let seqs = seqs.unwrap();
            assert_eq!(seqs.len(), 2);
            assert_eq!(seqs[1], seqs[0] + 1, "a batch's numbers are consecutive");
            all.push((seqs[0], i));
        }
        let commits = queue.stats().commits;
        assert!(commits < 200, "{commits} commits for 200 appends");
        queue.close().await;

        let queue = spool.queue("q").unwrap();
        let read = queue.read_from(0, 1000).unwrap();
        assert_eq!(read.len(), 400);
        for (first, i) in all {
            let at = usize::try_from(first - 1).unwrap();
            assert_eq!(read[at].data, entry(i));
            assert_eq!(read[at + 1].data, entry(i));
        }
        queue.close().await;
    });
}

#[test]
fn a_batch_over_the_budget_writes_nothing_and_fits_after_removals() {
    let dir = Scratch::new("full");
    runtime().block_on(async {
        let max = 10 * (100 + ENTRY_OVERHEAD);
        let spool = Spool::open(&dir.0, max).unwrap();
        let queue = spool.queue("q").unwrap();
        let other = spool.queue("other").unwrap();
        let blob = Bytes::from(vec![7u8; 100]);
        let seqs = queue.append(vec![blob.clone(); 8]).await.unwrap();
        let err = other.append(vec![blob.clone(); 3]).await.unwrap_err();
        let SpoolError::Full {
            needed,
            used,
            max: m,
        } = err
        else {
            panic!("{err}");
        };
        assert_eq!(
            (needed, used, m),
            (3 * (100 + ENTRY_OVERHEAD), 8 * (100 + ENTRY_OVERHEAD), max)
        );
        assert!(other.read_from(0, 10).unwrap().is_empty());
        assert_eq!(other.stats().commits, 0);

        // Room freed in one queue wakes a writer waiting on another.
        let room = other.changed();
        queue.remove(seqs[0]);
        queue.remove(seqs[1]);
        tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .unwrap();
        assert_eq!(spool.used_bytes(), 6 * (100 + ENTRY_OVERHEAD));
        assert_eq!(queue.stats().entries, 6);
        other.append(vec![blob.clone(); 3]).await.unwrap();
        assert_eq!(spool.used_bytes(), max - (100 + ENTRY_OVERHEAD));
        queue.close().await;
        other.close().await;
    });
}

#[test]
fn changed_resolves_on_an_append_made_after_the_call() {
    let dir = Scratch::new("changed");
    runtime().block_on(async {
        let spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let queue = spool.queue("q").unwrap();
        let changed = queue.changed();
        let writer = queue.clone();
        tokio::spawn(async move { writer.append(vec![entry(1)]).await });
        tokio::time::timeout(std::time::Duration::from_secs(5), changed)
            .await
            .unwrap();
        queue.close().await;
    });
}

#[test]
fn removals_committed_by_close_survive_reopening() {
    let dir = Scratch::new("remove");
    runtime().block_on(async {
        let spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let queue = spool.queue("q").unwrap();
        queue.append((0..10).map(entry).collect()).await.unwrap();
        let commits = queue.stats().commits;
        for seq in [1, 2, 3, 7] {
            queue.remove(seq);
        }
        // Closed at once, well within REMOVE_DELAY: close commits them.
        queue.close().await;
        let queue = spool.queue("q").unwrap();
        let seqs: Vec<u64> = queue
            .read_from(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [4, 5, 6, 8, 9, 10]);
        assert_eq!(spool.used_bytes(), queue.stats().bytes);
        queue.close().await;
        assert!(commits >= 1);
    });
}

#[test]
fn removals_alone_are_committed_after_a_short_delay_in_one_commit() {
    let dir = Scratch::new("delay");
    runtime().block_on(async {
        let spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let queue = spool.queue("q").unwrap();
        queue.append((0..10).map(entry).collect()).await.unwrap();
        let freed = queue.changed();
        for seq in 1..=10 {
            queue.remove(seq);
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), freed)
            .await
            .unwrap();
        let stats = queue.stats();
        assert_eq!((stats.entries, stats.bytes, stats.oldest), (0, 0, None));
        assert_eq!(stats.commits, 2, "ten removals, one commit");
        assert_eq!(spool.used_bytes(), 0);
        queue.close().await;
    });
}

fn filled_file(dir: &Path, entries: u64) -> PathBuf {
    runtime().block_on(async {
        let spool = Spool::open(dir, 1 << 26).unwrap();
        let queue = spool.queue("q").unwrap();
        for chunk in 0..entries / 100 {
            let batch = (chunk * 100..chunk * 100 + 100)
                .map(|i| Bytes::from(format!("{i:08}").repeat(25)))
                .collect();
            queue.append(batch).await.unwrap();
        }
        let file = queue.file().to_owned();
        queue.close().await;
        file
    })
}

fn overwrite(file: &Path, at: u64, len: usize) {
    let mut f = fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&vec![0xA5; len]).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_damaged_middle_is_reported_as_corrupt_naming_the_file() {
    let dir = Scratch::new("corrupt-middle");
    let file = filled_file(&dir.0, 2000);
    let len = fs::metadata(&file).unwrap().len();
    overwrite(&file, len / 2, 64 * 1024);
    let spool = Spool::open(&dir.0, 1 << 26).unwrap();
    let err = spool.queue("q").unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains(RECOVER_COMMAND), "{text}");
}

#[test]
fn a_damaged_header_is_reported_as_corrupt() {
    let dir = Scratch::new("corrupt-header");
    let file = filled_file(&dir.0, 100);
    overwrite(&file, 0, 512);
    let spool = Spool::open(&dir.0, 1 << 26).unwrap();
    let err = spool.queue("q").unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
}

#[test]
fn another_format_version_is_incompatible() {
    let dir = Scratch::new("version");
    let file = filled_file(&dir.0, 100);
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(format::META)
            .unwrap()
            .insert(format::META_VERSION, 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let spool = Spool::open(&dir.0, 1 << 26).unwrap();
    let err = spool.queue("q").unwrap_err();
    let SpoolError::Incompatible {
        found_version,
        supported_version,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((*found_version, *supported_version), (99, FORMAT_VERSION));
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains(RECOVER_COMMAND), "{text}");
}

#[test]
fn recover_moves_damaged_files_aside_and_leaves_healthy_ones() {
    let dir = Scratch::new("recover");
    let file = filled_file(&dir.0, 200);
    let healthy = dir.0.join("healthy.redb");
    fs::copy(&file, &healthy).unwrap();
    overwrite(&file, 0, 512);
    let report = recover(&dir.0).unwrap();
    assert_eq!(report.len(), 2);
    assert_eq!(report[0].file, healthy);
    assert_eq!(report[0].outcome, Recovery::Healthy { entries: 200 });
    assert_eq!(report[1].file, file);
    let Recovery::MovedAside {
        to,
        readable_entries,
        ..
    } = &report[1].outcome
    else {
        panic!("{:?}", report[1]);
    };
    assert_eq!(*readable_entries, 0);
    assert!(to.to_string_lossy().contains("q.redb.damaged-"), "{to:?}");
    assert!(to.is_file() && !file.exists());
    assert!(
        report[1]
            .to_string()
            .contains("0 entries could still be read")
    );
    // Now the queue opens empty.
    let spool = Spool::open(&dir.0, 1 << 26).unwrap();
    assert_eq!(spool.queue("q").unwrap().stats().entries, 0);
    assert!(recover(&dir.0.join("absent")).unwrap().is_empty());
}

#[test]
fn queue_names_must_be_plain_file_names() {
    let dir = Scratch::new("names");
    let spool = Spool::open(&dir.0, 1 << 20).unwrap();
    for bad in ["", "../x", ".hidden", "a/b", "a b", &"n".repeat(101)] {
        assert!(
            matches!(spool.queue(bad), Err(SpoolError::InvalidName { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn the_directory_is_created_private_and_probed() {
    let dir = Scratch::new("probe");
    let nested = dir.0.join("a/b");
    probe_dir(&nested).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&nested).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    assert_eq!(
        fs::read_dir(&nested).unwrap().count(),
        0,
        "the probe is removed"
    );
    let file = dir.0.join("file");
    fs::write(&file, "").unwrap();
    let err = probe_dir(&file.join("spool")).unwrap_err();
    assert!(matches!(err, SpoolError::Io { .. }), "{err:?}");
}

/// The child of the crash test: appends from several tasks and prints every batch whose
/// append resolved, until it is killed.
fn crash_child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spool = Spool::open(dir, 1 << 30).unwrap();
        let queue = spool.queue("q").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for task in 0..4u64 {
            let (queue, tx) = (queue.clone(), tx.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let id = task * 1_000_000 + n;
                    let batch = (0..8).map(|k| Bytes::from(format!("{id}:{k}"))).collect();
                    let seqs = queue.append(batch).await.unwrap();
                    if tx.send((id, seqs[0])).is_err() {
                        return;
                    }
                }
            });
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut out = std::io::stdout().lock();
        while let Ok(Some((id, first))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            writeln!(out, "acked {id} {first}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn appends_that_resolved_survive_a_sigkill_in_the_middle_of_writes() {
    if let Some(dir) = std::env::var_os("BMB_SPOOL_CRASH_CHILD") {
        crash_child(Path::new(&dir));
        return;
    }
    let dir = Scratch::new("crash");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::tests::appends_that_resolved_survive_a_sigkill_in_the_middle_of_writes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BMB_SPOOL_CRASH_CHILD", &dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("acked ") else {
            continue;
        };
        let (id, first) = rest.split_once(' ').unwrap();
        acked.push((id.parse::<u64>().unwrap(), first.parse::<u64>().unwrap()));
        if acked.len() >= 300 {
            break;
        }
    }
    // SIGKILL, with appends still being written.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acked.len(), 300, "the child stopped early");

    let spool = Spool::open(&dir.0, 1 << 30).unwrap();
    let queue = spool.queue("q").unwrap();
    let read = queue.read_from(0, usize::MAX).unwrap();
    let seqs: Vec<u64> = read.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps"
    );
    for (id, first) in acked {
        for k in 0..8u64 {
            let at = usize::try_from(first - 1 + k).unwrap();
            assert_eq!(read[at].seq, first + k);
            assert_eq!(read[at].data, Bytes::from(format!("{id}:{k}")));
        }
    }
    runtime().block_on(queue.close());
}
