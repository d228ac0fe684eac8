#!/usr/bin/env node
// The benchmark driver behind scripts/bench (which installs, builds and then runs this).
//
//   node scripts/bench-node/bench.js --bin target/release/bayeux-mqtt-bridge
//        [--messages 50000] [--repeat 3] [--paced-rate 2000] [--paced-seconds 5]
//        [--bayeux-batch 50] [--bayeux-window 4] [--mosquitto-inflight N]
//        [--max-other-load 0.25] [--json FILE] [--keep]
//        [--server cometd|faye] [--transport auto|long-polling|websocket]
//
// --server picks the Bayeux server (npm cometd-nodejs-server, long-polling only, or npm
// faye, which has WebSocket too); --transport is the Bayeux transport of our bridge
// (bayeux.transport), of `sub` (--transport) and of the CometD JS clients (the direct
// subscriber and the Node.js bridge: WebSocket with `websocket`, and with `auto` on Faye).
// The WebSocket mode is `--server faye --transport websocket`; its long-polling figures on
// the same server come from `--server faye --transport long-polling`.
//
// It starts a local Bayeux server (tests/peers/server.js) and a
// local Mosquitto (defaults, except that no per-client queue limit drops messages) on free
// 127.0.0.1 ports, then runs each scenario --repeat times, round-robin (so that drift in the
// machine's load spreads over all of them):
//
//   direct   Bayeux → Bayeux: bayeux-pub.js → server → a CometD JS subscriber, and the same
//            into `bayeux-mqtt-bridge sub` (what a subscriber gets from the server alone)
//   mqtt     MQTT → MQTT: mqtt-pub.js → Mosquitto → mqtt-count.js (the broker alone)
//   b2m      Bayeux → MQTT through the bridge (QoS 0 and 1): bayeux-pub.js → server →
//            bridge → Mosquitto → mqtt-count.js
//   node     the same through bridge.js (the Node.js baseline bridge: CometD JS + mqtt.js)
//   m2b      MQTT → Bayeux through the bridge (QoS 0 and 1): mqtt-pub.js → Mosquitto →
//            bridge → server → CometD JS subscriber
//
// The generators send N messages of 60-byte JSON ({"seq","ts","pad"}) as fast as the server
// or broker takes them (bayeux-pub.js: --bayeux-batch publishes per request, --bayeux-window
// requests in flight); the counters take the arrival time of each, so that throughput is
// N / (last arrival − first arrival) and latency is arrival − send time (one clock).
//
// Every bridge run starts a fresh bridge process, so its CPU time (utime + stime from
// /proc/PID/stat, taken just before the generator starts and after the last message
// arrived) and its peak RSS (VmHWM, reset through /proc/PID/clear_refs) belong to that run.
// The CPU time of the server, Mosquitto, the generator and the counter is recorded too, and
// so is the CPU that other processes on the machine took: a run during which they took
// more than --max-other-load cores is run again (twice at most). Then each path runs once
// more at a fixed, moderate rate (--paced-rate) for latency without queueing.
//
// Prints markdown tables on stdout; progress goes to stderr. Every wait is bounded, every
// process it starts is stopped on exit, and all traffic stays on 127.0.0.1.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fail, parseArgs } from './common.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const usage = 'usage: node bench.js --bin PATH [--messages 50000] [--repeat 3] [--paced-rate 2000] ' +
    '[--paced-seconds 5] [--bayeux-batch 50] [--bayeux-window 4] [--mosquitto-inflight 0] ' +
    '[--max-other-load 0.25] [--only KEY,KEY…] [--routes N] [--json FILE] [--keep] ' +
    '[--server cometd|faye] [--transport auto|long-polling|websocket]';
const o = parseArgs(process.argv.slice(2), {
    bin: '', messages: 50000, repeat: 3, pacedRate: 2000, pacedSeconds: 5, mosquittoInflight: 0,
    json: '', keep: false, pidFile: '', work: '', maxOtherLoad: 0.25, bayeuxBatch: 50, bayeuxWindow: 4,
    only: '', routes: 0, server: 'cometd', transport: 'auto',
}, usage);
if (!o.bin) {
    fail(usage, 2);
}
if (!['cometd', 'faye'].includes(o.server)) {
    fail(`--server must be cometd or faye, got ${JSON.stringify(o.server)}`, 2);
}
if (!['auto', 'long-polling', 'websocket'].includes(o.transport)) {
    fail(`--transport must be auto, long-polling or websocket, got ${JSON.stringify(o.transport)}`, 2);
}
if (o.server === 'cometd' && o.transport === 'websocket') {
    fail('--transport websocket needs --server faye (the CometD Node server has long-polling only)', 2);
}
// What the CometD JS clients (direct subscriber, Node.js bridge) use: what our bridge gets.
const jsTransport = o.server === 'faye' && o.transport !== 'long-polling' ? 'websocket' : 'long-polling';
const bin = path.resolve(o.bin);
// Config files and logs; scripts/bench passes a directory it removes even if we are killed.
const work = o.work ? path.resolve(o.work) : fs.mkdtempSync(path.join(os.tmpdir(), 'bench-'));
const CLK_TCK = 100; // USER_HZ: the unit of /proc/PID/stat times on Linux.

const log = message => process.stderr.write(`bench: ${message}\n`);
const sleep = ms => new Promise(r => setTimeout(r, ms));

// ---------------------------------------------------------------- processes

const children = new Set();

/** Keeps --pid-file listing the processes running now (scripts/bench stops them if we die). */
function writePids() {
    if (o.pidFile) {
        fs.writeFileSync(o.pidFile, [...children].map(c => `${c.pid}\n`).join(''));
    }
}

/**
 * Starts a process: stdout is read line by line (unless `stdout` hands it to another
 * process), stderr goes to a file in the work dir.
 */
function start(name, command, args, { stdin = 'pipe', stdout = 'pipe', env = {} } = {}) {
    const errFile = path.join(work, `${name}.err`);
    const err = fs.openSync(errFile, 'a');
    const child = spawn(command, args, {
        cwd: root,
        stdio: [stdin, stdout, err],
        env: { ...process.env, ...env },
    });
    fs.closeSync(err);
    child.name = name;
    child.errFile = errFile;
    child.lines = [];
    child.waiters = [];
    child.exited = new Promise(resolve => child.on('exit', (code, signal) => {
        children.delete(child);
        writePids();
        resolve({ code, signal });
    }));
    // 'close' comes after the last stdout data, unlike 'exit'.
    child.on('close', () => {
        child.closed = true;
        child.waiters.forEach(w => w());
    });
    child.on('error', e => log(`${name}: ${e.message}`));
    if (child.stdout) {
        let rest = '';
        child.stdout.setEncoding('utf8');
        child.stdout.on('data', chunk => {
            const parts = (rest + chunk).split('\n');
            rest = parts.pop();
            child.lines.push(...parts);
            child.waiters.forEach(w => w());
        });
    }
    children.add(child);
    writePids();
    return child;
}

/** Waits for a stdout line that `match` accepts; returns it. */
async function waitLine(child, match, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    let seen = 0;
    for (;;) {
        for (; seen < child.lines.length; ++seen) {
            if (match(child.lines[seen])) {
                return child.lines[seen];
            }
        }
        if (child.closed) {
            throw new Error(`${child.name} exited before ${what}; see ${child.errFile}:\n${tail(child.errFile)}`);
        }
        const left = deadline - Date.now();
        if (left <= 0) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} from ${child.name}; see ${child.errFile}:\n${tail(child.errFile)}`);
        }
        await new Promise(resolve => {
            const t = setTimeout(resolve, Math.min(left, 200));
            child.waiters.push(() => {
                clearTimeout(t);
                resolve();
            });
        });
        child.waiters = [];
    }
}

const jsonLine = line => line.startsWith('{');

/** Waits until `file` contains `text`, while `child` (whose output it is) runs. */
async function waitFile(file, text, timeoutMs, what, child) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
        if (fs.existsSync(file) && fs.readFileSync(file, 'utf8').includes(text)) {
            return;
        }
        if (child.closed) {
            throw new Error(`${child.name} exited before ${what}; see ${child.errFile}:\n${tail(child.errFile)}\n${tail(file)}`);
        }
        await sleep(50);
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; see ${file}:\n${tail(file)}`);
}

function tail(file) {
    try {
        return fs.readFileSync(file, 'utf8').split('\n').slice(-15).join('\n');
    } catch {
        return '(no output)';
    }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
async function stop(child, graceMs = 3000) {
    if (!child || child.exitCode !== null || child.signalCode !== null) {
        return;
    }
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await child.exited;
    clearTimeout(t);
}

async function stopAll() {
    await Promise.all([...children].map(c => stop(c, 2000)));
}

let cleaningUp = false;
async function cleanup(code) {
    if (cleaningUp) {
        return;
    }
    cleaningUp = true;
    await stopAll();
    if (!o.keep) {
        fs.rmSync(work, { recursive: true, force: true });
    } else {
        log(`kept ${work}`);
    }
    process.exit(code);
}
process.on('SIGINT', () => cleanup(130));
process.on('SIGTERM', () => cleanup(143));

function freePort() {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.on('error', reject);
        server.listen(0, '127.0.0.1', () => {
            const { port } = server.address();
            server.close(() => resolve(port));
        });
    });
}

async function waitPort(port, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
        const ok = await new Promise(resolve => {
            const socket = net.connect(port, '127.0.0.1');
            socket.on('connect', () => {
                socket.destroy();
                resolve(true);
            });
            socket.on('error', () => resolve(false));
        });
        if (ok) {
            return;
        }
        await sleep(50);
    }
    throw new Error(`timed out waiting for ${what} on port ${port}`);
}

// ---------------------------------------------------------------- /proc

function cpuSeconds(pid) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** CPU seconds the whole machine spent busy (all CPUs), from /proc/stat. */
function machineBusySeconds() {
    const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    const [user, nice, system, , , irq, softirq, steal] = fields;
    return (user + nice + system + irq + softirq + (steal || 0)) / CLK_TCK;
}

/** CPU seconds used by this driver and every process it started (running or reaped). */
function ourCpuSeconds() {
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    // utime, stime, cutime, cstime are fields 14-17.
    let total = (f[11] + f[12] + f[13] + f[14]) / CLK_TCK;
    for (const child of children) {
        try {
            total += cpuSeconds(child.pid);
        } catch {
            // Gone between the listing and the read: then it is in cutime/cstime next time.
        }
    }
    return total;
}

/** A point in time for measuring how much CPU other processes on the machine took. */
function loadMark() {
    return { wall: Date.now() / 1000, busy: machineBusySeconds(), ours: ourCpuSeconds() };
}

/** CPU cores used by processes other than the bench's between two marks. */
function otherLoad(a, b) {
    const wall = b.wall - a.wall;
    return wall > 0 ? Math.max(0, (b.busy - a.busy) - (b.ours - a.ours)) / wall : 0;
}

function peakRssKiB(pid) {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmHWM:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) : null;
}

// ---------------------------------------------------------------- the servers

let bayeuxUrl;
let mqttPort;
let servers = {};

async function startServers() {
    const server = servers.cometd = start(`${o.server}-server`, 'node', [path.join(root, 'tests/peers/server.js'), '--kind', o.server, '--exit-on-stdin-eof']);
    const line = await waitLine(server, jsonLine, 30000, 'the listening port');
    const { port, path: mount } = JSON.parse(line);
    bayeuxUrl = `http://127.0.0.1:${port}${mount}`;

    mqttPort = await freePort();
    const conf = path.join(work, 'mosquitto.conf');
    fs.writeFileSync(conf, [
        `listener ${mqttPort} 127.0.0.1`,
        'allow_anonymous true',
        'persistence false',
        // The default (1000 queued QoS 1 messages per client beyond those in flight) makes
        // the broker drop messages for a consumer that falls behind a generator running flat
        // out; the bench counts every message, so it lifts the cap.
        'max_queued_messages 0',
        ...(o.mosquittoInflight ? [`max_inflight_messages ${o.mosquittoInflight}`] : []),
        '',
    ].join('\n'));
    servers.mosquitto = start('mosquitto', mosquittoBin(), ['-c', conf], { stdin: 'ignore' });
    await waitPort(mqttPort, 10000, 'mosquitto');
    log(`${o.server} server ${bayeuxUrl} (transport ${o.transport}), Mosquitto 127.0.0.1:${mqttPort}, work dir ${work}`);
}

// ---------------------------------------------------------------- the pieces of a run

const tool = name => path.join(here, name);
let runNumber = 0;

function counterDeadline(count, rate) {
    return Math.round(30 + (rate ? count / rate : count / 2000));
}

function mqttCounter(topic, qos, count, rate) {
    return start(`mqtt-count-${runNumber}`, 'node', [tool('mqtt-count.js'), '--port', String(mqttPort),
        '--topic', topic, '--qos', String(qos), '--count', String(count),
        '--deadline', String(counterDeadline(count, rate))]);
}

/**
 * `--routes N`: N more routes beside the bench's own, in the shape of issue 17
 * (`/r/<i>/**` ↔ `r/<i>/#`, direction both), which the bench's messages do not match: what
 * routing and subscribing cost with many routes (scripts/bench-routes).
 */
function extraRoutes(qos) {
    const out = [];
    for (let i = 1; i <= o.routes; ++i) {
        out.push(`\n[[route]]\nbayeux = "/r/${i}/**"\nmqtt = "r/${i}/#"\ndirection = "both"\nqos = ${qos}\n`);
    }
    return out.join('');
}

function bayeuxCounter(channel, count, rate) {
    return start(`bayeux-count-${runNumber}`, 'node', [tool('bayeux-count.js'), '--url', bayeuxUrl,
        '--channel', channel, '--count', String(count), '--deadline', String(counterDeadline(count, rate)),
        '--transport', jsTransport]);
}

function bayeuxGenerator(channel, count, rate) {
    return start(`bayeux-pub-${runNumber}`, 'node', [tool('bayeux-pub.js'), '--url', bayeuxUrl,
        '--channel', channel, '--count', String(count), '--rate', String(rate),
        '--batch', String(o.bayeuxBatch), '--window', String(o.bayeuxWindow)]);
}

function mqttGenerator(topic, qos, count, rate) {
    return start(`mqtt-pub-${runNumber}`, 'node', [tool('mqtt-pub.js'), '--port', String(mqttPort),
        '--topic', topic, '--qos', String(qos), '--count', String(count), '--rate', String(rate)]);
}

/** `bayeux-mqtt-bridge sub` piped into line-count.js; resolves once subscribed. */
async function subCounter(pattern, count, rate) {
    const counter = start(`line-count-${runNumber}`, 'node', [tool('line-count.js'), '--count', String(count),
        '--deadline', String(counterDeadline(count, rate))]);
    const sub = start(`sub-${runNumber}`, bin, ['sub', '--url', bayeuxUrl, '--transport', o.transport, pattern], {
        stdin: 'ignore', stdout: counter.stdin, env: { RUST_LOG: 'info' },
    });
    // Only `sub` writes into the counter: when it exits, the counter sees the end of input.
    counter.stdin.destroy();
    await waitFile(sub.errFile, 'Subscribed.', 15000, 'bayeux-mqtt-bridge sub to subscribe', sub);
    return { counter, extra: [sub], target: sub };
}

function bridgeConfig(qos, spool) {
    const file = path.join(work, `bridge-${runNumber}.toml`);
    // A fresh spool directory per run (on the work directory's disk), so every run starts
    // empty.
    const spoolSection = spool ? `
[spool]
enabled = true
dir = "${path.join(work, `spool-${runNumber}`)}"
` : '';
    fs.writeFileSync(file, `# Generated by scripts/bench.
[bayeux]
url = "${bayeuxUrl}"
transport = "${o.transport}"

[mqtt]
host = "127.0.0.1"
port = ${mqttPort}
client_id = "bench-bridge-${process.pid}-${runNumber}"

[log]
level = "info"
format = "json"
file = "bridge-${runNumber}.log"

[[route]]
bayeux = "/bench/in/**"
mqtt = "bench/in/#"
direction = "bayeux_to_mqtt"
qos = ${qos}

[[route]]
bayeux = "/bench/out/**"
mqtt = "bench/out/#"
direction = "mqtt_to_bayeux"
qos = ${qos}
${extraRoutes(qos)}${spoolSection}`);
    return file;
}

async function startBridge(qos, spool = false) {
    const config = bridgeConfig(qos, spool);
    const t0 = Date.now();
    const bridge = start(`bridge-${runNumber}`, bin, ['--config', config], { stdin: 'ignore' });
    bridge.logFile = path.join(work, `bridge-${runNumber}.log`);
    await waitFile(bridge.logFile, 'Bridge ready.', 15000 + o.routes * 10, 'the bridge to be ready', bridge);
    // From the start of the process to its "Bridge ready." (both sides connected, every
    // subscription confirmed), as the driver sees it (polling the log every few ms).
    bridge.readySeconds = (Date.now() - t0) / 1000;
    return bridge;
}

async function startNodeBridge(qos) {
    const bridge = start(`node-bridge-${runNumber}`, 'node', [tool('bridge.js'), '--url', bayeuxUrl,
        '--channel', '/bench/in/**', '--port', String(mqttPort), '--topic-prefix', 'bench/in', '--qos', String(qos),
        '--transport', jsTransport]);
    await waitLine(bridge, l => l === 'ready', 15000, 'ready');
    return bridge;
}

/**
 * The bridge's own totals, from its JSON log (written at shutdown), and the CPU scheduling
 * policy it ran under (`bridge.cpu_scheduling`, logged at start), as `policy`.
 */
function bridgeTotals(logFile) {
    const totals = {};
    for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
        const policy = line.includes('CPU scheduling policy');
        if (!policy && !line.includes('Totals.')) {
            continue;
        }
        try {
            const f = JSON.parse(line).fields;
            if (policy) {
                totals.policy = f.policy || 'unknown';
            } else {
                totals[f.direction] = { received: f.received, forwarded: f.forwarded, dropped: f.dropped };
            }
        } catch {
            // Not a JSON line; ignore.
        }
    }
    return totals;
}

/**
 * One run: the counter subscribes, the generator sends `count` messages, the counter
 * reports. `target` (a process, optional) is measured: CPU time and peak RSS.
 */
async function measure({ makeCounter, makeGenerator, target, count, rate }) {
    const made = await makeCounter();
    const counter = made.counter || made;
    const extra = made.extra || [];
    // A second counter on the same stream (a direct subscriber beside the bridge).
    const side = made.side || null;
    target = target || made.target;
    if (!made.counter) {
        await waitLine(counter, l => l === 'ready', 15000, 'ready');
    }
    if (side) {
        await waitLine(side, l => l === 'ready', 15000, 'ready');
    }
    await sleep(200);
    const mark0 = loadMark();
    const cpu0 = target ? cpuSeconds(target.pid) : null;
    const serverCpu0 = cpuSeconds(servers.cometd.pid);
    const brokerCpu0 = cpuSeconds(servers.mosquitto.pid);
    if (target) {
        try {
            // Resets VmHWM to the current RSS, so the peak is this run's.
            fs.writeFileSync(`/proc/${target.pid}/clear_refs`, '5');
        } catch {
            // Older kernels: the peak then includes start-up, which is smaller anyway.
        }
    }
    const generator = makeGenerator();
    const genLine = await waitLine(generator, jsonLine, (counterDeadline(count, rate) + 30) * 1000, 'its summary');
    const countLine = await waitLine(counter, jsonLine, (counterDeadline(count, rate) + 10) * 1000, 'its summary');
    const { cpu_s: counterCpu, ...arrivals } = JSON.parse(countLine);
    const result = { generator: JSON.parse(genLine), ...arrivals, cpu_s_counter: counterCpu };
    if (side) {
        result.side = JSON.parse(await waitLine(side, jsonLine, (counterDeadline(count, rate) + 10) * 1000, 'its summary'));
        result.cpu_s_counter = (counterCpu ?? 0) + (result.side.cpu_s ?? 0);
    }
    if (target) {
        result.cpu_s = cpuSeconds(target.pid) - cpu0;
        result.peak_kib = peakRssKiB(target.pid);
    }
    // Where the machine's CPU went during the run (seconds).
    result.cpu_split = {
        server: cpuSeconds(servers.cometd.pid) - serverCpu0,
        mosquitto: cpuSeconds(servers.mosquitto.pid) - brokerCpu0,
        target: result.cpu_s ?? null,
        generator: result.generator.cpu_s ?? null,
        counter: result.cpu_s_counter ?? null,
    };
    await Promise.all([generator.exited, counter.exited].map(p => Promise.race([p, sleep(3000)])));
    result.other_cores = otherLoad(mark0, loadMark());
    for (const c of [generator, counter, ...extra, ...(side ? [side] : [])]) {
        await stop(c);
    }
    return result;
}

// ---------------------------------------------------------------- scenarios

const N = o.messages;
const scenarios = [
    {
        key: 'direct-cometd', path: 'Bayeux → Bayeux, direct', who: 'CometD JS subscriber', qos: '–', direction: 'direct',
        run: (count, rate) => measure({
            count, rate,
            makeCounter: () => bayeuxCounter('/bench/in/**', count, rate),
            makeGenerator: () => bayeuxGenerator('/bench/in/x', count, rate),
        }),
    },
    {
        key: 'direct-sub', path: 'Bayeux → Bayeux, direct', who: '`bayeux-mqtt-bridge sub`', qos: '–', direction: 'direct',
        run: (count, rate) => measure({
            count, rate,
            makeCounter: () => subCounter('/bench/in/**', count, rate),
            makeGenerator: () => bayeuxGenerator('/bench/in/x', count, rate),
        }),
    },
    ...[0, 1].map(qos => ({
        key: `mqtt-direct-q${qos}`, path: 'MQTT → MQTT, direct', who: 'Mosquitto only', qos, direction: 'mqtt',
        run: (count, rate) => measure({
            count, rate,
            makeCounter: () => mqttCounter('bench/direct/#', qos, count, rate),
            makeGenerator: () => mqttGenerator('bench/direct/x', qos, count, rate),
        }),
    })),
    ...[0, 1].map(qos => ({
        key: `b2m-q${qos}`, path: 'Bayeux → MQTT', who: 'bayeux-mqtt-bridge', qos, direction: 'b2m', bridge: 'rust',
        run: async (count, rate) => {
            const bridge = await startBridge(qos);
            const result = await measure({
                count, rate, target: bridge,
                makeCounter: () => mqttCounter('bench/in/#', qos, count, rate),
                makeGenerator: () => bayeuxGenerator('/bench/in/x', count, rate),
            });
            await stop(bridge, 15000);
            result.bridge = bridgeTotals(bridge.logFile);
            result.ready_s = bridge.readySeconds;
            return result;
        },
    })),
    // The same, with a direct subscriber (the CometD JS client) on the same stream at the same
    // time: both get every message from the server while the same processes share the
    // machine, so their rates compare the bridge with a direct subscriber under one load.
    ...[0, 1].map(qos => ({
        key: `b2m-beside-q${qos}`, path: 'Bayeux → MQTT, beside a direct subscriber', who: 'bayeux-mqtt-bridge', qos,
        direction: 'beside', bridge: 'rust',
        run: async (count, rate) => {
            const bridge = await startBridge(qos);
            const result = await measure({
                count, rate, target: bridge,
                makeCounter: async () => {
                    const counter = mqttCounter('bench/in/#', qos, count, rate);
                    await waitLine(counter, l => l === 'ready', 15000, 'ready');
                    return { counter, side: bayeuxCounter('/bench/in/**', count, rate) };
                },
                makeGenerator: () => bayeuxGenerator('/bench/in/x', count, rate),
            });
            await stop(bridge, 15000);
            result.bridge = bridgeTotals(bridge.logFile);
            result.ready_s = bridge.readySeconds;
            return result;
        },
    })),
    ...[0, 1].map(qos => ({
        key: `node-b2m-q${qos}`, path: 'Bayeux → MQTT', who: 'Node.js baseline bridge', qos, direction: 'b2m', bridge: 'node',
        run: async (count, rate) => {
            const bridge = await startNodeBridge(qos);
            const result = await measure({
                count, rate, target: bridge,
                makeCounter: () => mqttCounter('bench/in/#', qos, count, rate),
                makeGenerator: () => bayeuxGenerator('/bench/in/x', count, rate),
            });
            await stop(bridge);
            return result;
        },
    })),
    // With the durable spool (`[spool] enabled`): every message is committed to disk (fsync,
    // group commits) before it is acknowledged upstream, and read back from it to be sent.
    {
        key: 'b2m-spool-q1', path: 'Bayeux → MQTT, with the spool', who: 'bayeux-mqtt-bridge', qos: 1, direction: 'b2m',
        bridge: 'rust', spool: 'b2m-q1',
        run: async (count, rate) => {
            const bridge = await startBridge(1, true);
            const result = await measure({
                count, rate, target: bridge,
                makeCounter: () => mqttCounter('bench/in/#', 1, count, rate),
                makeGenerator: () => bayeuxGenerator('/bench/in/x', count, rate),
            });
            await stop(bridge, 15000);
            result.bridge = bridgeTotals(bridge.logFile);
            result.ready_s = bridge.readySeconds;
            return result;
        },
    },
    {
        key: 'm2b-spool-q1', path: 'MQTT → Bayeux, with the spool', who: 'bayeux-mqtt-bridge', qos: 1, direction: 'm2b',
        bridge: 'rust', spool: 'm2b-q1',
        run: async (count, rate) => {
            const bridge = await startBridge(1, true);
            const result = await measure({
                count, rate, target: bridge,
                makeCounter: () => bayeuxCounter('/bench/out/**', count, rate),
                makeGenerator: () => mqttGenerator('bench/out/x', 1, count, rate),
            });
            await stop(bridge, 15000);
            result.bridge = bridgeTotals(bridge.logFile);
            result.ready_s = bridge.readySeconds;
            return result;
        },
    },
    ...[0, 1].map(qos => ({
        key: `m2b-q${qos}`, path: 'MQTT → Bayeux', who: 'bayeux-mqtt-bridge', qos, direction: 'm2b', bridge: 'rust',
        run: async (count, rate) => {
            const bridge = await startBridge(qos);
            const result = await measure({
                count, rate, target: bridge,
                makeCounter: () => bayeuxCounter('/bench/out/**', count, rate),
                makeGenerator: () => mqttGenerator('bench/out/x', qos, count, rate),
            });
            await stop(bridge, 15000);
            result.bridge = bridgeTotals(bridge.logFile);
            result.ready_s = bridge.readySeconds;
            return result;
        },
    })),
];
// `--only KEY,KEY…` runs just those scenarios (and their paced runs), for quick comparisons.
const only = o.only ? new Set(o.only.split(',').map(k => k.trim()).filter(Boolean)) : null;
if (only) {
    const unknown = [...only].filter(k => !scenarios.some(s => s.key === k));
    if (unknown.length) {
        fail(`--only: unknown scenario(s) ${unknown.join(', ')}; known: ${scenarios.map(s => s.key).join(', ')}`, 2);
    }
}
const selected = s => !only || only.has(s.key);
const pacedKeys = ['direct-cometd', 'direct-sub', 'mqtt-direct-q0', 'mqtt-direct-q1', 'b2m-q0', 'b2m-q1', 'b2m-spool-q1', 'node-b2m-q1', 'm2b-q0', 'm2b-q1', 'm2b-spool-q1'];

// ---------------------------------------------------------------- report

const median = xs => {
    const s = xs.filter(x => x !== null && x !== undefined).sort((a, b) => a - b);
    if (!s.length) {
        return null;
    }
    const m = Math.floor(s.length / 2);
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (x, digits = 0) => (x === null || x === undefined || Number.isNaN(x) ? '–'
    : x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }));

function aggregate(key, runs) {
    const rates = runs.map(r => r.rate);
    const received = runs.map(r => r.received);
    const cpuPerMsg = runs.filter(r => r.cpu_s !== undefined).map(r => (r.cpu_s / Math.max(1, r.received)) * 1e6);
    return {
        key,
        runs: runs.length,
        rate: median(rates),
        rate_min: Math.min(...rates.filter(x => x)),
        rate_max: Math.max(...rates.filter(x => x)),
        received_min: Math.min(...received),
        expected: runs[0] ? runs[0].expected : null,
        duplicates: runs.reduce((a, r) => a + r.duplicates, 0),
        p50: median(runs.map(r => r.p50_ms)),
        p99: median(runs.map(r => r.p99_ms)),
        cpu_s: median(runs.map(r => r.cpu_s)),
        cpu_us: median(cpuPerMsg),
        peak_mib: runs.some(r => r.peak_kib) ? Math.max(...runs.map(r => r.peak_kib || 0)) / 1024 : null,
        // Beside a direct subscriber: this rate / the subscriber's, in the same run.
        side_ratio: median(runs.map(r => (r.side && r.side.rate ? r.rate / r.side.rate : null))),
        side_rate: median(runs.map(r => (r.side ? r.side.rate : null))),
    };
}

/** The versions of what was measured, for the report's first line. */
function versions() {
    const run = (cmd, args) => {
        try {
            const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
            return `${r.stdout || ''}${r.stderr || ''}`;
        } catch {
            return '';
        }
    };
    const mosquitto = (/mosquitto version (\S+)/.exec(run(mosquittoBin(), ['-h'])) || [])[1] || '?';
    const bridge = run(bin, ['--version']).trim() || '?';
    return `${bridge}; ${os.cpus().length} × ${os.cpus()[0].model}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ` +
        `Linux ${os.release()}; Node ${process.version}; Mosquitto ${mosquitto}; ` +
        (o.server === 'faye' ? `faye ${packageVersion('tests/peers/node_modules/faye')}`
            : `cometd-nodejs-server ${packageVersion('tests/peers/node_modules/cometd-nodejs-server')}`) +
        `; Bayeux transport ${o.transport} (CometD JS clients: ${jsTransport})`;
}

function packageVersion(dir) {
    try {
        return JSON.parse(fs.readFileSync(path.join(root, dir, 'package.json'), 'utf8')).version;
    } catch {
        return '?';
    }
}

function mosquittoBin() {
    return fs.existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';
}

/** Which CPU scheduling policy the Rust bridge ran under, from its runs' logs. */
function policyNote(results, paced) {
    const runs = [...Object.values(results).flat(), ...paced.map(p => p.result)];
    const policies = [...new Set(runs.map(r => r.bridge && r.bridge.policy).filter(Boolean))];
    if (!policies.length) {
        return '';
    }
    return ` The bridge ran under the \`${policies.join('`, `')}\` CPU scheduling ` +
        `${policies.length > 1 ? 'policies' : 'policy'} (\`bridge.cpu_scheduling\`, default \`batch\`).`;
}

function report(results, paced) {
    const out = [];
    out.push(`Measured ${new Date().toISOString().slice(0, 10)}: ${versions()}.`);
    out.push('');
    const agg = Object.fromEntries(scenarios.map(s => [s.key, aggregate(s.key, results[s.key] || [])]));
    const directBest = Math.max(agg['direct-cometd'].rate || 0, agg['direct-sub'].rate || 0);
    const vs = s => {
        if (s.direction === 'beside') {
            return agg[s.key].side_ratio === null ? '' : `${fmt(agg[s.key].side_ratio * 100)} % (same run)`;
        }
        if (directBest && (s.direction === 'b2m' || s.direction === 'm2b')) {
            return `${fmt((agg[s.key].rate / directBest) * 100)} %`;
        }
        return '';
    };
    out.push(`### Throughput (${fmt(N)} messages of 60-byte JSON per run, median of ${o.repeat} runs)`);
    out.push('');
    out.push('| path | through | QoS | msg/s (median) | min–max | vs direct | delivered | p50 ms | p99 ms | CPU s | CPU µs/msg | peak RSS MiB |');
    out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const s of scenarios) {
        const a = agg[s.key];
        if (!a.runs) {
            continue;
        }
        const delivered = a.received_min === a.expected ? 'all' : `${fmt(a.received_min)} (min)`;
        out.push(`| ${s.path} | ${s.who} | ${s.qos} | ${fmt(a.rate)} | ${fmt(a.rate_min)}–${fmt(a.rate_max)} | ${vs(s)} | ` +
            `${delivered}${a.duplicates ? `, ${a.duplicates} dup` : ''} | ${fmt(a.p50, 1)} | ${fmt(a.p99, 1)} | ` +
            `${a.cpu_s === null ? '–' : fmt(a.cpu_s, 2)} | ${fmt(a.cpu_us, 1)} | ${fmt(a.peak_mib, 1)} |`);
    }
    out.push('');
    out.push('"vs direct" divides by the better of the two direct Bayeux → Bayeux rates ' +
        `(${fmt(directBest)} msg/s); "beside a direct subscriber" divides by the rate of a CometD JS ` +
        'subscriber on the same stream in the same run (median of the per-run ratios). ' +
        'Latency = arrival − send time (same clock), at full load, so it ' +
        'is mostly queueing. CPU is the bridge process\'s user + system time for the run. Mosquitto runs with its ' +
        'defaults except `max_queued_messages 0`' + (o.mosquittoInflight ? ` and \`max_inflight_messages ${o.mosquittoInflight}\`` : '') +
        `; the Bayeux generator sends ${o.bayeuxBatch} publishes per request, ${o.bayeuxWindow} requests in flight.` +
        policyNote(results, paced));
    out.push('');
    out.push('### Where the CPU went (median of the runs above, CPU seconds per run)');
    out.push('');
    out.push(`| path | through | QoS | seconds | ${o.server === 'faye' ? 'Faye' : 'CometD'} server | Mosquitto | bridge (or \`sub\`) | generator | counter | all | cores busy |`);
    out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const s of scenarios) {
        const runs = results[s.key] || [];
        if (!runs.length) {
            continue;
        }
        const part = k => median(runs.map(r => r.cpu_split[k]));
        const wall = median(runs.map(r => (r.last_us - r.generator.start_us) / 1e6));
        const all = median(runs.map(r => Object.values(r.cpu_split).reduce((a, x) => a + (x || 0), 0)));
        out.push(`| ${s.path} | ${s.who} | ${s.qos} | ${fmt(wall, 2)} | ${fmt(part('server'), 2)} | ${fmt(part('mosquitto'), 2)} | ` +
            `${part('target') === null ? '–' : fmt(part('target'), 2)} | ${fmt(part('generator'), 2)} | ${fmt(part('counter'), 2)} | ` +
            `${fmt(all, 2)} | ${fmt(all / wall, 2)} |`);
    }
    out.push('');
    out.push('"seconds" runs from the generator\'s first message to the last arrival; "cores busy" is "all" divided by it ' +
        '(the machine has ' + os.cpus().length + '). Each generator and counter counts from its start of work.');
    if (paced.length) {
        out.push('');
        out.push(`### Latency at ${fmt(o.pacedRate)} msg/s (${fmt(o.pacedRate * o.pacedSeconds)} messages)`);
        out.push('');
        out.push('| path | through | QoS | delivered | p50 ms | p99 ms | max ms | CPU µs/msg | peak RSS MiB |');
        out.push('|---|---|---|---:|---:|---:|---:|---:|---:|');
        for (const { scenario: s, result: r } of paced) {
            out.push(`| ${s.path} | ${s.who} | ${s.qos} | ${r.received === r.expected ? 'all' : fmt(r.received)} | ` +
                `${fmt(r.p50_ms, 2)} | ${fmt(r.p99_ms, 2)} | ${fmt(r.max_ms, 2)} | ` +
                `${r.cpu_s === undefined ? '–' : fmt((r.cpu_s / Math.max(1, r.received)) * 1e6, 1)} | ` +
                `${r.peak_kib ? fmt(r.peak_kib / 1024, 1) : '–'} |`);
        }
    }
    const loads = [...Object.values(results).flat(), ...paced.map(p => p.result)].map(r => r.other_cores);
    out.push('');
    out.push(`Other processes on the machine used at most ${fmt(Math.max(...loads), 2)} cores ` +
        `(median ${fmt(median(loads), 2)}) during the runs kept here.`);
    // The targets of issue 3.
    const b2m = [0, 1].map(q => agg[`b2m-q${q}`]);
    const m2b = [0, 1].map(q => agg[`m2b-q${q}`]);
    const nodeQ1 = agg['node-b2m-q1'];
    const ours = [...b2m, ...m2b, ...[0, 1].map(q => agg[`b2m-beside-q${q}`])].filter(a => a.runs);
    const peak = Math.max(...ours.map(a => a.peak_mib || 0), ...paced.filter(p => p.scenario.bridge === 'rust').map(p => (p.result.peak_kib || 0) / 1024));
    const ratio = a => (a.rate || 0) / directBest;
    const check = ok => (ok ? 'met' : '**not met**');
    out.push('');
    out.push('### Targets');
    out.push('');
    out.push('| target | measured | |');
    out.push('|---|---|---|');
    for (const [name, list] of [['Bayeux → MQTT', b2m], ['MQTT → Bayeux', m2b]]) {
        for (const [q, a] of list.entries()) {
            if (a.runs && !(directBest > 0)) {
                out.push(`| ${name} QoS ${q} ≥ 95 % of a direct subscriber | no direct run (see \`--only\`) | – |`);
            } else if (a.runs) {
                out.push(`| ${name} QoS ${q} ≥ 95 % of a direct subscriber | ${fmt(ratio(a) * 100)} % | ${check(ratio(a) >= 0.95 && a.received_min === a.expected)} |`);
            }
        }
    }
    for (const q of [0, 1]) {
        const a = agg[`b2m-beside-q${q}`];
        if (a.runs) {
            out.push(`| Bayeux → MQTT QoS ${q} ≥ 95 % of a direct subscriber beside it (same run, same server) | ` +
                `${fmt(a.side_ratio * 100)} % (${fmt(a.rate)} vs ${fmt(a.side_rate)} msg/s) | ` +
                `${check(a.side_ratio >= 0.95 && a.received_min === a.expected)} |`);
        }
    }
    out.push(`| peak RSS < 25 MiB | ${fmt(peak, 1)} MiB | ${check(peak < 25)} |`);
    // The spool's targets (issue 13): beside the same path without it, in the same run.
    for (const s of scenarios.filter(x => x.spool)) {
        const on = agg[s.key];
        const off = agg[s.spool];
        if (!on.runs || !off.runs) {
            continue;
        }
        const rate = on.rate / off.rate;
        const cpu = on.cpu_us / off.cpu_us;
        out.push(`| ${s.path}: ≥ 90 % of the rate without it | ${fmt(rate * 100)} % (${fmt(on.rate)} vs ${fmt(off.rate)} msg/s) | ${check(rate >= 0.9 && on.received_min === on.expected)} |`);
        out.push(`| ${s.path}: ≤ 1.5 × the CPU per message without it | ${fmt(cpu, 2)} × (${fmt(on.cpu_us, 1)} vs ${fmt(off.cpu_us, 1)} µs/msg) | ${check(cpu <= 1.5)} |`);
        const pOn = paced.find(p => p.scenario.key === s.key);
        const pOff = paced.find(p => p.scenario.key === s.spool);
        if (pOn && pOff) {
            const d = pOn.result.p99_ms - pOff.result.p99_ms;
            out.push(`| ${s.path}: p99 at ${fmt(o.pacedRate)} msg/s at most 1 ms more than without it (the issue's target is at 200 msg/s) | ` +
                `${fmt(d, 2)} ms (${fmt(pOn.result.p99_ms, 2)} vs ${fmt(pOff.result.p99_ms, 2)}) | ${check(d <= 1)} |`);
        }
    }
    if (b2m[1].runs && nodeQ1.runs) {
        const r = b2m[1].cpu_us / nodeQ1.cpu_us;
        // Issue 16: over WebSocket, at most 0.15 × the Node.js bridge (also on WebSocket).
        const [bound, name] = jsTransport === 'websocket' ? [0.15, '0.15 ×'] : [0.25, '¼'];
        out.push(`| CPU ≤ ${name} the Node.js bridge (Bayeux → MQTT, QoS 1, ${jsTransport}, measured here) | ${fmt(b2m[1].cpu_us, 1)} vs ${fmt(nodeQ1.cpu_us, 1)} µs/msg = ${fmt(r * 100)} % | ${check(r <= bound)} |`);
        out.push(`| CPU ≤ ¼ of the issue's reference (≈ 40 µs/msg, so ≤ 10 µs/msg) | ${fmt(b2m[1].cpu_us, 1)} µs/msg | ${check(b2m[1].cpu_us <= 10)} |`);
    }
    // Issue 16: at the paced rate (200 msg/s in the issue), the bridge's p50 within 0.3 ms of
    // the direct subscriber's.
    const pacedDirect = paced.find(p => p.scenario.key === 'direct-cometd');
    for (const key of ['b2m-q0', 'b2m-q1']) {
        const ours = paced.find(p => p.scenario.key === key);
        if (pacedDirect && ours) {
            const d = ours.result.p50_ms - pacedDirect.result.p50_ms;
            out.push(`| Bayeux → MQTT QoS ${ours.scenario.qos}: p50 at ${fmt(o.pacedRate)} msg/s within 0.3 ms of the direct subscriber's | ` +
                `${fmt(d, 2)} ms (${fmt(ours.result.p50_ms, 2)} vs ${fmt(pacedDirect.result.p50_ms, 2)}) | ${check(d <= 0.3)} |`);
        }
    }
    return out.join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
    log(`${os.cpus().length} CPUs (${os.cpus()[0].model}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ` +
        `Linux ${os.release()}, Node ${process.version}`);
    await startServers();
    const results = {};
    // A run during which other processes on the machine took more than --max-other-load
    // cores is run again (twice at most); the cleanest attempt is kept.
    const attempt = async (s, count, rate, label) => {
        let best = null;
        for (let tries = 1; tries <= 3; ++tries) {
            runNumber += 1;
            const t0 = Date.now();
            const r = await s.run(count, rate);
            r.seconds = (Date.now() - t0) / 1000;
            log(`${label} ${s.key}: ${fmt(r.received)}/${fmt(r.expected)} at ${fmt(r.rate)} msg/s, ` +
                `p50 ${fmt(r.p50_ms, 2)} ms, p99 ${fmt(r.p99_ms, 2)} ms` +
                (r.cpu_s !== undefined ? `, CPU ${fmt(r.cpu_s, 2)} s, peak ${fmt(r.peak_kib / 1024, 1)} MiB` : '') +
                `, other load ${fmt(r.other_cores, 2)} cores (${r.seconds.toFixed(1)} s)`);
            if (!best || r.other_cores < best.other_cores) {
                best = r;
            }
            await sleep(300);
            if (r.other_cores <= o.maxOtherLoad) {
                break;
            }
            if (tries < 3) {
                log(`other processes were busy during that run; running it again`);
            }
        }
        return best;
    };
    for (let rep = 1; rep <= o.repeat; ++rep) {
        for (const s of scenarios.filter(selected)) {
            (results[s.key] ||= []).push(await attempt(s, N, 0, `run ${rep}/${o.repeat}`));
        }
    }
    const paced = [];
    if (o.pacedRate > 0 && o.pacedSeconds > 0) {
        const count = Math.round(o.pacedRate * o.pacedSeconds);
        for (const key of pacedKeys) {
            const s = scenarios.find(x => x.key === key);
            if (!selected(s)) {
                continue;
            }
            paced.push({ scenario: s, result: await attempt(s, count, o.pacedRate, 'paced') });
        }
    }
    const text = report(results, paced);
    process.stdout.write(text + '\n');
    if (o.json) {
        fs.writeFileSync(o.json, JSON.stringify({
            when: new Date().toISOString(),
            machine: { cpus: os.cpus().length, model: os.cpus()[0].model, mem_gib: os.totalmem() / 2 ** 30, kernel: os.release(), node: process.version },
            options: o, bayeuxUrl, mqttPort, results, paced: paced.map(p => ({ key: p.scenario.key, ...p.result })),
        }, null, 2) + '\n');
        log(`raw results in ${o.json}`);
    }
}

main().then(() => cleanup(0), e => {
    log(`error: ${e.stack || e}`);
    cleanup(1);
});
