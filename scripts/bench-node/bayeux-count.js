#!/usr/bin/env node
// Bayeux counter: a CometD JavaScript client (npm cometd + cometd-nodejs-client) subscribed
// to a channel pattern; records each bench message's arrival.
//
//   node bayeux-count.js --url URL --channel PATTERN --count N [--idle MS] [--deadline S]
//                        [--transport long-polling|websocket]
//
// Prints `ready` once the subscription is confirmed, then one JSON summary line (see
// common.js Arrivals.summary) when N messages arrived, after --idle ms without one, or at
// --deadline seconds.

import { adapt } from 'cometd-nodejs-client';
import { CometD } from 'cometd';
import { Arrivals, cpuSeconds, exitWithParent, fail, nowUs, parseArgs, say, watchdog } from './common.js';

const usage = 'usage: node bayeux-count.js --url URL --channel PATTERN --count N [--idle 3000] [--deadline 120] [--transport long-polling|websocket]';
const o = parseArgs(process.argv.slice(2), { url: '', channel: '', count: 0, idle: 3000, deadline: 120, transport: 'long-polling' }, usage);
if (!o.url || !o.channel || !o.count) {
    fail(usage, 2);
}

adapt();
const cometd = new CometD();
// --transport long-polling (the default; the CometD Node server has nothing else) leaves
// long-polling only; websocket keeps the client's own order, WebSocket first.
if (o.transport !== 'websocket') {
    cometd.unregisterTransport('websocket');
}
cometd.configure({ url: o.url, logLevel: 'warn' });

const arrivals = new Arrivals(o.count);
let cpu0 = 0;
const finish = watchdog(arrivals, o.idle, o.deadline * 1000, reason => {
    say(JSON.stringify(arrivals.summary({ end: reason, cpu_s: cpuSeconds() - cpu0 })));
    cometd.disconnect();
    setTimeout(() => process.exit(0), 200);
});

cometd.handshake(reply => {
    if (!reply.successful) {
        fail(`handshake failed: ${JSON.stringify(reply)}`);
    }
    cometd.subscribe(o.channel, message => {
        if (arrivals.add(message.data, nowUs())) {
            finish('all');
        }
    }, subscribed => {
        if (!subscribed.successful) {
            fail(`subscribe failed: ${JSON.stringify(subscribed)}`);
        }
        cpu0 = cpuSeconds();
        say('ready');
    });
});
exitWithParent(() => process.exit(1));
