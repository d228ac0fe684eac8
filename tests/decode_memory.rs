//! Memory one reply can take once decoded (issue 14, item 7): a counting global allocator
//! measures the peak of live heap bytes while a 10 MiB body of minimal messages is decoded.
//!
//! Its own test binary, so that no other test allocates while one measures; the tests take
//! a lock so that they never measure at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bayeux_mqtt_bridge::bayeux::message::{
    DEFAULT_MAX_MESSAGES, DecodeError, Message, decode_batch, decode_batch_limited,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The peak of live heap bytes while `f` runs, above what was live when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

const TEN_MIB: usize = 10 * 1024 * 1024;

/// A body of about 10 MiB: `[` + `element,` repeated + `element]`.
fn body_of(element: &str) -> Vec<u8> {
    let n = TEN_MIB / (element.len() + 1);
    let mut body = Vec::with_capacity(TEN_MIB + element.len() + 2);
    body.push(b'[');
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(element.as_bytes());
    }
    body.push(b']');
    body
}

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn a_10_mib_reply_of_minimal_messages_is_refused_within_the_message_cap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let body = body_of(r#"{"channel":"/a"}"#);
    let count = TEN_MIB / 17;
    // Before the cap (no count limit): every message is built.
    let (all, unbounded) = peak_during(|| decode_batch_limited(&body, usize::MAX).map(|m| m.len()));
    assert_eq!(all, Ok(count));
    // With the default cap: refused, and never more than the cap's worth of messages held.
    let (refused, bounded) = peak_during(|| decode_batch(&body).map(|m| m.len()));
    assert_eq!(
        refused,
        Err(DecodeError::TooMany {
            cap: DEFAULT_MAX_MESSAGES
        })
    );
    let per_message = std::mem::size_of::<Message>();
    eprintln!(
        "10 MiB of {count} {{\"channel\":\"/a\"}}: peak {:.1} MiB without a count cap, \
         {:.1} MiB with the default cap of {DEFAULT_MAX_MESSAGES} (a Message is {per_message} bytes)",
        unbounded as f64 / MIB,
        bounded as f64 / MIB,
    );
    let budget = DEFAULT_MAX_MESSAGES * (per_message + 64);
    assert!(
        bounded <= budget,
        "decoding took {bounded} bytes at its peak, over the {budget} the cap allows"
    );
    assert!(unbounded > 4 * bounded, "{unbounded} vs {bounded}");
}

#[test]
fn a_10_mib_reply_of_empty_objects_reserves_no_more_than_the_cap_allows() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // `{}` is not a message (no channel), but the room for the batch is reserved first.
    let body = body_of("{}");
    let (before, unbounded) = peak_during(|| decode_batch_limited(&body, usize::MAX).is_err());
    let (after, bounded) = peak_during(|| decode_batch(&body).is_err());
    assert!(before && after);
    eprintln!(
        "10 MiB of {{}}: peak {:.1} MiB without a count cap, {:.1} MiB with the default cap",
        unbounded as f64 / MIB,
        bounded as f64 / MIB,
    );
    let budget = DEFAULT_MAX_MESSAGES * (std::mem::size_of::<Message>() + 64);
    assert!(bounded <= budget, "{bounded} > {budget}");
}

#[test]
fn a_reply_at_the_cap_is_decoded_and_one_past_it_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let body = br#"[{"channel":"/a"},{"channel":"/b"},{"channel":"/c"}]"#;
    assert_eq!(decode_batch_limited(body, 3).map(|m| m.len()), Ok(3));
    assert_eq!(
        decode_batch_limited(body, 2),
        Err(DecodeError::TooMany { cap: 2 })
    );
    // A bare object is one message.
    assert_eq!(
        decode_batch_limited(br#"{"channel":"/a"}"#, 1).map(|m| m.len()),
        Ok(1)
    );
}
