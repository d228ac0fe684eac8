//! What the spool costs per message: appends 100 000 entries of 200 bytes in batches of 64,
//! one append at a time and then from 8 tasks at once, and prints µs per entry, commits and
//! the file's size against the logical bytes (write amplification of space).
//!
//! `cargo run --release --example spool_bench [DIR]` (default: a directory under the system's
//! temporary directory, removed afterwards). Results depend on the disk's fsync latency.

use std::path::PathBuf;
use std::time::Instant;

use bayeux_mqtt_bridge::spool::{Queue, Spool};
use bytes::Bytes;

const ENTRIES: usize = 100_000;
const SIZE: usize = 200;
const BATCH: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("bmb-spool-bench-{}", std::process::id()))
        });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let spool = Spool::open(&base, 1 << 30)?;
        for (name, tasks) in [("sequential", 1), ("concurrent-8", 8)] {
            let queue = spool.queue(name)?;
            let disk_before = disk_writes();
            let started = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| tokio::spawn(fill(queue.clone(), ENTRIES / tasks)))
                .collect();
            for handle in handles {
                handle.await??;
            }
            let elapsed = started.elapsed();
            let disk = disk_writes().saturating_sub(disk_before);
            let stats = queue.stats();
            let file = std::fs::metadata(queue.file())?.len();
            println!(
                "{name}: {} entries of {SIZE} B in batches of {BATCH}: {:.2} µs/entry, {} commits \
                 ({:.3} ms each), file {file} B for {} logical B ({:.2}x), {disk} B written to \
                 disk ({:.2}x)",
                stats.entries,
                elapsed.as_secs_f64() * 1e6 / stats.entries as f64,
                stats.commits,
                stats.commit_seconds_total * 1e3 / stats.commits as f64,
                stats.written_bytes,
                file as f64 / stats.written_bytes as f64,
                disk as f64 / stats.written_bytes as f64,
            );
            // Reopening checks every page's checksum and every entry's header.
            queue.close().await;
            let started = Instant::now();
            let queue = spool.queue(name)?;
            println!(
                "{name}: reopened (full check) in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            let started = Instant::now();
            let mut from = 0;
            loop {
                let entries = queue.read_from(from, 1024)?;
                let Some(last) = entries.last() else { break };
                from = last.seq + 1;
                for entry in &entries {
                    queue.remove(entry.seq);
                }
            }
            queue.close().await;
            println!(
                "{name}: read and removed in {:.2} µs/entry; file {} B once emptied",
                started.elapsed().as_secs_f64() * 1e6 / stats.entries as f64,
                std::fs::metadata(queue.file())?.len(),
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    if std::env::args_os().nth(1).is_none() {
        std::fs::remove_dir_all(&base)?;
    }
    Ok(())
}

async fn fill(queue: Queue, count: usize) -> Result<(), bayeux_mqtt_bridge::spool::SpoolError> {
    let payload = Bytes::from(vec![b'x'; SIZE]);
    for _ in 0..count.div_ceil(BATCH) {
        queue.append(vec![payload.clone(); BATCH]).await?;
    }
    Ok(())
}

/// Bytes this process has caused to be written to storage (Linux `/proc/self/io`; 0
/// elsewhere). Includes the page cache's write-back of our files once fsync'd.
fn disk_writes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}
