#!/usr/bin/env node
// Line counter: reads `bayeux-mqtt-bridge sub` output (one JSON message per line) on stdin
// and records each bench message's arrival, taken when its line is read.
//
//   bayeux-mqtt-bridge sub --url URL PATTERN | node line-count.js --count N [--idle MS] [--deadline S]
//
// Prints one JSON summary line (see common.js) when N messages arrived, after --idle ms
// without one, at --deadline seconds, or when stdin ends.

import { Arrivals, cpuSeconds, fail, nowUs, parseArgs, say, watchdog } from './common.js';

const usage = 'usage: node line-count.js --count N [--idle 3000] [--deadline 120]';
const o = parseArgs(process.argv.slice(2), { count: 0, idle: 3000, deadline: 120 }, usage);
if (!o.count) {
    fail(usage, 2);
}

const arrivals = new Arrivals(o.count);
const finish = watchdog(arrivals, o.idle, o.deadline * 1000, reason => {
    say(JSON.stringify(arrivals.summary({ end: reason, cpu_s: cpuSeconds() - cpu0 })));
    process.exit(0);
});
const cpu0 = cpuSeconds();
let rest = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', chunk => {
    const now = nowUs();
    const lines = (rest + chunk).split('\n');
    rest = lines.pop();
    for (const line of lines) {
        if (!line) {
            continue;
        }
        let message;
        try {
            message = JSON.parse(line);
        } catch {
            arrivals.foreign += 1;
            continue;
        }
        if (arrivals.add(message.data, now)) {
            finish('all');
            return;
        }
    }
});
process.stdin.on('end', () => finish('eof'));
process.on('SIGTERM', () => finish('SIGTERM'));
