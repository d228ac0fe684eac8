#!/usr/bin/env node
// Bayeux load generator: publishes bench messages into a Bayeux server over long-polling
// HTTP, batched (many publishes per request) with several requests in flight, as fast as the
// server answers them, or at a fixed rate.
//
//   node bayeux-pub.js --url URL --channel CH --count N [--batch B] [--window W]
//                      [--rate MSG_PER_S] [--size BYTES]
//
// It speaks Bayeux directly (handshake, a /meta/connect loop that keeps the session alive,
// publish batches) instead of going through a client library, so that the generator spends
// as little as possible of the machine's CPU. Each reply is checked: a publish the server
// did not accept counts as failed.
//
// Prints one JSON line on stdout when done:
//   {"sent":N,"accepted":N,"failed":0,"start_us":…,"end_us":…,"rate":…}

import http from 'node:http';
import { benchMessage, cpuSeconds, dueNow, exitWithParent, fail, nowUs, parseArgs, say } from './common.js';

const usage = 'usage: node bayeux-pub.js --url URL --channel CH --count N [--batch 50] [--window 4] [--rate 0] [--size 60]';
const o = parseArgs(process.argv.slice(2), {
    url: '', channel: '', count: 0, batch: 50, window: 4, rate: 0, size: 60, deadline: 120,
}, usage);
if (!o.url || !o.channel || !o.count) {
    fail(usage, 2);
}

const url = new URL(o.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: o.window + 2 });
let cookie = '';
let clientId = null;
let nextId = 0;
let stopping = false;

/** POSTs a Bayeux message array; resolves with the reply array. */
function post(messages, type) {
    const body = JSON.stringify(messages);
    return new Promise((resolve, reject) => {
        const request = http.request({
            agent,
            hostname: url.hostname,
            port: url.port,
            path: url.pathname + (type ? '/' + type : ''),
            method: 'POST',
            headers: {
                'Content-Type': 'application/json;charset=UTF-8',
                'Content-Length': Buffer.byteLength(body),
                ...(cookie ? { Cookie: cookie } : {}),
            },
        }, response => {
            const chunks = [];
            const setCookie = response.headers['set-cookie'];
            if (setCookie) {
                cookie = setCookie.map(c => c.split(';')[0]).join('; ');
            }
            response.on('data', chunk => chunks.push(chunk));
            response.on('end', () => {
                if (response.statusCode !== 200) {
                    reject(new Error(`HTTP ${response.statusCode} for ${type || 'publish'}`));
                    return;
                }
                try {
                    resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
                } catch (e) {
                    reject(e);
                }
            });
            response.on('error', reject);
        });
        request.on('error', reject);
        request.end(body);
    });
}

async function handshake() {
    const [reply] = await post([{
        channel: '/meta/handshake', version: '1.0', minimumVersion: '1.0',
        supportedConnectionTypes: ['long-polling'], id: String(++nextId),
    }], 'handshake');
    if (!reply || !reply.successful) {
        throw new Error(`handshake refused: ${JSON.stringify(reply)}`);
    }
    clientId = reply.clientId;
}

/** Keeps the session alive: one long poll at a time until we stop. */
async function connectLoop() {
    let first = true;
    while (!stopping) {
        try {
            await post([{
                channel: '/meta/connect', clientId, connectionType: 'long-polling',
                id: String(++nextId), ...(first ? { advice: { timeout: 0 } } : {}),
            }], 'connect');
            first = false;
        } catch (e) {
            if (!stopping) {
                process.stderr.write(`bayeux-pub: connect failed: ${e.message}\n`);
                await new Promise(r => setTimeout(r, 500));
            }
        }
    }
}

async function main() {
    await handshake();
    connectLoop();
    let sent = 0;
    let accepted = 0;
    let failed = 0;
    let inFlight = 0;
    const start = nowUs();
    const cpu0 = cpuSeconds();
    let wake = null;
    const wait = () => new Promise(r => { wake = r; });
    const deadline = start + o.deadline * 1e6;
    while (sent < o.count && nowUs() < deadline) {
        if (inFlight >= o.window) {
            await wait();
            continue;
        }
        // Paced: send only what is due by now.
        const n = dueNow(Math.min(o.batch, o.count - sent), sent, start, o.rate);
        if (n <= 0) {
            await new Promise(r => setTimeout(r, 1));
            continue;
        }
        const batch = [];
        for (let i = 0; i < n; ++i) {
            batch.push({
                channel: o.channel, clientId, id: String(++nextId),
                data: benchMessage(sent + i, o.size),
            });
        }
        sent += n;
        inFlight += 1;
        post(batch).then(replies => {
            for (const reply of replies) {
                if (reply.channel === o.channel) {
                    if (reply.successful) {
                        accepted += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
        }, e => {
            failed += n;
            process.stderr.write(`bayeux-pub: publish failed: ${e.message}\n`);
        }).finally(() => {
            inFlight -= 1;
            if (wake) {
                const w = wake;
                wake = null;
                w();
            }
        });
    }
    while (inFlight > 0) {
        await wait();
    }
    const end = nowUs();
    stopping = true;
    say(JSON.stringify({
        sent, accepted, failed, start_us: start, end_us: end,
        rate: sent / ((end - start) / 1e6), cpu_s: cpuSeconds() - cpu0,
    }));
    try {
        await Promise.race([
            post([{ channel: '/meta/disconnect', clientId, id: String(++nextId) }], 'disconnect'),
            new Promise(r => setTimeout(r, 1000)),
        ]);
    } catch {
        // The server may already be gone; nothing to clean up on our side.
    }
    process.exit(failed > 0 || accepted < o.count ? 1 : 0);
}

exitWithParent(reason => {
    process.stderr.write(`bayeux-pub: stopping (${reason})\n`);
    process.exit(1);
});
main().catch(e => fail(e.stack || String(e)));
