// Shared helpers of the bench tools: argument parsing, the clock, the bench message, and
// the arrival statistics every counter reports.
import { performance } from 'node:perf_hooks';

/** Wall-clock time in whole microseconds (sub-millisecond, comparable across processes). */
export function nowUs() {
    return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** CPU time (user + system) this process has used so far, in seconds. */
export function cpuSeconds() {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1e6;
}

/**
 * Parses `--name value` pairs into an object, converting to the types of `defaults`
 * (numbers, booleans as flags, strings). Unknown options are an error.
 */
export function parseArgs(argv, defaults, usage) {
    const options = { ...defaults };
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        if (arg === '-h' || arg === '--help') {
            process.stderr.write(usage + '\n');
            process.exit(0);
        }
        const key = arg.replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
        if (!arg.startsWith('--') || !(key in defaults)) {
            fail(`unknown argument ${JSON.stringify(arg)}\n${usage}`, 2);
        }
        if (typeof defaults[key] === 'boolean') {
            options[key] = true;
            continue;
        }
        if (i + 1 >= argv.length) {
            fail(`missing value for ${arg}`, 2);
        }
        const text = argv[++i];
        if (typeof defaults[key] === 'number') {
            const n = Number(text);
            if (!Number.isFinite(n) || n < 0) {
                fail(`${arg} needs a non-negative number, got ${JSON.stringify(text)}`, 2);
            }
            options[key] = n;
        } else {
            options[key] = text;
        }
    }
    return options;
}

export function fail(message, code = 1) {
    process.stderr.write(`${process.argv[1].split('/').pop()}: ${message}\n`);
    process.exit(code);
}

/** Writes one line on stdout (the driver reads `ready` and the final JSON summary). */
export function say(line) {
    process.stdout.write(line + '\n');
}

/**
 * How many of the next `n` messages to send now: all of them unpaced (`rate` 0), else only
 * what is due at `rate` msg/s since `startUs` with `sent` already out (0 or less: wait).
 */
export function dueNow(n, sent, startUs, rate) {
    if (rate <= 0) {
        return n;
    }
    const due = Math.floor(((nowUs() - startUs) / 1e6) * rate) + 1;
    return Math.min(n, due - sent);
}

/**
 * The bench message: `{"seq":N,"ts":MICROS,"pad":"xx…"}`, padded to exactly `size` bytes of
 * compact JSON (60 by default), so every message in a run has the same size.
 */
export function benchMessage(seq, size) {
    const ts = nowUs();
    const bare = 7 + String(seq).length + 6 + String(ts).length + 8 + 2;
    const pad = 'x'.repeat(Math.max(0, size - bare));
    return { seq, ts, pad };
}

/**
 * Records arrivals: sequence number and send timestamp of each bench message, arrival time
 * taken on receipt. Reports unique/duplicate counts, the arrival window and latency
 * percentiles.
 */
export class Arrivals {
    constructor(expected) {
        this.expected = expected;
        this.seen = new Uint8Array(expected + 1);
        this.latencies = new Float64Array(expected);
        this.unique = 0;
        this.duplicates = 0;
        this.foreign = 0;
        this.first = 0;
        this.last = 0;
    }

    /** Takes a message's data (object or JSON text); returns true once all are in. */
    add(data, arrival = nowUs()) {
        if (typeof data === 'string' || Buffer.isBuffer(data)) {
            try {
                data = JSON.parse(data);
            } catch {
                this.foreign += 1;
                return false;
            }
        }
        const seq = data && data.seq;
        if (!Number.isInteger(seq) || seq < 0 || seq >= this.expected || typeof data.ts !== 'number') {
            this.foreign += 1;
            return false;
        }
        if (this.seen[seq]) {
            this.duplicates += 1;
            return false;
        }
        this.seen[seq] = 1;
        if (this.unique === 0) {
            this.first = arrival;
        }
        this.last = arrival;
        this.latencies[this.unique] = (arrival - data.ts) / 1000;
        this.unique += 1;
        return this.unique >= this.expected;
    }

    summary(extra = {}) {
        const lat = this.latencies.slice(0, this.unique).sort();
        const pct = p => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null);
        const spanUs = this.last - this.first;
        return {
            expected: this.expected,
            received: this.unique,
            duplicates: this.duplicates,
            foreign: this.foreign,
            first_us: this.first,
            last_us: this.last,
            span_s: spanUs / 1e6,
            rate: spanUs > 0 ? this.unique / (spanUs / 1e6) : null,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: lat.length ? lat[lat.length - 1] : null,
            ...extra,
        };
    }
}

/**
 * Ends a counter: after all messages, after `idleMs` without a new one (once one arrived),
 * or at `deadlineMs` in any case. Calls `finish(reason)` once.
 */
export function watchdog(arrivals, idleMs, deadlineMs, finish) {
    let done = false;
    const end = reason => {
        if (!done) {
            done = true;
            clearInterval(timer);
            clearTimeout(deadline);
            finish(reason);
        }
    };
    const timer = setInterval(() => {
        if (arrivals.unique > 0 && nowUs() - arrivals.last > idleMs * 1000) {
            end('idle');
        }
    }, 50);
    const deadline = setTimeout(() => end('deadline'), deadlineMs);
    return end;
}

/** Exits when stdin closes, so a tool never outlives the driver that started it. */
export function exitWithParent(cleanup) {
    process.stdin.on('end', () => cleanup('stdin closed'));
    process.stdin.on('error', () => cleanup('stdin error'));
    process.stdin.resume();
    process.on('SIGTERM', () => cleanup('SIGTERM'));
    process.on('SIGINT', () => cleanup('SIGINT'));
}
